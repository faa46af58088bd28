"""COCO-Stuff 164k (171 classes), Swin-B + UperNet + ProtoSeg head.

  python main.py --config=configs/coco_stuff164k_swin_b_proto.py --workdir=DIR

The Swin-B UperNet recipe of ade20k_swin_proto.py (AdamW 6e-5, wd 0.01,
warm-up 1500, poly 1.0, aux FCN 0.4, D = 512) on mmseg's COCO-Stuff 164k
pipeline (batch 16, crop 512x512, rescale 0.5-2.0 of (2048, 512)) for 80k
iterations (mmseg's shorter COCO-Stuff 164k schedule; variant "160k": 160k).
Eval as in coco_stuff164k_hrnet48_proto.py.
Variants: "swin_t" | "swin_b" (default), "160k", "fsdp" (FSDP sharding), "runlocal".
"""

from configs import datasets, default, models

VARIANTS = (*models.SWIN_ARCHS, "160k", "distinct", "fsdp", "runlocal")


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = default.get_config()
  datasets.set_coco_stuff164k(config)
  models.set_swin_upernet(config, models.swin_size(variants))
  default.set_swin_adamw(config)
  default.set_80k_iters(config)
  return default.apply_variants(config, variants)
