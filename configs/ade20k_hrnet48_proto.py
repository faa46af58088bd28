"""ADE20K, HRNetV2-W48 + ProtoSeg head.

  python main.py --config=configs/ade20k_hrnet48_proto.py --workdir=DIR

The model and ProtoSeg settings of the Cityscapes recipe (official openseg
HRNet: bilinear align_corners fusion and loss, M=10, D=720) with the paper's
ADE20K schedule (160k iterations, batch 16, crop 512x512) and openseg's ADE20K
HRNet optimiser (openseg.pytorch configs/ade20k/H_48_D_4.json: SGD lr 0.02,
momentum 0.9, weight decay 1e-4, poly 0.9; no class weights). openseg itself
trains 150k iterations on 520x520 crops of images resized to a 520 short side;
the mmseg equivalent used here rescales to (2048, 512) * U(0.5, 2.0).

Evaluation: whole image, rescaled keeping ratio to (2048, 512) (short side
512, long side at most 2048). eval_canvas (2048, 2048) holds every rescaled
image whatever its orientation (the rescaled long side is at most 2048).
eval_label_canvas (2112, 2112) assumes the original ADE20K images are at most
~2100 px on a side (not checked here against the data: the eval pipeline
stops with an error naming scan_eval_sizes if one does not fit). Most
validation images are about 512x683, so `input_pipeline.scan_eval_sizes(config)`
on the prepared split gives tighter, much cheaper canvases: set them with
`--config.dataset.eval_canvas=H,W --config.dataset.eval_label_canvas=H,W`.
The whole-image forward runs on the zero-padded canvas: for CNNs and Swin
only a band near the bottom/right border can change, but MiT's attention
(keys pooled over the whole map) also attends to the padding, so MiT results
depend on the canvas; use the tight canvases for MiT.
Variants: "runlocal".
"""

from configs import default
from configs import cityscapes_hrnet48_proto as base

VARIANTS = ("runlocal",)

# Fixed eval sizes that hold every ADE20K image (see the docstring).
ADE20K_EVAL_CANVAS = (2048, 2048)
ADE20K_EVAL_LABEL_CANVAS = (2112, 2112)


def set_ade20k_data(config):
  """ADE20K at mmseg's 512x512 recipe (150 classes from the dataset)."""
  ds = config.dataset
  ds.name = "ade20k"
  ds.train_split = "train"
  ds.eval_split = "validation"
  ds.crop_size = (512, 512)
  ds.scale = (2048, 512)
  ds.ratio_range = (0.5, 2.0)
  ds.cat_max_ratio = 0.75
  ds.flip_prob = 0.5
  ds.photometric = True
  ds.eval_scale = (2048, 512)
  ds.eval_canvas = ADE20K_EVAL_CANVAS
  ds.eval_label_canvas = ADE20K_EVAL_LABEL_CANVAS
  config.loss.class_weights = None
  return config


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = base.get_config()
  set_ade20k_data(config)
  config.num_train_steps = 160_000
  config.batch_size = 16
  config.eval_batch_size = 8
  config.eval_every_steps = 16_000
  config.checkpoint_every_steps = 4_000

  default.set_sgd_poly(config, 0.02, weight_decay=1e-4)

  if "runlocal" in variants:
    default.runlocal(config)
  return config
