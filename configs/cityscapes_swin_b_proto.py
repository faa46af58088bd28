"""Cityscapes, Swin-B + UperNet + ProtoSeg head.

  python main.py --config=configs/cityscapes_swin_b_proto.py --workdir=DIR

mmsegmentation has no Swin + UperNet Cityscapes recipe, so this is the ADE20K
Swin-B recipe of ade20k_swin_proto.py (swin_base_patch4_window12_384,
22k weights, UperNet + aux FCN 0.4, AdamW 6e-5 / wd 0.01 / no decay on norms,
biases and position tables, warm-up 1500 then poly 1.0) on mmseg's standard
Cityscapes data pipeline and length: 80k iterations, batch 8, crop 512x1024
(h, w), random rescale 0.5-2.0 of (2048, 1024), flip, PhotoMetricDistortion,
whole-image test at 2048x1024, no class weights, align_corners False.
Variants: "swin_t" | "swin_b" (default), "runlocal".
"""

from configs import default
from configs import ade20k_swin_proto as swin
from configs import cityscapes_hrnet48_proto as base

VARIANTS = ("swin_t", "swin_b", "runlocal")


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  sizes = variants & set(swin.SWIN_ARCHS)
  if len(sizes) > 1:
    raise ValueError(f"choose one of swin_t / swin_b, got {sorted(sizes)}")
  config = base.get_config()          # Cityscapes data, batch 8, whole 2048x1024 eval
  config.loss.class_weights = None    # mmseg recipes use plain CE
  swin.set_swin_upernet(config, sizes.pop() if sizes else "swin_b")
  config.num_train_steps = 80_000
  config.batch_size = 8
  config.eval_batch_size = 8
  config.eval_every_steps = 8_000
  config.checkpoint_every_steps = 4_000
  if "runlocal" in variants:
    default.runlocal(config, crop=(128, 256))
  return config
