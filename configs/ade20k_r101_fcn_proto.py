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
Variants: "runlocal".
"""

from configs import default
from configs import ade20k_hrnet48_proto as ade
from configs import cityscapes_hrnet48_proto as base

VARIANTS = ("runlocal",)


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = base.get_config()
  ade.set_ade20k_data(config)
  config.num_train_steps = 160_000
  config.batch_size = 16
  config.eval_batch_size = 8
  config.eval_every_steps = 16_000
  config.checkpoint_every_steps = 4_000

  m = config.model
  m.backbone = "resnet101_v1c"
  m.backbone_kwargs = {"output_stride": 8}
  m.decoder = "fcn"
  m.decoder_kwargs = {"in_index": 3, "channels": 512, "num_convs": 2,
                      "concat_input": True, "dropout": 0.1}
  m.head = "proto"
  m.aux_head = True
  m.aux_weight = 0.4
  m.aux_channels = 256
  m.align_corners = False

  config.protoseg.embed_dim = 512

  default.set_sgd_poly(config, 0.01, weight_decay=5e-4, min_lr=1e-4)

  if "runlocal" in variants:
    default.runlocal(config)
  return config
