"""ADE20K, HRNetV2-W48 + ProtoSeg head.

  python main.py --config=configs/ade20k_hrnet48_proto.py --workdir=DIR

The official HRNet model and ProtoSeg settings of the Cityscapes recipe
(openseg HRNet: bilinear align_corners fusion and loss, M=10, D=720) with the
paper's ADE20K schedule (160k iterations, batch 16, crop 512x512) and
openseg's ADE20K HRNet optimiser (openseg.pytorch configs/ade20k/H_48_D_4.json:
SGD lr 0.02, momentum 0.9, weight decay 1e-4, poly 0.9; no class weights).
openseg itself trains 150k iterations on 520x520 crops of images resized to a
520 short side; the mmseg equivalent used here rescales to (2048, 512) *
U(0.5, 2.0).

Evaluation: whole image, rescaled keeping ratio to (2048, 512) (short side
512, long side at most 2048), on the guaranteed ADE20K canvases of
configs/datasets.py (see there for `input_pipeline.scan_eval_sizes`, which
gives tighter, much cheaper ones on the prepared split).
Variants: "fsdp" (FSDP sharding), "runlocal".
"""

from configs import datasets, default, models

VARIANTS = ("distinct", "fsdp", "runlocal")


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = default.get_config()
  datasets.set_ade20k(config)
  models.set_hrnet48_official(config)
  default.set_sgd_poly(config, 0.02, weight_decay=1e-4)
  default.set_160k_iters(config)
  return default.apply_variants(config, variants)
