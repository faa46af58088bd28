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


def pick(x: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
  """x[..., index[...]] as a masked sum over the last axis (index in range).

  Its gradient is an elementwise select that fuses into its neighbours;
  `take_along_axis`'s is a scatter-add into a zero buffer the size of x
  (bench/bench_vocab.py). The value is exact: one term, the rest zeros."""
  hit = jnp.arange(x.shape[-1], dtype=jnp.int32) == index[..., None]
  return jnp.sum(jnp.where(hit, x, 0.0), axis=-1)


def normalization_constants(mean, std) -> tuple[np.ndarray, np.ndarray]:
  """(scale, offset), float32 [3]: a normalised pixel is x * scale - offset with
  scale = 1 / std and offset = mean * scale (`normalize_pixels`)."""
  scale = 1.0 / np.asarray(std, np.float32)
  return scale, np.asarray(mean, np.float32) * scale


def normalize_pixels(x, mean, std, input_order: str):
  """float32 RGB [..., 3] in 0..255 -> the network's input: channel order
  ("rgb" as is, "bgr" reversed), then x * (1 / std) - mean / std with
  float32 constants (`normalization_constants`; channel i of the reordered
  image uses mean[i], std[i]: with RGB-listed statistics "bgr" is openseg's
  `input_mode: BGR`). Operators only, so that the eval pipeline (TF tensors,
  `trainer.augment.eval_transform`) and the train step (`normalize_image`)
  run this one expression; XLA fuses the multiply and subtract into one FMA,
  so the step's values can differ from TF's by 1 ulp."""
  if input_order == "bgr":
    x = x[..., ::-1]
  elif input_order != "rgb":
    raise ValueError(f"input_order must be one of ('rgb', 'bgr'), got {input_order!r}")
  scale, offset = normalization_constants(mean, std)
  return x * scale - offset


def normalize_image(image: jnp.ndarray, mean, std, *, input_order: str = "rgb",
                    box: jnp.ndarray | None = None) -> jnp.ndarray:
  """Un-normalised RGB images -> the network's input, on the device.

  `normalize_pixels` of the images as float32, 0 outside `box`. Used by
  the train step after the input pipeline's `raw_transform` (the host
  ships uint8, a quarter of the bytes, and skips a float pass over every
  pixel) and by the exported inference function.

  Args:
    image: [..., 3] uint8 or float, RGB in 0..255 ([B, H, W, 3] with `box`).
    mean, std: three floats each, in the network's channel order (as config.dataset).
    input_order: "rgb" (as is) or "bgr" (channels reversed first).
    box: optional int32 [B, 4] (top, left, height, width) of each crop: the
      rest is padding and becomes 0 (the host pads after normalising).
  Returns:
    float32 [B, H, W, 3].
  """
  x = normalize_pixels(image.astype(jnp.float32), mean, std, input_order)
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
  (V, m the max and min channel), clipped to 0..255: the HSV round trip
  (tf.image.adjust_saturation) at a third of the cost."""
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


def photometric_distortion(images: jnp.ndarray, draws: PhotometricDraws) -> jnp.ndarray:
  """mmseg PhotoMetricDistortion of a batch on the device, with each image's
  draws from the input pipeline (`trainer.augment.photometric_draws`):
  brightness + delta, contrast x alpha (before or after the HSV steps),
  saturation x factor, hue + hue_shift / 180 turn, each step where its flag
  is set, clipped to 0..255 after each (mmseg also truncates to uint8
  between steps, which is not reproduced). tests/test_augment compares it
  with TF's kernels (tests/reference.py).

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


def cubic_weights(t: jnp.ndarray, a: float = CUBIC_A) -> jnp.ndarray:
  """Keys cubic convolution weights of the taps at -1, 0, 1, 2 of a fraction
  t in [0, 1): float32 [..., 4]."""
  def near(x):  # |x| <= 1
    return ((a + 2.) * x - (a + 3.)) * x * x + 1.

  def far(x):   # 1 < |x| < 2
    return ((a * x - 5. * a) * x + 8. * a) * x - 4. * a

  return jnp.stack([far(t + 1.), near(t), near(1. - t), far(2. - t)], axis=-1)


def cubic_floor(n_in, n_out, dst):
  """floor(src) of output pixel `dst` of a cubic resize n_in -> n_out with
  half-pixel centres, src = (dst + 0.5) n_in / n_out - 0.5, exactly in
  integers: the tap at offset 0. Integer arithmetic only, so that the
  input pipeline (TF, `trainer.augment.openseg_stages`: which source rows and
  columns to ship) and the device (`cubic_taps`) agree on every tap."""
  return ((2 * dst + 1) * n_in - n_out) // (2 * n_out)


def cubic_taps(n_in, n_out, dst) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Source taps of output pixels `dst` (int32 [...]) of a cubic resize
  n_in -> n_out: floor(src) - 1 .. floor(src) + 2 (`cubic_floor`) clamped
  to [0, n_in - 1] (border replicated; OpenCV's INTER_CUBIC and PyTorch's
  bicubic with align_corners=False), with the fraction src - floor(src)
  rounded once to float32.

  Returns:
    int32 [..., 4] indices, float32 [..., 4] weights.
  """
  n_in, n_out, dst = (jnp.asarray(v, jnp.int32) for v in (n_in, n_out, dst))
  lo = cubic_floor(n_in, n_out, dst)
  num, den = (2 * dst + 1) * n_in - n_out, 2 * n_out
  frac = (num - lo * den).astype(jnp.float32) / den.astype(jnp.float32)
  idx = jnp.clip(lo[..., None] + jnp.arange(-1, 3), 0, n_in[..., None] - 1)
  return idx, cubic_weights(frac)


def cubic_resample(source: jnp.ndarray, rows: jnp.ndarray, row_weights: jnp.ndarray,
                   cols: jnp.ndarray, col_weights: jnp.ndarray) -> jnp.ndarray:
  """One image's separable cubic resample: output (i, j) = sum over the
  taps of source[rows[i, k], cols[j, l]] * row_weights[i, k] *
  col_weights[j, l], rows first. Each pass sums its 4 taps in order,
  t0 + t1 + t2 + t3, and only the taps' rows are converted to float32.

  Args:
    source: [H, W, C] uint8 or float.
    rows, row_weights: int32 / float32 [h, 4]; cols, col_weights: [w, 4].
  Returns:
    float32 [h, w, C].
  """
  out_rows = None
  for k in range(4):
    tap = source[rows[:, k]].astype(jnp.float32) * row_weights[:, k, None, None]
    out_rows = tap if out_rows is None else out_rows + tap
  out = None
  for k in range(4):
    tap = out_rows[:, cols[:, k]] * col_weights[None, :, k, None]
    out = tap if out is None else out + tap
  return out


def resize_bicubic(image: jnp.ndarray, out_hw: tuple[int, int], top_left=(0, 0),
                   win_hw: tuple[int, int] | None = None) -> jnp.ndarray:
  """Bicubic (Keys a = -0.75: OpenCV INTER_CUBIC, PyTorch's bicubic with
  align_corners=False, no antialiasing) resize of one image [H, W, C] to
  `out_hw`, or only its window at `top_left` of `win_hw`; float32, not
  rounded. `openseg_resize_crop`'s resample (the same taps, weights and sums)."""
  win_hw = tuple(out_hw) if win_hw is None else tuple(win_hw)
  rows = cubic_taps(image.shape[0], out_hw[0], top_left[0] + jnp.arange(win_hw[0]))
  cols = cubic_taps(image.shape[1], out_hw[1], top_left[1] + jnp.arange(win_hw[1]))
  return cubic_resample(jnp.asarray(image), *rows, *cols)


def openseg_resize_crop(source: jnp.ndarray, params: ResizeParams, box: jnp.ndarray,
                        crop_hw: tuple[int, int]) -> jnp.ndarray:
  """openseg's rescale (bicubic, OpenCV INTER_CUBIC, a = -0.75), crop, flip and
  brightness of a batch on the device, from the source rows and columns the
  host shipped (config.dataset.resize_on_device).

  Each example's window of the virtual resize in_hw -> out_hw at (top,
  left), of box's (height, width), mirrored when `flip`, lands at box's
  (top, left) of a crop_hw canvas; values are rounded to integers, clipped
  to 0..255, shifted by `brightness` and clipped again (cv2's uint8 resize,
  then openseg's brightness: within float rounding of exact arithmetic, so a
  value within ~1e-4 of a half may round the other way; tests/test_augment
  compares with a float64 reference). Outside the box the values are
  meaningless (`normalize_image` zeroes them).

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
  y = jax.vmap(cubic_resample)(source, ri, rw, ci, cwt)
  d = p.brightness.astype(jnp.float32)[:, None, None, None]
  return jnp.clip(jnp.round(y) + d, jnp.maximum(d, 0.), jnp.minimum(255. + d, 255.))


def finish_crops(batch: dict, *, mean, std, input_order: str) -> dict:
  """The train batch the network sees, from the input pipeline's
  (`trainer.augment.raw_transform`'s: RGB crops in 0..255 before the last
  steps of the augmentation, with 'image_box'): openseg's bicubic resize
  first when 'resize' is there (the image is then the source rows and
  columns, `openseg_resize_crop`), the photometric distortion when its draws
  'photometric' are there (`photometric_distortion`), then the channel order
  and normalisation with 0 outside the box (`normalize_image`), and the
  'label' as int32 (the pipeline ships the stored uint8 / uint16). The
  batch's other entries pass through; 'image_box', 'photometric' and
  'resize' are used up.

  Args:
    batch: {'image' uint8 [B, ...], 'label' [B, ch, cw], 'image_box' int32
      [B, 4], optional 'photometric' (`PhotometricDraws`) and 'resize'
      (`ResizeParams`), ...}.
    mean, std, input_order: config.dataset's normalisation.
  """
  if "resize" in batch:      # openseg's bicubic rescale, crop, flip and brightness
    image = openseg_resize_crop(batch["image"], batch["resize"], batch["image_box"],
                                batch["label"].shape[1:3])
  else:
    image = batch["image"].astype(jnp.float32)
  if "photometric" in batch:
    image = photometric_distortion(image, batch["photometric"])
  image = normalize_image(image, tuple(mean), tuple(std), input_order=input_order,
                          box=batch["image_box"])
  rest = {k: v for k, v in batch.items() if k not in ("image_box", "photometric", "resize")}
  return {**rest, "image": image, "label": batch["label"].astype(jnp.int32)}
