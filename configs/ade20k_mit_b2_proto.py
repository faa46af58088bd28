"""ADE20K, MiT-B2 + SegFormer all-MLP head + ProtoSeg head.

  python main.py --config=configs/ade20k_mit_b2_proto.py --workdir=DIR

mmsegmentation's segformer_mit-b2_512x512_160k_ade20k recipe: MiT-B2
(drop_path 0.1), SegFormer head, dropout 0.1, AdamW lr 6e-5 betas (0.9, 0.999) wd 0.01, lr x10 on the decode head (and
here also on the ProtoSeg head: optim.HEAD_MODULES), no decay on norms and
position blocks (here also on biases), linear warm-up 1500 iterations from
1e-6 * lr, poly power 1.0 to 0, 160k iterations, batch 16, crop 512x512,
align_corners False. ProtoSeg head on the decoder output: D = decoder width.

Decoder width: 768 for B2-B5 and 256 for B0/B1, as in the official SegFormer
(NVlabs) and the HF checkpoints, whose heads the converter loads; mmseg's
port keeps 256 for every size (add
`--config.model.decoder_kwargs.channels=256 --config.protoseg.embed_dim=256`).
Eval as in ade20k_hrnet48_proto.py (whole image, short side 512).
Variants: "mit_b0" .. "mit_b5" (default here b2), "runlocal".
"""

from configs import default
from configs import ade20k_hrnet48_proto as ade
from configs import cityscapes_hrnet48_proto as base

VARIANTS = ("mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5", "runlocal")
DEFAULT_ARCH = "mit_b2"


def set_mit_segformer(config, arch: str):
  """MiT-Bx + SegFormer head with the mmseg AdamW schedule (160k)."""
  if arch not in VARIANTS[:6]:
    raise ValueError(f"MiT arch must be one of {VARIANTS[:6]}, got {arch!r}")
  width = 256 if arch in ("mit_b0", "mit_b1") else 768
  m = config.model
  m.backbone = arch
  m.backbone_kwargs = {"drop_path_rate": 0.1}
  m.decoder = "segformer"
  m.decoder_kwargs = {"channels": width, "dropout_rate": 0.1, "align_corners": False}
  m.head = "proto"
  m.aux_head = False
  m.align_corners = False
  config.protoseg.embed_dim = width

  default.set_adamw_warmup_poly(config, 6e-5, weight_decay=0.01, warmup_steps=1500,
                                head_lr_mult=10.0)
  config.num_train_steps = 160_000
  return config


def get_config(arg=None, default_arch: str = DEFAULT_ARCH):
  variants = default.parse_variants(arg, VARIANTS)
  archs = variants - {"runlocal"}
  if len(archs) > 1:
    raise ValueError(f"choose one MiT size, got {sorted(archs)}")
  config = base.get_config()
  ade.set_ade20k_data(config)
  set_mit_segformer(config, archs.pop() if archs else default_arch)
  config.batch_size = 16
  config.eval_batch_size = 8
  config.eval_every_steps = 16_000
  config.checkpoint_every_steps = 4_000
  if "runlocal" in variants:
    default.runlocal(config)
  return config
