"""ADE20K, MiT-B5 + SegFormer head + ProtoSeg head: ade20k_mit_b2_proto.py with
MiT-B5 (mmseg segformer_mit-b5_512x512_160k_ade20k: same schedule; 768-wide head).

  python main.py --config=configs/ade20k_mit_b5_proto.py --workdir=DIR

Variants: "fsdp" (FSDP sharding), "runlocal".
"""

from configs import datasets, default, models

VARIANTS = ("distinct", "fsdp", "runlocal")


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = default.get_config()
  datasets.set_ade20k(config)
  models.set_mit_segformer(config, "mit_b5")
  default.set_segformer_adamw(config)
  default.set_160k_iters(config)
  return default.apply_variants(config, variants)
