"""Training augmentation on one example (tf, per example): mmsegmentation's recipe.

In mmseg's order: keep-ratio rescale with a ratio drawn in `ratio_range` of
`scale` (bilinear, rounded to uint8 like cv2's resize of a uint8 image) ->
random crop of `crop_size` (retried up to 10 times so that no class fills
more than `cat_max_ratio` of the labelled crop pixels) -> horizontal flip ->
PhotoMetricDistortion -> normalise -> pad to `crop_size` (0 image, the
dataset's ignore index label). Labels are always resized with nearest
neighbour. Every random choice comes from a stateless seed, so an example's
augmentation is a function of (image, label, seed).

`openseg_stages` is the official ProtoSeg / openseg.pytorch recipe
(config.dataset.augmentation = "openseg"); `TrainOptions.input_order` = "bgr"
reverses the channels before normalising, like openseg's `input_mode: BGR`.

The input pipeline runs `raw_transform` (this module: the draws, crops and
label steps); the train step finishes the batch (`ops.finish_crops`: the
photometric distortion, openseg's bicubic resize and the normalisation, each
written once, in protoseg_jax/ops.py). `transform` composes the two for one
example.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import tensorflow as tf

from protoseg_jax import ops
from protoseg_jax.ops import PhotometricDraws, ResizeParams, cubic_floor
# INPUT_ORDERS is this module's vocabulary too (TrainOptions.input_order).
from protoseg_jax.validate import AUGMENTATIONS, INPUT_ORDERS  # noqa: F401


def rescale_size(hw, scale, ratio=1.0):
  """mmcv keep-ratio rescale: size fitting (long, short) = scale * ratio.

  Args:
    hw: int32 [2] (h, w).
    scale: (a, b): the long side goes to at most max(a, b), the short side to
      at most min(a, b); mmseg takes int(a * ratio), int(b * ratio).
    ratio: float scalar.
  Returns:
    int32 [2] new (h, w) = int(h * f + 0.5), int(w * f + 0.5).
  """
  hw_f = tf.cast(hw, tf.float32)
  ratio = tf.cast(ratio, tf.float32)
  long_t = tf.floor(float(max(scale)) * ratio)
  short_t = tf.floor(float(min(scale)) * ratio)
  factor = tf.minimum(long_t / tf.reduce_max(hw_f), short_t / tf.reduce_min(hw_f))
  return tf.cast(tf.floor(hw_f * factor + 0.5), tf.int32)


def _nearest_index(n_in, n_out):
  """cv2 INTER_NEAREST source indices: floor(i * n_in / n_out), clipped (int32 [n_out])."""
  scale = tf.cast(n_in, tf.float64) / tf.cast(n_out, tf.float64)
  idx = tf.cast(tf.floor(tf.cast(tf.range(n_out), tf.float64) * scale), tf.int32)
  return tf.minimum(idx, n_in - 1)


def label_window(label, rows, cols):
  """label[rows][:, cols] (a nearest-neighbour window; rows, cols int32 index
  vectors): the rows gathered, then the columns as rows of the transpose
  (2-3x faster than gathering single bytes along axis 1; the same values)."""
  picked = tf.transpose(tf.gather(label, rows, axis=0))
  return tf.transpose(tf.gather(picked, cols, axis=0))


def crop_is_acceptable(label_crop, cat_max_ratio: float, ignore_index: int,
                       num_classes: int = 256):
  """mmseg's cat_max_ratio test on a label crop: >1 class and none above the ratio.

  Args:
    label_crop: uint8 or uint16 [h, w].
    cat_max_ratio: the largest class must hold less than this share.
    ignore_index: the label value that is not a class.
    num_classes: the dataset's classes (ids >= 256 are counted when it is larger).
  Returns:
    bool scalar: at least two non-ignored classes present and the largest
    holds less than `cat_max_ratio` of the non-ignored pixels.
  """
  size = max(256, int(num_classes))
  # Values >= size (65535, the ignore of 16-bit labels) are not counted by
  # the bincount; the ignore index's own count is then set to 0.
  x = tf.cast(tf.reshape(label_crop, [-1]), tf.int32)
  counts = tf.raw_ops.DenseBincount(input=x, size=size, weights=tf.zeros([0], tf.int32))
  if 0 <= ignore_index < size:
    counts = tf.tensor_scatter_nd_update(counts, [[ignore_index]], [0])
  total = tf.reduce_sum(counts)
  present = tf.math.count_nonzero(counts)
  largest = tf.reduce_max(counts)
  return tf.logical_and(
      present > 1,
      tf.cast(largest, tf.float32) < cat_max_ratio * tf.cast(total, tf.float32))


def crop_candidates(hw, crop_hw, seed):
  """The 11 candidate crop offsets: int32 [11] tops, int32 [11] lefts.

  Each uniform in [0, max(H - ch, 0)] x [0, max(W - cw, 0)], like mmseg's
  generate_crop_bbox.
  """
  margin = tf.maximum(hw - tf.constant(crop_hw, tf.int32), 0)
  s0, s1 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  tops = tf.random.stateless_uniform([11], s0, minval=0, maxval=margin[0] + 1, dtype=tf.int32)
  lefts = tf.random.stateless_uniform([11], s1, minval=0, maxval=margin[1] + 1, dtype=tf.int32)
  return tops, lefts


def random_crop(window_fn, hw, crop_hw, seed, cat_max_ratio: float, ignore_index: int,
                num_classes: int = 256):
  """mmseg RandomCrop: picks a crop, retried up to 10 times for cat_max_ratio.

  Candidate k (k = 0..10) is uniform in [0, max(H - ch, 0)] x [0, max(W - cw, 0)];
  the first of candidates 0..9 passing `crop_is_acceptable` is used, else
  candidate 10 (mmseg draws a new box after each failed check).

  Args:
    window_fn: (top, left) -> the label crop at that offset.
    hw: int32 [2] size of the (rescaled) label.
    crop_hw: (ch, cw) Python ints.
    seed: int [2] stateless seed.
    cat_max_ratio: >= 1 disables the check.
    ignore_index: the label value the check does not count.
  Returns:
    (int32 [2] (top, left), the label crop there).
  """
  tops, lefts = crop_candidates(hw, crop_hw, seed)
  first = window_fn(tops[0], lefts[0])
  if cat_max_ratio >= 1.0:
    return tf.stack([tops[0], lefts[0]]), first

  def cond(k, window):
    acceptable = crop_is_acceptable(window, cat_max_ratio, ignore_index, num_classes)
    return tf.logical_and(k < 10, tf.logical_not(acceptable))

  def body(k, window):
    del window
    return k + 1, window_fn(tops[k + 1], lefts[k + 1])

  k, window = tf.while_loop(cond, body, (tf.constant(0), first),
                            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None])))
  return tf.stack([tops[k], lefts[k]]), window


# `resize_window_bilinear` resizes the whole image (ResizeBilinear, ~5-11 ns
# a pixel on one core) when the virtual resize is at most this many times the
# window's area, else only the window (ScaleAndTranslate, 35-45 ns a window
# pixel); measured with a one-off script, docs/benchmarks_history.md ("uint8 batches").
WHOLE_RESIZE_MAX_AREA = 4


def resize_window_bilinear(image, out_hw, top_left, win_hw):
  """A window of tf.image.resize(image, out_hw, 'bilinear') (no antialiasing).

  When out_hw's area is at most WHOLE_RESIZE_MAX_AREA times the window's,
  that resize is computed and cropped (its bits). Otherwise only the window:
  the bilinear ('triangle', no antialiasing) ScaleAndTranslate kernel that
  tf.image.resize uses, translated so that only output pixels
  top_left + [0, win_hw) are computed (the same sample positions and
  weights; within 1e-3 of a 0..255 value of the whole resize's).

  Args:
    image: [H, W, C] uint8 or float.
    out_hw: int32 [2] size of the virtual full resize.
    top_left: int32 [2] window offset in the resized image.
    win_hw: int32 [2] window size.
  Returns:
    float32 [win_h, win_w, C].
  """
  out_hw, top_left, win_hw = (tf.cast(x, tf.int32) for x in (out_hw, top_left, win_hw))

  def whole():
    full = tf.image.resize(image, out_hw, method="bilinear", antialias=False)
    return full[top_left[0]:top_left[0] + win_hw[0], top_left[1]:top_left[1] + win_hw[1]]

  def window():
    scale = tf.cast(out_hw, tf.float32) / tf.cast(tf.shape(image)[:2], tf.float32)
    out = tf.raw_ops.ScaleAndTranslate(
        images=image[None], size=win_hw, scale=scale,
        translation=-tf.cast(top_left, tf.float32), kernel_type="triangle", antialias=False)
    return out[0]

  area = lambda hw: tf.cast(hw[0], tf.int64) * tf.cast(hw[1], tf.int64)
  return tf.cond(area(out_hw) <= WHOLE_RESIZE_MAX_AREA * area(win_hw), whole, window)


def photometric_draws(seed) -> PhotometricDraws:
  """mmseg PhotoMetricDistortion's random draws for one example
  (`ops.PhotometricDraws`; `ops.photometric_distortion` applies them):
  each flag True with probability 0.5, delta ~ U(-32, 32), alpha and factor
  ~ U(0.5, 1.5), hue_shift = randint [-18, 18) (OpenCV units, 180 per
  turn). Draw k (in the fields' order) uses the k-th of 9 seeds split from
  `seed`."""
  coin = lambda s: tf.random.stateless_uniform([], s) < 0.5
  uni = lambda lo, hi: lambda s: tf.random.stateless_uniform([], s, lo, hi)
  randint = lambda s: tf.cast(tf.random.stateless_uniform([], s, -18, 18, dtype=tf.int32),
                              tf.float32)
  draw = PhotometricDraws(brightness=coin, delta=uni(-32., 32.), contrast=coin,
                          alpha=uni(0.5, 1.5), saturation=coin, factor=uni(0.5, 1.5), hue=coin,
                          hue_shift=randint, contrast_first=coin)
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, len(draw)))
  return PhotometricDraws(*(fn(s) for fn, s in zip(draw, seeds)))


def random_flip(image, label, seed, prob: float):
  """Both flipped horizontally (axis 1) with probability `prob`."""
  flip = tf.random.stateless_uniform([], seed) < prob
  return tf.cond(flip, lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])),
                 lambda: (image, label))


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """The settings of `transform_stages`: config.dataset's (configs/default.py
  holds their defaults; `input_pipeline.train_options` reads them), plus the
  dataset's ignore index and class count. No defaults of their own."""
  crop_size: tuple[int, int]
  scale: tuple[int, int]
  ratio_range: tuple[float, float]
  cat_max_ratio: float
  flip_prob: float
  photometric: bool
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  ignore_index: int
  input_order: str                      # INPUT_ORDERS: "bgr" reverses the channels before normalise
  augmentation: str                     # AUGMENTATIONS: mmseg_stages | openseg_stages
  aspect_range: tuple[float, float]     # openseg only
  brightness_shift: int                 # openseg only
  num_classes: int                      # the crop retries count ids below max(256, this)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """The eval preprocessing (config.dataset: eval_scale, mean, std, input_order;
  `input_pipeline.eval_options`). No defaults of their own."""
  scale: tuple[int, int] | None        # keep-ratio test scale (long, short); None: as is
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  input_order: str


def eval_transform(image, opts: EvalOptions):
  """What the network sees of an evaluated image: the ONE eval preprocessing
  (the eval dataset, `protoseg_jax.predict`, visualize and add_class).

  Keep-ratio `rescale_size` to opts.scale with a bilinear resize (no
  antialiasing, as mmseg's cv2 resize), then channel order and
  normalisation (`ops.normalize_pixels`, the train step's expression).

  Args:
    image: uint8 [H, W, 3] RGB (a tf tensor or array).
  Returns:
    (float32 [h, w, 3] normalised, int32 [2] (h, w)).
  """
  image = tf.convert_to_tensor(image)
  if opts.scale is None:
    new_hw = tf.shape(image)[:2]
    image = tf.cast(image, tf.float32)
  else:
    new_hw = rescale_size(tf.shape(image)[:2], opts.scale)
    image = tf.image.resize(image, new_hw, method="bilinear", antialias=False)
  return ops.normalize_pixels(image, opts.mean, opts.std, opts.input_order), new_hw


def preprocess_image(image: np.ndarray, opts: EvalOptions) -> np.ndarray:
  """`eval_transform` of one NumPy image: uint8 [H, W, 3] -> float32 [h, w, 3]."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
  return eval_transform(image, opts)[0].numpy().astype(np.float32)


def transform_stages(opts: TrainOptions) -> list[tuple[str, "Stage"]]:
  """The named steps of `raw_transform` in their order, as opts.augmentation says.

  Each step maps an example dict {"image", "label", "seed", ...} to the next
  one (its extra entries carry the random draws and the crop window between
  steps). `raw_transform` runs them all; `bench.bench_input_pipeline
  --profile` times each by running longer and longer prefixes. The last
  steps of the augmentation (mmseg's photometric distortion, openseg's
  bicubic resize, the channel order and the normalisation) are the train
  step's (`ops.finish_crops`): the stages make their draws only.
  """
  if opts.augmentation == "mmseg":
    return mmseg_stages(opts)
  if opts.augmentation == "openseg":
    return openseg_stages(opts)
  raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {opts.augmentation!r}")


def run_stages(stages, image, label, seed) -> dict:
  """The example dict after `stages` (a prefix of `transform_stages`, or all)."""
  example = {"image": image, "label": label, "seed": seed}
  for _, stage in stages:
    example = stage(example)
  return example


def raw_transform(image, label, seed, opts: TrainOptions) -> dict:
  """One training example as the input pipeline ships it (tf, in tf.data),
  for the train step to finish (`ops.finish_crops`).

  Returns a dict:
    image: the padded crop before the photometric distortion and the
      normalisation, uint8 [ch, cw, 3] RGB (mmseg's resized values are
      rounded to integers), 0 in the padding; or, for openseg, the source
      rows and columns the crop window's bicubic taps reach, uint8
      [*source_canvas(opts), 3] padded with 0 (the device resizes);
    image_box: int32 [4] (top, left, height, width) of the crop inside it;
    label: [ch, cw], the augmented label in the stored label dtype (uint8,
      or uint16 for 16-bit labels) when the ignore index fits in it, else
      int32;
    photometric: `ops.PhotometricDraws` of scalars, `photometric_draws`
      (only with mmseg's opts.photometric);
    resize: `ops.ResizeParams` of int32 scalars (openseg): the rescale,
      crop, flip and brightness for `ops.openseg_resize_crop`.
  """
  ex = run_stages(transform_stages(opts), image, label, seed)
  keys = ("image", "image_box", "label", "photometric", "resize")
  return {key: ex[key] for key in keys if key in ex}


def transform(image, label, seed, opts: TrainOptions):
  """One finished training example, eagerly (tests and tools; not in tf.data):
  `raw_transform`, then the train step's `ops.finish_crops` (jitted) on a
  batch of one.

  Args:
    image: uint8 [H, W, 3] RGB; label: [H, W]; seed: int [2] stateless seed.
  Returns:
    image float32 [ch, cw, 3] normalised (0 in the padding), label int32
    [ch, cw] (opts.ignore_index = ignore / padding), as tf tensors.
  """
  raw = raw_transform(image, label, seed, opts)
  batch = tf.nest.map_structure(lambda v: v.numpy()[None], raw)
  done = _finish_crops(batch, mean=tuple(opts.mean), std=tuple(opts.std),
                       input_order=opts.input_order)
  return tf.constant(np.asarray(done["image"][0])), tf.constant(np.asarray(done["label"][0]))


# The train step's finish, compiled as in the step (the same bits).
_finish_crops = jax.jit(ops.finish_crops, static_argnames=("mean", "std", "input_order"))


def train_transform(image, label, seed, opts: TrainOptions):
  """`transform` with mmseg's augmentation (`mmseg_stages`)."""
  return transform(image, label, seed, dataclasses.replace(opts, augmentation="mmseg"))


def openseg_transform(image, label, seed, opts: TrainOptions):
  """`transform` with openseg's augmentation (`openseg_stages`)."""
  return transform(image, label, seed, dataclasses.replace(opts, augmentation="openseg"))


def _padded_label_dtype(label_dtype, opts):
  """The label's own dtype (uint8 / uint16: a quarter or half of the bytes
  to batch and send; the train step casts it, `ops.finish_crops`) when the
  ignore index fits in it, else int32."""
  if not 0 <= opts.ignore_index <= label_dtype.max:
    return tf.int32
  return label_dtype


def _pad_example(ex, paddings, opts, pad_image: bool = True):
  """Image padded with 0 (unless not `pad_image`) and label with the ignore
  index to opts.crop_size by `paddings` ([[top, bottom], [left, right]]), the
  label as `_padded_label_dtype`; image_box: where the crop is."""
  ch, cw = opts.crop_size
  image = ex["image"]
  if pad_image:
    image = tf.pad(image, paddings + [[0, 0]], constant_values=0)
    image.set_shape([ch, cw, 3])
  label_dtype = _padded_label_dtype(ex["label"].dtype, opts)
  label = tf.pad(tf.cast(ex["label"], label_dtype), paddings, constant_values=opts.ignore_index)
  label.set_shape([ch, cw])
  box = tf.cast(tf.stack([paddings[0][0], paddings[1][0], tf.shape(ex["label"])[0],
                          tf.shape(ex["label"])[1]]), tf.int32)
  return dict(ex, image=image, label=label, image_box=box)


def mmseg_stages(opts: TrainOptions):
  """mmsegmentation's augmentation (see the module docstring) as
  `transform_stages`: the photometric distortion, channel order and
  normalisation are left to the train step, with the distortion's draws."""
  crop = tf.constant(opts.crop_size, tf.int32)

  def draw(ex):
    # 1. Rescale: ratio ~ U(ratio_range), keep ratio within scale * ratio.
    seeds = tf.random.experimental.stateless_split(ex["seed"], 4)
    ratio = tf.random.stateless_uniform([], seeds[0], opts.ratio_range[0], opts.ratio_range[1])
    if opts.ratio_range[0] == opts.ratio_range[1]:
      ratio = tf.constant(opts.ratio_range[0], tf.float32)
    new_hw = rescale_size(tf.shape(ex["label"]), opts.scale, ratio)
    return dict(ex, seeds=seeds, new_hw=new_hw, win=tf.minimum(crop, new_hw))

  def crop_label(ex):
    # 2. Random crop with cat_max_ratio. Only the crop window of the rescaled
    # label is computed: rows/cols by the nearest rule.
    label, new_hw, win = ex["label"], ex["new_hw"], ex["win"]
    in_hw = tf.shape(label)
    rows = _nearest_index(in_hw[0], new_hw[0])
    cols = _nearest_index(in_hw[1], new_hw[1])

    def window_at(top, left):
      return label_window(label, rows[top:top + win[0]], cols[left:left + win[1]])

    top_left, label = random_crop(window_at, new_hw, opts.crop_size, ex["seeds"][1],
                                  opts.cat_max_ratio, opts.ignore_index, opts.num_classes)
    return dict(ex, label=label, top_left=top_left)

  def rescale_crop_image(ex):
    # The image's crop window by bilinear sampling at the positions a full
    # resize would use, rounded to uint8 as mmseg's cv2 resize of a uint8
    # image is (the bilinear values lie in 0..255).
    window = resize_window_bilinear(ex["image"], ex["new_hw"], ex["top_left"], ex["win"])
    return dict(ex, image=tf.cast(tf.round(window), tf.uint8))

  def flip(ex):
    # 3. Horizontal flip.
    image, label = random_flip(ex["image"], ex["label"], ex["seeds"][2], opts.flip_prob)
    return dict(ex, image=image, label=label)

  def photometric(ex):
    # 4. The photometric distortion's draws (the device applies them,
    # `ops.photometric_distortion`).
    return dict(ex, photometric=photometric_draws(ex["seeds"][3]))

  def pad(ex):
    # 6. Pad to the crop size (image 0, label the ignore index).
    ch, cw = opts.crop_size
    hw = tf.shape(ex["label"])
    return _pad_example(ex, [[0, ch - hw[0]], [0, cw - hw[1]]], opts)

  stages = [("rescale: draw the size", draw), ("crop: label window (cat_max_ratio)", crop_label),
            ("rescale+crop: image window (bilinear)", rescale_crop_image), ("flip", flip)]
  if opts.photometric:
    stages.append(("photometric distortion: draws", photometric))
  return stages + [("pad", pad)]


# ---------------------------------------------------------------------------
# openseg.pytorch (the official ProtoSeg recipe).


def _mirrored(index, flip):
  """index [n, ...] in reverse order along its first axis when `flip` (a bool tensor)."""
  return tf.cond(flip, lambda: tf.reverse(index, [0]), lambda: index)


def openseg_resize_size(hw, scale, aspect):
  """openseg RandomResize: w * sqrt(aspect) * scale, h * scale / sqrt(aspect), truncated.

  Args:
    hw: int32 [2] (h, w); scale, aspect: float scalars.
  Returns:
    int32 [2] new (h, w) (at least 1).
  """
  hw_f = tf.cast(hw, tf.float64)
  root = tf.sqrt(tf.cast(aspect, tf.float64))
  scale = tf.cast(scale, tf.float64)
  new = tf.stack([hw_f[0] * scale / root, hw_f[1] * scale * root])
  return tf.maximum(tf.cast(tf.floor(new), tf.int32), 1)


def _randint(seed, lo, hi):
  """Uniform int32 in [lo, hi] (both included, like Python's random.randint)."""
  return tf.random.stateless_uniform([], seed, minval=lo, maxval=hi + 1, dtype=tf.int32)


# Rows and columns of slack in `source_canvas` (the floor in the resized size
# and the 4 taps need fewer than 8).
SOURCE_CANVAS_MARGIN = 8


def source_canvas(opts: TrainOptions) -> tuple[int, int]:
  """(rows, columns) of the source canvas of openseg's resize on the device:
  the most source rows / columns a crop window's bicubic taps can reach,
  crop / (smallest scale / sqrt(aspect) of that axis) + SOURCE_CANVAS_MARGIN
  (Cityscapes' recipe: 1082 x 2167 for a 512 x 1024 crop at scale 0.5,
  aspect 0.9-1.1)."""
  ch, cw = opts.crop_size
  s, (alo, ahi) = min(opts.ratio_range), opts.aspect_range
  rows = int(np.ceil(ch * np.sqrt(ahi) / s)) + SOURCE_CANVAS_MARGIN
  cols = int(np.ceil(cw / (s * np.sqrt(alo)))) + SOURCE_CANVAS_MARGIN
  return rows, cols


def openseg_stages(opts: TrainOptions):
  """openseg.pytorch's cv2 transforms (official ProtoSeg) as `transform_stages`.

  The official trans_seq [random_resize, random_crop, random_hflip,
  random_brightness] (each with ratio 1.0 except the flip's 0.5), then
  ToTensor + Normalize and the collate's pad:
    1. rescale by scale ~ U(ratio_range) with aspect ~ U(aspect_range):
       w * scale * sqrt(aspect), h * scale / sqrt(aspect), truncated to int;
       image bicubic (a = -0.75, OpenCV INTER_CUBIC) rounded to uint8, label
       nearest (OpenCV INTER_NEAREST);
    2. crop min(crop, size) per side at an offset uniform in
       [0, size - crop] (no class-ratio retries; offset 0 when smaller);
    3. horizontal flip with probability flip_prob;
    4. brightness: + an integer uniform in [-shift, shift], clipped to 0..255
       (always applied);
    5. channel order, normalise;
    6. pad to crop_size at a random offset (uniform in [0, pad] per side):
       image 0 (after normalisation: the mean colour), label ignore_index.
  The host draws everything and crops (and flips) the label; the image's
  steps 1-5 are the train step's (`ops.openseg_resize_crop`, from the
  source rows and columns of the crop window's taps that the host ships on
  a `source_canvas`, and `ops.normalize_image`).
  """
  crop = tf.constant(opts.crop_size, tf.int32)

  def draw(ex):
    # 1. Rescaled size, 2. crop offset (in the rescaled image), 3. the flip.
    seeds = tf.random.experimental.stateless_split(ex["seed"], 8)
    lo, hi = opts.ratio_range
    scale = tf.random.stateless_uniform([], seeds[0], lo, hi) if lo != hi else tf.constant(lo)
    alo, ahi = opts.aspect_range
    aspect = (tf.random.stateless_uniform([], seeds[1], alo, ahi) if alo != ahi
              else tf.constant(alo))
    new_hw = openseg_resize_size(tf.shape(ex["label"]), scale, aspect)
    win = tf.minimum(crop, new_hw)
    top = _randint(seeds[2], 0, new_hw[0] - win[0])
    left = _randint(seeds[3], 0, new_hw[1] - win[1])
    flip = tf.random.stateless_uniform([], seeds[4]) < opts.flip_prob
    return dict(ex, seeds=seeds, new_hw=new_hw, win=win, top_left=tf.stack([top, left]),
                flip=flip)

  def crop_label(ex):
    label, new_hw, win, (top, left) = ex["label"], ex["new_hw"], ex["win"], tf.unstack(ex["top_left"])
    in_hw = tf.shape(label)
    rows = _nearest_index(in_hw[0], new_hw[0])[top:top + win[0]]
    cols = _mirrored(_nearest_index(in_hw[1], new_hw[1])[left:left + win[1]], ex["flip"])
    return dict(ex, label=label_window(label, rows, cols))

  def brightness(ex):
    # 4. The brightness shift d, an integer in [-shift, shift] (int32).
    if not opts.brightness_shift:
      return tf.constant(0, tf.int32)
    return _randint(ex["seeds"][5], -opts.brightness_shift, opts.brightness_shift)

  def pad(ex):
    # 6. Pad at a random offset: only the label (the box tells the device
    # where the image's window goes).
    pad = crop - ex["win"]
    up = _randint(ex["seeds"][6], 0, pad[0])
    lft = _randint(ex["seeds"][7], 0, pad[1])
    return _pad_example(ex, [[up, pad[0] - up], [lft, pad[1] - lft]], opts, pad_image=False)

  def source_window(ex):
    # 1-5 of the image on the device (`ops.openseg_resize_crop`): the source
    # rows and columns the window's bicubic taps reach (all of them when the
    # image fits), on a fixed canvas, and the integers that say what to do.
    image, new_hw, win, top_left = ex["image"], ex["new_hw"], ex["win"], ex["top_left"]
    in_hw = tf.shape(image)[:2]
    # The window's first and last taps, floor(src) - 1 and floor(src) + 2 of
    # its first and last pixels (`ops.cubic_floor`, the device's own rule).
    first = tf.maximum(cubic_floor(in_hw, new_hw, top_left) - 1, 0)
    last = tf.minimum(cubic_floor(in_hw, new_hw, top_left + win - 1) + 2, in_hw - 1)
    canvas = source_canvas(opts)
    # An image that fits the canvas goes whole (its slice is then no copy).
    whole = tf.reduce_all(in_hw <= tf.constant(canvas, tf.int32))
    r0, c0 = tf.unstack(tf.where(whole, 0, first))
    size = tf.where(whole, in_hw, last + 1 - first)
    fits = tf.debugging.assert_less_equal(
        size, tf.constant(canvas, tf.int32),
        message=f"openseg resize on the device: a crop window's source rows/columns exceed the "
                f"canvas {canvas} (augment.source_canvas, config.dataset.resize_on_device)")
    with tf.control_dependencies([fits]):
      region = image[r0:r0 + size[0], c0:c0 + size[1]]
    source = tf.pad(region, [[0, canvas[0] - size[0]], [0, canvas[1] - size[1]], [0, 0]])
    source.set_shape([*canvas, 3])
    params = ResizeParams(in_h=in_hw[0], in_w=in_hw[1], out_h=new_hw[0], out_w=new_hw[1],
                          top=top_left[0], left=top_left[1], source_top=r0, source_left=c0,
                          flip=ex["flip"], brightness=brightness(ex))
    return dict(ex, image=source, resize=params)

  return [("rescale: draw the size, offset and flip", draw),
          ("crop+flip: label window", crop_label),
          ("image: source rows/columns for the device's bicubic", source_window), ("pad", pad)]
