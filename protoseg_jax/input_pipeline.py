"""tf.data input pipelines: decode, augment (mmsegmentation recipe), batch, shard.

Training (per example, in mmseg's order):
  decode -> keep-ratio rescale with a ratio drawn in `ratio_range` of `scale`
  -> random crop of `crop_size` (retried up to 10 times so that no class fills
  more than `cat_max_ratio` of the labelled crop pixels) -> horizontal flip
  -> PhotoMetricDistortion -> normalise -> pad to `crop_size` (0 image, 255
  label). Labels are always resized with nearest neighbour.

Determinism and resuming: each process reads its slice of the split in the
stored order (TFDS shuffles examples when preparing), epoch `e` is shuffled
with a buffer seeded by (seed, e), and the augmentation randomness of an
example is drawn from stateless RNGs keyed by (seed, e, example index). A
run resumed with `start_step=k` starts at epoch k*B/N and skips the encoded
records before its position, so it yields exactly the batches an
uninterrupted run yields from step k, without decoding what it skips.

Evaluation: one pass over the eval split; every process pads its slice with
masked rows so that all processes run the same number of batches and every
example is counted exactly once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import data as datasets

try:  # tf.data must not take accelerator memory.
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # pragma: no cover - devices already initialised
  pass

IGNORE_INDEX = 255
_MAX_EPOCHS = 1 << 40
_IMAGENET_MEAN = (123.675, 116.28, 103.53)
_IMAGENET_STD = (58.395, 57.12, 57.375)


class DatasetNotPreparedError(FileNotFoundError):
  """A real dataset has not been prepared in the TFDS data_dir."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  ignore_index: int
  class_names: tuple[str, ...]
  palette: tuple[tuple[int, int, int], ...]
  num_train_examples: int
  num_eval_examples: int


# ---------------------------------------------------------------------------
# Config access.


def _get(cfg, key: str, default=None):
  """cfg.key, or `default` when the key is absent or None."""
  try:
    value = cfg[key] if isinstance(cfg, Mapping) else getattr(cfg, key)
  except (KeyError, AttributeError):
    return default
  return default if value is None else value


def _dataset_cfg(config):
  ds = _get(config, "dataset")
  if ds is None:
    raise ValueError("config.dataset is missing: expected a ConfigDict with at least `name`.")
  return ds


def _pair(value, what: str) -> tuple[int, int]:
  value = tuple(int(v) for v in (value if isinstance(value, (tuple, list)) else (value, value)))
  if len(value) != 2 or min(value) <= 0:
    raise ValueError(f"config.dataset.{what} must be two positive ints, got {value}.")
  return value


def _builder_config_name(ds_cfg) -> str | None:
  return _get(ds_cfg, "builder_config")


# ---------------------------------------------------------------------------
# Builders and info.


def check_prepared(config):
  """Returns the prepared TFDS builder of config.dataset, preparing the demo if needed.

  Raises:
    DatasetNotPreparedError: a real dataset is not prepared in the data_dir;
      the message says which files to download, where to put them and the
      command that prepares them.
  """
  ds_cfg = _dataset_cfg(config)
  name = _get(ds_cfg, "name")
  builder = datasets.get_builder(name, data_dir=_get(ds_cfg, "data_dir"),
                                 config=_builder_config_name(ds_cfg))
  if name == "demo":
    return _prepare_demo(builder, ds_cfg)
  if builder.is_prepared():
    return builder
  raise DatasetNotPreparedError(
      f"Dataset {name!r} is not prepared: nothing at {builder.data_dir}.\n"
      f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
      f"(use the same --data_dir as config.dataset.data_dir="
      f"{_get(ds_cfg, 'data_dir')!r}; None means TFDS's default, "
      f"{builder.data_dir_root}).")


def _prepare_demo(builder, ds_cfg):
  """Generates the demo dataset where it is missing, one process at a time.

  Process 0 goes first; the others wait for it and then find the data ready
  on a shared data_dir or generate their own copy on a local disk. Two
  processes never write the same dataset directory at once.
  """
  from jax.experimental import multihost_utils
  barrier = "protoseg_jax: demo dataset prepared by process 0"
  first = jax.process_index() == 0
  if not first:
    multihost_utils.sync_global_devices(barrier)
    builder = datasets.get_builder("demo", data_dir=_get(ds_cfg, "data_dir"),
                                   config=_builder_config_name(ds_cfg))
  if not builder.is_prepared():
    builder.download_and_prepare()
  if first and jax.process_count() > 1:
    multihost_utils.sync_global_devices(barrier)
  return builder


def _split_size(builder, split: str) -> int:
  try:
    return int(builder.info.splits[split].num_examples)
  except KeyError as e:
    raise ValueError(f"Dataset {builder.name} has no split {split!r}; it has "
                     f"{sorted(builder.info.splits.keys())}.") from e


def get_dataset_info(config) -> DatasetInfo:
  """Class count, ignore index, names, palette and split sizes of config.dataset."""
  ds_cfg = _dataset_cfg(config)
  builder = check_prepared(config)
  meta = builder.info.metadata
  return DatasetInfo(
      name=str(_get(ds_cfg, "name")),
      num_classes=int(meta["num_classes"]),
      ignore_index=int(meta["ignore_index"]),
      class_names=tuple(meta["class_names"]),
      palette=tuple(tuple(int(v) for v in c) for c in meta["palette"]),
      num_train_examples=_split_size(builder, _get(ds_cfg, "train_split", "train")),
      num_eval_examples=_split_size(builder, _get(ds_cfg, "eval_split", "validation")),
  )


# ---------------------------------------------------------------------------
# Geometry helpers (tf, per example).


def _decode(image_bytes, label_bytes):
  """-> uint8 [H, W, 3], uint8 [H, W]."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  label = tf.io.decode_png(label_bytes, channels=1)[..., 0]
  return image, label


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


def crop_is_acceptable(label_crop, cat_max_ratio: float, ignore_index: int = IGNORE_INDEX):
  """mmseg's cat_max_ratio test on a label crop: >1 class and none above the ratio.

  Args:
    label_crop: uint8 [h, w].
  Returns:
    bool scalar: at least two non-ignored classes present and the largest
    holds less than `cat_max_ratio` of the non-ignored pixels.
  """
  counts = tf.raw_ops.DenseBincount(input=tf.cast(tf.reshape(label_crop, [-1]), tf.int32),
                                   size=256, weights=tf.zeros([0], tf.int32))
  counts = counts * tf.cast(tf.range(256) != ignore_index, tf.int32)
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


def random_crop(window_fn, hw, crop_hw, seed, cat_max_ratio: float):
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
  Returns:
    (int32 [2] (top, left), the label crop there).
  """
  tops, lefts = crop_candidates(hw, crop_hw, seed)
  first = window_fn(tops[0], lefts[0])
  if cat_max_ratio >= 1.0:
    return tf.stack([tops[0], lefts[0]]), first

  def cond(k, window):
    return tf.logical_and(k < 10, tf.logical_not(crop_is_acceptable(window, cat_max_ratio)))

  def body(k, window):
    del window
    return k + 1, window_fn(tops[k + 1], lefts[k + 1])

  k, window = tf.while_loop(cond, body, (tf.constant(0), first),
                            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None])))
  return tf.stack([tops[k], lefts[k]]), window


def resize_window_bilinear(image, out_hw, top_left, win_hw):
  """A window of tf.image.resize(image, out_hw, 'bilinear') without the full resize.

  The bilinear ('triangle', no antialiasing) ScaleAndTranslate kernel that
  tf.image.resize uses, translated so that only output pixels
  top_left + [0, win_hw) are computed: the same values as resizing the whole
  image and cropping.

  Args:
    image: [H, W, C] uint8 or float.
    out_hw: int32 [2] size of the virtual full resize.
    top_left: int32 [2] window offset in the resized image.
    win_hw: int32 [2] window size.
  Returns:
    float32 [win_h, win_w, C].
  """
  scale = tf.cast(out_hw, tf.float32) / tf.cast(tf.shape(image)[:2], tf.float32)
  out = tf.raw_ops.ScaleAndTranslate(
      images=image[None], size=tf.cast(win_hw, tf.int32), scale=scale,
      translation=-tf.cast(top_left, tf.float32), kernel_type="triangle", antialias=False)
  return out[0]


def scale_saturation(image, factor):
  """HSV saturation times `factor` (clipped to 1), hue and value kept, in RGB.

  With V = max(r, g, b) and m = min(r, g, b), S = (V - m) / V; scaling S by
  a and keeping H and V maps each channel c to V - a (V - c). Clipping S at
  1 caps a at V / (V - m). Same result as converting to HSV and back
  (tf.image.adjust_saturation) at a third of the cost.

  Args:
    image: float32 [..., 3] >= 0.
    factor: float scalar >= 0.
  """
  v = tf.reduce_max(image, axis=-1, keepdims=True)
  m = tf.reduce_min(image, axis=-1, keepdims=True)
  a = tf.minimum(factor, v / tf.maximum(v - m, 1e-6))
  return tf.clip_by_value(v - a * (v - image), 0., 255.)


def photometric_distortion(image, seed):
  """mmseg PhotoMetricDistortion on float32 [H, W, 3] RGB in 0..255.

  Brightness +U(-32, 32), contrast xU(0.5, 1.5), saturation xU(0.5, 1.5),
  hue + randint(-18, 18) (OpenCV hue units, 180 per turn), each with
  probability 0.5; contrast before or after the HSV steps with probability
  0.5. Values are clipped to 0..255 after each step (mmseg also truncates to
  uint8 between steps, which is not reproduced). Skipped steps cost nothing.
  """
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 9))
  coin = lambda s: tf.random.stateless_uniform([], s) < 0.5
  uni = lambda s, lo, hi: tf.random.stateless_uniform([], s, lo, hi)
  do_bright, do_contrast, do_sat, do_hue = (coin(seeds[i]) for i in (0, 2, 4, 6))
  delta = uni(seeds[1], -32., 32.)
  alpha = uni(seeds[3], 0.5, 1.5)
  sat = uni(seeds[5], 0.5, 1.5)
  hue = tf.cast(tf.random.stateless_uniform([], seeds[7], -18, 18, dtype=tf.int32), tf.float32)
  contrast_first = coin(seeds[8])

  def maybe(pred, fn, img):
    return tf.cond(pred, lambda: fn(img), lambda: img)

  def contrast(img):
    return tf.clip_by_value(img * alpha, 0., 255.)

  image = maybe(do_bright, lambda img: tf.clip_by_value(img + delta, 0., 255.), image)
  image = maybe(tf.logical_and(contrast_first, do_contrast), contrast, image)
  image = maybe(do_sat, lambda img: scale_saturation(img, sat), image)
  # AdjustHue is homogeneous in the RGB scale: no need to map to [0, 1].
  image = maybe(do_hue, lambda img: tf.image.adjust_hue(img, hue / 180.), image)
  image = maybe(tf.logical_and(tf.logical_not(contrast_first), do_contrast), contrast, image)
  return image


def _normalize(image, mean, std):
  scale = 1.0 / np.asarray(std, np.float32)
  return image * scale - np.asarray(mean, np.float32) * scale


@dataclasses.dataclass(frozen=True)
class _TrainOptions:
  crop_size: tuple[int, int]
  scale: tuple[int, int]
  ratio_range: tuple[float, float]
  cat_max_ratio: float
  flip_prob: float
  photometric: bool
  mean: tuple[float, float, float]
  std: tuple[float, float, float]


def _train_options(config) -> _TrainOptions:
  ds = _dataset_cfg(config)
  crop = _pair(_get(ds, "crop_size", (512, 512)), "crop_size")
  ratio = tuple(float(r) for r in _get(ds, "ratio_range", (0.5, 2.0)))
  if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
    raise ValueError(f"config.dataset.ratio_range must be (lo, hi) with 0 < lo <= hi, got {ratio}.")
  return _TrainOptions(
      crop_size=crop,
      scale=_pair(_get(ds, "scale", (2048, 512)), "scale"),
      ratio_range=ratio,
      cat_max_ratio=float(_get(ds, "cat_max_ratio", 0.75)),
      flip_prob=float(_get(ds, "flip_prob", 0.5)),
      photometric=bool(_get(ds, "photometric", True)),
      mean=tuple(float(v) for v in _get(ds, "mean", _IMAGENET_MEAN)),
      std=tuple(float(v) for v in _get(ds, "std", _IMAGENET_STD)),
  )


def train_transform(image, label, seed, opts: _TrainOptions):
  """One training example.

  Args:
    image: uint8 [H, W, 3]; label: uint8 [H, W]; seed: int [2] stateless seed.
  Returns:
    image float32 [ch, cw, 3] normalised, label int32 [ch, cw] (255 = ignore/padding).
  """
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  # 1. Rescale: ratio ~ U(ratio_range), keep ratio within scale * ratio.
  ratio = tf.random.stateless_uniform([], seeds[0], opts.ratio_range[0], opts.ratio_range[1])
  if opts.ratio_range[0] == opts.ratio_range[1]:
    ratio = tf.constant(opts.ratio_range[0], tf.float32)
  in_hw = tf.shape(label)
  new_hw = rescale_size(in_hw, opts.scale, ratio)
  # 2. Random crop with cat_max_ratio. Only the crop window of the rescaled
  # image and label is computed: label rows/cols by the nearest rule, the
  # image by bilinear sampling at the positions a full resize would use.
  rows = _nearest_index(in_hw[0], new_hw[0])
  cols = _nearest_index(in_hw[1], new_hw[1])
  win = tf.minimum(tf.constant(opts.crop_size, tf.int32), new_hw)

  flat_label = tf.reshape(label, [-1])

  def label_window(top, left):
    index = rows[top:top + win[0], None] * in_hw[1] + cols[None, left:left + win[1]]
    return tf.gather(flat_label, index)

  top_left, label = random_crop(label_window, new_hw, opts.crop_size, seeds[1], opts.cat_max_ratio)
  image = resize_window_bilinear(image, new_hw, top_left, win)
  # 3. Horizontal flip.
  flip = tf.random.stateless_uniform([], seeds[2]) < opts.flip_prob
  image, label = tf.cond(flip, lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])),
                         lambda: (image, label))
  # 4. Photometric distortion.
  if opts.photometric:
    image = photometric_distortion(image, seeds[3])
  # 5. Normalise, 6. pad to the crop size.
  ch, cw = opts.crop_size
  image = _normalize(image, opts.mean, opts.std)
  hw = tf.shape(label)
  image = tf.pad(image, [[0, ch - hw[0]], [0, cw - hw[1]], [0, 0]], constant_values=0.)
  label = tf.pad(tf.cast(label, tf.int32), [[0, ch - hw[0]], [0, cw - hw[1]]],
                 constant_values=IGNORE_INDEX)
  image.set_shape([ch, cw, 3])
  label.set_shape([ch, cw])
  return image, label


def example_seed(seed: int, epoch, index):
  """int64 [2] stateless seed of example `index` in epoch `epoch`."""
  base = tf.constant([seed & 0x7FFFFFFF, 0x5EED], tf.int64)
  key = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
  return tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))


def _epoch_shuffle_seed(seed: int, epoch):
  """int64 scalar seed of the shuffle buffer of `epoch`."""
  key = tf.random.experimental.stateless_fold_in(
      tf.constant([seed & 0x7FFFFFFF, 0x5F0FF1E], tf.int64), tf.cast(epoch, tf.int64))
  return tf.random.stateless_uniform([], key, minval=1, maxval=(1 << 62), dtype=tf.int64)


def _read_split(builder, split: str):
  """(image bytes, label bytes) in stored order, not decoded."""
  ds = builder.as_dataset(
      split=split, shuffle_files=False,
      decoders={"image": tfds.decode.SkipDecoding(), "label": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(try_autocache=False, add_tfds_id=False))
  return ds.map(lambda ex: (ex["image"], ex["label"]))


def _num_parallel(ds_cfg):
  value = _get(ds_cfg, "num_parallel_calls", tf.data.AUTOTUNE)
  return tf.data.AUTOTUNE if value in (-1, None) else int(value)


def make_train_dataset(config, *, process_index: int, process_count: int,
                       start_step: int = 0) -> tf.data.Dataset:
  """Endless dataset of this process's local training batches.

  Returns:
    tf.data.Dataset of {'image': float32 [b, ch, cw, 3], 'label': int32
    [b, ch, cw]} with b = config.batch_size // process_count.
  """
  ds_cfg = _dataset_cfg(config)
  batch_size = int(_get(config, "batch_size"))
  if batch_size % process_count:
    raise ValueError(f"config.batch_size={batch_size} is not divisible by the "
                     f"{process_count} processes.")
  local_batch = batch_size // process_count
  seed = int(_get(config, "seed", 0))
  opts = _train_options(config)
  builder = check_prepared(config)
  split = _get(ds_cfg, "train_split", "train")
  _split_size(builder, split)
  subsplit = tfds.split_for_jax_process(split, process_index=process_index,
                                        process_count=process_count, drop_remainder=True)
  n_local = _split_size(builder, subsplit)
  if n_local == 0:
    raise ValueError(f"Split {split!r} has too few examples for {process_count} processes.")
  records = _read_split(builder, subsplit).enumerate()
  first_index = process_index * n_local  # global index of this slice's first example
  buffer = max(1, min(int(_get(ds_cfg, "shuffle_buffer", 1024)), n_local))

  def epoch(e):
    shuffled = records.shuffle(buffer, seed=_epoch_shuffle_seed(seed, e),
                               reshuffle_each_iteration=False)
    return shuffled.map(lambda i, ex: (e, i + first_index, ex[0], ex[1]))

  start_example = int(start_step) * local_batch
  start_epoch, offset = divmod(start_example, n_local)
  ds = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch)
  if offset:
    ds = ds.skip(offset)

  def transform(e, i, image_bytes, label_bytes):
    image, label = _decode(image_bytes, label_bytes)
    image, label = train_transform(image, label, example_seed(seed, e, i), opts)
    return {"image": image, "label": label}

  ds = ds.map(transform, num_parallel_calls=_num_parallel(ds_cfg), deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  return ds.prefetch(int(_get(ds_cfg, "prefetch", 2)))


def _eval_options(config):
  ds = _dataset_cfg(config)
  scale = _get(ds, "eval_scale")
  scale = _pair(scale, "eval_scale") if scale is not None else None
  canvas = _get(ds, "eval_canvas")
  if canvas is None:
    raise ValueError("config.dataset.eval_canvas (Hc, Wc) is required: the fixed eval image size.")
  canvas = _pair(canvas, "eval_canvas")
  label_canvas = _pair(_get(ds, "eval_label_canvas", canvas), "eval_label_canvas")
  mean = tuple(float(v) for v in _get(ds, "mean", _IMAGENET_MEAN))
  std = tuple(float(v) for v in _get(ds, "std", _IMAGENET_STD))
  return scale, canvas, label_canvas, mean, std


def make_eval_dataset(config, *, process_index: int, process_count: int) -> tf.data.Dataset:
  """One pass over this process's slice of the eval split, padded and masked.

  Every process yields the same number of batches, ceil(ceil(N / P) / b)
  with b = config.eval_batch_size // P; rows past the slice have mask False.
  """
  ds_cfg = _dataset_cfg(config)
  batch_size = int(_get(config, "eval_batch_size", _get(config, "batch_size")))
  if batch_size % process_count:
    raise ValueError(f"config.eval_batch_size={batch_size} is not divisible by the "
                     f"{process_count} processes.")
  local_batch = batch_size // process_count
  scale, (hc, wc), (hl, wl), mean, std = _eval_options(config)
  builder = check_prepared(config)
  split = _get(ds_cfg, "eval_split", "validation")
  n_total = _split_size(builder, split)
  subsplit = tfds.split_for_jax_process(split, process_index=process_index,
                                        process_count=process_count, drop_remainder=False)
  n_local = _split_size(builder, subsplit)
  largest = -(-n_total // process_count)
  num_batches = -(-largest // local_batch)

  def transform(image_bytes, label_bytes):
    image, label = _decode(image_bytes, label_bytes)
    label_hw = tf.shape(label)
    if scale is None:
      new_hw = label_hw
      image = tf.cast(image, tf.float32)
    else:
      new_hw = rescale_size(label_hw, scale)
      image = tf.image.resize(image, new_hw, method="bilinear", antialias=False)
    checks = [
        tf.debugging.assert_less_equal(
            new_hw, tf.constant([hc, wc]),
            message=f"Resized eval image larger than config.dataset.eval_canvas=({hc}, {wc}); "
                    "input_pipeline.scan_eval_sizes(config) gives the canvases that fit"),
        tf.debugging.assert_less_equal(
            label_hw, tf.constant([hl, wl]),
            message=f"Eval label larger than config.dataset.eval_label_canvas=({hl}, {wl}); "
                    "input_pipeline.scan_eval_sizes(config) gives the canvases that fit"),
    ]
    with tf.control_dependencies(checks):
      image = _normalize(image, mean, std)
      image = tf.pad(image, [[0, hc - new_hw[0]], [0, wc - new_hw[1]], [0, 0]])
      label = tf.pad(tf.cast(label, tf.int32), [[0, hl - label_hw[0]], [0, wl - label_hw[1]]],
                     constant_values=IGNORE_INDEX)
    image.set_shape([hc, wc, 3])
    label.set_shape([hl, wl])
    return {"image": image, "image_hw": tf.cast(new_hw, tf.int32), "label": label,
            "label_hw": tf.cast(label_hw, tf.int32), "mask": tf.constant(True)}

  ds = _read_split(builder, subsplit).map(transform, num_parallel_calls=_num_parallel(ds_cfg))
  n_pad = num_batches * local_batch - n_local
  if n_pad:
    pad = {"image": tf.zeros([hc, wc, 3], tf.float32), "image_hw": tf.zeros([2], tf.int32),
           "label": tf.fill([hl, wl], IGNORE_INDEX), "label_hw": tf.zeros([2], tf.int32),
           "mask": tf.constant(False)}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(n_pad))
  ds = ds.batch(local_batch, drop_remainder=True)
  return ds.prefetch(int(_get(ds_cfg, "prefetch", 2)))


def scan_eval_sizes(config) -> dict[str, tuple[int, int]]:
  """Smallest eval_canvas / eval_label_canvas holding every eval example.

  Decodes only the label PNGs of config.dataset.eval_split (seconds for
  ADE20K's 2000 images) and applies the keep-ratio eval_scale.

  Returns:
    {'eval_canvas': (Hc, Wc), 'eval_label_canvas': (Hl, Wl)}.
  """
  ds_cfg = _dataset_cfg(config)
  scale = _get(ds_cfg, "eval_scale")
  scale = _pair(scale, "eval_scale") if scale is not None else None
  builder = check_prepared(config)

  def sizes(image_bytes, label_bytes):
    del image_bytes
    hw = tf.shape(tf.io.decode_png(label_bytes, channels=1))[:2]
    return tf.concat([hw, rescale_size(hw, scale) if scale is not None else hw], 0)

  ds = _read_split(builder, _get(ds_cfg, "eval_split", "validation"))
  ds = ds.map(sizes, num_parallel_calls=_num_parallel(ds_cfg))
  most = ds.reduce(tf.zeros([4], tf.int32), tf.maximum).numpy().tolist()
  return {"eval_canvas": tuple(most[2:]), "eval_label_canvas": tuple(most[:2])}


# ---------------------------------------------------------------------------
# Iterators of global jax.Arrays.


def _to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  def put(key, value):
    s = sharding[key] if isinstance(sharding, Mapping) else sharding
    return jax.make_array_from_process_local_data(s, value)
  return {k: put(k, v) for k, v in batch.items()}


def _global_batches(ds: tf.data.Dataset, sharding) -> Iterator[dict[str, jax.Array]]:
  for batch in ds.as_numpy_iterator():
    yield _to_global(batch, sharding)


def create_train_iterator(config, sharding, *, start_step: int = 0
                          ) -> Iterator[dict[str, jax.Array]]:
  """Endless global training batches.

  Args:
    config: the run config (batch_size, seed, dataset.*).
    sharding: a jax.sharding.Sharding of the batch dimension (e.g.
      NamedSharding(mesh, P('data'))), or a dict of them keyed like the batch.
    start_step: the step to resume at.
  Returns:
    An iterator of {'image': float32 [B, ch, cw, 3] normalised, 'label':
    int32 [B, ch, cw]}, B = config.batch_size (global); this process
    supplies its rows. Configuration and data errors (dataset not prepared)
    are raised by this call, not at the first next().
  """
  ds = make_train_dataset(config, process_index=jax.process_index(),
                          process_count=jax.process_count(), start_step=start_step)
  return _global_batches(ds, sharding)


def create_eval_iterator(config, sharding) -> Iterator[dict[str, jax.Array]]:
  """One pass over the eval split in global batches of config.eval_batch_size.

  Returns:
    An iterator of {'image': float32 [B, Hc, Wc, 3], 'image_hw': int32 [B, 2],
    'label': int32 [B, Hl, Wl] original resolution padded with 255,
    'label_hw': int32 [B, 2], 'mask': bool [B] (False for padding rows)}.
  """
  ds = make_eval_dataset(config, process_index=jax.process_index(),
                         process_count=jax.process_count())
  return _global_batches(ds, sharding)
