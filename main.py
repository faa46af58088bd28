"""protoseg_jax trainer.

  python main.py --config=configs/demo.py --workdir=/tmp/demo
  python main.py --config=configs/cityscapes_hrnet48_proto.py --workdir=DIR \
      [--config.batch_size=16 ...] [--mode=train|eval] [--checkpoint_step=N]
  python main.py --config=CONFIG --workdir=DIR --mode=predict --input=IMAGES \
      --output=OUT [--output_format=default|cityscapes] [--checkpoint_step=N]

train: trains with periodic evaluation, resuming from the latest checkpoint
in DIR. eval: evaluates the latest (or --checkpoint_step) checkpoint and
appends its results to DIR/metrics.jsonl. predict: segments your own images
(--input: a file, a directory or a glob) with the latest (or
--checkpoint_step) checkpoint and writes label maps, colour maps and overlays
under --output (protoseg_jax/predict.py).
"""

import os

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
  from protoseg_jax import train
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  logging.info("config:\n%s", FLAGS.config)
  # `--workdir=~/runs/x`: the shell leaves a `~` after `=` alone.
  workdir = os.path.expanduser(FLAGS.workdir)
  if FLAGS.mode == "train":
    train.train_and_evaluate(FLAGS.config, workdir)
  elif FLAGS.mode == "predict":
    _predict(workdir)
  else:
    train.evaluate_checkpoint(FLAGS.config, workdir, FLAGS.checkpoint_step)


def _predict(workdir: str):
  if not FLAGS.input or not FLAGS.output:
    raise app.UsageError("--mode=predict needs --input and --output")
  import jax
  if jax.process_count() > 1:
    raise app.UsageError("--mode=predict runs in one process")
  from protoseg_jax import predict
  output = os.path.expanduser(FLAGS.output)
  paths = predict.list_images(FLAGS.input, exclude=output)
  predictor = predict.Predictor.from_workdir(FLAGS.config, workdir, FLAGS.checkpoint_step)
  predictor.predict_paths(paths, output, output_format=FLAGS.output_format)


if __name__ == "__main__":
  app.run(main)
