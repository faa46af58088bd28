"""ADE20K, ResNet-101 (V1c deep stem, dilated, output stride 8) + FCN + ProtoSeg head.

  python main.py --config=configs/ade20k_r101_fcn_proto.py --workdir=DIR

mmsegmentation's fcn_r101-d8_512x512_160k_ade20k recipe: ResNetV1c-101
(open-mmlab://resnet101_v1c weights; `resnet101_v1c` here) with dilations
(1, 1, 2, 4), FCNHead (2 convs of 512 channels, concat_input, dropout 0.1)
on stage 4, auxiliary FCNHead (1 conv of 256) on stage 3 with loss weight 0.4,
SGD lr 0.01 momentum 0.9 wd 5e-4, poly 0.9 down to min_lr 1e-4, 160k
iterations, batch 16, crop 512x512, PhotoMetricDistortion, align_corners
False. The ProtoSeg head replaces the main classifier (D = 512, the FCN
width); the auxiliary head stays a linear classifier, as in the paper's
mmseg-based runs. Eval as in ade20k_hrnet48_proto.py.
Variants: "fsdp" (FSDP sharding), "runlocal".
"""

from configs import datasets, default, models

VARIANTS = ("distinct", "fsdp", "runlocal")


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = default.get_config()
  datasets.set_ade20k(config)
  models.set_r101_fcn(config)
  default.set_mmseg_sgd(config)
  default.set_160k_iters(config)
  return default.apply_variants(config, variants)
