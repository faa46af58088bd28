"""Tests of protoseg_jax.input_pipeline on the tiny demo dataset and synthetic arrays."""

from __future__ import annotations

import collections
import hashlib

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from protoseg_jax import input_pipeline as ip

NUM_CLASSES = 6  # demo


def make_config(data_dir, **dataset_overrides):
  config = ml_collections.ConfigDict()
  config.batch_size = 4
  config.eval_batch_size = 4
  config.seed = 3
  config.dataset = ml_collections.ConfigDict(dict(
      name="demo", builder_config="tiny", data_dir=str(data_dir),
      train_split="train", eval_split="validation",
      crop_size=(64, 64), scale=(96, 96), ratio_range=(0.5, 1.5),
      cat_max_ratio=0.75, flip_prob=0.5, photometric=True,
      eval_scale=(72, 72), eval_canvas=(72, 72), eval_label_canvas=(96, 96),
      mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375),
      shuffle_buffer=16, num_parallel_calls=2, prefetch=1))
  config.dataset.update(dataset_overrides)
  return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  ip.check_prepared(make_config(d))  # builds the tiny demo (24 train / 10 validation)
  return d


def _batches(ds, n):
  it = ds.as_numpy_iterator()
  return [next(it) for _ in range(n)]


# --- geometry ----------------------------------------------------------------


def _opts(**kw):
  base = dict(crop_size=(32, 48), scale=(40, 40), ratio_range=(1.0, 1.0), cat_max_ratio=1.0,
              flip_prob=0.5, photometric=False, mean=(0., 0., 0.), std=(1., 1., 1.))
  base.update(kw)
  return ip._TrainOptions(**base)


def _position_pair(h, w):
  """image channels (x, y, 0) and label (3x + 5y) % 250: both encode the position."""
  yy, xx = np.mgrid[0:h, 0:w]
  image = np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)
  label = ((3 * xx + 5 * yy) % 250).astype(np.uint8)
  return image, label


def test_crop_and_flip_keep_image_and_label_aligned():
  image, label = _position_pair(40, 40)
  flipped = 0
  for s in range(12):
    img, lbl = ip.train_transform(tf.constant(image), tf.constant(label),
                                  tf.constant([s, 1], tf.int64), _opts(crop_size=(24, 32)))
    img, lbl = img.numpy(), lbl.numpy()
    assert img.shape == (24, 32, 3) and lbl.shape == (24, 32)
    x, y = img[..., 0].astype(int), img[..., 1].astype(int)
    np.testing.assert_array_equal(lbl, (3 * x + 5 * y) % 250)
    # A crop is a contiguous window: y grows down the rows; x runs along columns.
    assert np.all(np.diff(y, axis=0) == 1)
    dx = np.diff(x, axis=1)
    assert np.all(dx == 1) or np.all(dx == -1)
    flipped += int(np.all(dx == -1))
  assert 0 < flipped < 12  # both branches of the coin were taken


def test_rescale_keeps_image_and_label_aligned():
  # 8x8 blocks of constant class; image channel 0 = 10 * class. Resized x2
  # (ratio 2), the bilinear image equals 10 * label away from block edges.
  blocks = np.arange(16, dtype=np.uint8).reshape(4, 4)
  label = np.kron(blocks, np.ones((8, 8), np.uint8))
  image = np.repeat((label * 10)[..., None], 3, -1).astype(np.uint8)
  img, lbl = ip.train_transform(tf.constant(image), tf.constant(label), tf.constant([0, 0], tf.int64),
                                _opts(crop_size=(64, 64), scale=(32, 32), ratio_range=(2.0, 2.0),
                                      flip_prob=0.0))
  img, lbl = img.numpy(), lbl.numpy()
  np.testing.assert_array_equal(lbl, np.kron(blocks, np.ones((16, 16), np.uint8)))
  interior = np.zeros((64, 64), bool)
  for i in range(4):
    for j in range(4):
      interior[i * 16 + 2:i * 16 + 14, j * 16 + 2:j * 16 + 14] = True
  np.testing.assert_allclose(img[..., 0][interior], 10. * lbl[interior], atol=1e-3)


def test_window_resize_equals_full_resize_then_crop():
  image = np.random.default_rng(1).integers(0, 255, (23, 37, 3)).astype(np.uint8)
  for out_hw, top_left, win in [((41, 50), (0, 0), (16, 20)), ((41, 50), (25, 30), (16, 20)),
                                ((12, 19), (3, 0), (9, 19)), ((23, 37), (5, 7), (10, 10))]:
    full = tf.image.resize(image, out_hw, method="bilinear").numpy()
    ref = full[top_left[0]:top_left[0] + win[0], top_left[1]:top_left[1] + win[1]]
    got = ip.resize_window_bilinear(tf.constant(image), tf.constant(out_hw), tf.constant(top_left),
                                    tf.constant(win)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-3)


def test_rescale_size_matches_mmcv_rule():
  def ref(h, w, scale, ratio):
    long_t, short_t = int(max(scale) * ratio), int(min(scale) * ratio)
    f = min(long_t / max(h, w), short_t / min(h, w))
    return [int(h * f + 0.5), int(w * f + 0.5)]
  for (h, w), scale, ratio in [((512, 683), (2048, 512), 1.0), ((512, 683), (2048, 512), 1.37),
                               ((1024, 2048), (2048, 1024), 0.5), ((375, 500), (2048, 512), 0.77),
                               ((96, 96), (96, 96), 1.3)]:
    got = ip.rescale_size(tf.constant([h, w]), scale, ratio).numpy().tolist()
    assert got == ref(h, w, scale, ratio), (h, w, scale, ratio)


def test_label_rescale_follows_the_cv2_nearest_rule():
  label = np.random.default_rng(0).integers(0, 250, (7, 9)).astype(np.uint8)
  image = np.zeros((7, 9, 3), np.uint8)
  for ratio in (0.6, 1.0, 1.7, 2.3):
    # The crop (40x40) holds the whole rescaled label: the output is the rescale.
    _, lbl = ip.train_transform(tf.constant(image), tf.constant(label), tf.constant([0, 0], tf.int64),
                                _opts(crop_size=(40, 40), scale=(9, 7), ratio_range=(ratio, ratio),
                                      flip_prob=0.0))
    h, w = ip.rescale_size(tf.constant([7, 9]), (9, 7), ratio).numpy().tolist()
    rows = np.minimum(np.floor(np.arange(h) * 7 / h).astype(int), 6)
    cols = np.minimum(np.floor(np.arange(w) * 9 / w).astype(int), 8)
    lbl = lbl.numpy()
    np.testing.assert_array_equal(lbl[:h, :w], label[rows][:, cols], err_msg=str(ratio))
    assert np.all(lbl[h:] == 255) and np.all(lbl[:, w:] == 255)


def test_padding_uses_ignore_and_zero():
  image, label = _position_pair(20, 30)
  img, lbl = ip.train_transform(tf.constant(image), tf.constant(label), tf.constant([1, 2], tf.int64),
                                _opts(crop_size=(32, 40), scale=(30, 20), mean=(1., 1., 1.)))
  img, lbl = img.numpy(), lbl.numpy()
  assert img.shape == (32, 40, 3)
  assert np.all(lbl[20:] == 255) and np.all(lbl[:, 30:] == 255)
  assert np.all(img[20:] == 0) and np.all(img[:, 30:] == 0)
  assert np.all(lbl[:20, :30] < 250)


def test_cat_max_ratio_check():
  def ok(values):
    return bool(ip.crop_is_acceptable(tf.constant(np.array(values, np.uint8)), 0.75).numpy())
  assert not ok([0] * 50)                       # one class
  assert not ok([0] * 50 + [255] * 50)          # ignore does not count as a class
  assert not ok([0] * 40 + [1] * 10 + [255] * 50)  # 0.8 of the labelled pixels
  assert ok([0] * 30 + [1] * 20 + [255] * 100)  # 0.6
  assert not ok([0] * 75 + [1] * 25)            # exactly 0.75 is not < 0.75
  assert ok([0] * 74 + [1] * 26)


def _crop_offset(label, crop, seed, cat_max_ratio):
  ch, cw = min(crop[0], label.shape[0]), min(crop[1], label.shape[1])
  offset, _ = ip.random_crop(lambda t, l: label[t:t + ch, l:l + cw], tf.shape(label), crop, seed,
                             cat_max_ratio)
  return offset.numpy().tolist()


def test_random_crop_picks_first_acceptable_candidate():
  # A 60x60 label: class 1 only in the top-left 20x20 corner, class 0 elsewhere.
  label = np.zeros((60, 60), np.uint8)
  label[:20, :20] = 1
  crop = (24, 24)
  used_fallback = used_retry = 0
  for s in range(40):
    seed = tf.constant([s, 7], tf.int64)
    tops, lefts = (t.numpy() for t in ip.crop_candidates(tf.constant([60, 60]), crop, seed))
    assert np.all((0 <= tops) & (tops <= 36)) and np.all((0 <= lefts) & (lefts <= 36))
    expected = 10
    for k in range(10):
      c = label[tops[k]:tops[k] + 24, lefts[k]:lefts[k] + 24]
      counts = np.bincount(c.ravel(), minlength=2)
      if np.count_nonzero(counts) > 1 and counts.max() / counts.sum() < 0.75:
        expected = k
        break
    got = _crop_offset(tf.constant(label), crop, seed, 0.75)
    assert got == [tops[expected], lefts[expected]], s
    used_fallback += expected == 10
    used_retry += 0 < expected < 10
    # Without cat_max_ratio the first candidate is used.
    got1 = _crop_offset(tf.constant(label), crop, seed, 1.0)
    assert got1 == [tops[0], lefts[0]]
  assert used_retry > 0 and used_fallback > 0


def test_scale_saturation_matches_hsv_round_trip():
  image = np.random.default_rng(2).uniform(0, 255, (8, 8, 3)).astype(np.float32)
  image[0, 0] = [40, 40, 40]  # grey: saturation 0
  image[0, 1] = [0, 0, 0]
  for factor in (0.0, 0.5, 1.3, 3.0):
    ref = tf.image.adjust_saturation(image / 255., factor).numpy() * 255.
    got = ip.scale_saturation(tf.constant(image), factor).numpy()
    np.testing.assert_allclose(got, ref, atol=0.05)


def test_photometric_distortion_range_and_determinism():
  rng = np.random.default_rng(0)
  image = tf.constant(rng.uniform(0, 255, (16, 16, 3)).astype(np.float32))
  outs = [ip.photometric_distortion(image, tf.constant([s, 0], tf.int64)).numpy() for s in range(8)]
  for out in outs:
    assert out.min() >= 0 and out.max() <= 255
  np.testing.assert_array_equal(
      outs[3], ip.photometric_distortion(image, tf.constant([3, 0], tf.int64)).numpy())
  assert sum(not np.allclose(o, image.numpy(), atol=1e-3) for o in outs) >= 6


# --- datasets ----------------------------------------------------------------


def test_dataset_info(data_dir):
  info = ip.get_dataset_info(make_config(data_dir))
  assert info.num_classes == NUM_CLASSES and info.ignore_index == 255
  assert info.class_names[0] == "background" and len(info.class_names) == NUM_CLASSES
  assert len(info.palette) == NUM_CLASSES and all(len(c) == 3 for c in info.palette)
  assert (info.num_train_examples, info.num_eval_examples) == (24, 10)


def test_train_batches_shapes_and_label_values(data_dir):
  config = make_config(data_dir)
  for batch in _batches(ip.make_train_dataset(config, process_index=0, process_count=1), 8):
    assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4, 64, 64) and batch["label"].dtype == np.int32
    values = set(np.unique(batch["label"]).tolist())
    assert values <= set(range(NUM_CLASSES)) | {255}, values
    assert np.isfinite(batch["image"]).all() and abs(batch["image"].mean()) < 3


def test_train_is_deterministic_and_resumable(data_dir):
  config = make_config(data_dir)
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


def test_train_processes_read_disjoint_examples(data_dir):
  # No augmentation: crops equal whole 96x96 images, identifiable by their labels.
  config = make_config(data_dir, crop_size=(96, 96), ratio_range=(1.0, 1.0), flip_prob=0.0,
                       photometric=False)
  seen = []
  for p in range(2):
    batches = _batches(ip.make_train_dataset(config, process_index=p, process_count=2), 6)  # 1 epoch
    assert batches[0]["image"].shape == (2, 96, 96, 3)
    seen.append({hashlib.md5(l.tobytes()).hexdigest() for b in batches for l in b["label"]})
    assert len(seen[-1]) == 12
  assert not seen[0] & seen[1]


def _eval_rows(config, process_index, process_count):
  rows, num_batches = [], 0
  for batch in ip.make_eval_dataset(config, process_index=process_index,
                                    process_count=process_count).as_numpy_iterator():
    num_batches += 1
    for i in range(len(batch["mask"])):
      rows.append({k: v[i] for k, v in batch.items()})
  return rows, num_batches


def test_eval_batches_and_padding(data_dir):
  config = make_config(data_dir)
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


def test_eval_canvas_too_small_is_an_error(data_dir):
  config = make_config(data_dir, eval_canvas=(64, 72))
  assert ip.scan_eval_sizes(config) == {"eval_canvas": (72, 72), "eval_label_canvas": (96, 96)}
  with pytest.raises(tf.errors.InvalidArgumentError, match="eval_canvas"):
    _eval_rows(config, 0, 1)


def test_eval_counts_each_example_once_across_processes(data_dir):
  config = make_config(data_dir)
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


def test_iterators_yield_global_jax_arrays(data_dir):
  config = make_config(data_dir)
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batch = next(ip.create_train_iterator(config, sharding, start_step=2))
  assert isinstance(batch["image"], jax.Array) and batch["image"].shape == (4, 64, 64, 3)
  assert batch["label"].dtype == np.int32
  ref = _batches(ip.make_train_dataset(config, process_index=0, process_count=1), 3)[2]
  np.testing.assert_array_equal(np.asarray(batch["label"]), ref["label"])
  batches = list(ip.create_eval_iterator(config, sharding))
  assert len(batches) == 3 and batches[0]["mask"].dtype == np.bool_
  assert int(sum(np.asarray(b["mask"]).sum() for b in batches)) == 10


def test_missing_dataset_says_what_to_download(tmp_path):
  config = make_config(tmp_path, name="ade20k", builder_config=None)
  with pytest.raises(ip.DatasetNotPreparedError) as e:
    ip.get_dataset_info(config)
  msg = str(e.value)
  assert "ADEChallengeData2016.zip" in msg and "python -m data.prepare ade20k" in msg
  assert str(tmp_path) in msg
  with pytest.raises(ip.DatasetNotPreparedError):  # at the call, not at next()
    ip.create_train_iterator(config, sharding=None)
  config.dataset.name = "cityscapes"
  with pytest.raises(ip.DatasetNotPreparedError, match="gtFine_trainvaltest.zip"):
    ip.check_prepared(config)
  config.dataset.name = "pascal_context59"
  with pytest.raises(ValueError, match="docs/datasets.md"):
    ip.check_prepared(config)
  config.dataset.name = "nope"
  with pytest.raises(ValueError, match="Unknown dataset"):
    ip.check_prepared(config)
