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
  * the options (mode, windows, scales, flip, resize, merge, class chunk,
    align_corners) travel as one frozen `InferenceOptions`, built from a
    config by `inference_options` and validated once.
  * large vocabularies (`InferenceOptions.class_chunk`, config.eval.class_chunk):
    the scores [B, Hl, Wl, C] are never whole. The model runs once per pass
    (per window) and only its feature-resolution logits are kept; the same
    upsampling then runs on chunks of classes (every resize and stitch is per
    class) with a running argmax; mean_softmax first streams each pass's
    log-sum-exp over the chunks (so the upsampling runs twice). Automatic
    (0): unchunked up to 4 GiB of scores (`resolve_class_chunk`).

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

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from protoseg_jax.chunking import auto_chunk_size
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


def _slide_plan(height: int, width: int, slide_crop: tuple[int, int],
                stride: tuple[int, int]):
  """(windows, (window h, w), per-pixel window count [H, W], window starts int32 [n, 2])."""
  wins = slide_windows(height, width, slide_crop, stride)
  wh, ww = wins[0][1] - wins[0][0], wins[0][3] - wins[0][2]
  count = np.zeros((height, width), np.float32)
  for y1, y2, x1, x2 in wins:
    count[y1:y2, x1:x2] += 1
  assert count.min() > 0, "sliding windows must cover the canvas"
  starts = np.array([(y1, x1) for y1, _, x1, _ in wins], np.int32)
  return wins, (wh, ww), count, starts


def _stitch_windows(window_logits: Callable, zeros: jnp.ndarray, plan, *,
                    align_corners: bool) -> jnp.ndarray:
  """Sum of the windows' logits resized to the window, over the count: [B, H, W, c].

  `window_logits(i, y1, x1) -> [B, h', w', c]` gives window i (a traced index,
  its top-left corner y1, x1); `zeros [B, H, W, c]` is the accumulator. Every
  step is per class, so it stitches any slice of the class axis.
  """
  wins, (wh, ww), count, starts = plan
  b, _, _, c = zeros.shape
  starts = jnp.asarray(starts)

  def body(i, acc):
    y1, x1 = starts[i, 0], starts[i, 1]
    logits = window_logits(i, y1, x1)
    out = resize_bilinear(logits.astype(jnp.float32), (wh, ww), align_corners=align_corners)
    cur = jax.lax.dynamic_slice(acc, (0, y1, x1, 0), (b, wh, ww, c))
    return jax.lax.dynamic_update_slice(acc, cur + out, (0, y1, x1, 0))

  acc = jax.lax.fori_loop(0, len(wins), body, zeros)
  return acc / jnp.asarray(count)[None, :, :, None]


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
  plan = _slide_plan(h, w, slide_crop, stride)
  wins, (wh, ww) = plan[0], plan[1]
  if len(wins) == 1:
    return whole_inference(logits_fn, images, align_corners=align_corners)
  c = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((b, wh, ww, images.shape[3]),
                                                     images.dtype)).shape[-1]

  def window_logits(i, y1, x1):
    del i
    return logits_fn(jax.lax.dynamic_slice(images, (0, y1, x1, 0),
                                           (b, wh, ww, images.shape[3])))

  # Derive the accumulator from `images` so that it carries the batch sharding
  # (a fresh jnp.zeros would be replicated, which Explicit meshes reject).
  zeros = jnp.broadcast_to(jnp.zeros_like(images[..., :1], jnp.float32), (b, h, w, c))
  return _stitch_windows(window_logits, zeros, plan, align_corners=align_corners)


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


def _int_pair(value) -> Optional[tuple[int, int]]:
  return None if value is None else (int(value[0]), int(value[1]))


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
  """How evaluation and predict turn a model into labels at the original
  resolution: config.eval's inference keys and the model's align_corners,
  as one value that every consumer takes whole instead of ~9 keywords.

  Frozen and validated once, when built (`check_mode`; class_chunk). No
  defaults here: configs/default.py is the one place for them and
  `inference_options(config)` the one way from a config (tests vary a
  field with `dataclasses.replace`, which validates again).

  mode: 'whole' | 'slide' (slide_crop (h, w) windows, stride (h, w)).
  scales: ratios of the test scale (the canvas); flip: also flipped passes.
  resize, merge: see `predict_scores`.
  class_chunk: classes per chunk of the label-resolution scores in `predict`:
    None (never chunk), 0 (automatic, `resolve_class_chunk`) or k > 0.
  align_corners: the model's feature -> input upsampling convention.
  """
  mode: str
  slide_crop: Optional[tuple[int, int]]
  stride: Optional[tuple[int, int]]
  scales: tuple[float, ...]
  flip: bool
  resize: str
  merge: str
  class_chunk: Optional[int]
  align_corners: bool

  def __post_init__(self):
    # Canonical types, so that equal options hash alike (jit caches, dict keys).
    set_field = functools.partial(object.__setattr__, self)
    set_field("slide_crop", _int_pair(self.slide_crop))
    set_field("stride", _int_pair(self.stride))
    set_field("scales", tuple(float(s) for s in self.scales))
    set_field("flip", bool(self.flip))
    set_field("align_corners", bool(self.align_corners))
    check_mode(self.mode, self.slide_crop, self.stride, self.scales, self.resize, self.merge)
    chunk = self.class_chunk
    if chunk is not None and not (isinstance(chunk, (int, np.integer))
                                  and not isinstance(chunk, bool) and chunk >= 0):
      raise ValueError(f"class_chunk must be None or an integer >= 0, got {chunk!r}")
    set_field("class_chunk", None if chunk is None else int(chunk))


def inference_options(config) -> InferenceOptions:
  """The `InferenceOptions` of a config: config.eval (mode, slide_crop, stride,
  scales, flip, resize, merge, class_chunk) and config.model.align_corners."""
  e = config.eval
  return InferenceOptions(mode=e.mode, slide_crop=e.slide_crop, stride=e.stride,
                          scales=tuple(e.scales), flip=e.flip, resize=e.resize, merge=e.merge,
                          class_chunk=e.class_chunk, align_corners=config.model.align_corners)


def predict_scores(logits_fn: LogitsFn, batch: Mapping[str, jnp.ndarray],
                   options: InferenceOptions, *,
                   num_classes: Optional[int] = None) -> jnp.ndarray:
  """Class scores at the original resolution: float32 [B, Hl, Wl, C].

  With one scale and no flip the scores are the logits (resized to
  label_hw); otherwise the mean over passes of the softmax probabilities,
  each computed after the resize to label_hw and, for a flipped pass, after
  flipping back (mmseg aug test). Outside label_hw the scores are 0. All C
  classes at once: for the labels alone of a large vocabulary,
  `predict` (options.class_chunk) builds them in chunks.

  Args:
    logits_fn: images [b, h, w, 3] -> logits [b, h', w', C] (feature res).
    batch: dict with 'image', 'image_hw', 'label' (only its shape is used)
      and 'label_hw', see the module docstring.
    options: `InferenceOptions` (its class_chunk is not used here):
    mode: 'whole' or 'slide' (needs slide_crop=(h, w), the window size, and
      stride=(h, w)).
    scales: ratios of the test scale (the canvas); e.g. (0.5, 0.75, ..., 1.75).
    flip: also run horizontally flipped inputs.
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
    num_classes: if given, checked against the logits' last dimension.
  """
  ctx = _context(logits_fn, batch, options, num_classes)

  def infer(x):
    if options.resize == "bicubic":
      return logits_fn(x).astype(jnp.float32)                 # feature resolution
    if options.mode == "slide":
      return slide_inference(logits_fn, x, slide_crop=options.slide_crop,
                             stride=options.stride, align_corners=ctx.up_align)
    return whole_inference(logits_fn, x, align_corners=ctx.up_align)

  def pass_scores(p):
    ratio, flipped = ctx.passes[p]
    return _to_label(ctx, infer(_pass_input(ctx, ratio, flipped)))   # [B, Hl, Wl, C]

  return _merge_passes(ctx, pass_scores, lambda p, s: jax.nn.softmax(s, axis=-1))


def _merge_passes(ctx: "_Context", pass_scores, probabilities) -> jnp.ndarray:
  """The passes' label-resolution scores merged (`predict_scores`; for a
  slice of the classes in `_predict_chunked`): pass_scores(p) -> [B, Hl, Wl,
  k] of pass p; probabilities(p, scores) -> its softmax, called for
  mean_softmax over several passes. Flipped passes are flipped back; over
  several passes the mean (mean_softmax) or sum (sum_logits), 0 outside
  label_hw."""
  passes = ctx.passes
  multi = len(passes) > 1
  mean_softmax = multi and ctx.options.merge == "mean_softmax"
  total = None
  for p, (_, flipped) in enumerate(passes):
    scores = pass_scores(p)
    if mean_softmax:
      scores = probabilities(p, scores)
    if flipped:
      scores = flip_valid(scores, ctx.label_hw[:, 1])
    total = scores if total is None else total + scores
  if multi:
    if mean_softmax:
      total = total / len(passes)
    total = jnp.where(_inside(ctx)[..., None], total, 0.0)
  return total


class _Context(NamedTuple):
  """The static plan and the per-example sizes of one batch's prediction."""
  options: InferenceOptions
  images: jnp.ndarray
  image_hw: jnp.ndarray
  label_hw: jnp.ndarray
  label_size: tuple[int, int]
  canvas: tuple[int, int]
  passes: list                     # [(scale ratio, flipped)]
  up_align: bool                   # feature -> input upsampling convention
  label_method: str                # "bilinear" | "bicubic" (input -> label size)


def _context(logits_fn, batch, options: InferenceOptions, num_classes) -> _Context:
  _check_batch(batch)
  images = batch["image"]
  image_hw = batch["image_hw"].astype(jnp.int32)
  label_hw = batch["label_hw"].astype(jnp.int32)
  label_size = tuple(batch["label"].shape[1:3])
  canvas = tuple(images.shape[1:3])
  if num_classes is not None:
    c = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(images.shape, images.dtype)).shape[-1]
    _check_classes(c, num_classes)
  passes = [(s, f) for s in options.scales
            for f in ((False, True) if options.flip else (False,))]
  resize = options.resize
  return _Context(options, images, image_hw, label_hw, label_size, canvas, passes,
                  True if resize == "bilinear_align_corners" else options.align_corners,
                  "bilinear" if resize == "bilinear" else "bicubic")


def _check_batch(batch):
  if batch["image"].ndim != 4:
    raise ValueError(f"batch['image'] must be [B, H, W, 3], got shape {batch['image'].shape}")
  if batch["label"].ndim != 3:
    raise ValueError(f"batch['label'] must be [B, Hl, Wl], got shape {batch['label'].shape}")


def _check_classes(c: int, num_classes: int):
  if c != num_classes:
    raise ValueError(f"logits_fn returns {c} classes, expected num_classes={num_classes}")


def _pass_input(ctx: _Context, ratio: float, flipped: bool) -> jnp.ndarray:
  """The images of one pass: flipped (valid columns), resized by `ratio`."""
  x = flip_valid(ctx.images, ctx.image_hw[:, 1]) if flipped else ctx.images
  return resize_bilinear(x, _scaled_size(ctx.canvas, ratio), align_corners=False)


def _to_label(ctx: _Context, logits: jnp.ndarray) -> jnp.ndarray:
  """One pass's logits over its whole canvas (bicubic: at feature resolution)
  -> the valid region resized to label_hw: float32 [B, Hl, Wl, c], 0 outside."""
  # Multiply first: exact when the scaled extent is an integer.
  out_hw = logits.shape[1:3]
  valid = (ctx.image_hw.astype(jnp.float32) * jnp.asarray(out_hw, jnp.float32)
           / jnp.asarray(ctx.canvas, jnp.float32))
  return resize_valid(logits, valid, ctx.label_hw, ctx.label_size, method=ctx.label_method)


def _inside(ctx: _Context) -> jnp.ndarray:
  """bool [B, Hl, Wl]: the pixel lies inside label_hw."""
  label_size, label_hw = ctx.label_size, ctx.label_hw
  return ((jnp.arange(label_size[0])[None, :, None] < label_hw[:, 0, None, None])
          & (jnp.arange(label_size[1])[None, None, :] < label_hw[:, 1, None, None]))


# --------------------------------------------------------------------------
# Predictions for a large vocabulary: chunks of classes.
# --------------------------------------------------------------------------

# class_chunk=0: `chunking.auto_chunk_size` of the label-resolution scores
# B * Hl * Wl * C float32 of one batch (global shapes). Today's program peaks at
# about 3x its scores (XLA's temp memory, CPU: 1.27 GiB for 444 MB of scores),
# so up to ~12 GiB (over all devices) at the 4 GiB budget; a chunk of 256 MiB
# about 0.6 GiB. Within the budget the program is exactly the unchunked one
# (e.g. Cityscapes, 8 x 1024 x 2048 x 19: 1.19 GiB; COCO-Stuff, 8 x 640 x 640 x
# 171: 2.09 GiB); above it (ADE20K's 2112 x 2112 label canvas, ADE20K-Full's
# 847 classes) chunks: on CPU no slower for one pass or sum_logits, ~1.5x for
# mean_softmax over passes (it upsamples twice).


def resolve_class_chunk(class_chunk: Optional[int], batch: int, label_size: Sequence[int],
                        num_classes: int) -> Optional[int]:
  """Classes per chunk of `predict`, or None for the unchunked program.

  class_chunk None, or >= num_classes: None. 0 (automatic):
  `chunking.auto_chunk_size` of the label-resolution scores, a class being
  batch * Hl * Wl * 4 bytes of them: None while they stay within 4 GiB
  (`batch` is the global batch, so under data parallelism the rule is
  conservative); above, balanced chunks of about 256 MiB (at least one
  class). k > 0: k.
  """
  if class_chunk is None:
    return None
  k = int(class_chunk)
  if k < 0:
    raise ValueError(f"class_chunk must be None or an integer >= 0, got {class_chunk!r}")
  if k == 0:
    k = auto_chunk_size(num_classes, 4 * int(batch) * int(label_size[0]) * int(label_size[1]))
  return None if k >= num_classes else k


def _num_outputs(logits_fn: LogitsFn, images: jnp.ndarray, options: InferenceOptions) -> int:
  """C of `logits_fn` (abstractly, on the canvas or, for slide, one window)."""
  shape, slide_crop = images.shape, options.slide_crop
  if options.mode == "slide":
    shape = (shape[0], min(int(slide_crop[0]), shape[1]), min(int(slide_crop[1]), shape[2]),
             shape[3])
  return jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(shape, images.dtype)).shape[-1]


def _record_logits(logits_fn: LogitsFn, x: jnp.ndarray, options: InferenceOptions):
  """The model on one pass's images, once: (feature-resolution logits, slide plan).

  Whole (and bicubic): logits [B, h', w', C], plan None. Slide with several
  windows: every window's logits [n, B, h', w', C] (window after window, in a
  `lax.map`) and the plan to stitch them.
  """
  if options.resize == "bicubic" or options.mode == "whole":
    return logits_fn(x), None
  b, h, w, channels = x.shape
  plan = _slide_plan(h, w, options.slide_crop, options.stride)
  if len(plan[0]) == 1:
    return logits_fn(x), None
  (wh, ww), starts = plan[1], jnp.asarray(plan[3])

  def window(i):
    return logits_fn(jax.lax.dynamic_slice(x, (0, starts[i, 0], starts[i, 1], 0),
                                           (b, wh, ww, channels)))
  return jax.lax.map(window, jnp.arange(len(plan[0]))), plan


def _chunk_to_label(ctx: _Context, logits: jnp.ndarray, plan,
                    size: tuple[int, int]) -> jnp.ndarray:
  """A class slice of one pass's recorded logits -> label-resolution scores
  [B, Hl, Wl, k]: `predict_scores`' upsampling, on those classes only."""
  if ctx.options.resize == "bicubic":
    up = logits.astype(jnp.float32)                           # feature resolution
  elif plan is None:                                          # whole_inference
    up = resize_bilinear(logits.astype(jnp.float32), size, align_corners=ctx.up_align)
  else:                                                       # slide_inference
    b, k = logits.shape[1], logits.shape[-1]
    zeros = jnp.broadcast_to(jnp.zeros_like(logits[0, :, :1, :1, :1], jnp.float32),
                             (b,) + tuple(size) + (k,))
    up = _stitch_windows(lambda i, y1, x1: logits[i], zeros, plan,
                         align_corners=ctx.up_align)
  return _to_label(ctx, up)


def _predict_chunked(logits_fn: LogitsFn, ctx: _Context, chunk: int,
                     num_classes: int) -> jnp.ndarray:
  """argmax over classes of `predict_scores`, chunk classes at a time.

  The model runs once per pass (per window for slide) and its feature-
  resolution logits are kept; a `lax.scan` over the chunks then upsamples
  each chunk's logits to the label resolution and keeps a running (best
  score, best class). mean_softmax over several passes first streams the
  log-sum-exp of every pass over the chunks (running max and sum), then
  merges the probabilities chunk by chunk. C is padded to a multiple of the
  chunk with classes whose scores are -inf (never the argmax).
  """
  passes, label_hw = ctx.passes, ctx.label_hw
  records = []
  for ratio, flipped in passes:
    x = _pass_input(ctx, ratio, flipped)
    logits, plan = _record_logits(logits_fn, x, ctx.options)
    _check_classes(logits.shape[-1], num_classes)
    records.append((logits, plan, tuple(x.shape[1:3]), flipped))
  n_chunks = -(-num_classes // chunk)
  pad = n_chunks * chunk - num_classes
  if pad:
    records = [(jnp.pad(r, [(0, 0)] * (r.ndim - 1) + [(0, pad)]), plan, size, f)
               for r, plan, size, f in records]
  multi = len(passes) > 1
  softmax = multi and ctx.options.merge == "mean_softmax"
  # Per-example arrays derived from label_hw carry the batch sharding.
  zero = jnp.zeros_like(label_hw[:, 0], jnp.float32)[:, None, None]
  pixels = (label_hw.shape[0],) + ctx.label_size
  neg_inf = jnp.broadcast_to(zero - jnp.inf, pixels)

  def real(j, s):
    """Scores of the padding classes (ids >= C) of chunk j -> -inf."""
    if not pad:
      return s
    ids = j * chunk + jnp.arange(chunk, dtype=jnp.int32)
    return jnp.where(ids < num_classes, s, -jnp.inf)

  def pass_scores(j, p):
    logits, plan, size, _ = records[p]
    part = jax.lax.dynamic_slice_in_dim(logits, j * chunk, chunk, axis=logits.ndim - 1)
    return _chunk_to_label(ctx, part, plan, size)

  chunk_ids = jnp.arange(n_chunks, dtype=jnp.int32)
  if softmax:
    def lse_step(carry, j):
      out = []
      for p, (m, total) in enumerate(carry):
        s = real(j, pass_scores(j, p))
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        total = (total * jnp.exp(m - m_new)
                 + jnp.sum(jnp.exp(s - m_new[..., None]), axis=-1))
        out.append((m_new, total))
      return tuple(out), None

    init = tuple((neg_inf, jnp.broadcast_to(zero, pixels)) for _ in passes)
    stats, _ = jax.lax.scan(lse_step, init, chunk_ids)

  def probabilities(p, s):
    m, z = stats[p]
    return jnp.exp(s - m[..., None]) / z[..., None]

  def argmax_step(carry, j):
    best, best_id = carry
    total = real(j, _merge_passes(ctx, lambda p: pass_scores(j, p), probabilities))
    top = jnp.max(total, axis=-1)
    top_id = jnp.argmax(total, axis=-1).astype(jnp.int32) + j * chunk
    # jnp.argmax: the first maximum wins, a NaN counts as the maximum.
    take = (top > best) | (jnp.isnan(top) & ~jnp.isnan(best))
    return (jnp.where(take, top, best), jnp.where(take, top_id, best_id)), None

  init = (neg_inf, jnp.zeros_like(neg_inf, jnp.int32))
  (_, pred), _ = jax.lax.scan(argmax_step, init, chunk_ids)
  return pred


def predict(logits_fn: LogitsFn, batch: Mapping[str, jnp.ndarray], options: InferenceOptions,
            *, num_classes: Optional[int] = None) -> jnp.ndarray:
  """Predicted class ids at the original resolution: int32 [B, Hl, Wl].

  argmax of `predict_scores` (same arguments). Pixels outside label_hw are 0;
  the label is ignore_index there, so they never count.

  options.class_chunk: classes per chunk, for a large vocabulary. None (or
  >= C): argmax of `predict_scores`, the scores [B, Hl, Wl, C] built at once.
  k > 0: the model runs once per pass (per window) as before, only its
  feature-resolution logits are whole, and the label-resolution scores are
  built k classes at a time with a running argmax (`_predict_chunked`; same
  predictions up to float rounding, ties to the lowest class id). 0:
  automatic (`resolve_class_chunk`): unchunked while B * Hl * Wl * C * 4
  bytes <= 4 GiB.
  """
  chunk = None
  if options.class_chunk is not None:
    _check_batch(batch)
    c = (num_classes if num_classes is not None
         else _num_outputs(logits_fn, batch["image"], options))
    chunk = resolve_class_chunk(options.class_chunk, batch["image"].shape[0],
                                batch["label"].shape[1:3], c)
  if chunk is None:                                           # the whole scores at once
    scores = predict_scores(logits_fn, batch, options, num_classes=num_classes)
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)
  return _predict_chunked(logits_fn, _context(logits_fn, batch, options, None), chunk, c)


def make_predict_step(logits_fn_from_variables: Callable[[Any, jnp.ndarray], jnp.ndarray],
                      options: InferenceOptions, *, num_classes: int, ignore_index: int = 255,
                      class_ids: Optional[Sequence[int]] = None
                      ) -> Callable[[Any, Mapping[str, jnp.ndarray]], jnp.ndarray]:
  """`(variables, batch) -> int32 [C, C]` confusion matrix of one eval batch.

  `logits_fn_from_variables(variables, images [b, h, w, 3]) -> [b, h', w', C]`
  (e.g. `lambda v, x: model.apply(v, x, train=False)`); `options` how its
  logits become labels (`predict`). The returned function
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
  if not isinstance(options, InferenceOptions):
    raise TypeError(f"options must be an InferenceOptions, got {type(options).__name__}")
  ids, num_outputs = None, num_classes
  if class_ids is not None:
    ids = np.asarray(class_ids, np.int32)
    if (ids.ndim != 1 or len(np.unique(ids)) != len(ids) or (ids < 0).any()
        or (ids >= num_classes).any()):
      raise ValueError(f"class_ids must be distinct ids in [0, {num_classes}), got {class_ids}")
    num_outputs = len(ids)

  def predict_step(variables, batch):
    pred = predict(lambda x: logits_fn_from_variables(variables, x), batch, options,
                   num_classes=num_outputs)
    if ids is not None:
      pred = jnp.asarray(ids)[pred]
    return confusion_matrix(pred, batch["label"], num_classes, ignore_index=ignore_index,
                            mask=batch["mask"])

  return predict_step
