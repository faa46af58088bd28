"""Shared base config. Every run config starts from `get_config()` here.

Keys that tools rely on (keep their names): num_train_steps, batch_size
(global), eval_every_steps, checkpoint_every_steps, log_every_steps, seed.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_train_steps = 80_000
  config.batch_size = 8                 # global, over all processes and devices
  config.eval_batch_size = 8            # global
  config.log_every_steps = 50
  config.eval_every_steps = 8_000
  config.checkpoint_every_steps = 4_000
  config.keep_checkpoints = 3           # the last K checkpoints are kept
  config.max_eval_batches = -1          # -1: the whole eval split
  config.init_from = ""                 # dir written by `python -m protoseg_jax.convert` (backbone weights)
  config.init_from_scope = "backbone"   # backbone | all (a whole converted model, e.g. official ProtoSeg)

  # Data: read by protoseg_jax.input_pipeline.
  config.dataset = ml_collections.ConfigDict()
  ds = config.dataset
  ds.name = "demo"
  ds.data_dir = ml_collections.FieldReference(None, field_type=str)
  ds.builder_config = ml_collections.FieldReference(None, field_type=str)
  ds.train_split = "train"
  ds.eval_split = "validation"
  ds.crop_size = (512, 1024)            # (h, w)
  ds.scale = (2048, 1024)               # mmseg img_scale (long, short) for the keep-ratio rescale
  ds.ratio_range = (0.5, 2.0)
  ds.cat_max_ratio = 0.75
  ds.flip_prob = 0.5
  ds.photometric = True
  ds.eval_scale = (2048, 1024)          # keep-ratio test scale, None = original size
  ds.eval_canvas = (1024, 2048)         # fixed (h, w) of eval images after resize + pad
  ds.eval_label_canvas = (1024, 2048)   # fixed (h, w) of original-size eval labels + pad
  ds.mean = (123.675, 116.28, 103.53)   # ImageNet, 0..255
  ds.std = (58.395, 57.12, 57.375)
  ds.shuffle_buffer = 1024
  ds.prefetch = 2

  # Model: backbone -> decoder -> head (+ optional auxiliary FCN head).
  config.model = ml_collections.ConfigDict()
  m = config.model
  m.backbone = "hrnet_w48"
  m.backbone_kwargs = ml_collections.ConfigDict()
  m.decoder = "hrnet"                   # hrnet | fcn | uper | segformer
  m.decoder_kwargs = ml_collections.ConfigDict()
  m.head = "proto"                      # proto | linear
  m.aux_head = False                    # auxiliary FCN head on stage 3 (ResNet/Swin recipes)
  m.aux_weight = 0.4
  m.aux_channels = 256
  m.align_corners = True                # CE upsampling convention (official HRNet: True; mmseg: False)
  m.dtype = "float32"                   # compute dtype; "bfloat16" keeps params in float32

  # ProtoSeg head and prototype learning (PROTOSEG.md).
  config.protoseg = ml_collections.ConfigDict()
  p = config.protoseg
  p.num_prototypes = 10
  p.embed_dim = ml_collections.FieldReference(None, field_type=int)  # None: = decoder channels
  p.gamma = 0.999
  p.sinkhorn_iters = 3
  p.sinkhorn_epsilon = 0.05
  p.assignment = "gumbel"               # gumbel (official) | argmax
  p.use_mask_norm = True
  p.proj_norm_axis = "channel"          # channel | width (official-code quirk)
  p.lambda_ppc = 0.01
  p.lambda_ppd = 0.001
  p.warmup_iters = 0                    # steps without prototype learning / PPC / PPD

  # Loss.
  config.loss = ml_collections.ConfigDict()
  config.loss.class_weights = ml_collections.FieldReference(None, field_type=tuple)

  # Optimisation (protoseg_jax/optim.py).
  config.optim = ml_collections.ConfigDict()
  o = config.optim
  o.name = "sgd"                        # sgd | adamw
  o.learning_rate = 0.01
  o.momentum = 0.9
  o.nesterov = False
  o.weight_decay = 5e-4
  o.b1 = 0.9
  o.b2 = 0.999
  o.warmup_steps = 0                    # linear warm-up from warmup_ratio * lr
  o.warmup_ratio = 1e-6
  o.poly_power = 0.9
  o.min_lr = 0.0
  o.head_lr_mult = 1.0                  # lr multiplier for decoder / heads
  o.no_decay_norms_biases = False       # exclude norms, biases, position tables from decay
  o.grad_clip_norm = 0.0                # 0: off

  # Evaluation (protoseg_jax/evaluate.py).
  config.eval = ml_collections.ConfigDict()
  e = config.eval
  e.mode = "whole"                      # whole | slide
  e.crop_size = ml_collections.FieldReference(None, field_type=tuple)
  e.stride = ml_collections.FieldReference(None, field_type=tuple)
  e.scales = (1.0,)
  e.flip = False
  e.log_every_batches = 50
  return config


def parse_variants(arg, known) -> set:
  """'a,b' -> {'a', 'b'}; unknown names raise."""
  names = {s.strip() for s in (arg or "").split(",") if s.strip()}
  unknown = names - set(known)
  if unknown:
    raise ValueError(f"unknown config variant(s) {sorted(unknown)}; known: {list(known)}")
  return names


def runlocal(config, crop=(128, 128)):
  """Shrink a run to a few tiny steps (smoke test on a laptop CPU). The eval
  canvases stay: the dataset's images must still fit them."""
  config.num_train_steps = 4
  config.batch_size = 2
  config.eval_batch_size = 1
  config.log_every_steps = 1
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 4
  config.max_eval_batches = 2
  config.dataset.crop_size = crop
  config.dataset.shuffle_buffer = 16
  return config


def set_sgd_poly(config, learning_rate: float, *, weight_decay: float, min_lr: float = 0.0,
                 momentum: float = 0.9, poly_power: float = 0.9):
  """SGD with momentum and poly decay, no warm-up: the HRNet/ResNet recipes."""
  o = config.optim
  o.name = "sgd"
  o.learning_rate = learning_rate
  o.momentum = momentum
  o.weight_decay = weight_decay
  o.poly_power = poly_power
  o.min_lr = min_lr
  o.warmup_steps = 0
  return config


def set_adamw_warmup_poly(config, learning_rate: float, *, weight_decay: float,
                          warmup_steps: int, head_lr_mult: float = 1.0, poly_power: float = 1.0):
  """AdamW (0.9, 0.999), linear warm-up from 1e-6 x lr, then poly to 0; no
  weight decay on norms, biases and position tables: the Swin/MiT recipes."""
  o = config.optim
  o.name = "adamw"
  o.learning_rate = learning_rate
  o.b1, o.b2 = 0.9, 0.999
  o.weight_decay = weight_decay
  o.no_decay_norms_biases = True
  o.head_lr_mult = head_lr_mult
  o.warmup_steps = warmup_steps
  o.warmup_ratio = 1e-6
  o.poly_power = poly_power
  o.min_lr = 0.0
  return config


def linear_twin(get_proto_config):
  """The `get_config` of a run's `_linear` twin: the same run with the
  parametric softmax head (the baseline) instead of the ProtoSeg head."""

  def get_config(arg=None):
    config = get_proto_config(arg)
    config.model.head = "linear"
    return config

  return get_config
