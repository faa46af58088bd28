"""The trainer's edges: the only part of the package that imports TensorFlow,
TFDS, clu or orbax.

  loop            train_and_evaluate, evaluate_checkpoint (metrics.jsonl, TensorBoard)
  run             a workdir's description (config.json, run.json) and `load_run`,
                  the one way to load a run's model for the tools
  cli             the command-line layer every tool shares (flags, errors, summary)
  faults          non-finite steps, stop signals, the workdir lock
  checkpoints     orbax: train-state checkpoints, converted weights, init_from
  datasets        the prepared TFDS dataset of a config and its class facts
  input_pipeline  tf.data train / eval pipelines, per-process shards
  augment         the per-example train transforms and the eval preprocessing
  images          reading images (PIL), shared with the dataset builders
  compile_cache   JAX's persistent compilation cache
"""
