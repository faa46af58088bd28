"""Tests of protoseg_jax.trainer.input_pipeline (tf.data datasets, iterators) on the tiny demo dataset."""

from __future__ import annotations

import collections
import hashlib

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

import data
from protoseg_jax.trainer import augment
from protoseg_jax.trainer import datasets
from protoseg_jax.trainer import input_pipeline as ip
from test_datasets import demo_config

NUM_CLASSES = data.dataset_meta("demo").num_classes


def make_config(data_dir, **dataset_overrides):
  config = demo_config(
      data_dir, crop_size=(64, 64), scale=(96, 96), ratio_range=(0.5, 1.5),
      cat_max_ratio=0.75, flip_prob=0.5, photometric=True,
      eval_scale=(72, 72), eval_canvas=(72, 72), eval_label_canvas=(96, 96),
      shuffle_buffer=16, num_parallel_calls=2, prefetch=1)
  config.batch_size = 4
  config.eval_batch_size = 4
  config.seed = 3
  config.dataset.update(dataset_overrides)
  return config


def _batches(ds, n):
  it = ds.as_numpy_iterator()
  return [next(it) for _ in range(n)]


def test_train_batches_shapes_and_label_values(demo_dir):
  config = make_config(demo_dir)
  # the train step finishes them: uint8 RGB crops and the stored uint8 labels
  for batch in _batches(ip.make_train_dataset(config, process_index=0, process_count=1), 8):
    assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (4, 64, 64) and batch["label"].dtype == np.uint8
    values = set(np.unique(batch["label"]).tolist())
    assert values <= set(range(NUM_CLASSES)) | {255}, values
    # RGB 0..255, the crop's box inside the 64 x 64 canvas
    assert batch["image_box"].shape == (4, 4) and batch["image_box"].dtype == np.int32
    top, left, h, w = batch["image_box"].T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (h > 0).all()
    assert (left + w <= 64).all() and (w > 0).all()
    assert batch["photometric"].delta.shape == (4,) and batch["photometric"].hue.dtype == bool


@pytest.mark.parametrize("key", ["finish_on_device", "resize_on_device"])
def test_host_finish_is_refused_for_a_new_run_and_ignored_when_resuming(demo_dir, key, caplog):
  """config.dataset.finish_on_device / resize_on_device False (the removed
  host path; old workdirs read back False): a new run stops with a one-line
  ConfigError naming the key; a resumed run is warned and gets the train
  step's batches, the same as with True."""
  from protoseg_jax.validate import ConfigError
  config = make_config(demo_dir, **{key: False})
  with pytest.raises(ConfigError, match=f"config.dataset.{key}=False") as e:
    ip.make_train_dataset(config, process_index=0, process_count=1)
  assert len(e.value.problems) == 1 and "\n" not in str(e.value)
  with caplog.at_level("WARNING"):
    resumed = _batches(ip.make_train_dataset(config, process_index=0, process_count=1,
                                             start_step=3), 1)[0]
  assert f"config.dataset.{key}=False" in caplog.text
  same = _batches(ip.make_train_dataset(make_config(demo_dir), process_index=0, process_count=1,
                                        start_step=3), 1)[0]
  for k in ("image", "label", "image_box"):
    np.testing.assert_array_equal(resumed[k], same[k])


def test_train_is_deterministic_and_resumable(demo_dir):
  config = make_config(demo_dir)
  ref = _batches(ip.make_train_dataset(config, process_index=0, process_count=1), 14)
  again = _batches(ip.make_train_dataset(config, process_index=0, process_count=1), 14)
  for a, b in zip(ref, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  # 24 examples / batch 4: step 13 is in epoch 2; step 7 in the middle of epoch 1.
  for k in (6, 7, 13):
    resumed = _batches(ip.make_train_dataset(config, process_index=0, process_count=1, start_step=k),
                       14 - k)
    for a, b in zip(ref[k:], resumed):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])
  # Epochs are shuffled differently; another seed gives other batches.
  assert not np.array_equal(ref[0]["label"], ref[6]["label"])
  config.seed = 4
  other = _batches(ip.make_train_dataset(config, process_index=0, process_count=1), 1)
  assert not np.array_equal(ref[0]["image"], other[0]["image"])


def test_train_global_batches_do_not_depend_on_the_process_count(demo_dir):
  # 2 processes supply halves of the rows of the same global batches that 1
  # process yields, at the start, across an epoch boundary and when resumed.
  config = make_config(demo_dir)
  one = _batches(ip.make_train_dataset(config, process_index=0, process_count=1), 9)
  for start in (0, 4):
    halves = [_batches(ip.make_train_dataset(config, process_index=p, process_count=2,
                                             start_step=start), 9 - start) for p in range(2)]
    for ref, b0, b1 in zip(one[start:], *halves):
      assert b0["image"].shape == (2, 64, 64, 3)
      for key in ("image", "label"):
        np.testing.assert_array_equal(ref[key], np.concatenate([b0[key], b1[key]]))


def test_an_epoch_uses_each_example_of_the_row_slices_once(demo_dir):
  # No augmentation: crops equal whole 96x96 images, identifiable by their labels.
  config = make_config(demo_dir, crop_size=(96, 96), ratio_range=(1.0, 1.0), flip_prob=0.0,
                       photometric=False)
  batches = _batches(ip.make_train_dataset(config, process_index=0, process_count=1), 6)  # 1 epoch
  seen = [hashlib.md5(l.tobytes()).hexdigest() for b in batches for l in b["label"]]
  assert len(set(seen)) == 24


def _eval_rows(config, process_index, process_count):
  rows, num_batches = [], 0
  for batch in ip.make_eval_dataset(config, process_index=process_index,
                                    process_count=process_count).as_numpy_iterator():
    num_batches += 1
    for i in range(len(batch["mask"])):
      rows.append({k: v[i] for k, v in batch.items()})
  return rows, num_batches


def test_eval_batches_and_padding(demo_dir):
  config = make_config(demo_dir)
  rows, num_batches = _eval_rows(config, 0, 1)
  assert num_batches == 3 and len(rows) == 12 and sum(r["mask"] for r in rows) == 10
  for r in rows:
    assert r["image"].shape == (72, 72, 3) and r["label"].shape == (96, 96)
    if r["mask"]:
      assert r["image_hw"].tolist() == [72, 72] and r["label_hw"].tolist() == [96, 96]
      assert set(np.unique(r["label"]).tolist()) <= set(range(NUM_CLASSES)) | {255}
    else:
      assert np.all(r["label"] == 255) and np.all(r["image"] == 0)
  # Smaller than the canvases: padded bottom/right with 0 / ignore.
  config.dataset.eval_scale = (48, 48)
  config.dataset.eval_label_canvas = (100, 104)
  rows, _ = _eval_rows(config, 0, 1)
  r = rows[0]
  assert r["image_hw"].tolist() == [48, 48] and np.all(r["image"][48:] == 0)
  assert np.all(r["image"][:, 48:] == 0) and np.all(r["label"][96:] == 255)
  assert np.all(r["label"][:, 96:] == 255)


def test_eval_canvas_too_small_is_an_error(demo_dir):
  config = make_config(demo_dir, eval_canvas=(64, 72))
  assert ip.scan_eval_sizes(config) == {"eval_canvas": (72, 72), "eval_label_canvas": (96, 96)}
  with pytest.raises(tf.errors.InvalidArgumentError, match="eval_canvas"):
    _eval_rows(config, 0, 1)


def test_eval_counts_each_example_once_across_processes(demo_dir):
  config = make_config(demo_dir)
  config.eval_batch_size = 4  # 2 rows per process
  single, _ = _eval_rows(config, 0, 1)
  key = lambda r: hashlib.md5(r["label"].tobytes()).hexdigest()
  expected = collections.Counter(key(r) for r in single if r["mask"])
  assert sum(expected.values()) == 10
  got = collections.Counter()
  counts = []
  for p in range(2):
    rows, num_batches = _eval_rows(config, p, 2)
    counts.append(num_batches)
    got.update(key(r) for r in rows if r["mask"])
  assert counts[0] == counts[1] == 3  # 5 examples each, batches of 2, last one padded
  assert got == expected
  # An uneven split: 3 processes (4 / 3 / 3 examples), one row each.
  config.eval_batch_size = 3
  got = collections.Counter()
  counts = []
  for p in range(3):
    rows, num_batches = _eval_rows(config, p, 3)
    counts.append(num_batches)
    got.update(key(r) for r in rows if r["mask"])
  assert counts == [4, 4, 4] and got == expected


def test_iterators_yield_global_jax_arrays(demo_dir):
  config = make_config(demo_dir)
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batch = next(ip.create_train_iterator(config, sharding, start_step=2))
  assert isinstance(batch["image"], jax.Array) and batch["image"].shape == (4, 64, 64, 3)
  assert batch["label"].dtype == np.uint8    # the stored labels; the step casts (finish_batch)
  ref = _batches(ip.make_train_dataset(config, process_index=0, process_count=1), 3)[2]
  np.testing.assert_array_equal(np.asarray(batch["label"]), ref["label"])
  batches = list(ip.create_eval_iterator(config, sharding))
  assert len(batches) == 3 and batches[0]["mask"].dtype == np.bool_
  assert int(sum(np.asarray(b["mask"]).sum() for b in batches)) == 10


def test_iterators_fail_at_the_call_when_the_dataset_is_not_prepared(tmp_path):
  config = make_config(tmp_path, name="ade20k", builder_config=None)
  with pytest.raises(datasets.DatasetNotPreparedError):  # at the call, not at next()
    ip.create_train_iterator(config, sharding=None)
  with pytest.raises(datasets.DatasetNotPreparedError):
    ip.create_eval_iterator(config, sharding=None)


def test_a_missing_config_key_is_named(demo_dir):
  """The pipeline reads the config by attribute, as all code does; a key
  missing from a config (one not built from configs/default.py) is named by
  validation, which every command runs before it reads data."""
  from protoseg_jax.validate import ConfigError, validate_config
  config = make_config(demo_dir)
  config.dataset = ml_collections.ConfigDict(
      {k: v for k, v in config.dataset.items() if k != "shuffle_buffer"})
  with pytest.raises(ConfigError, match="config.dataset.shuffle_buffer is missing: every key is "
                                        "set in configs/default.py"):
    validate_config(config, num_devices=1, num_processes=1)


def test_openseg_augmentation_batches(demo_dir):
  config = make_config(demo_dir, augmentation="openseg", photometric=False, cat_max_ratio=1.0)
  # finished on the device with its resize (the defaults): the source canvases
  canvas = augment.source_canvas(ip.train_options(config, 255, NUM_CLASSES))
  for batch in _batches(ip.make_train_dataset(config, process_index=0, process_count=1), 4):
    assert batch["image"].shape == (4, *canvas, 3) and batch["label"].shape == (4, 64, 64)
    assert batch["image"].dtype == np.uint8 and batch["resize"].out_h.shape == (4,)
    values = set(np.unique(batch["label"]).tolist())
    assert values <= set(range(NUM_CLASSES)) | {255}, values
    assert np.isfinite(batch["image"]).all()
  # Deterministic per example seed.
  again = _batches(ip.make_train_dataset(config, process_index=0, process_count=1), 4)
  first = _batches(ip.make_train_dataset(config, process_index=0, process_count=1), 4)
  for a, b in zip(again, first):
    np.testing.assert_array_equal(a["image"], b["image"])
  # openseg with mmseg's photometric distortion: refused before the pipeline
  # is built (validate_config, which the trainer runs first).
  from protoseg_jax.validate import ConfigError, validate_config
  with pytest.raises(ConfigError, match="photometric"):
    validate_config(make_config(demo_dir, augmentation="openseg"), num_devices=1,
                    num_processes=1)
  with pytest.raises(ValueError, match="augmentation"):
    ip.make_train_dataset(make_config(demo_dir, augmentation="timm"), process_index=0,
                          process_count=1)


def test_input_order_bgr_in_train_and_eval(demo_dir):
  mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
  rgb_cfg = make_config(demo_dir, mean=tuple(mean), std=tuple(std))
  bgr_cfg = make_config(demo_dir, mean=tuple(mean), std=tuple(std), input_order="bgr")
  rgb = _batches(ip.make_eval_dataset(rgb_cfg, process_index=0, process_count=1), 1)[0]
  bgr = _batches(ip.make_eval_dataset(bgr_cfg, process_index=0, process_count=1), 1)[0]
  valid = rgb["image_hw"][0]
  raw = rgb["image"][0, :valid[0], :valid[1]] * std + mean               # RGB 0..255
  want = (raw[..., ::-1] - mean) / std                                   # BGR, mean[i]/std[i]
  np.testing.assert_allclose(bgr["image"][0, :valid[0], :valid[1]], want, atol=1e-3)
  np.testing.assert_array_equal(bgr["label"], rgb["label"])
  # The train step's normalisation (`train.finish_batch`).
  from protoseg_jax import train
  rgb_t, bgr_t = (jax.device_get(train.finish_batch(_batches(ip.make_train_dataset(
      c, process_index=0, process_count=1), 1)[0], c)) for c in (rgb_cfg, bgr_cfg))
  np.testing.assert_array_equal(bgr_t["label"], rgb_t["label"])
  raw_t = rgb_t["image"] * std + mean
  # The crop's padding is 0 after normalisation in either order (no pixel of
  # these images normalises to exactly 0 in all three channels).
  pad = np.all(rgb_t["image"] == 0, axis=-1)
  np.testing.assert_array_equal(bgr_t["image"][pad], 0.0)
  np.testing.assert_allclose(bgr_t["image"][~pad], ((raw_t[..., ::-1] - mean) / std)[~pad],
                             atol=1e-3)
  with pytest.raises(ValueError, match="input_order"):
    ip.make_eval_dataset(make_config(demo_dir, input_order="BGR"), process_index=0,
                         process_count=1)


@pytest.mark.parametrize("augmentation", ["mmseg", "openseg"])
def test_profile_steps_are_the_pipelines_steps_and_the_last_does_the_whole_transform(
    demo_dir, augmentation):
  """bench_input_pipeline --profile times `profile_train_steps`: read, the two
  decodes, then every step of `augment.transform_stages`; the last one's
  checksum is that of the whole `raw_transform` on the same decoded record."""
  from bench.input_profile import profile_train_steps
  from protoseg_jax.trainer import augment
  config = make_config(demo_dir, augmentation=augmentation)
  steps = profile_train_steps(config)
  opts = ip.train_options(config, 255, 6)
  names = [name for name, _ in augment.transform_stages(opts)]
  assert [name for name, _ in steps] == ["read", "decode image", "decode label, size check", *names]
  assert names[-1] == "pad" and len(set(names)) == len(names)
  for _, ds in steps:
    value = next(iter(ds)).numpy()
    assert value.shape == () and np.isfinite(value)

  builder = datasets.check_prepared(config)
  image_bytes, label_bytes = next(iter(ip.read_split(builder, config.dataset.train_split)))
  image, label = ip._decode(image_bytes, label_bytes)
  ex = augment.run_stages(augment.transform_stages(opts), image, label,
                          ip.example_seed(0, 0, 0))
  raw = augment.raw_transform(image, label, ip.example_seed(0, 0, 0), opts)
  np.testing.assert_array_equal(ex["image"], raw["image"])
  np.testing.assert_array_equal(ex["label"], raw["label"])
  sample = lambda t: float(np.sum(np.asarray(t, np.float32).reshape(-1)[::1009]))
  want = sum(sample(v) for key, v in sorted(ex.items()) if key != "seed"
             for v in tf.nest.flatten(v))
  np.testing.assert_allclose(next(iter(steps[-1][1])).numpy(), want, rtol=1e-5)
