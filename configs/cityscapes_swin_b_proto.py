"""Cityscapes, Swin-B + UperNet + ProtoSeg head.

  python main.py --config=configs/cityscapes_swin_b_proto.py --workdir=DIR

mmsegmentation has no Swin + UperNet Cityscapes recipe, so this is the ADE20K
Swin-B recipe of ade20k_swin_proto.py (swin_base_patch4_window12_384,
22k weights, UperNet + aux FCN 0.4, AdamW 6e-5 / wd 0.01 / no decay on norms,
biases and position tables, warm-up 1500 then poly 1.0) on mmseg's standard
Cityscapes data pipeline and length: 80k iterations, batch 8, crop 512x1024
(h, w), random rescale 0.5-2.0 of (2048, 1024), flip, PhotoMetricDistortion,
whole-image test at 2048x1024, no class weights, align_corners False.
Variants: "swin_t" | "swin_b" (default), "fsdp" (FSDP sharding), "runlocal".
"""

from configs import datasets, default, models

VARIANTS = (*models.SWIN_ARCHS, "distinct", "fsdp", "runlocal")


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = default.get_config()
  datasets.set_cityscapes(config)
  models.set_swin_upernet(config, models.swin_size(variants))
  default.set_swin_adamw(config)
  default.set_80k_iters(config)
  return default.apply_variants(config, variants)
