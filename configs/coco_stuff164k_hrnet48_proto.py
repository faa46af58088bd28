"""COCO-Stuff 164k (171 classes), HRNetV2-W48 + ProtoSeg head.

  python main.py --config=configs/coco_stuff164k_hrnet48_proto.py --workdir=DIR
  python main.py --config=configs/coco_stuff164k_hrnet48_proto.py:160k --workdir=DIR

openseg has HRNet recipes only for COCO-Stuff 10k, so this follows mmseg's
COCO-Stuff 164k setting: batch 16, crop 512x512, random rescale 0.5-2.0 of
(2048, 512), flip, PhotoMetricDistortion, SGD lr 0.01 momentum 0.9 wd 5e-4,
poly 0.9 down to min_lr 1e-4, 80k iterations (variant "160k": 160k), with the
official HRNet model and ProtoSeg settings (bilinear align_corners fusion and
loss, M=10, D=720).

Evaluation: whole image rescaled keeping ratio to (2048, 512). COCO images are
at most 640 px, so the original labels fit (640, 640); rescaled, a
panoramic image can reach 2048 on its long side in either orientation, hence
the guaranteed canvas (2048, 2048). `input_pipeline.scan_eval_sizes(config)`
on the prepared val2017 split gives the tight canvas.
Variants: "160k", "runlocal".
"""

from configs import default
from configs import ade20k_hrnet48_proto as ade
from configs import cityscapes_hrnet48_proto as base

VARIANTS = ("160k", "runlocal")
COCO_EVAL_CANVAS = (2048, 2048)
COCO_EVAL_LABEL_CANVAS = (640, 640)


def set_coco_stuff164k_data(config):
  ade.set_ade20k_data(config)          # the same 512x512 mmseg pipeline
  ds = config.dataset
  ds.name = "coco_stuff164k"
  ds.eval_canvas = COCO_EVAL_CANVAS
  ds.eval_label_canvas = COCO_EVAL_LABEL_CANVAS
  return config


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = base.get_config()
  set_coco_stuff164k_data(config)
  config.num_train_steps = 160_000 if "160k" in variants else 80_000
  config.batch_size = 16
  config.eval_batch_size = 8
  config.eval_every_steps = 8_000
  config.checkpoint_every_steps = 4_000

  default.set_sgd_poly(config, 0.01, weight_decay=5e-4, min_lr=1e-4)

  if "runlocal" in variants:
    default.runlocal(config)
  return config
