"""COCO-Stuff 164k (171 classes), Swin-B + UperNet + ProtoSeg head.

  python main.py --config=configs/coco_stuff164k_swin_b_proto.py --workdir=DIR

The Swin-B UperNet recipe of ade20k_swin_proto.py (AdamW 6e-5, wd 0.01,
warm-up 1500, poly 1.0, aux FCN 0.4, D = 512) on mmseg's COCO-Stuff 164k
pipeline (batch 16, crop 512x512, rescale 0.5-2.0 of (2048, 512)) for 80k
iterations (mmseg's shorter COCO-Stuff 164k schedule; variant "160k": 160k).
Eval as in coco_stuff164k_hrnet48_proto.py.
Variants: "swin_t" | "swin_b" (default), "160k", "runlocal".
"""

from configs import default
from configs import ade20k_swin_proto as swin
from configs import cityscapes_hrnet48_proto as base
from configs import coco_stuff164k_hrnet48_proto as coco

VARIANTS = ("swin_t", "swin_b", "160k", "runlocal")


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  sizes = variants & set(swin.SWIN_ARCHS)
  if len(sizes) > 1:
    raise ValueError(f"choose one of swin_t / swin_b, got {sorted(sizes)}")
  config = base.get_config()
  coco.set_coco_stuff164k_data(config)
  swin.set_swin_upernet(config, sizes.pop() if sizes else "swin_b")
  config.num_train_steps = 160_000 if "160k" in variants else 80_000
  config.batch_size = 16
  config.eval_batch_size = 8
  config.eval_every_steps = 8_000
  config.checkpoint_every_steps = 4_000
  if "runlocal" in variants:
    default.runlocal(config)
  return config
