"""Resizing with PyTorch's exact conventions, NHWC.

`jax.image.resize` uses half-pixel centres and antialiases when it
downsamples, which matches neither `F.interpolate(..., align_corners=True)`
nor PyTorch's plain bilinear downsampling. Checkpoint parity needs both, so
each convention gets a small interpolation matrix applied with einsum (cheap
on TPU/GPU: two small matmuls).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Keys' cubic convolution parameter of OpenCV's INTER_CUBIC and PyTorch's
# bicubic (tf.image.resize's "bicubic" uses -0.5).
CUBIC_A = -0.75


def interp_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
  """[out_size, in_size] linear-interpolation weights, PyTorch semantics."""
  dst = np.arange(out_size, dtype=np.float64)
  if align_corners:
    if out_size == 1:
      src = np.zeros_like(dst)
    else:
      src = dst * (in_size - 1) / (out_size - 1)
  else:
    src = (dst + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)  # PyTorch clamps negative source coordinates
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  w = np.zeros((out_size, in_size), np.float64)
  np.add.at(w, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(w, (np.arange(out_size), hi), frac)
  return w


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int], *,
                    align_corners: bool) -> jnp.ndarray:
  """Bilinear resize of `x [B, H, W, C]` to `size=(h, w)` like PyTorch.

  align_corners=True: `F.interpolate(mode="bilinear", align_corners=True)`.
  align_corners=False: `F.interpolate(mode="bilinear", align_corners=False)`
  (no antialiasing, also when downsampling).
  """
  h, w = int(size[0]), int(size[1])
  if x.ndim != 4:
    raise ValueError(f"resize_bilinear expects [B, H, W, C], got shape {x.shape}")
  if (x.shape[1], x.shape[2]) == (h, w):
    return x
  wh = jnp.asarray(interp_matrix(x.shape[1], h, align_corners), x.dtype)
  ww = jnp.asarray(interp_matrix(x.shape[2], w, align_corners), x.dtype)
  x = jnp.einsum("oh,bhwc->bowc", wh, x)
  return jnp.einsum("pw,bowc->bopc", ww, x)


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """PyTorch `nearest` source indices: floor(dst * in / out), clipped."""
  scale = in_size / out_size
  return np.minimum(np.floor(np.arange(out_size) * scale).astype(np.int64), in_size - 1)


def resize_nearest(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  """PyTorch `F.interpolate(mode="nearest")` on `x [B, H, W, ...]` (labels too)."""
  h, w = int(size[0]), int(size[1])
  if (x.shape[1], x.shape[2]) == (h, w):
    return x
  x = jnp.take(x, jnp.asarray(nearest_indices(x.shape[1], h)), axis=1)
  return jnp.take(x, jnp.asarray(nearest_indices(x.shape[2], w)), axis=2)


def l2_normalize(x: jnp.ndarray, axis: int = -1, eps: float = 1e-12) -> jnp.ndarray:
  """`F.normalize(x, p=2, dim=axis)`: x / max(|x|, eps).

  |x| as sqrt(max(|x|^2, eps^2)), the same value, so that an all-zero vector
  has PyTorch's gradient (that of x / eps) instead of NaN (sqrt's derivative
  at 0 times 0)."""
  norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True), eps * eps))
  return x / norm


def normalization_constants(mean, std) -> tuple[np.ndarray, np.ndarray]:
  """(scale, offset), float32 [3]: a normalised pixel is x * scale - offset with
  scale = 1 / std and offset = mean * scale, on the host (`trainer.augment.normalize`)
  and on the device (`normalize_image`) alike."""
  scale = 1.0 / np.asarray(std, np.float32)
  return scale, np.asarray(mean, np.float32) * scale


def normalize_image(image: jnp.ndarray, mean, std, *, input_order: str = "rgb",
                    box: jnp.ndarray | None = None) -> jnp.ndarray:
  """Un-normalised RGB images -> the network's input, on the device.

  The host's `trainer.augment.normalize_input` (channel order, then
  image * (1 / std) - mean * (1 / std) with float32 constants; XLA fuses
  the two into one FMA, so values can differ from the host's by 1 ulp).
  Used by the train step after the input pipeline's `raw_transform`
  (config.dataset.finish_on_device: the host ships uint8, a quarter of
  the bytes, and skips a float pass over every pixel) and by the exported
  inference function.

  Args:
    image: [..., 3] uint8 or float, RGB in 0..255 ([B, H, W, 3] with `box`).
    mean, std: three floats each, in the network's channel order (as config.dataset).
    input_order: "rgb" (as is) or "bgr" (channels reversed first).
    box: optional int32 [B, 4] (top, left, height, width) of each crop: the
      rest is padding and becomes 0 (the host pads after normalising).
  Returns:
    float32 [B, H, W, 3].
  """
  x = image.astype(jnp.float32)
  if input_order == "bgr":
    x = x[..., ::-1]
  elif input_order != "rgb":
    raise ValueError(f"input_order must be one of ('rgb', 'bgr'), got {input_order!r}")
  scale, offset = normalization_constants(mean, std)
  x = x * scale - offset
  if box is None:
    return x
  rows = jnp.arange(x.shape[1])[None, :, None]
  cols = jnp.arange(x.shape[2])[None, None, :]
  top, left, h, w = (box[:, i, None, None] for i in range(4))
  inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
  return jnp.where(inside[..., None], x, 0.)


def scale_saturation(image: jnp.ndarray, factor) -> jnp.ndarray:
  """HSV saturation times `factor` (clipped to 1), hue and value kept, on RGB
  [..., 3] >= 0: each channel c -> V - a (V - c), a = min(factor, V / (V - m))
  (V, m the max and min channel), clipped to 0..255; as
  `trainer.augment.scale_saturation`."""
  v = jnp.max(image, axis=-1, keepdims=True)
  m = jnp.min(image, axis=-1, keepdims=True)
  a = jnp.minimum(factor, v / jnp.maximum(v - m, 1e-6))
  return jnp.clip(v - a * (v - image), 0., 255.)


def adjust_hue(image: jnp.ndarray, delta) -> jnp.ndarray:
  """Hue rotated by `delta` turns, saturation and value kept (`tf.image.adjust_hue`),
  on RGB [..., 3] in any scale (the map is homogeneous); `delta` broadcasts
  against image[..., 0].

  With V the max channel, C = V - min the chroma and the hue h in [0, 6)
  sextants, rotated to h' = (h + 6 delta) mod 6, each channel n of (r, g, b)
  is V - C * clip(min(k, 4 - k), 0, 1) with k = (h' + (5, 3, 1)[n]) mod 6.
  """
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  v = jnp.max(image, axis=-1)
  chroma = v - jnp.min(image, axis=-1)
  safe = jnp.where(chroma > 0, chroma, 1.)
  h = jnp.where(v == r, jnp.mod((g - b) / safe, 6.),
                jnp.where(v == g, (b - r) / safe + 2., (r - g) / safe + 4.))
  h = jnp.where(chroma > 0, jnp.mod(h + 6. * delta, 6.), 0.)
  k = jnp.mod(h[..., None] + jnp.asarray([5., 3., 1.], image.dtype), 6.)
  return v[..., None] - chroma[..., None] * jnp.clip(jnp.minimum(k, 4. - k), 0., 1.)


class PhotometricDraws(NamedTuple):
  """One example's (scalars, on the host) or a batch's ([B], on the device)
  draws of mmseg's PhotoMetricDistortion, made by the input pipeline
  (`trainer.augment.photometric_draws`) and applied by `photometric_distortion`.
  Each flag is True with probability 0.5."""
  brightness: Any       # bool: add `delta`
  delta: Any            # float32 ~ U(-32, 32)
  contrast: Any         # bool: multiply by `alpha`
  alpha: Any            # float32 ~ U(0.5, 1.5)
  saturation: Any       # bool: scale the saturation by `factor`
  factor: Any           # float32 ~ U(0.5, 1.5)
  hue: Any              # bool: rotate the hue by `hue_shift`
  hue_shift: Any        # float32 integer in [-18, 18), OpenCV units (180 a turn)
  contrast_first: Any   # bool: contrast before the HSV steps (else after)


def photometric_distortion(images: jnp.ndarray, draws: jnp.ndarray) -> jnp.ndarray:
  """mmseg PhotoMetricDistortion of a batch on the device, with each image's
  draws from the input pipeline (`trainer.augment.photometric_draws`, float32
  [B, 9]): brightness + delta, contrast x alpha (before or after the HSV
  steps), saturation x factor, hue + hue_shift / 180 turn, each step where
  its flag is 1, clipped to 0..255 after each; as
  `trainer.augment.photometric_distortion` (within float rounding: XLA's
  FMAs and this module's hue formula; tested).

  Args:
    images: float32 [B, H, W, 3] RGB 0..255.
    draws: `PhotometricDraws` of [B] arrays.
  """
  d = PhotometricDraws(*(jnp.asarray(v)[:, None, None] for v in draws))   # [B, 1, 1]
  pixel = lambda v: v[..., None]                                           # [B, 1, 1, 1]
  first = pixel(d.contrast_first)
  contrast = lambda y: jnp.clip(y * pixel(d.alpha), 0., 255.)
  x = jnp.where(pixel(d.brightness), jnp.clip(images + pixel(d.delta), 0., 255.), images)
  x = jnp.where(pixel(d.contrast) & first, contrast(x), x)
  x = jnp.where(pixel(d.saturation), scale_saturation(x, pixel(d.factor)), x)
  x = jnp.where(pixel(d.hue), adjust_hue(x, d.hue_shift / 180.), x)
  return jnp.where(pixel(d.contrast) & ~first, contrast(x), x)


class ResizeParams(NamedTuple):
  """What `openseg_resize_crop` does to one example (int32 scalars on the
  host, [B] on the device), as the input pipeline's
  `trainer.augment.raw_transform` ships it with config.dataset.resize_on_device."""
  in_h: Any             # the stored image's size
  in_w: Any
  out_h: Any            # the size of the virtual bicubic resize
  out_w: Any
  top: Any              # the crop window's offset in that resize
  left: Any
  source_top: Any       # the first source row / column shipped (the taps' first)
  source_left: Any
  flip: Any             # bool: the window mirrored left-right
  brightness: Any       # the integer brightness shift


def cubic_weight_terms(t, a: float = CUBIC_A) -> list:
  """Keys cubic convolution weights of the taps at -1, 0, 1, 2 of a fraction
  t in [0, 1), as 4 arrays like t: arithmetic only, so that the host (TF
  tensors, `trainer.augment.cubic_weights`) and the device (`cubic_weights`)
  evaluate the same expressions."""
  def near(x):  # |x| <= 1
    return ((a + 2.) * x - (a + 3.)) * x * x + 1.

  def far(x):   # 1 < |x| < 2
    return ((a * x - 5. * a) * x + 8. * a) * x - 4. * a

  return [far(t + 1.), near(t), near(1. - t), far(2. - t)]


def cubic_weights(t: jnp.ndarray, a: float = CUBIC_A) -> jnp.ndarray:
  """`cubic_weight_terms` stacked: float32 [..., 4]."""
  return jnp.stack(cubic_weight_terms(t, a), axis=-1)


def cubic_taps(n_in, n_out, dst) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Source taps of output pixels `dst` (int32 [...]) of a cubic resize
  n_in -> n_out with half-pixel centres: src = (dst + 0.5) n_in / n_out - 0.5
  computed exactly in integers (the fraction rounded once to float32, as the
  host's float64 `trainer.augment.cubic_taps`), taps floor(src) - 1 ..
  floor(src) + 2 clamped to [0, n_in - 1].

  Returns:
    int32 [..., 4] indices, float32 [..., 4] weights.
  """
  num = (2 * dst + 1) * n_in - n_out
  den = 2 * n_out
  lo = jnp.floor_divide(num, den)
  frac = (num - lo * den).astype(jnp.float32) / den.astype(jnp.float32)
  idx = jnp.clip(lo[..., None] + jnp.arange(-1, 3), 0, n_in[..., None] - 1)
  return idx, cubic_weights(frac)


def openseg_resize_crop(source: jnp.ndarray, params: jnp.ndarray, box: jnp.ndarray,
                        crop_hw: tuple[int, int]) -> jnp.ndarray:
  """openseg's rescale (bicubic, OpenCV INTER_CUBIC, a = -0.75), crop, flip and
  brightness of a batch on the device, from the source rows and columns the
  host shipped (config.dataset.resize_on_device).

  Each example's window of the virtual resize in_hw -> out_hw at (top,
  left), of box's (height, width), mirrored when `flip`, lands at box's
  (top, left) of a crop_hw canvas; values are rounded to integers, clipped
  to 0..255, shifted by `brightness` and clipped again (as
  `trainer.augment.openseg_transform`: the same taps and weights; sums
  differ by float rounding, so a value within ~1e-4 of a half may round the
  other way; tested). Outside the box the values are meaningless
  (`normalize_image` zeroes them).

  Args:
    source: uint8 [B, SH, SW, 3]: rows source_top.. and columns source_left..
      of each RGB image (the rows and columns the window's taps reach),
      padded.
    params: `ResizeParams` of [B] arrays.
    box: int32 [B, 4] (top, left, height, width) of the window in the canvas.
    crop_hw: the canvas (config.dataset.crop_size).
  Returns:
    float32 [B, ch, cw, 3] in 0..255.
  """
  p = params
  ch, cw = crop_hw
  # Window row / column of each canvas pixel (clamped outside the box).
  win_r = jnp.clip(jnp.arange(ch)[None] - box[:, 0, None], 0, box[:, 2, None] - 1)   # [B, ch]
  win_c = jnp.clip(jnp.arange(cw)[None] - box[:, 1, None], 0, box[:, 3, None] - 1)   # [B, cw]
  win_c = jnp.where(p.flip[:, None], box[:, 3, None] - 1 - win_c, win_c)
  ri, rw = cubic_taps(p.in_h[:, None], p.out_h[:, None], p.top[:, None] + win_r)
  ci, cwt = cubic_taps(p.in_w[:, None], p.out_w[:, None], p.left[:, None] + win_c)
  ri = ri - p.source_top[:, None, None]
  ci = ci - p.source_left[:, None, None]

  def one(src, ri, rw, ci, cwt):
    rows = None
    for k in range(4):       # t0 + t1 + t2 + t3, as the host; only the taps' rows converted
      tap = src[ri[:, k]].astype(jnp.float32) * rw[:, k, None, None]
      rows = tap if rows is None else rows + tap
    out = None
    for k in range(4):
      tap = rows[:, ci[:, k]] * cwt[None, :, k, None]
      out = tap if out is None else out + tap
    return out

  y = jax.vmap(one)(source, ri, rw, ci, cwt)
  d = p.brightness.astype(jnp.float32)[:, None, None, None]
  return jnp.clip(jnp.round(y) + d, jnp.maximum(d, 0.), jnp.minimum(255. + d, 255.))
