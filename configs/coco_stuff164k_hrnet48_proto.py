"""COCO-Stuff 164k (171 classes), HRNetV2-W48 + ProtoSeg head.

  python main.py --config=configs/coco_stuff164k_hrnet48_proto.py --workdir=DIR
  python main.py --config=configs/coco_stuff164k_hrnet48_proto.py:160k --workdir=DIR

openseg has HRNet recipes only for COCO-Stuff 10k, so this follows mmseg's
COCO-Stuff 164k setting: batch 16, crop 512x512, random rescale 0.5-2.0 of
(2048, 512), flip, PhotoMetricDistortion, SGD lr 0.01 momentum 0.9 wd 5e-4,
poly 0.9 down to min_lr 1e-4, 80k iterations (variant "160k": 160k), with the
official HRNet model and ProtoSeg settings (bilinear align_corners fusion and
loss, M=10, D=720).

Evaluation: whole image rescaled keeping ratio to (2048, 512), on the
guaranteed COCO canvases of configs/datasets.py (original labels (640, 640),
rescaled images (2048, 2048)); `input_pipeline.scan_eval_sizes(config)` on
the prepared val2017 split gives the tight canvas.
Variants: "160k", "fsdp" (FSDP sharding), "runlocal".
"""

from configs import datasets, default, models

VARIANTS = ("160k", "distinct", "fsdp", "runlocal")


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = default.get_config()
  datasets.set_coco_stuff164k(config)
  models.set_hrnet48_official(config)
  default.set_mmseg_sgd(config)
  default.set_80k_iters(config)
  return default.apply_variants(config, variants)
