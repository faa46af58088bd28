"""Did the prototypes collapse? The per-class table of a run's prototypes.

  python -m protoseg_jax.diagnostics --workdir=DIR [--config=configs/X.py] [--checkpoint_step=N]
  python -m protoseg_jax.diagnostics --config=configs/X.py --variables=CONVERTED_DIR
      [--num_batches=2] [--min_fraction=0.01] [--threshold=0.99]

Per class (rows named by the run's classes, held-out and added ones
included): mean / max cosine between its M prototypes, how many are
distinct and, over --num_batches eval batches, how many are used and by
what share of its pixels (`protoseg_jax.prototype_stats`, where the
definitions are). The run comes from `trainer.run.load_run`; a dataset that
is not prepared (or --num_batches=0) gives the prototype-only columns.
"""

from __future__ import annotations

from absl import flags

from protoseg_jax import prototype_stats, sharding
from protoseg_jax.trainer import cli, datasets, input_pipeline

FLAGS = flags.FLAGS
NAME = "python -m protoseg_jax.diagnostics"


def define_flags():
  cli.define_run_flags(config_required=False, workdir="Run directory whose checkpoint to read.",
                       variables=True)
  flags.DEFINE_integer("num_batches", 2, "Eval batches for the usage statistics (0: none).")
  flags.DEFINE_float("min_fraction", 0.0, "A prototype is used when it has >= 1 pixel and at "
                     "least this fraction of its class's pixels.")
  flags.DEFINE_float("threshold", prototype_stats.DISTINCT_THRESHOLD, "Cosine at or above which "
                     "a prototype counts as a copy of an earlier one (distinct).")


def main(argv):
  del argv
  run = cli.load_tool_run(cli.expand(FLAGS.workdir, "--workdir"),
                          variables_dir=cli.expand(FLAGS.variables, "--variables"),
                          checkpoint_step=FLAGS.checkpoint_step, needs_prototypes=True)
  protos = prototype_stats.prototype_array(run.variables["prototypes"])
  counts = looks = None
  if FLAGS.num_batches > 0:
    try:
      batches = input_pipeline.create_eval_iterator(
          run.config, sharding.batch_sharding(run.mesh), run=run.classes)
    except datasets.DatasetNotPreparedError as e:
      print(f"dataset not prepared ({str(e).splitlines()[0]}): prototype-only statistics")
    else:
      step = prototype_stats.jit_usage_step(run.model, run.classes.label_lut(), run.mesh)
      counts, n, looks = prototype_stats.eval_usage(step, run.variables, batches,
                                                    FLAGS.num_batches)
      print(f"usage over {n} images of {run.config.dataset.eval_split} "
            f"(up to {FLAGS.num_batches} eval batches)")
  print(prototype_stats.format_table(protos, run.classes.output_names, counts,
                                     threshold=FLAGS.threshold, min_fraction=FLAGS.min_fraction,
                                     looks=looks))


if __name__ == "__main__":
  define_flags()
  cli.run(main, NAME)
