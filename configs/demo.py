"""Demo: ProtoSeg head on the built-in procedural dataset, on a laptop CPU.

  python main.py --config=configs/demo.py --workdir=/tmp/protoseg_demo

Generates the dataset on first use (no download), trains a tiny HRNet with the
ProtoSeg head for a few minutes on 2 CPU cores and evaluates it.

Variant "runlocal" (`--config=configs/demo.py:runlocal`): the smallest real
run, under a minute on 2 cores (most of it compiling): the demo's "tiny" builder config (a few dozen scenes), 64x64
crops, 2 steps of batch 8 (lr warm-up cut to 2 steps) with a checkpoint and
an evaluation at the end (without the val/proto_* usage pass), M=2
prototypes of 16 dimensions. The tests' tiny runs start from it.

Variant "fsdp": parameters and optimizer state sharded over the devices
(configs/default.py:set_fsdp), e.g. `--config=configs/demo.py:fsdp`.
"""

from configs import datasets, default


VARIANTS = ("fsdp", "runlocal")


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = default.get_config()
  datasets.set_demo(config)

  m = config.model
  m.backbone = "hrnet_tiny"
  m.decoder = "hrnet"
  m.align_corners = True

  p = config.protoseg
  p.num_prototypes = 4
  p.embed_dim = 64
  p.gamma = 0.99             # 400 steps instead of 80k: prototypes must move faster
  # Distinct prototypes (issue 20's study, docs/benchmarks_history.md): argmax
  # assignment and the paper's PPC temperature 0.1 instead of the official
  # Gumbel draw and no temperature, whose prototypes collapse into copies.
  default.set_distinct_prototypes(config)

  default.set_adamw_warmup_poly(config, 3e-3, weight_decay=1e-4, warmup_steps=30)
  config.num_train_steps = 400
  config.batch_size = 16
  config.eval_batch_size = 50
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2
  if "fsdp" in variants:
    default.set_fsdp(config)
  if "runlocal" in variants:
    runlocal(config)
  return config


def runlocal(config):
  """The demo shrunk to a 2-step smoke run (see the module docstring)."""
  config.dataset.builder_config = "tiny"
  config.dataset.crop_size = (64, 64)
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_train_steps = 2
  config.optim.warmup_steps = 2   # the lr warm-up may not be longer than the run
  config.log_every_steps = 1
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.keep_checkpoints = 5
  config.protoseg.num_prototypes = 2
  config.protoseg.embed_dim = 16
  config.eval.proto_usage_batches = 0   # no val/proto_* usage pass (a second compile)
  return config
