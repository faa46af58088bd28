"""Prepares a dataset from the official files: python -m data.prepare NAME ...

  python -m data.prepare ade20k --manual_dir=~/Downloads --data_dir=~/tensorflow_datasets
  python -m data.prepare demo   # no download; also done on first use by the trainer

Every file is checked (it decodes whole, its label has its size and only ids
the dataset defines). Bad files are all named; by default (--on_bad_file=stop)
preparation then stops and prepares nothing; --on_bad_file=skip leaves them
out (each logged, a summary at the end, their names in the prepared
metadata.json as "skipped_files").
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import tensorflow_datasets as tfds

import data
import data.common


def prepare(name: str, manual_dir: str | None, data_dir: str | None, config: str | None = None,
            on_bad_file: str = "stop"):
  """Runs download_and_prepare for dataset `name`; returns the builder.

  Raises:
    FileNotFoundError: manual_dir is missing or empty, or lacks files the
      dataset needs (the message names the folder and what it should hold).
    data.common.BadFilesError: on_bad_file="stop" and some files are bad
      (all named in the message).
  """
  builder = data.get_builder(name, data_dir=data_dir, config=config, on_bad_file=on_bad_file)
  manual_dir = os.path.expanduser(manual_dir) if manual_dir else None
  if manual_dir is not None and name != "demo":
    instructions = data.builder_class(name).MANUAL_DOWNLOAD_INSTRUCTIONS
    if not os.path.isdir(manual_dir):
      raise FileNotFoundError(f"--manual_dir {manual_dir} does not exist; it should hold:\n"
                              f"{instructions}")
    if not os.listdir(manual_dir):
      raise FileNotFoundError(f"--manual_dir {manual_dir} is empty; it should hold:\n"
                              f"{instructions}")
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder.download_and_prepare(download_config=download_config)
  return builder


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("name", choices=sorted(data.DATASETS))
  parser.add_argument("--manual_dir", default=None,
                      help="folder with the official archives (or their extracted contents)")
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's default)")
  parser.add_argument("--config", default=None, help="builder config (demo: default | tiny)")
  parser.add_argument("--on_bad_file", default="stop", choices=data.common.ON_BAD_FILE,
                      help="unreadable/truncated files, labels of another size or with ids the "
                           "dataset does not define: stop (default: name them all, prepare "
                           "nothing) or skip (leave them out, logged and counted)")
  args = parser.parse_args(argv)
  if args.name != "demo" and not args.manual_dir:
    parser.error(f"{args.name} needs --manual_dir:\n{data.builder_class(args.name).MANUAL_DOWNLOAD_INSTRUCTIONS}")
  if not (sys.stdout.isatty() and sys.stderr.isatty()):
    # TFDS's tqdm bars redraw with cursor escapes (`[A`) that litter logs and pipes; the
    # trainer's command-line layer does the same (protoseg_jax/trainer/cli.py quiet_console).
    tfds.disable_progress_bar()
  start = time.time()
  existed = data.get_builder(args.name, data_dir=args.data_dir, config=args.config).is_prepared()
  try:
    builder = prepare(args.name, args.manual_dir, args.data_dir, args.config, args.on_bad_file)
  except (FileNotFoundError, data.common.BadFilesError) as e:
    raise SystemExit(f"data.prepare {args.name}: {e}") from None
  splits = ", ".join(f"{k}: {v.num_examples}" for k, v in builder.info.splits.items())
  if existed:
    print(f"Reused {builder.name}: already prepared in {builder.data_dir} ({splits}); nothing "
          "was read or written (delete that folder to prepare it again)")
    return
  skipped = f"; skipped {len(builder.bad_files)} bad file(s), listed above" if builder.bad_files else ""
  print(f"Prepared {builder.name} in {builder.data_dir} ({splits}) in {time.time() - start:.1f} s"
        f"{skipped}")


if __name__ == "__main__":
  main()
