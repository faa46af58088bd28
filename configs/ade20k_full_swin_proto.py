"""ADE20K-Full (847 classes), Swin + UperNet + ProtoSeg head.

  python -m data.prepare ade20k_full --manual_dir=DIR   # once, see docs/datasets.md
  python main.py --config=configs/ade20k_full_swin_proto.py --workdir=DIR         # Swin-B
  python main.py --config=configs/ade20k_full_swin_proto.py:swin_t --workdir=DIR  # Swin-T

configs/ade20k_swin_proto.py's run (mmsegmentation's upernet_swin 512x512
160k recipe: Swin-B `swin_base_patch4_window12_384` ImageNet-22k weights by
default, drop_path 0.3, UPerHead 512 channels, auxiliary FCNHead, AdamW lr
6e-5 wd 0.01, warm-up 1500, poly, 160k iterations, batch 16, crop 512x512,
ProtoSeg head with D = 512) on the ADE20K-Full dataset (`data/ade20k_full`:
the 847 classes of Mask2Former's ADE20K_SEM_SEG_FULL_CATEGORIES, 16-bit labels,
ignore index 65535), with the ADE20K sizes (`datasets.set_ade20k_full`).
Variants (comma-separated): "swin_t" | "swin_b", "fsdp" (FSDP sharding), "runlocal".
"""

from configs import datasets, default, models

VARIANTS = (*models.SWIN_ARCHS, "distinct", "fsdp", "runlocal")


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = default.get_config()
  datasets.set_ade20k_full(config)
  models.set_swin_upernet(config, models.swin_size(variants))
  default.set_swin_adamw(config)
  default.set_160k_iters(config)
  return default.apply_variants(config, variants)
