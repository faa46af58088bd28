"""Prepares a dataset from the official files: python -m data.prepare NAME ...

  python -m data.prepare ade20k --manual_dir=~/Downloads --data_dir=~/tensorflow_datasets
  python -m data.prepare demo   # no download; also done on first use by the trainer
"""

from __future__ import annotations

import argparse
import os
import time

import tensorflow_datasets as tfds

import data


def prepare(name: str, manual_dir: str | None, data_dir: str | None, config: str | None = None):
  """Runs download_and_prepare for dataset `name`; returns the builder."""
  builder = data.get_builder(name, data_dir=data_dir, config=config)
  download_config = tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)
  builder.download_and_prepare(download_config=download_config)
  return builder


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("name", choices=sorted(data.DATASETS))
  parser.add_argument("--manual_dir", default=None,
                      help="folder with the official archives (or their extracted contents)")
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's default)")
  parser.add_argument("--config", default=None, help="builder config (demo: default | tiny)")
  args = parser.parse_args(argv)
  if args.name != "demo" and not args.manual_dir:
    parser.error(f"{args.name} needs --manual_dir:\n{data.builder_class(args.name).MANUAL_DOWNLOAD_INSTRUCTIONS}")
  start = time.time()
  builder = prepare(args.name, args.manual_dir, args.data_dir, args.config)
  splits = ", ".join(f"{k}: {v.num_examples}" for k, v in builder.info.splits.items())
  print(f"Prepared {builder.name} in {builder.data_dir} ({splits}) in {time.time() - start:.1f} s")


if __name__ == "__main__":
  main()
