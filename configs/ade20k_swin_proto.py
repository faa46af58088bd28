"""ADE20K, Swin + UperNet + ProtoSeg head.

  python main.py --config=configs/ade20k_swin_proto.py --workdir=DIR          # Swin-B (default)
  python main.py --config=configs/ade20k_swin_proto.py:swin_t --workdir=DIR   # Swin-T
  python main.py --config=configs/ade20k_swin_proto.py:swin_t,runlocal --workdir=DIR

mmsegmentation's upernet_swin recipes (configs/swin):
  * swin_t: upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K
    (`swin_tiny_patch4_window7_224`, ImageNet-1k weights);
  * swin_b (default): upernet_swin_base_patch4_window12_512x512_160k_ade20k_pretrain_384x384_22K
    (`swin_base_patch4_window12_384`, ImageNet-22k weights).
Both: drop_path 0.3, UPerHead (512 channels, pool scales 1/2/3/6, dropout
0.1), auxiliary FCNHead on stage 3 (256 channels, loss weight 0.4), AdamW
lr 6e-5 betas (0.9, 0.999) wd 0.01 with no decay on norms, position tables
(and, here, biases: see optim.NO_DECAY_PATTERN; mmseg decays biases), linear
warm-up 1500 iterations from 1e-6 * lr, then poly power 1.0 to 0, 160k
iterations, batch 16, crop 512x512, align_corners False. ProtoSeg head on the
UPerHead output: D = 512. Eval as in ade20k_hrnet48_proto.py.
Variants (comma-separated): "swin_t" | "swin_b", "runlocal".
"""

from configs import default
from configs import ade20k_hrnet48_proto as ade
from configs import cityscapes_hrnet48_proto as base

VARIANTS = ("swin_t", "swin_b", "runlocal")
SWIN_ARCHS = {"swin_t": "swin_tiny_patch4_window7_224",
              "swin_b": "swin_base_patch4_window12_384"}


def set_swin_upernet(config, size: str = "swin_b"):
  """Swin-{T,B} + UperNet (+ aux FCN) with the mmseg AdamW schedule (160k)."""
  if size not in SWIN_ARCHS:
    raise ValueError(f"Swin size must be one of {sorted(SWIN_ARCHS)}, got {size!r}")
  m = config.model
  m.backbone = SWIN_ARCHS[size]
  m.backbone_kwargs = {"drop_path_rate": 0.3}
  m.decoder = "uper"
  m.decoder_kwargs = {"channels": 512, "pool_scales": (1, 2, 3, 6), "dropout_rate": 0.1,
                      "align_corners": False}
  m.head = "proto"
  m.aux_head = True
  m.aux_weight = 0.4
  m.aux_channels = 256
  m.align_corners = False
  config.protoseg.embed_dim = 512

  default.set_adamw_warmup_poly(config, 6e-5, weight_decay=0.01, warmup_steps=1500)
  config.num_train_steps = 160_000
  return config


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  sizes = variants & set(SWIN_ARCHS)
  if len(sizes) > 1:
    raise ValueError(f"choose one of swin_t / swin_b, got {sorted(sizes)}")
  config = base.get_config()
  ade.set_ade20k_data(config)
  set_swin_upernet(config, sizes.pop() if sizes else "swin_b")
  config.batch_size = 16
  config.eval_batch_size = 8
  config.eval_every_steps = 16_000
  config.checkpoint_every_steps = 4_000
  if "runlocal" in variants:
    default.runlocal(config)
  return config
