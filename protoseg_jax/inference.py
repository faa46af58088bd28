"""Inference for evaluation: whole / sliding-window / multi-scale + flip, at the
original label resolution.

The eval input pipeline yields fixed-shape batches (global arrays, batch axis
sharded over the mesh axis 'data'):

  image     float32 [B, Hc, Wc, 3]  resized (keep ratio) to the test scale,
                                    zero-padded bottom/right to a fixed canvas
  image_hw  int32   [B, 2]          valid (h, w) of the image in the canvas
  label     int32   [B, Hl, Wl]     ORIGINAL-resolution label, padded
                                    bottom/right with ignore_index
  label_hw  int32   [B, 2]          original (h, w)
  mask      bool    [B]             False for padding rows

Everything below is jit-able with static shapes: the per-example valid sizes
are data, and the crop + resize back to the original resolution is done with
per-example interpolation matrices built on device (`resize_valid`).

Semantics follow mmsegmentation (0.x `EncoderDecoder.inference/aug_test`,
1.x `SegTTAModel`):
  * the model's logits (e.g. 1/4 resolution) are bilinearly resized to the
    input size, the padding is cropped off and the result is bilinearly
    resized (align_corners=False) to the original image size;
  * with several scales and/or flip, each augmented pass is turned into
    softmax probabilities AT THE ORIGINAL RESOLUTION (after the resize, flip
    undone there) and the probabilities are averaged; the prediction is the
    argmax. A single pass without flip is argmax'ed on the logits directly
    (softmax does not change the argmax).
  * options for openseg.pytorch's (official ProtoSeg) evaluation:
    `resize` ("bilinear" above | "bilinear_align_corners": the tester's
    align-corners upsampling to the input, then OpenCV bicubic to the
    original size | "bicubic": the validation during training, logits at
    feature resolution straight to the original size with OpenCV's
    INTER_CUBIC, a = -0.75) and `merge` ("mean_softmax" above |
    "sum_logits": openseg's ms_test sums the raw logits of all passes).
  * `make_predict_step` turns a batch into its confusion matrix
    (`protoseg_jax.metrics`), which `protoseg_jax.evaluate.Evaluator` sums.

Known differences from mmsegmentation, all from the fixed canvas:
  * whole: the network sees the zero-padded canvas, mmseg sees the image
    alone (0.x) or padded only to a size divisor (1.x). Padding is at the
    bottom/right, so only a band near those borders can differ.
  * slide: the window grid tiles the CANVAS (`Hc, Wc`), not the valid image.
    When the valid image is smaller than the canvas, windows that lie only on
    padding are computed and thrown away, the last window of a row/column is
    aligned to the canvas edge instead of the image edge, and windows that
    straddle the image border see zero padding where mmseg would have shifted
    the window back inside the image. Predictions near the bottom/right border
    of such images can therefore differ. When the image fills the canvas
    (e.g. Cityscapes 1024x2048 with a 1024x2048 canvas), the windows and the
    result are exactly mmseg's.
  * multi-scale: each scale resizes the test-scale CANVAS by the ratio
    (size int(Hc * r + 0.5), int(Wc * r + 0.5)), whereas mmseg resizes the
    original image to ratio * test scale. The valid region of scale r is then
    the continuous extent image_hw * (Hr / Hc, Wr / Wc), which is resized
    straight to the original size (one resize, like mmseg; no detour through
    the test-scale canvas).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from protoseg_jax.metrics import confusion_matrix
from protoseg_jax.ops import CUBIC_A, resize_bilinear

LogitsFn = Callable[[jnp.ndarray], jnp.ndarray]

_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------
# Per-example (dynamic-size) resize and flip.
# --------------------------------------------------------------------------


def _dynamic_interp_matrix(in_valid: jnp.ndarray, out_valid: jnp.ndarray,
                           in_size: int, out_size: int) -> jnp.ndarray:
  """[B, out_size, in_size] bilinear weights, align_corners=False, per example.

  Output row i < out_valid[b] samples the input extent [0, in_valid[b]) like
  PyTorch: src = (i + 0.5) * in_valid / out_valid - 0.5, clamped to >= 0,
  neighbours clamped to the last valid input pixel ceil(in_valid) - 1. Rows
  i >= out_valid[b] are zero. `in_valid` may be fractional (the valid extent
  of a rescaled canvas); for an integer it is exactly `F.interpolate`.
  """
  in_valid = in_valid.astype(jnp.float32)[:, None]            # [B, 1]
  out_valid = out_valid.astype(jnp.int32)[:, None]            # [B, 1]
  dst = jnp.arange(out_size, dtype=jnp.float32)[None, :]      # [1, O]
  scale = in_valid / jnp.maximum(out_valid, 1).astype(jnp.float32)
  src = jnp.maximum((dst + 0.5) * scale - 0.5, 0.0)
  # ceil with a little slack so that float error on an integral extent does
  # not admit one more (padding) pixel.
  last = jnp.clip(jnp.ceil(in_valid - 1e-3).astype(jnp.int32) - 1, 0, in_size - 1)
  lo_f = jnp.floor(src)
  frac = src - lo_f
  lo = jnp.minimum(lo_f.astype(jnp.int32), last)
  hi = jnp.minimum(lo + 1, last)
  cols = jnp.arange(in_size, dtype=jnp.int32)
  w = ((lo[..., None] == cols) * (1.0 - frac)[..., None]
       + (hi[..., None] == cols) * frac[..., None])
  rows_ok = jnp.arange(out_size)[None, :] < out_valid
  return jnp.where(rows_ok[..., None], w, 0.0).astype(jnp.float32)




def _dynamic_cubic_matrix(in_valid: jnp.ndarray, out_valid: jnp.ndarray,
                          in_size: int, out_size: int, a: float = CUBIC_A) -> jnp.ndarray:
  """[B, out_size, in_size] bicubic weights (Keys, a = -0.75), half-pixel centres, per example.

  Output row i < out_valid[b] samples src = (i + 0.5) * in_valid / out_valid - 0.5
  (not clamped) with taps floor(src) - 1 .. floor(src) + 2 clamped to
  [0, ceil(in_valid) - 1]: `F.interpolate(mode="bicubic", align_corners=False)`
  and OpenCV's INTER_CUBIC for an integer in_valid. Rows i >= out_valid[b] are zero.
  """
  in_valid = in_valid.astype(jnp.float32)[:, None]
  out_valid = out_valid.astype(jnp.int32)[:, None]
  dst = jnp.arange(out_size, dtype=jnp.float32)[None, :]
  src = (dst + 0.5) * (in_valid / jnp.maximum(out_valid, 1).astype(jnp.float32)) - 0.5
  last = jnp.clip(jnp.ceil(in_valid - 1e-3).astype(jnp.int32) - 1, 0, in_size - 1)
  lo_f = jnp.floor(src)
  t = src - lo_f
  lo = lo_f.astype(jnp.int32)

  def near(x):
    return ((a + 2.) * x - (a + 3.)) * x * x + 1.

  def far(x):
    return ((a * x - 5. * a) * x + 8. * a) * x - 4. * a

  cols = jnp.arange(in_size, dtype=jnp.int32)
  w = 0.
  for k, wk in zip(range(-1, 3), (far(t + 1.), near(t), near(1. - t), far(2. - t))):
    idx = jnp.clip(lo + k, 0, last)
    w = w + (idx[..., None] == cols) * wk[..., None]
  rows_ok = jnp.arange(out_size)[None, :] < out_valid
  return jnp.where(rows_ok[..., None], w, 0.0).astype(jnp.float32)


MODES = ("whole", "slide")
RESIZES = ("bilinear", "bilinear_align_corners", "bicubic")
MERGES = ("mean_softmax", "sum_logits")


def resize_valid(x: jnp.ndarray, in_hw: jnp.ndarray, out_hw: jnp.ndarray,
                 out_size: tuple[int, int], method: str = "bilinear") -> jnp.ndarray:
  """Crop each example's valid region and resize it, with static shapes.

  Args:
    x: [B, H, W, C] canvases whose top-left `in_hw[b]` is valid.
    in_hw: [B, 2] valid (h, w) in `x`, int or float (a fractional extent is
      allowed, see `_dynamic_interp_matrix`).
    out_hw: int [B, 2] target (h, w), each <= out_size.
    out_size: static (Ho, Wo) of the output canvas.
    method: "bilinear" or "bicubic" (a = -0.75), both align_corners=False.

  Returns:
    float32 [B, Ho, Wo, C]: `out[b, :oh, :ow]` equals
    `resize_bilinear(x[b:b+1, :ih, :iw], (oh, ow), align_corners=False)` for
    integer in_hw (bicubic: `F.interpolate(mode="bicubic", align_corners=False)`);
    zero outside (oh, ow).
  """
  if method not in ("bilinear", "bicubic"):
    raise ValueError(f"method must be 'bilinear' or 'bicubic', got {method!r}")
  matrix = _dynamic_interp_matrix if method == "bilinear" else _dynamic_cubic_matrix
  ho, wo = int(out_size[0]), int(out_size[1])
  b, h, w, _ = x.shape
  if in_hw.shape != (b, 2) or out_hw.shape != (b, 2):
    raise ValueError(f"in_hw and out_hw must be [{b}, 2], got {in_hw.shape} and {out_hw.shape}")
  mh = matrix(in_hw[:, 0], out_hw[:, 0], h, ho)
  mw = matrix(in_hw[:, 1], out_hw[:, 1], w, wo)
  x = x.astype(jnp.float32)
  x = jnp.einsum("boh,bhwc->bowc", mh, x, precision=_HIGHEST)
  return jnp.einsum("bpw,bowc->bopc", mw, x, precision=_HIGHEST)


def flip_valid(x: jnp.ndarray, valid_w: jnp.ndarray) -> jnp.ndarray:
  """Horizontally flip the valid columns [0, valid_w[b]) of each `x [B, H, W, ...]`.

  Columns at or beyond valid_w (padding) stay where they are, so a flipped
  canvas is still padded at the right like the original.
  """
  w = x.shape[2]
  cols = jnp.arange(w, dtype=jnp.int32)[None, :]
  vw = valid_w.astype(jnp.int32)[:, None]
  idx = jnp.where(cols < vw, vw - 1 - cols, cols)             # [B, W]
  return jax.vmap(lambda xb, ib: jnp.take(xb, ib, axis=1))(x, idx)


# --------------------------------------------------------------------------
# Canvas inference: whole and sliding window.
# --------------------------------------------------------------------------


def whole_inference(logits_fn: LogitsFn, images: jnp.ndarray, *,
                    align_corners: bool = False) -> jnp.ndarray:
  """Logits of `images [B, H, W, 3]` resized to the input: float32 [B, H, W, C].

  `logits_fn(images) -> [B, h', w', C]` is the model at feature resolution;
  `align_corners` is that model's upsampling convention (mmseg decoders:
  False).
  """
  logits = logits_fn(images)
  return resize_bilinear(logits.astype(jnp.float32), images.shape[1:3],
                         align_corners=align_corners)


def slide_windows(height: int, width: int, slide_crop: tuple[int, int],
                  stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
  """mmseg's sliding windows over a static (height, width): [(y1, y2, x1, x2)].

  Grid counts max(H - crop + stride - 1, 0) // stride + 1 per axis; each
  window is clipped to the image and then moved back to keep its full size
  (y1 = max(y2 - crop, 0)), so every window has size
  (min(crop_h, H), min(crop_w, W)).
  """
  ch, cw = int(slide_crop[0]), int(slide_crop[1])
  sh, sw = int(stride[0]), int(stride[1])
  if min(ch, cw, sh, sw) <= 0:
    raise ValueError(f"slide_crop {slide_crop} and stride {stride} must be positive")
  h_grids = max(height - ch + sh - 1, 0) // sh + 1
  w_grids = max(width - cw + sw - 1, 0) // sw + 1
  out = []
  for i in range(h_grids):
    for j in range(w_grids):
      y2 = min(i * sh + ch, height)
      x2 = min(j * sw + cw, width)
      out.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
  return out


def slide_inference(logits_fn: LogitsFn, images: jnp.ndarray, *,
                    slide_crop: tuple[int, int], stride: tuple[int, int],
                    align_corners: bool = False) -> jnp.ndarray:
  """mmseg slide inference over the whole canvas: float32 [B, H, W, C].

  Each window's logits are resized to the window size and summed into the
  canvas; the sum is divided by the per-pixel window count. The window list is
  static; the windows are run one after another in a `lax.fori_loop` (one
  trace of `logits_fn`, memory of one window). See the module docstring for
  how tiling the padded canvas differs from mmseg.
  """
  b, h, w, _ = images.shape
  wins = slide_windows(h, w, slide_crop, stride)
  wh, ww = wins[0][1] - wins[0][0], wins[0][3] - wins[0][2]
  count = np.zeros((h, w), np.float32)
  for y1, y2, x1, x2 in wins:
    count[y1:y2, x1:x2] += 1
  assert count.min() > 0, "sliding windows must cover the canvas"
  if len(wins) == 1:
    return whole_inference(logits_fn, images, align_corners=align_corners)
  starts = jnp.asarray(np.array([(y1, x1) for y1, _, x1, _ in wins], np.int32))
  c = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((b, wh, ww, images.shape[3]),
                                                     images.dtype)).shape[-1]

  def body(i, acc):
    y1, x1 = starts[i, 0], starts[i, 1]
    crop = jax.lax.dynamic_slice(images, (0, y1, x1, 0), (b, wh, ww, images.shape[3]))
    out = whole_inference(logits_fn, crop, align_corners=align_corners)
    cur = jax.lax.dynamic_slice(acc, (0, y1, x1, 0), (b, wh, ww, c))
    return jax.lax.dynamic_update_slice(acc, cur + out, (0, y1, x1, 0))

  # Derive the accumulator from `images` so that it carries the batch sharding
  # (a fresh jnp.zeros would be replicated, which Explicit meshes reject).
  zeros = jnp.broadcast_to(jnp.zeros_like(images[..., :1], jnp.float32), (b, h, w, c))
  acc = jax.lax.fori_loop(0, len(wins), body, zeros)
  return acc / jnp.asarray(count)[None, :, :, None]


def _scaled_size(size: tuple[int, int], ratio: float) -> tuple[int, int]:
  return int(size[0] * ratio + 0.5), int(size[1] * ratio + 0.5)


# --------------------------------------------------------------------------
# Prediction at the original resolution.
# --------------------------------------------------------------------------


def check_mode(mode, slide_crop, stride, scales, resize="bilinear", merge="mean_softmax"):
  if resize not in RESIZES:
    raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
  if merge not in MERGES:
    raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
  if resize == "bicubic" and mode != "whole":
    raise ValueError("resize='bicubic' (logits straight to the label size) needs mode='whole'")
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if mode == "slide" and (slide_crop is None or stride is None):
    raise ValueError(f"mode='slide' needs slide_crop and stride, got {slide_crop} and {stride}")
  if not scales or any(float(s) <= 0 for s in scales):
    raise ValueError(f"scales must be a non-empty list of positive ratios, got {scales}")


def predict_scores(logits_fn: LogitsFn, batch: Mapping[str, jnp.ndarray], *,
                   mode: str = "whole", slide_crop: Optional[Sequence[int]] = None,
                   stride: Optional[Sequence[int]] = None, scales: Sequence[float] = (1.0,),
                   flip: bool = False, num_classes: Optional[int] = None,
                   align_corners: bool = False, resize: str = "bilinear",
                   merge: str = "mean_softmax") -> jnp.ndarray:
  """Class scores at the original resolution: float32 [B, Hl, Wl, C].

  With one scale and no flip the scores are the logits (resized to
  label_hw); otherwise the mean over passes of the softmax probabilities,
  each computed after the resize to label_hw and, for a flipped pass, after
  flipping back (mmseg aug test). Outside label_hw the scores are 0.

  Args:
    logits_fn: images [b, h, w, 3] -> logits [b, h', w', C] (feature res).
    batch: dict with 'image', 'image_hw', 'label' (only its shape is used)
      and 'label_hw', see the module docstring.
    mode: 'whole' or 'slide' (needs slide_crop=(h, w), the window size, and
      stride=(h, w)).
    scales: ratios of the test scale (the canvas); e.g. (0.5, 0.75, ..., 1.75).
    flip: also run horizontally flipped inputs.
    num_classes: if given, checked against the logits' last dimension.
    align_corners: the model's feature -> input upsampling convention.
    resize: how logits reach the label size.
      "bilinear" (mmseg): bilinear (align_corners as above) to the input,
        crop, bilinear align_corners=False to label_hw.
      "bilinear_align_corners" (openseg tester `ss_test`): bilinear
        align_corners=True to the input whatever `align_corners` says, crop,
        bicubic (OpenCV INTER_CUBIC, a = -0.75) to label_hw (the identity
        when the valid input size is label_hw).
      "bicubic" (openseg validation during training, `update_score`): the
        feature-resolution logits' valid region straight to label_hw with
        bicubic a = -0.75, half-pixel centres (OpenCV INTER_CUBIC,
        `F.interpolate(mode="bicubic", align_corners=False)`); mode='whole'.
    merge: several passes (scales x flips): "mean_softmax" (mmseg: mean of
      the softmax probabilities) or "sum_logits" (openseg ms_test: the sum of
      the raw logits). One pass: the logits either way.
  """
  check_mode(mode, slide_crop, stride, scales, resize, merge)
  images = batch["image"]
  if images.ndim != 4:
    raise ValueError(f"batch['image'] must be [B, H, W, 3], got shape {images.shape}")
  if batch["label"].ndim != 3:
    raise ValueError(f"batch['label'] must be [B, Hl, Wl], got shape {batch['label'].shape}")
  image_hw = batch["image_hw"].astype(jnp.int32)
  label_hw = batch["label_hw"].astype(jnp.int32)
  label_size = tuple(batch["label"].shape[1:3])
  canvas = tuple(images.shape[1:3])
  if num_classes is not None:
    c = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(images.shape, images.dtype)).shape[-1]
    if c != num_classes:
      raise ValueError(f"logits_fn returns {c} classes, expected num_classes={num_classes}")

  up_align = True if resize == "bilinear_align_corners" else align_corners
  label_method = "bilinear" if resize == "bilinear" else "bicubic"

  def infer(x):
    if resize == "bicubic":
      return logits_fn(x).astype(jnp.float32)                 # feature resolution
    if mode == "slide":
      return slide_inference(logits_fn, x, slide_crop=tuple(slide_crop), stride=tuple(stride),
                             align_corners=up_align)
    return whole_inference(logits_fn, x, align_corners=up_align)

  passes = [(float(s), f) for s in scales for f in ((False, True) if flip else (False,))]
  total = None
  for ratio, flipped in passes:
    x = flip_valid(images, image_hw[:, 1]) if flipped else images
    size = _scaled_size(canvas, ratio)
    x = resize_bilinear(x, size, align_corners=False)
    logits = infer(x)                                          # [B, Hs, Ws, C] (bicubic: h', w')
    # Multiply first: exact when the scaled extent is an integer. The logits
    # cover the whole scaled canvas `size` (bicubic: at feature resolution).
    out_hw = logits.shape[1:3]
    valid = (image_hw.astype(jnp.float32) * jnp.asarray(out_hw, jnp.float32)
             / jnp.asarray(canvas, jnp.float32))
    scores = resize_valid(logits, valid, label_hw, label_size, method=label_method)
    if len(passes) > 1 and merge == "mean_softmax":
      scores = jax.nn.softmax(scores, axis=-1)
    if flipped:
      scores = flip_valid(scores, label_hw[:, 1])
    total = scores if total is None else total + scores
  if len(passes) > 1:
    if merge == "mean_softmax":
      total = total / len(passes)
    inside = ((jnp.arange(label_size[0])[None, :, None] < label_hw[:, 0, None, None])
              & (jnp.arange(label_size[1])[None, None, :] < label_hw[:, 1, None, None]))
    total = jnp.where(inside[..., None], total, 0.0)
  return total


def predict(logits_fn: LogitsFn, batch: Mapping[str, jnp.ndarray], *,
            mode: str = "whole", slide_crop: Optional[Sequence[int]] = None,
            stride: Optional[Sequence[int]] = None, scales: Sequence[float] = (1.0,),
            flip: bool = False, num_classes: Optional[int] = None,
            align_corners: bool = False, resize: str = "bilinear",
            merge: str = "mean_softmax") -> jnp.ndarray:
  """Predicted class ids at the original resolution: int32 [B, Hl, Wl].

  argmax of `predict_scores` (same arguments). Pixels outside label_hw are 0;
  the label is ignore_index there, so they never count.
  """
  scores = predict_scores(logits_fn, batch, mode=mode, slide_crop=slide_crop, stride=stride,
                          scales=scales, flip=flip, num_classes=num_classes,
                          align_corners=align_corners, resize=resize, merge=merge)
  return jnp.argmax(scores, axis=-1).astype(jnp.int32)


def make_predict_step(logits_fn_from_variables: Callable[[Any, jnp.ndarray], jnp.ndarray], *,
                      num_classes: int, ignore_index: int = 255, mode: str = "whole",
                      slide_crop: Optional[Sequence[int]] = None,
                      stride: Optional[Sequence[int]] = None,
                      scales: Sequence[float] = (1.0,), flip: bool = False,
                      align_corners: bool = False, resize: str = "bilinear",
                      merge: str = "mean_softmax",
                      class_ids: Optional[Sequence[int]] = None
                      ) -> Callable[[Any, Mapping[str, jnp.ndarray]], jnp.ndarray]:
  """`(variables, batch) -> int32 [C, C]` confusion matrix of one eval batch.

  `logits_fn_from_variables(variables, images [b, h, w, 3]) -> [b, h', w', C]`
  (e.g. `lambda v, x: model.apply(v, x, train=False)`). The returned function
  is not jitted: jit it with the batch sharded over 'data' and a replicated
  output (`out_shardings=NamedSharding(mesh, P())`) so that `Evaluator` can
  read the matrix on every host.

  class_ids: the dataset class id of each model output when they are not
  0 .. C-1 (`held_out.model_class_ids`: a model trained without a class, or
  with it appended by `heads.add_class`). The model then has len(class_ids)
  outputs; each prediction is mapped to its dataset id and scored against
  the labels with all `num_classes` dataset classes (a class no output maps
  to is never predicted).
  """
  check_mode(mode, slide_crop, stride, scales, resize, merge)
  ids, num_outputs = None, num_classes
  if class_ids is not None:
    ids = np.asarray(class_ids, np.int32)
    if (ids.ndim != 1 or len(np.unique(ids)) != len(ids) or (ids < 0).any()
        or (ids >= num_classes).any()):
      raise ValueError(f"class_ids must be distinct ids in [0, {num_classes}), got {class_ids}")
    num_outputs = len(ids)

  def predict_step(variables, batch):
    pred = predict(lambda x: logits_fn_from_variables(variables, x), batch, mode=mode,
                   slide_crop=slide_crop, stride=stride, scales=scales, flip=flip,
                   num_classes=num_outputs, align_corners=align_corners, resize=resize,
                   merge=merge)
    if ids is not None:
      pred = jnp.asarray(ids)[pred]
    return confusion_matrix(pred, batch["label"], num_classes, ignore_index=ignore_index,
                            mask=batch["mask"])

  return predict_step
