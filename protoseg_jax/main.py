"""The trainer's command: train, evaluate, predict (main.py, `python -m protoseg_jax`).

  python main.py --config=configs/demo.py --workdir=/tmp/demo                 (in a checkout)
  python main.py --config=CONFIG --workdir=DIR [--mode=train|eval] [--checkpoint_step=N]
      [--config.batch_size=16 ...]
  python main.py --config=CONFIG --workdir=DIR --mode=predict --input=IMAGES --output=OUT
      [--output_format=default|cityscapes] [--checkpoint_step=N]
  python main.py --config=CONFIG --workdir=DIR --mode=export --export_dir=OUT
      [--export_size=H,W] [--export_format=all|jax|saved_model|onnx] [--checkpoint_step=N]
  python -m protoseg_jax --workdir=DIR --mode=eval|predict ...                (anywhere)

train: trains with periodic evaluation, resuming from the newest intact
checkpoint in DIR (a checkout: the configs and dataset builders are there);
SIGTERM or Ctrl-C saves a checkpoint of the step reached and exits 0 (the
same command resumes); too many non-finite steps in a row exit with
FloatingPointError (trainer/loop.py). eval: evaluates the newest intact (or
--checkpoint_step) checkpoint and appends its results to DIR/metrics.jsonl.
predict: segments your own images (--input: a file, a directory or a glob)
and writes label maps, colour maps and overlays under --output
(protoseg_jax/predict.py); unreadable inputs, images over
config.predict.max_pixels and outputs that would leave --output (symlinks,
`..`) are skipped by name and listed at the end; the exit status is 1 only
when no image was written. export: writes the model's whole-image inference
as model.jax (jax.export), saved_model/ and model.onnx with export.json under
--export_dir (protoseg_jax/export.py, docs/export.md; converted weights:
--config.init_from=DIR and no --workdir needed).

eval and predict need no --config: a workdir describes itself (DIR/config.json,
DIR/run.json), so `python -m protoseg_jax --workdir=DIR --mode=eval` works
where only the installed package is (the dataset prepared where the run's
config says). With --config, its values are used (e.g. other eval settings),
and the classes still come from the workdir (a held-out or added class).

Errors (protoseg_jax/trainer/cli.py): a config or flag error stops the run
before any data is prepared or anything is compiled, one line per problem on
stderr (`main.py: config error: config.<key>=<value>: <what is allowed>`),
exit status 2; a user error found later (no checkpoint, dataset not
prepared, no images) is one line `main.py: error: ...`, exit status 1 (2
for a bad argument).
"""

from __future__ import annotations

import os

from absl import flags, logging

from protoseg_jax.trainer import cli

FLAGS = flags.FLAGS
MODES = ("train", "eval", "predict", "export")


def define_flags():
  cli.define_run_flags(config_required=False,
                       workdir="Directory for checkpoints, metrics.jsonl, TensorBoard logs and "
                               "the run's description (config.json, run.json).")
  flags.DEFINE_enum("mode", "train", list(MODES),
                    "train (with periodic eval), eval, predict (--input -> --output) or export "
                    "(--export_dir).")
  flags.DEFINE_string("input", None, "predict mode: an image file, a directory (searched "
                      "recursively) or a glob (quote it; ** recurses).")
  flags.DEFINE_string("output", None, "predict mode: output directory; each input's path "
                      "relative to its input root is kept.")
  flags.DEFINE_enum("output_format", "default", ["default", "cityscapes"],
                    "predict mode: default (<name>.png ids, <name>_color.png, "
                    "<name>_overlay.png) or cityscapes (<name>_labelIds.png with official "
                    "Cityscapes labelIds).")
  from protoseg_jax import export
  export.define_flags()
  flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0 "
                      "(omit on Cloud TPU, where jax.distributed finds it).")
  flags.DEFINE_integer("num_processes", None, "Multi-process: total number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-process: index of this process.")
  flags.DEFINE_bool("distributed", False, "Multi-process: call jax.distributed.initialize() "
                    "with the arguments it detects itself (Cloud TPU pods, SLURM, Open MPI).")
  flags.DEFINE_integer("heartbeat_timeout_s", 60, "Multi-process: a process that sends no "
                       "heartbeat for this long is lost, and every other process stops (JAX's "
                       "distributed service; a collective of a lost process may wait that long)")


def _check_arguments(mode: str):
  """The flags a mode needs, each missing one its own line (exit 2), before any work."""
  missing = []
  if not FLAGS.workdir and not (mode == "export" and FLAGS.config is not None):
    missing.append("--workdir is required (the run's directory)")
  if mode == "train" and FLAGS.config is None:
    missing.append("--config is required to train (e.g. --config=configs/demo.py)")
  if mode == "predict":
    missing += [f"--{f} is required with --mode=predict" for f in ("input", "output")
                if not getattr(FLAGS, f)]
  elif FLAGS.input or FLAGS.output:
    missing.append(f"--input / --output are for --mode=predict, not --mode={mode}")
  if mode == "export" and not FLAGS.export_dir:
    missing.append("--export_dir is required with --mode=export")
  elif mode != "export" and FLAGS.export_dir:
    missing.append(f"--export_dir is for --mode=export, not --mode={mode}")
  if missing:
    cli.fail(missing)


def main(argv):
  del argv
  mode = FLAGS.mode
  _check_arguments(mode)
  import jax
  if not (FLAGS.distributed or FLAGS.coordinator_address or FLAGS.num_processes):
    return _run_mode(mode)
  from protoseg_jax.trainer import faults
  watchdog = faults.LostProcessWatchdog(FLAGS.heartbeat_timeout_s)
  watchdog.before_initialize()
  jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                             heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_s)
  if not watchdog.start():
    return _run_mode(mode)
  try:
    code = _run_mode(mode)
  except jax.errors.JaxRuntimeError as e:   # e.g. a collective whose peer died
    watchdog.wait(e)
  # Every process finished its work: one leaving now is not lost.
  from jax.experimental import multihost_utils
  multihost_utils.sync_global_devices("protoseg_jax: every process done")
  watchdog.finish()
  return code


def _run_mode(mode: str) -> int:
  workdir = cli.expand(FLAGS.workdir, "--workdir")
  if mode == "predict":
    return _predict(workdir)
  if mode == "export":
    from protoseg_jax import export
    return export.run_command(workdir)
  config = cli.run_config(workdir)
  from protoseg_jax.trainer import loop
  if mode == "train":
    cli.check_init_from(config)
    loop.train_and_evaluate(config, workdir)
  else:
    from protoseg_jax.trainer import run as runs
    runs.weights_source(workdir, config)      # a missing checkpoint is named before slow work
    loop.evaluate_checkpoint(config, workdir, FLAGS.checkpoint_step)
  return 0


def _predict(workdir: str) -> int:
  """Exit status: 0 when at least one image was written (the inputs skipped,
  unreadable, too large or with unsafe output paths, are listed in the log),
  1 when none was."""
  import jax
  from protoseg_jax import predict
  from protoseg_jax.trainer import run as runs
  if jax.process_count() > 1:
    raise cli.ArgumentError("--mode=predict runs in one process")
  # predict: one process, and Predictor splits its own batches over the local devices.
  config = cli.run_config(workdir, num_devices=1, num_processes=1)
  output = cli.expand(FLAGS.output, "--output")
  refused = []
  paths = predict.list_images(FLAGS.input, exclude=output, refused=refused)
  predict.check_output_dir(output, FLAGS.input)
  runs.weights_source(workdir, config)
  predictor = predict.Predictor.from_workdir(config, workdir, FLAGS.checkpoint_step)
  summary = predictor.predict_paths(paths, output, output_format=FLAGS.output_format,
                                    refused=refused)
  if not summary["images"]:
    logging.error("predict: no image was written (%d input(s) skipped, listed above)",
                  len(summary["failed"]))
    return 1
  return 0


def run(name: str = "python -m protoseg_jax"):
  define_flags()
  cli.run(main, name)


if __name__ == "__main__":
  run("python -m protoseg_jax.main")
