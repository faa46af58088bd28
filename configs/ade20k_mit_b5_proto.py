"""ADE20K, MiT-B5 + SegFormer head + ProtoSeg head: ade20k_mit_b2_proto.py with
MiT-B5 (mmseg segformer_mit-b5_512x512_160k_ade20k: same schedule; 768-wide head).

  python main.py --config=configs/ade20k_mit_b5_proto.py --workdir=DIR

Variants: "runlocal".
"""

from configs import default
from configs import ade20k_mit_b2_proto as mit

VARIANTS = ("runlocal",)


def get_config(arg=None):
  default.parse_variants(arg, VARIANTS)
  return mit.get_config(arg, default_arch="mit_b5")
