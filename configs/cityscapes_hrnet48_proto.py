"""Cityscapes, HRNetV2-W48 + ProtoSeg head: the official ProtoSeg recipe.

  python main.py --config=configs/cityscapes_hrnet48_proto.py --workdir=DIR
  python main.py --config=configs/cityscapes_hrnet48_proto.py:runlocal --workdir=DIR

Source: tfzhou/ProtoSeg configs/cityscapes/H_48_D_4_proto.json and
scripts/cityscapes/hrnet/run_h_48_d_4_proto.sh (README: 80.1 mIoU val).
80k iterations, batch 8, SGD lr 0.01 momentum 0.9 wd 5e-4, poly 0.9 (to 0),
crop 1024x512 (w x h), random rescale 0.5-2.0 of 2048x1024, flip,
class-weighted CE (the official `ce_weight`), M=10, D=720, gamma 0.999,
lambda_ppc 0.01, lambda_ppd 0.001, whole-image test at 2048x1024,
bilinear align_corners=True for the branch fusion and the loss.

Differences from the official training, all from what the input pipeline offers:
  * augmentation: mmseg PhotoMetricDistortion (photometric=True) instead of
    openseg's brightness shift of +-10 (the pipeline has no brightness-only
    option); mmseg keep-ratio rescale (official: aspect jitter 0.9-1.1) and
    mmseg's cat_max_ratio 0.75 crop retries (official: none).
  * the official weights were trained with SyncBN over 4 GPUs (2 images
    each); here BN statistics are over the global batch.
Variants (comma-separated arg): "runlocal" (a few tiny steps on a laptop).
"""

from configs import datasets, default, models

VARIANTS = ("runlocal",)


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = default.get_config()
  datasets.set_cityscapes(config)
  models.set_hrnet48_official(config)
  default.set_sgd_poly(config, 0.01, weight_decay=5e-4)
  config.loss.class_weights = datasets.CITYSCAPES_CE_WEIGHTS
  default.set_80k_iters(config)
  return default.apply_variants(config, variants)
