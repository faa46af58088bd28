"""Dataset recipes: config.dataset for each dataset of the paper's runs.

Each `set_<dataset>(config)` sets the dataset name and its sizes: training
crop, the mmseg keep-ratio `scale` of the random rescale, the test scale, the
fixed eval canvases, and the global batch of the paper's runs on it (mmseg's
per-GPU samples x GPUs: Cityscapes 8, ADE20K, ADE20K-Full and COCO-Stuff 16). The
augmentation every recipe shares (random rescale 0.5-2.0, cat_max_ratio 0.75
crop retries, flip 0.5, mmseg PhotoMetricDistortion) and the splits (train /
validation) are configs/default.py's. Class counts, names and the ignore index
are not config: they come from the dataset (`data.dataset_meta(name)`).

Eval canvases: the eval pipeline pads every image (after the keep-ratio
`eval_scale` resize) to `eval_canvas` and every original-size label to
`eval_label_canvas`; an example that does not fit stops the pipeline with an
error naming `input_pipeline.scan_eval_sizes(config)`, which returns the
smallest canvases that fit a prepared split (set them with
`--config.dataset.eval_canvas=H,W --config.dataset.eval_label_canvas=H,W`).
The whole-image forward runs on the zero-padded canvas: for CNNs and Swin
only a band near the bottom/right border can change, but MiT's attention
(keys pooled over the whole map) also attends to the padding, so MiT results
depend on the canvas; use the tight canvases for MiT.
"""

# The 19 class weights of the official ProtoSeg / openseg Cityscapes config
# (`loss.params.ce_weight`), in train-id order road .. bicycle.
CITYSCAPES_CE_WEIGHTS = (0.8373, 0.9180, 0.8660, 1.0345, 1.0166, 0.9969, 0.9754,
                         1.0489, 0.8786, 1.0023, 0.9539, 0.9843, 1.1116, 0.9037,
                         1.0865, 1.0955, 1.0865, 1.1529, 1.0507)

# ADE20K: eval_canvas (2048, 2048) holds every rescaled image whatever its
# orientation (the rescaled long side is at most 2048); the label canvas
# assumes the original images are at most ~2100 px on a side. Most validation
# images are about 512x683: scan_eval_sizes gives much cheaper canvases.
ADE20K_EVAL_CANVAS = (2048, 2048)
ADE20K_EVAL_LABEL_CANVAS = (2112, 2112)
# ADE20K-Full: data/ade20k_full stores Mask2Former's sizes (a short side above
# 512 shrunk to 512, the long side in proportion), so the rescaled images fit
# (2048, 2048) as ADE20K's do; the label canvas, as ADE20K's, assumes no stored
# image is longer than 2112 px (a short side of 512 at an aspect ratio up to
# 4.125): scan_eval_sizes gives the canvases of the prepared split.
ADE20K_FULL_EVAL_CANVAS = (2048, 2048)
ADE20K_FULL_EVAL_LABEL_CANVAS = (2112, 2112)
# COCO-Stuff 164k: images are at most 640 px, so the original labels fit
# (640, 640); rescaled, a panoramic image can reach 2048 on its long side in
# either orientation, hence the guaranteed canvas (2048, 2048).
COCO_EVAL_CANVAS = (2048, 2048)
COCO_EVAL_LABEL_CANVAS = (640, 640)
# mmseg's 512x512 pipeline (ADE20K, COCO-Stuff): crop 512x512, rescale and
# test scale (2048, 512) (short side 512, long side at most 2048).
_MMSEG_512 = {"crop": (512, 512), "scale": (2048, 512)}


def _set_sizes(config, name: str, *, crop, scale, eval_canvas, eval_label_canvas):
  """config.dataset: name, crop, rescale `scale` (also the test scale), canvases."""
  ds = config.dataset
  ds.name = name
  ds.crop_size = crop
  ds.scale = scale
  ds.eval_scale = scale
  ds.eval_canvas = eval_canvas
  ds.eval_label_canvas = eval_label_canvas
  return config


def set_cityscapes(config):
  """Cityscapes fine at 2048x1024: crop 512x1024 (h, w), rescale of (2048, 1024),
  whole-image test at 2048x1024 (both canvases (1024, 2048), exact fits); batch 8."""
  _set_sizes(config, "cityscapes", crop=(512, 1024), scale=(2048, 1024),
             eval_canvas=(1024, 2048), eval_label_canvas=(1024, 2048))
  config.batch_size = 8
  return config


def set_ade20k(config):
  """ADE20K at mmseg's 512x512 recipe (`_MMSEG_512`); batch 16."""
  _set_sizes(config, "ade20k", **_MMSEG_512,
             eval_canvas=ADE20K_EVAL_CANVAS, eval_label_canvas=ADE20K_EVAL_LABEL_CANVAS)
  config.batch_size = 16
  return config


def set_ade20k_full(config):
  """ADE20K-Full (847 classes, ADE20K_2021_17_01) at the same 512x512 mmseg recipe
  (`_MMSEG_512`) as ADE20K; batch 16."""
  _set_sizes(config, "ade20k_full", **_MMSEG_512, eval_canvas=ADE20K_FULL_EVAL_CANVAS,
             eval_label_canvas=ADE20K_FULL_EVAL_LABEL_CANVAS)
  config.batch_size = 16
  return config


def set_coco_stuff164k(config):
  """COCO-Stuff 164k with the same 512x512 mmseg recipe (`_MMSEG_512`); batch 16."""
  _set_sizes(config, "coco_stuff164k", **_MMSEG_512,
             eval_canvas=COCO_EVAL_CANVAS, eval_label_canvas=COCO_EVAL_LABEL_CANVAS)
  config.batch_size = 16
  return config


def set_demo(config):
  """The procedural demo dataset (96x96 scenes, data/demo): crops of the whole
  image size, rescale ratio 0.75-1.5 of (96, 96), no photometric distortion,
  eval at the original 96x96 (both canvases (96, 96))."""
  _set_sizes(config, "demo", crop=(96, 96), scale=(96, 96),
             eval_canvas=(96, 96), eval_label_canvas=(96, 96))
  ds = config.dataset
  ds.ratio_range = (0.75, 1.5)
  ds.photometric = False
  ds.shuffle_buffer = 1000
  return config
