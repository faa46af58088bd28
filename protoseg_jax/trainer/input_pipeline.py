"""tf.data input pipelines: read, decode, augment, batch, shard over processes.

The dataset comes from `protoseg_jax.datasets` (prepared builder, class facts,
split sizes), the per-example training augmentation from
`protoseg_jax.augment` (config.dataset.augmentation: "mmseg" or "openseg";
config.dataset.input_order: "rgb" or "bgr", train and eval); this module turns them into per-process tf.data
pipelines and iterators of global jax.Arrays. Every setting is read from the
run config (configs/default.py sets them all); labels are padded with the
dataset's ignore index.

Determinism and resuming: row r of every global batch comes from its own
slice of the split (TFDS shuffles examples when preparing), shuffled in
epoch `e` with a buffer seeded by (seed, e, r); each process reads the rows
it supplies, so the global batches do not depend on the number of processes
(2 processes x 2 devices train exactly like 1 x 4). The augmentation
randomness of an example is drawn from stateless RNGs keyed by (seed, e,
example index). A run resumed with `start_step=k` starts every row at its
position for step k, skipping encoded records without decoding them, so it
yields exactly the batches an uninterrupted run yields from step k.

Evaluation: one pass over the eval split; every process pads its slice with
masked rows so that all processes run the same number of batches and every
example is counted exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from protoseg_jax import held_out, validate
from protoseg_jax.trainer import augment
from protoseg_jax.trainer.datasets import builder_meta, check_prepared, split_size

_MAX_EPOCHS = 1 << 40


# ---------------------------------------------------------------------------
# Config access.


def _pair(value, what: str) -> tuple[int, int]:
  if value is None:
    raise ValueError(f"config.dataset.{what} must be two positive ints, got None.")
  value = tuple(int(v) for v in (value if isinstance(value, (tuple, list)) else (value, value)))
  if len(value) != 2 or min(value) <= 0:
    raise ValueError(f"config.dataset.{what} must be two positive ints, got {value}.")
  return value


def _eval_scale(config):
  """config.dataset.eval_scale as a pair, or None (original size)."""
  scale = config.dataset.eval_scale
  return _pair(scale, "eval_scale") if scale is not None else None


def _mean_std(config):
  return (tuple(float(v) for v in config.dataset.mean),
          tuple(float(v) for v in config.dataset.std))


def _num_parallel(config):
  value = config.dataset.num_parallel_calls
  return tf.data.AUTOTUNE if value in (-1, None) else int(value)


def eval_options(config) -> augment.EvalOptions:
  """The eval preprocessing of config.dataset (`augment.eval_transform`)."""
  mean, std = _mean_std(config)
  return augment.EvalOptions(scale=_eval_scale(config), mean=mean, std=std,
                             input_order=config.dataset.input_order)


def eval_canvases(config) -> tuple[tuple[int, int], tuple[int, int]]:
  """(config.dataset.eval_canvas, eval_label_canvas): the padded image and label sizes."""
  return (_pair(config.dataset.eval_canvas, "eval_canvas"),
          _pair(config.dataset.eval_label_canvas, "eval_label_canvas"))


def train_options(config, ignore_index: int, num_classes: int) -> augment.TrainOptions:
  """config.dataset's train transform settings (their values are checked by
  validate.validate_config, which the trainer runs first; their defaults are
  configs/default.py's, the options have none)."""
  mean, std = _mean_std(config)
  return augment.TrainOptions(
      crop_size=_pair(config.dataset.crop_size, "crop_size"),
      scale=_pair(config.dataset.scale, "scale"),
      ratio_range=tuple(float(r) for r in config.dataset.ratio_range),
      cat_max_ratio=float(config.dataset.cat_max_ratio),
      flip_prob=float(config.dataset.flip_prob),
      photometric=bool(config.dataset.photometric),
      mean=mean,
      std=std,
      ignore_index=int(ignore_index),
      input_order=config.dataset.input_order,
      augmentation=config.dataset.augmentation,
      aspect_range=tuple(float(a) for a in config.dataset.aspect_range),
      brightness_shift=int(config.dataset.brightness_shift),
      num_classes=int(num_classes),
  )


def _held_out_lut(config, builder):
  """The training-label map of config.dataset.held_out_class (that class ->
  ignore, ids above it down by one; `held_out.label_lut`) in the labels'
  dtype (uint8 [256], uint16 [65536]), or None."""
  meta = builder_meta(builder)
  k = held_out.held_out_class(config, meta.num_classes)
  if k == held_out.NONE:
    return None
  wide = _label_dtype(builder) == tf.uint16
  size = 65536 if wide else 256
  if not 0 <= meta.ignore_index < size:
    raise ValueError(f"config.dataset.held_out_class needs an ignore index in 0..{size - 1} "
                     f"(the labels' PNG depth), dataset has {meta.ignore_index}")
  ids = held_out.model_class_ids(meta.num_classes, k)
  lut = held_out.label_lut(ids, meta.ignore_index, size)[:size]
  return tf.constant(lut.astype(np.uint16 if wide else np.uint8))


# ---------------------------------------------------------------------------
# Reading and seeds.


def _label_dtype(builder):
  """tf.uint8, or tf.uint16 for a dataset whose labels are 16-bit PNGs (more
  than 255 classes, e.g. ADE20K-Full's 847)."""
  dtype = builder.info.features["label"].tf_dtype
  return tf.uint16 if dtype == tf.uint16 else tf.uint8


def decode_image(image_bytes):
  """Stored image bytes (PNG or JPEG) -> uint8 [H, W, 3]."""
  return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def _decode_label(label_bytes, label_dtype=tf.uint8):
  """Stored label PNG bytes -> uint8 (or uint16) [H, W]."""
  return tf.io.decode_png(label_bytes, channels=1, dtype=label_dtype)[..., 0]


def _decode(image_bytes, label_bytes, label_dtype=tf.uint8):
  """-> uint8 [H, W, 3], uint8 (or uint16) [H, W].

  A record that does not decode (truncated, corrupt) or whose image and
  label differ in size raises InvalidArgumentError here; the pipelines drop
  such examples with `_skip_bad_records`.
  """
  image = decode_image(image_bytes)
  label = _decode_label(label_bytes, label_dtype)
  same = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(label)))
  check = tf.debugging.Assert(same, ["bad record: image and label differ in size:",
                                     tf.shape(image)[:2], tf.shape(label)])
  with tf.control_dependencies([check]):
    return tf.identity(image), tf.identity(label)


def train_decoder(config, builder):
  """(image bytes, label bytes) -> `_decode`'s (image, label), with the label
  through config.dataset.held_out_class's map (the model never sees that class)."""
  label_dtype = _label_dtype(builder)
  lut = _held_out_lut(config, builder)

  def decode(image_bytes, label_bytes):
    image, label = _decode(image_bytes, label_bytes, label_dtype)
    if lut is not None:
      label = tf.gather(lut, tf.cast(label, tf.int32))
    return image, label
  return decode


def _skip_bad_records(ds: tf.data.Dataset) -> tf.data.Dataset:
  """`ds` without the elements whose computation failed (`_decode`'s errors).

  Training never stops on one bad stored record (a dataset prepared by an
  older version, a corrupted file): TF logs a warning with the error for
  each element dropped, and the order of the others is kept.
  """
  return ds.ignore_errors(log_warning=True)


def example_seed(seed: int, epoch, index):
  """int64 [2] stateless seed of example `index` in epoch `epoch`."""
  base = tf.constant([seed & 0x7FFFFFFF, 0x5EED], tf.int64)
  key = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
  return tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))


def _epoch_shuffle_seed(seed: int, epoch, row: int = 0):
  """int64 scalar seed of the shuffle buffer of `epoch` for batch row `row`."""
  key = tf.random.experimental.stateless_fold_in(
      tf.constant([seed & 0x7FFFFFFF, 0x5F0FF1E], tf.int64), tf.cast(epoch, tf.int64))
  key = tf.random.experimental.stateless_fold_in(key, tf.cast(row, tf.int64))
  return tf.random.stateless_uniform([], key, minval=1, maxval=(1 << 62), dtype=tf.int64)


def read_split(builder, split: str, *extra: str):
  """(image bytes, label bytes, *extra features' bytes) in stored order, not decoded."""
  keys = ("image", "label", *extra)
  ds = builder.as_dataset(
      split=split, shuffle_files=False,
      decoders={k: tfds.decode.SkipDecoding() for k in keys},
      read_config=tfds.ReadConfig(try_autocache=False, add_tfds_id=False))
  return ds.map(lambda ex: tuple(ex[k] for k in keys))


def has_appearance(builder) -> bool:
  """Whether the dataset records each pixel's look ('appearance', the demo's)."""
  return "appearance" in builder.info.features


def _local_batch(config, key: str, process_count: int) -> int:
  """config.<key> (a global batch size) divided over the processes."""
  batch_size = int(config[key])
  if batch_size % process_count:
    raise ValueError(f"config.{key}={batch_size} is not divisible by the "
                     f"{process_count} processes.")
  return batch_size // process_count


def make_train_dataset(config, *, process_index: int, process_count: int,
                       start_step: int = 0) -> tf.data.Dataset:
  """Endless dataset of this process's local training batches.

  The data order does not depend on the number of processes: row r of every
  global batch (B = config.batch_size rows) is drawn from its own slice of
  the split, examples [r*n, (r+1)*n) with n = N // B (the last N mod B
  examples are never used), shuffled per epoch with a buffer seeded by
  (seed, epoch, r). Process p reads the slices of its rows
  [p*b, (p+1)*b), b = B // process_count, and yields them round robin, so
  the global batches of P processes are those of one process. (TFDS shuffles
  the examples when preparing, so the slices are random subsets.)

  Config.dataset.finish_on_device / resize_on_device False (the host path,
  removed) stop a new run (start_step 0) with a ConfigError; a resumed run
  (an old workdir's config) is warned and goes on with these batches.

  Returns:
    tf.data.Dataset of `augment.raw_transform`'s examples, b =
    config.batch_size // process_count of them a batch: 'image' uint8 RGB
    before the photometric distortion and the normalisation (openseg: the
    source rows and columns of its bicubic resize, with 'resize',
    `ops.ResizeParams` of [b] arrays), 'label' in the stored dtype (uint8,
    or uint16 for 16-bit labels), 'image_box' int32 [b, 4] (where the crop
    lies in the padding) and, with the photometric distortion, its draws
    'photometric' (`ops.PhotometricDraws` of [b] arrays); `train.train_step`
    finishes them (`train.finish_batch`).
  """
  ignored = validate.check_device_finish(config, new_run=int(start_step) == 0)
  if ignored:
    logging.warning("config.%s=False (a run from before issue 22): ignored, the train step "
                    "finishes the batches (the host path was removed)", ", config.".join(ignored))
  global_batch = int(config.batch_size)
  local_batch = _local_batch(config, "batch_size", process_count)
  seed = int(config.seed)
  builder = check_prepared(config)
  meta = builder_meta(builder)
  opts = train_options(config, meta.ignore_index, meta.num_classes)
  split = config.dataset.train_split
  n_total = split_size(builder, split)
  per_row = n_total // global_batch
  if per_row == 0:
    raise ValueError(f"Split {split!r} has {n_total} examples, fewer than "
                     f"config.batch_size={global_batch}.")
  # config.dataset.shuffle_buffer is the total over the global batch's row
  # streams (each buffers encoded records of its own slice; per row it must
  # not depend on the process count).
  buffer = max(1, min(int(config.dataset.shuffle_buffer) // global_batch, per_row))
  start_epoch, offset = divmod(int(start_step), per_row)

  def row_stream(row: int) -> tf.data.Dataset:
    first = row * per_row  # global index of the slice's first example
    records = read_split(builder, f"{split}[{first}:{first + per_row}]").enumerate()

    def epoch(e):
      shuffled = records.shuffle(buffer, seed=_epoch_shuffle_seed(seed, e, row),
                                 reshuffle_each_iteration=False)
      return shuffled.map(lambda i, ex: (e, i + first, ex[0], ex[1]))

    stream = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch)
    return stream.skip(offset) if offset else stream

  rows = range(process_index * local_batch, (process_index + 1) * local_batch)
  ds = tf.data.Dataset.choose_from_datasets(
      [row_stream(r) for r in rows], tf.data.Dataset.range(local_batch).repeat())

  decode_example = train_decoder(config, builder)

  def decode(e, i, image_bytes, label_bytes):
    return (e, i, *decode_example(image_bytes, label_bytes))

  def transform(e, i, image, label):
    return augment.raw_transform(image, label, example_seed(seed, e, i), opts)

  parallel = _num_parallel(config)
  # A record that fails to decode is dropped, and the next example takes its
  # place. The batches stay deterministic, but from that record on they are
  # shifted by one example against the resume arithmetic (which counts
  # records): a run resumed after a dropped record is not bit-exact. Only
  # decoding errors are dropped: an error in the augmentation stops the run.
  ds = _skip_bad_records(ds.map(decode, num_parallel_calls=parallel, deterministic=True))
  ds = ds.map(transform, num_parallel_calls=parallel, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  return ds.prefetch(int(config.dataset.prefetch))


def make_eval_dataset(config, *, process_index: int, process_count: int,
                      run=None) -> tf.data.Dataset:
  """One pass over this process's slice of the eval split, padded and masked.

  Every process yields the same number of batches, ceil(ceil(N / P) / b)
  with b = config.eval_batch_size // P; rows past the slice have mask False.
  Images (`augment.eval_transform`, the one eval preprocessing) and labels
  are padded with 0 and the dataset's ignore index. run: the run's
  `classes.ClassMap` (its run.json), where the dataset is found without the builders
  (`datasets.check_prepared`).
  """
  local_batch = _local_batch(config, "eval_batch_size", process_count)
  opts = eval_options(config)
  (hc, wc), (hl, wl) = eval_canvases(config)
  builder = check_prepared(config, run)
  ignore_index = builder_meta(builder).ignore_index
  label_dtype = _label_dtype(builder)
  split = config.dataset.eval_split
  n_total = split_size(builder, split)
  subsplit = tfds.split_for_jax_process(split, process_index=process_index,
                                        process_count=process_count, drop_remainder=False)
  largest = -(-n_total // process_count)
  num_batches = -(-largest // local_batch)

  looks = has_appearance(builder)

  def transform(image, label, appearance=None):
    label_hw = tf.shape(label)
    image, new_hw = augment.eval_transform(image, opts)
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
      image = tf.pad(image, [[0, hc - new_hw[0]], [0, wc - new_hw[1]], [0, 0]])
      label = tf.pad(tf.cast(label, tf.int32), [[0, hl - label_hw[0]], [0, wl - label_hw[1]]],
                     constant_values=ignore_index)
    image.set_shape([hc, wc, 3])
    label.set_shape([hl, wl])
    out = {"image": image, "image_hw": tf.cast(new_hw, tf.int32), "label": label,
           "label_hw": tf.cast(label_hw, tf.int32), "mask": tf.constant(True)}
    if appearance is not None:      # the look map, padded as the label
      with tf.control_dependencies(checks):
        out["appearance"] = tf.pad(tf.cast(appearance, tf.int32),
                                   [[0, hl - label_hw[0]], [0, wl - label_hw[1]]],
                                   constant_values=255)
      out["appearance"].set_shape([hl, wl])
    return out

  def decode(image_bytes, label_bytes, *appearance_bytes):
    image, label = _decode(image_bytes, label_bytes, label_dtype)
    return (image, label, *(tf.io.decode_png(a, channels=1)[..., 0] for a in appearance_bytes))

  # Records that fail to decode are dropped (logged) before the canvas checks,
  # which still stop the pipeline; the padding below fills in for them.
  ds = read_split(builder, subsplit, *(("appearance",) if looks else ())).map(
      decode, num_parallel_calls=_num_parallel(config))
  ds = _skip_bad_records(ds).map(transform, num_parallel_calls=_num_parallel(config))
  pad = {"image": tf.zeros([hc, wc, 3], tf.float32), "image_hw": tf.zeros([2], tf.int32),
         "label": tf.fill([hl, wl], ignore_index), "label_hw": tf.zeros([2], tf.int32),
         "mask": tf.constant(False)}
  if looks:
    pad["appearance"] = tf.fill([hl, wl], 255)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat())
  ds = ds.take(num_batches * local_batch)  # the slice's rows (fewer if some were dropped) + padding
  ds = ds.batch(local_batch, drop_remainder=True)
  return ds.prefetch(int(config.dataset.prefetch))


def scan_eval_sizes(config) -> dict[str, tuple[int, int]]:
  """Smallest eval_canvas / eval_label_canvas holding every eval example.

  Decodes only the label PNGs of config.dataset.eval_split (seconds for
  ADE20K's 2000 images) and applies the keep-ratio eval_scale.

  Returns:
    {'eval_canvas': (Hc, Wc), 'eval_label_canvas': (Hl, Wl)}.
  """
  scale = _eval_scale(config)
  builder = check_prepared(config)

  def sizes(image_bytes, label_bytes):
    del image_bytes
    hw = tf.shape(tf.io.decode_png(label_bytes, channels=1))[:2]
    return tf.concat([hw, augment.rescale_size(hw, scale) if scale is not None else hw], 0)

  ds = read_split(builder, config.dataset.eval_split)
  ds = _skip_bad_records(ds.map(sizes, num_parallel_calls=_num_parallel(config)))
  most = ds.reduce(tf.zeros([4], tf.int32), tf.maximum).numpy().tolist()
  return {"eval_canvas": tuple(most[2:]), "eval_label_canvas": tuple(most[:2])}


# ---------------------------------------------------------------------------
# Iterators of global jax.Arrays.


def _to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """Each array of the batch (its named draws, `ops.PhotometricDraws` /
  `ops.ResizeParams`, are entries of arrays too) laid out as `sharding`."""
  def put(key, value):
    s = sharding[key] if isinstance(sharding, Mapping) else sharding
    return jax.tree.map(lambda v: jax.make_array_from_process_local_data(s, v), value)
  return {k: put(k, v) for k, v in batch.items()}


def _global_batches(ds: tf.data.Dataset, sharding, pad_rows=None) -> Iterator[dict[str, jax.Array]]:
  for batch in ds.as_numpy_iterator():
    yield _to_global(pad_rows(batch) if pad_rows else batch, sharding)


def _local_shards(sharding) -> int:
  """How many devices of this process share the batch dimension."""
  s = next(iter(sharding.values())) if isinstance(sharding, Mapping) else sharding
  return len(s.addressable_devices)


def pad_eval_rows(batch: dict[str, np.ndarray], multiple: int,
                  ignore_index: int) -> dict[str, np.ndarray]:
  """An eval batch with masked rows appended up to a multiple of `multiple`.

  Padding rows are zero images with zero sizes, labels all `ignore_index`
  and mask False: they add nothing to the confusion matrix and are not
  counted as images. Lets config.eval_batch_size be any multiple of the
  process count, whatever the number of devices.
  """
  rows = len(batch["mask"])
  extra = -rows % multiple
  if not extra:
    return batch
  out = {}
  for key, value in batch.items():
    fill = ignore_index if key == "label" else 255 if key == "appearance" else 0
    pad = np.full((extra,) + value.shape[1:], fill, value.dtype)
    out[key] = np.concatenate([value, pad])
  return out


def create_train_iterator(config, sharding, *, start_step: int = 0
                          ) -> Iterator[dict[str, jax.Array]]:
  """Endless global training batches.

  Args:
    config: the run config (batch_size, seed, dataset.*).
    sharding: a jax.sharding.Sharding of the batch dimension (e.g.
      NamedSharding(mesh, P('data'))), or a dict of them keyed like the batch.
    start_step: the step to resume at.
  Returns:
    An iterator of `make_train_dataset`'s batches, B =
    config.batch_size (global); this process
    supplies its rows. Configuration and data errors (dataset not prepared)
    are raised by this call, not at the first next().
  """
  ds = make_train_dataset(config, process_index=jax.process_index(),
                          process_count=jax.process_count(), start_step=start_step)
  return _global_batches(ds, sharding)


def create_eval_iterator(config, sharding, run=None) -> Iterator[dict[str, jax.Array]]:
  """One pass over the eval split in global batches of config.eval_batch_size
  (each process's rows padded with masked rows to a multiple of its devices,
  so the batch size need not divide the device count).

  Returns:
    An iterator of {'image': float32 [B, Hc, Wc, 3], 'image_hw': int32 [B, 2],
    'label': int32 [B, Hl, Wl] original resolution padded with the ignore index,
    'label_hw': int32 [B, 2], 'mask': bool [B] (False for padding rows)}.
  """
  ds = make_eval_dataset(config, process_index=jax.process_index(),
                         process_count=jax.process_count(), run=run)
  ignore_index = builder_meta(check_prepared(config, run)).ignore_index
  multiple = _local_shards(sharding)
  return _global_batches(ds, sharding, lambda b: pad_eval_rows(b, multiple, ignore_index))
