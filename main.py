"""protoseg_jax trainer.

  python main.py --config=configs/demo.py --workdir=/tmp/demo
  python main.py --config=configs/cityscapes_hrnet48_proto.py --workdir=DIR \
      [--config.batch_size=16 ...] [--mode=train|eval] [--checkpoint_step=N]
  python main.py --config=CONFIG --workdir=DIR --mode=predict --input=IMAGES \
      --output=OUT [--output_format=default|cityscapes] [--checkpoint_step=N]

train: trains with periodic evaluation, resuming from the latest checkpoint
in DIR; SIGTERM or Ctrl-C saves a checkpoint of the step reached and exits 0
(the same command resumes), too many non-finite steps in a row exit with
FloatingPointError (train.train_and_evaluate). eval: evaluates the latest (or --checkpoint_step) checkpoint and
appends its results to DIR/metrics.jsonl. predict: segments your own images
(--input: a file, a directory or a glob) with the latest (or
--checkpoint_step) checkpoint and writes label maps, colour maps and overlays
under --output (protoseg_jax/predict.py); unreadable inputs, images over
config.predict.max_pixels and outputs that would leave --output (symlinks,
`..`) are skipped by name and listed at the end; the exit status is 1 only
when no image was written.

A config error (a key the config does not have, a value of the wrong type or
out of range: protoseg_jax/validate.py) stops the run before any data is
prepared or anything is compiled: one line per problem on stderr,
`main.py: config error: config.<key>=<value>: <what is allowed>`, and exit
status 2 (also for a bad flag: `main.py: flag error: ...`).
"""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard logs.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"],
                  "train (with periodic eval), eval or predict (--input -> --output).")
flags.DEFINE_integer("checkpoint_step", None, "eval and predict modes: the checkpoint step "
                     "(default: latest).")
flags.DEFINE_string("input", None, "predict mode: an image file, a directory (searched "
                    "recursively) or a glob (quote it; ** recurses).")
flags.DEFINE_string("output", None, "predict mode: output directory; each input's path relative "
                    "to its input root is kept.")
flags.DEFINE_enum("output_format", "default", ["default", "cityscapes"],
                  "predict mode: default (<name>.png ids, <name>_color.png, <name>_overlay.png) "
                  "or cityscapes (<name>_labelIds.png with official Cityscapes labelIds).")
flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0 "
                    "(omit on Cloud TPU, where jax.distributed finds it).")
flags.DEFINE_integer("num_processes", None, "Multi-process: total number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: index of this process.")
flags.DEFINE_bool("distributed", False, "Multi-process: call jax.distributed.initialize() with the "
                  "arguments it detects itself (Cloud TPU pods, SLURM, Open MPI).")
config_flags.DEFINE_config_file("config", None, "Run config (configs/*.py[:variant]).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
  """absl log filter: keep warnings from orbax/TFDS, drop their INFO chatter."""

  NOISY = ("/orbax/", "/tensorflow_datasets/", "/etils/")

  def filter(self, record):
    return record.levelno >= 30 or not any(p in record.pathname for p in self.NOISY)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import jax
  if FLAGS.distributed or FLAGS.coordinator_address or FLAGS.num_processes:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from protoseg_jax import validate
  try:  # every invalid value at once, before any dataset or compilation
    # predict: one process, and Predictor splits its own batches over the local devices.
    counts = {"num_devices": 1, "num_processes": 1} if FLAGS.mode == "predict" else {}
    validate.validate_config(FLAGS.config, **counts)
  except validate.ConfigError as e:
    _exit_with_error("config", e.problems)
  from protoseg_jax import train
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  logging.info("config:\n%s", FLAGS.config)
  # `--workdir=~/runs/x`: the shell leaves a `~` after `=` alone.
  workdir = os.path.expanduser(FLAGS.workdir)
  if FLAGS.mode == "train":
    train.train_and_evaluate(FLAGS.config, workdir)
  elif FLAGS.mode == "predict":
    return _predict(workdir)
  else:
    train.evaluate_checkpoint(FLAGS.config, workdir, FLAGS.checkpoint_step)


def _predict(workdir: str) -> int:
  """Exit status: 0 when at least one image was written (the inputs skipped,
  unreadable, too large or with unsafe output paths, are listed in the log),
  1 when none was."""
  if not FLAGS.input or not FLAGS.output:
    raise app.UsageError("--mode=predict needs --input and --output")
  import jax
  if jax.process_count() > 1:
    raise app.UsageError("--mode=predict runs in one process")
  from protoseg_jax import predict
  output = os.path.expanduser(FLAGS.output)
  refused = []
  paths = predict.list_images(FLAGS.input, exclude=output, refused=refused)
  predictor = predict.Predictor.from_workdir(FLAGS.config, workdir, FLAGS.checkpoint_step)
  summary = predictor.predict_paths(paths, output, output_format=FLAGS.output_format,
                                    refused=refused)
  if not summary["images"]:
    logging.error("predict: no image was written (%d input(s) skipped, listed above)",
                  len(summary["failed"]))
    return 1
  return 0


def _exit_with_error(kind: str, lines):
  """`main.py: <kind> error: <line>` on stderr for each line, then exit status 2."""
  for line in lines:
    sys.stderr.write(f"main.py: {kind} error: {line}\n")
  sys.exit(2)


def _one_line(text: str) -> str:
  """A flag or config-file error as one line: for a traceback (an error raised
  inside a config file's get_config) its last line, with the place it was
  raised unless it is a ValueError (the configs' own messages)."""
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  if not lines:
    return text
  if "Traceback (most recent call last):" not in lines:
    return " ".join(lines)
  last = lines[-1]
  if last.startswith("ValueError: "):
    return last[len("ValueError: "):]
  places = re.findall(r'File "([^"]+)", line (\d+)', text)
  return f"{last} (at {places[-1][0]}:{places[-1][1]})" if places else last


_FLAG_VALUE_ERROR = re.compile(r"flag --([^=\s]+)=(.*?): (.*)", re.DOTALL)


def _flag_error(error: flags.Error) -> tuple[str, str]:
  """(kind, line) of an absl flag error: kind "config" for --config and its overrides."""
  m = _FLAG_VALUE_ERROR.match(str(error))
  if not m:
    return "flag", f"{_one_line(str(error))} (python main.py --helpshort lists the flags)"
  name, value, why = m.group(1), m.group(2), _one_line(m.group(3))
  kind = "config" if name == "config" or name.startswith("config.") else "flag"
  expected = {"int": "an integer", "float": "a number", "bool": "true or false"}
  if name.startswith("config.") and name in FLAGS:  # an override of the wrong type
    flag_type = FLAGS[name].parser.flag_type()
    if flag_type in expected:
      why = f"must be {expected[flag_type]}"
  if f"--{name} " in why:  # absl's "flag --workdir must have a value other than None."
    return kind, why
  return kind, f"--{name}={value}: {why}"


def _unknown_key(error: Exception, argv) -> str | None:
  """The line for a --config.<key> override naming no key of the (locked)
  config, from the KeyError/AttributeError ml_collections raises; or None."""
  msg = error
  while isinstance(msg, BaseException) and msg.args:
    msg = msg.args[0]
  if not isinstance(msg, str):
    return None
  first, _, rest = msg.partition("\n")
  key = first.strip().strip("'\"")
  hint = re.search(r'Did you mean "([^"]+)"', rest)
  for arg in argv[1:]:
    m = re.match(r"--config\.([^=\s]+)", arg)
    path = m.group(1).split(".") if m else []
    if key in path:
      parent = ".".join(["config", *path[:path.index(key)]])
      line = f"{arg}: {parent} has no key {key!r}"
      line += f" (did you mean {hint.group(1)!r}?)" if hint else ""
      return line + "; every key is set, with a comment, in configs/default.py"
  return None


def _parse_flags(argv):
  """app.run's flag parsing, where a bad flag, --config file or config override
  (an unknown key, a value of the wrong type) is one line on stderr and exit
  status 2 instead of a usage dump or a traceback."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.keys()  # a --config file that failed to load raises its OSError here
    return rest
  except flags.Error as e:
    kind, line = _flag_error(e)
    _exit_with_error(kind, [line])
  except (AttributeError, KeyError) as e:  # --config.<key>: no such key in the locked config
    line = _unknown_key(e, argv)
    if line is None:
      raise
    _exit_with_error("config", [line])
  except OSError as e:  # the --config file is missing or unreadable
    config = ([a for a in argv[1:] if a.startswith("--config=")] or ["--config"])[-1]
    why = str(e).strip().splitlines()[-1].strip() if str(e).strip() else repr(e)
    _exit_with_error("config", [f"{config}: cannot load the config file: {why}"])


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
