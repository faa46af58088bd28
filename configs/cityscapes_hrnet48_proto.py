"""Cityscapes, HRNetV2-W48 + ProtoSeg head: the official ProtoSeg recipe.

  python main.py --config=configs/cityscapes_hrnet48_proto.py --workdir=DIR
  python main.py --config=configs/cityscapes_hrnet48_proto.py:runlocal --workdir=DIR

Source: tfzhou/ProtoSeg configs/cityscapes/H_48_D_4_proto.json and
scripts/cityscapes/hrnet/run_h_48_d_4_proto.sh (README: 80.1 mIoU val).
80k iterations, batch 8, SGD lr 0.01 momentum 0.9 wd 5e-4, poly 0.9 (to 0),
crop 1024x512 (w x h), random rescale 0.5-2.0 of 2048x1024, flip,
class-weighted CE (the official `ce_weight`), M=10, D=720, gamma 0.999,
lambda_ppc 0.01, lambda_ppd 0.001, whole-image test at 2048x1024,
bilinear align_corners=True for the branch fusion and the loss.

Differences from the official training, all from what the input pipeline offers:
  * augmentation: mmseg PhotoMetricDistortion (photometric=True) instead of
    openseg's brightness shift of +-10 (the pipeline has no brightness-only
    option); mmseg keep-ratio rescale (official: aspect jitter 0.9-1.1) and
    mmseg's cat_max_ratio 0.75 crop retries (official: none).
  * the official weights were trained with SyncBN over 4 GPUs (2 images
    each); here BN statistics are over the global batch.
Variants (comma-separated arg): "runlocal" (a few tiny steps on a laptop).
"""

from configs import default

VARIANTS = ("runlocal",)

# The 19 class weights of the official config (`loss.params.ce_weight`),
# in train-id order road .. bicycle.
CITYSCAPES_CE_WEIGHTS = (0.8373, 0.9180, 0.8660, 1.0345, 1.0166, 0.9969, 0.9754,
                         1.0489, 0.8786, 1.0023, 0.9539, 0.9843, 1.1116, 0.9037,
                         1.0865, 1.0955, 1.0865, 1.1529, 1.0507)


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = default.get_config()
  config.seed = 0
  config.num_train_steps = 80_000
  config.batch_size = 8
  config.eval_batch_size = 8
  config.log_every_steps = 50
  config.eval_every_steps = 8_000
  config.checkpoint_every_steps = 4_000

  ds = config.dataset
  ds.name = "cityscapes"
  ds.train_split = "train"
  ds.eval_split = "validation"
  ds.crop_size = (512, 1024)
  ds.scale = (2048, 1024)
  ds.ratio_range = (0.5, 2.0)
  ds.cat_max_ratio = 0.75
  ds.flip_prob = 0.5
  ds.photometric = True
  ds.eval_scale = (2048, 1024)
  ds.eval_canvas = (1024, 2048)
  ds.eval_label_canvas = (1024, 2048)

  m = config.model
  m.backbone = "hrnet_w48"
  m.backbone_kwargs.fusion = "bilinear_align_corners"   # official openseg backbone
  m.decoder = "hrnet"
  m.head = "proto"
  m.aux_head = False
  m.align_corners = True

  p = config.protoseg
  p.num_prototypes = 10
  p.embed_dim = 720                  # = 48 + 96 + 192 + 384, the decoder width
  p.gamma = 0.999
  p.sinkhorn_iters = 3
  p.sinkhorn_epsilon = 0.05
  p.lambda_ppc = 0.01
  p.lambda_ppd = 0.001
  p.warmup_iters = 0

  config.loss.class_weights = CITYSCAPES_CE_WEIGHTS

  default.set_sgd_poly(config, 0.01, weight_decay=5e-4)

  e = config.eval
  e.mode = "whole"
  e.scales = (1.0,)
  e.flip = False

  if "runlocal" in variants:
    default.runlocal(config, crop=(128, 256))
  return config
