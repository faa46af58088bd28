"""Cityscapes, MiT-B5 + SegFormer head + ProtoSeg head.

  python main.py --config=configs/cityscapes_mit_b5_proto.py --workdir=DIR

mmsegmentation's segformer_mit-b5_8x1_1024x1024_160k_cityscapes recipe:
MiT-B5 (drop_path 0.1), SegFormer head (768 channels as the official
SegFormer; mmseg's port: 256, see ade20k_mit_b2_proto.py), AdamW lr 6e-5 wd 0.01,
head lr x10, no decay on norms/position blocks (here also biases), warm-up
1500 then poly 1.0, 160k iterations, batch 8, crop 1024x1024, random rescale
0.5-2.0 of (2048, 1024), flip, PhotoMetricDistortion, no class weights,
align_corners False; test: sliding window 1024x1024, stride 768, on the
2048x1024 image (the window grid tiles the 1024x2048 canvas exactly, so it is
mmseg's grid). ProtoSeg head: D = 768.
Variants: "fsdp" (FSDP sharding), "runlocal" (also a 512x512 window, stride 384).
"""

from configs import datasets, default, models

VARIANTS = ("distinct", "fsdp", "runlocal")


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = default.get_config()
  datasets.set_cityscapes(config)
  models.set_mit_segformer(config, "mit_b5")
  default.set_segformer_adamw(config)
  default.set_160k_iters(config)
  config.dataset.crop_size = (1024, 1024)
  e = config.eval
  e.mode = "slide"
  e.slide_crop = (1024, 1024)
  e.stride = (768, 768)
  if "runlocal" in variants:   # a window that fits the runlocal crop's scale
    e.slide_crop = (512, 512)
    e.stride = (384, 384)
  return default.apply_variants(config, variants)
