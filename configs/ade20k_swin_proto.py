"""ADE20K, Swin + UperNet + ProtoSeg head.

  python main.py --config=configs/ade20k_swin_proto.py --workdir=DIR          # Swin-B (default)
  python main.py --config=configs/ade20k_swin_proto.py:swin_t --workdir=DIR   # Swin-T
  python main.py --config=configs/ade20k_swin_proto.py:swin_t,runlocal --workdir=DIR

mmsegmentation's upernet_swin recipes (configs/swin):
  * swin_t: upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K
    (`swin_tiny_patch4_window7_224`, ImageNet-1k weights);
  * swin_b (default): upernet_swin_base_patch4_window12_512x512_160k_ade20k_pretrain_384x384_22K
    (`swin_base_patch4_window12_384`, ImageNet-22k weights).
Both: drop_path 0.3, UPerHead (512 channels, pool scales 1/2/3/6, dropout
0.1), auxiliary FCNHead on stage 3 (256 channels, loss weight 0.4), AdamW
lr 6e-5 betas (0.9, 0.999) wd 0.01 with no decay on norms, position tables
(and, here, biases: see optim.NO_DECAY_PATTERN; mmseg decays biases), linear
warm-up 1500 iterations from 1e-6 * lr, then poly power 1.0 to 0, 160k
iterations, batch 16, crop 512x512, align_corners False. ProtoSeg head on the
UPerHead output: D = 512. Eval as in ade20k_hrnet48_proto.py.
Variants (comma-separated): "swin_t" | "swin_b", "fsdp" (FSDP sharding), "runlocal".
"""

from configs import datasets, default, models

VARIANTS = (*models.SWIN_ARCHS, "distinct", "fsdp", "runlocal")


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = default.get_config()
  datasets.set_ade20k(config)
  models.set_swin_upernet(config, models.swin_size(variants))
  default.set_swin_adamw(config)
  default.set_160k_iters(config)
  return default.apply_variants(config, variants)
