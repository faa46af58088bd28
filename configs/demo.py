"""Demo: ProtoSeg head on the built-in procedural dataset, on a laptop CPU.

  python main.py --config=configs/demo.py --workdir=/tmp/protoseg_demo

Generates the dataset on first use (no download), trains a tiny HRNet with the
ProtoSeg head for a few minutes on 2 CPU cores and evaluates it.
"""

from configs import default


def get_config(arg=None):
  del arg
  config = default.get_config()
  config.seed = 0
  config.num_train_steps = 400
  config.batch_size = 16
  config.eval_batch_size = 50
  config.log_every_steps = 50
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2

  ds = config.dataset
  ds.name = "demo"
  ds.crop_size = (96, 96)
  ds.scale = (96, 96)
  ds.ratio_range = (0.75, 1.5)
  ds.cat_max_ratio = 0.75
  ds.photometric = False
  ds.eval_scale = (96, 96)
  ds.eval_canvas = (96, 96)
  ds.eval_label_canvas = (96, 96)
  ds.shuffle_buffer = 1000

  m = config.model
  m.backbone = "hrnet_tiny"
  m.decoder = "hrnet"
  m.head = "proto"
  m.align_corners = True

  p = config.protoseg
  p.num_prototypes = 4
  p.embed_dim = 64
  p.gamma = 0.99             # 400 steps instead of 80k: prototypes must move faster

  o = config.optim
  o.name = "adamw"
  o.learning_rate = 3e-3
  o.weight_decay = 1e-4
  o.warmup_steps = 30
  o.poly_power = 1.0
  o.no_decay_norms_biases = True
  return config
