"""Shared base config. Every run config starts from `get_config()` here.

Every key the trainer reads is set here (the modules have no defaults of
their own). A run config reads: `get_config()` here -> a dataset recipe
(configs/datasets.py) -> a model recipe (configs/models.py) -> a schedule
(optimiser: `set_sgd_poly` / `set_adamw_warmup_poly` and the named recipes
built on them; length: `set_80k_iters` / `set_160k_iters`; all here) -> its
own values -> variants (`parse_variants`, `apply_variants`). It imports only
this module, the recipe modules and, for a `_linear` run, its own `_proto`
twin (`linear_twin`); never another run.

Keys that tools rely on (keep their names): num_train_steps, batch_size
(global), eval_every_steps, checkpoint_every_steps, log_every_steps, seed.
"""

import ml_collections

from protoseg_jax.models import IMAGENET_MEAN, IMAGENET_STD


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
  config.max_consecutive_nonfinite = 10 # a step with a non-finite loss/gradient is skipped (counted in
                                        # train/nonfinite_steps); this many in a row stop the run with
                                        # FloatingPointError (checked at log steps); 0: never stop
  config.max_eval_batches = -1          # -1: the whole eval split
  config.init_from = ""                 # dir written by `python -m protoseg_jax.convert` (backbone weights)
  config.compilation_cache_dir = ""      # JAX persistent compilation cache: "" = DIR/compilation_cache, "off", or a dir
  config.workdir_lock_lease_s = 60.0    # a gs:// workdir's trainer.lock: the lease a trainer renews while it
                                        # trains; a killed trainer's successor takes the workdir over once it ends
  config.init_from_scope = "backbone"   # backbone | all (a whole converted model, e.g. official ProtoSeg)

  # Data: read by protoseg_jax.input_pipeline.
  config.dataset = ml_collections.ConfigDict()
  ds = config.dataset
  ds.name = "demo"
  ds.data_dir = ml_collections.FieldReference(None, field_type=str)
  ds.builder_config = ml_collections.FieldReference(None, field_type=str)
  ds.train_split = "train"
  ds.eval_split = "validation"
  ds.held_out_class = -1                # a class id: train without it (its labels -> ignore, ids above
                                        # it down by one; protoseg_jax/held_out.py), add it back later
                                        # with protoseg_jax.add_class; -1: all classes
  ds.crop_size = (512, 1024)            # (h, w)
  ds.scale = (2048, 1024)               # mmseg img_scale (long, short) for the keep-ratio rescale
  ds.ratio_range = (0.5, 2.0)
  ds.cat_max_ratio = 0.75
  ds.flip_prob = 0.5
  ds.photometric = True
  ds.augmentation = "mmseg"             # mmseg | openseg (official ProtoSeg: brightness, aspect jitter, bicubic, random pad)
  ds.aspect_range = (0.9, 1.1)          # openseg only: aspect-ratio jitter of the rescale
  ds.brightness_shift = 10              # openseg only: + randint(-k, k) on 0..255 values
  ds.eval_scale = (2048, 1024)          # keep-ratio test scale, None = original size
  ds.eval_canvas = (1024, 2048)         # fixed (h, w) of eval images after resize + pad
  ds.eval_label_canvas = (1024, 2048)   # fixed (h, w) of original-size eval labels + pad
  ds.mean = IMAGENET_MEAN               # RGB, 0..255: what the pretrained backbones expect
  ds.std = IMAGENET_STD
  ds.input_order = "rgb"                # rgb | bgr: "bgr" reverses channels, then mean[i]/std[i] (openseg input_mode BGR)
  ds.finish_on_device = True            # the train step does the last steps of the train transform
                                        # (photometric distortion, channel order, normalisation);
                                        # True only: False (the removed host path) is refused for a
                                        # new run, ignored on resume (docs/datasets.md)
  ds.resize_on_device = True            # openseg: its bicubic rescale, crop, flip and brightness
                                        # too (the host ships the source rows); True only, as above
  ds.shuffle_buffer = 1024
  ds.num_parallel_calls = -1            # tf.data map parallelism; -1: AUTOTUNE
  ds.prefetch = 2

  # Sharding over the 1-D "data" mesh (protoseg_jax/sharding.py): the batch is
  # split; params follow the first (regex, strategy) rule that fully matches
  # their path ('backbone/stage2/.../kernel'): "replicate" (data parallel) or
  # "fsdp" (param + optimizer state split over the data axis; `set_fsdp`).
  # Prototypes and BatchNorm statistics are always replicated.
  config.sharding = ml_collections.ConfigDict()
  config.sharding.rules = ((".*", "replicate"),)
  config.sharding.fsdp_min_size = 2**14   # fsdp leaves smaller params replicated

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
  m.remat = "none"                      # backbone activation checkpointing: none | stage | block,
                                        # or per stage: "block:3,4", "stage:1,2;block:3,4"
                                        # (models/layers.remat_plan; docs/benchmarks.md)

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
  p.use_feat_norm = True                # LayerNorm over D before the embedding's unit norm (official)
  p.proj_norm_axis = "channel"          # channel (paper intent, default) | width (official-code
                                        # quirk: L2 along image width; the official recipe sets it)
  p.proto_init = "trunc_normal_2std"    # trunc_normal_2std (cut at +-2 std) | timm_trunc_normal
                                        # (official: timm's cut at +-2 absolute = untruncated at std 0.02)
  p.lambda_ppc = 0.01
  p.lambda_ppd = 0.001
  p.ppc_temperature = 1.0               # PPC logits = cosine / this: 1.0 (official code, no temperature) |
                                        # 0.1 (the paper's text)
  p.class_chunk = 0                     # classes per chunk of the [N, C*M] similarity (large vocabularies):
                                        # 0 = automatic (all at once while it is <= 4 GiB in float32, the
                                        # common case; else ~256 MiB chunks, chunking.auto_chunk_size),
                                        # >= C = all at once, k = chunks of k classes (equal up to rounding)
  p.warmup_iters = 0                    # steps without prototype learning / PPC / PPD
  p.pretrain_prototype = False          # True (official trainer): during warm-up the prototypes are
                                        # trained by gradient (CE) with the head's optimizer; False:
                                        # frozen during warm-up. No effect when warmup_iters = 0.
  p.update_prototype = True             # False: official ablation, PPC/PPD with frozen prototypes
  p.prototype_update = "global"         # global (Sinkhorn + update over the global batch) |
                                        # per_device_mean (official: per device, then mean over devices)

  # Loss.
  config.loss = ml_collections.ConfigDict()
  config.loss.class_weights = ml_collections.FieldReference(None, field_type=tuple)
  config.loss.label_rows = 0            # CE at label resolution, label rows per block: 0 = automatic (the
                                        # upsampled logits [B, H, W, C] whole while <= 4 GiB in float32,
                                        # else ~256 MiB blocks: chunking.auto_chunk_size), k = blocks of k

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

  # Evaluation (protoseg_jax/inference.py, protoseg_jax/evaluate.py).
  config.eval = ml_collections.ConfigDict()
  e = config.eval
  e.mode = "whole"                      # whole | slide
  e.slide_crop = ml_collections.FieldReference(None, field_type=tuple)  # (h, w) slide window
  e.stride = ml_collections.FieldReference(None, field_type=tuple)      # (h, w) slide stride
  e.scales = (1.0,)
  e.flip = False
  e.resize = "bilinear"                 # logits -> label size: bilinear (mmseg) | bilinear_align_corners (openseg tester) | bicubic (openseg val)
  e.merge = "mean_softmax"              # multi-pass merge: mean_softmax (mmseg) | sum_logits (openseg ms_test)
  e.class_chunk = 0                     # classes per chunk of the label-resolution scores [B, Hl, Wl, C]
                                        # (large vocabularies): 0 = automatic (all at once while B*Hl*Wl*C*4
                                        # bytes <= 4 GiB, else ~256 MiB chunks: chunking.auto_chunk_size),
                                        # >= C = all at once, k = chunks of k classes (same argmax up to rounding)
  e.log_every_batches = 50
  e.proto_usage_batches = 8             # eval batches (at most) whose pixels give val/proto_* (which
                                        # prototypes the eval pixels retrieve; one extra forward pass
                                        # each); -1: all the evaluation's batches, 0: off

  # Testing switches (fault injection; the compiled train step is the same either way).
  config.debug = ml_collections.ConfigDict()
  config.debug.nan_steps = ()           # steps (as numbered in metrics.jsonl) trained on all-NaN
                                        # images (non-finite loss and gradients), e.g. (3, 4)

  # Predict on your own images (protoseg_jax/predict.py, main.py --mode=predict).
  config.predict = ml_collections.ConfigDict()
  config.predict.max_pixels = 4096 * 4096  # larger inputs are refused by name (from the header,
                                           # before decoding; scores of a 16.8 MP image with 150
                                           # classes take 10 GB); 0: no limit
  return config


def parse_variants(arg, known) -> set:
  """'a,b' -> {'a', 'b'}; unknown names raise."""
  names = {s.strip() for s in (arg or "").split(",") if s.strip()}
  unknown = names - set(known)
  if unknown:
    raise ValueError(f"unknown config variant(s) {sorted(unknown)}; known: {list(known)}")
  return names


def choose_one(variants: set, options, default: str, what: str) -> str:
  """The one of `options` named in `variants`, else `default`; two named raise."""
  chosen = variants & set(options)
  if len(chosen) > 1:
    raise ValueError(f"choose one {what}, got {sorted(chosen)}")
  return chosen.pop() if chosen else default


def set_distinct_prototypes(config):
  """The prototype setting of the demo study (docs/benchmarks_history.md, issue 20)
  under which a class's M prototypes stay distinct and take its looks apart:
  the momentum update assigns each pixel to its Sinkhorn argmax (instead of
  the official Gumbel draw from softmax(Q), which picks near uniformly) and
  PPC has the paper's temperature 0.1 (the official code has none)."""
  config.protoseg.assignment = "argmax"
  config.protoseg.ppc_temperature = 0.1


def apply_variants(config, variants: set):
  """The variants every run may declare in its VARIANTS: "160k" (the run's
  schedule for 160k iterations, evaluated as often as before), "distinct"
  (`set_distinct_prototypes`, the ProtoSeg runs), "fsdp" (`set_fsdp`) and
  "runlocal" (`runlocal`). Run-specific variants are applied by the run itself."""
  if "160k" in variants:
    config.num_train_steps = 160_000
  if "distinct" in variants:
    set_distinct_prototypes(config)
  if "fsdp" in variants:
    set_fsdp(config)
  if "runlocal" in variants:
    runlocal(config)
  return config


def runlocal(config):
  """Shrink a run to a few tiny steps (smoke test on a laptop CPU): crops 128
  high with the run's crop aspect ratio (512x1024 -> 128x256), the lr warm-up
  cut to the run's length. The eval canvases stay: the dataset's images must
  still fit them."""
  h, w = config.dataset.crop_size
  crop = (128, 128 * w // h)
  config.num_train_steps = 4
  config.optim.warmup_steps = min(config.optim.warmup_steps, config.num_train_steps)
  config.batch_size = 2
  config.eval_batch_size = 1
  config.log_every_steps = 1
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 4
  config.max_eval_batches = 2
  config.dataset.crop_size = crop
  config.dataset.shuffle_buffer = 16
  return config


def set_fsdp(config):
  """FSDP: every parameter with >= fsdp_min_size elements (and its optimizer
  state) sharded over the data axis; for Swin-L / MiT-B5 at large batch."""
  config.sharding.rules = ((".*", "fsdp"),)
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


def set_80k_iters(config):
  """mmseg's schedule_80k length: 80k iterations, evaluated every 8k."""
  config.num_train_steps = 80_000
  config.eval_every_steps = 8_000
  return config


def set_160k_iters(config):
  """mmseg's schedule_160k length: 160k iterations, evaluated every 16k."""
  config.num_train_steps = 160_000
  config.eval_every_steps = 16_000
  return config


def set_mmseg_sgd(config):
  """mmseg's CNN schedule (fcn_r101-d8, COCO-Stuff 164k): SGD lr 0.01, momentum
  0.9, wd 5e-4, poly 0.9 down to min_lr 1e-4."""
  return set_sgd_poly(config, 0.01, weight_decay=5e-4, min_lr=1e-4)


def set_swin_adamw(config):
  """mmseg's upernet_swin schedule: AdamW lr 6e-5, wd 0.01, warm-up 1500
  iterations, poly 1.0 (see `set_adamw_warmup_poly`)."""
  return set_adamw_warmup_poly(config, 6e-5, weight_decay=0.01, warmup_steps=1500)


def set_segformer_adamw(config):
  """mmseg's segformer schedule: `set_swin_adamw`'s, with lr x10 on the decode
  head (here also on the ProtoSeg head: optim.HEAD_MODULES)."""
  set_swin_adamw(config)
  config.optim.head_lr_mult = 10.0
  return config


def linear_twin(get_proto_config):
  """The `get_config` of a run's `_linear` twin: the same run with the
  parametric softmax head (the baseline) instead of the ProtoSeg head."""

  def get_config(arg=None):
    config = get_proto_config(arg)
    config.model.head = "linear"
    return config

  return get_config
