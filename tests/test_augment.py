"""Tests of protoseg_jax.trainer.augment (the training augmentation) on synthetic arrays."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import tensorflow as tf

from protoseg_jax import ops
from protoseg_jax.trainer import augment
import reference


def _opts(**kw):
  base = dict(crop_size=(32, 48), scale=(40, 40), ratio_range=(1.0, 1.0), cat_max_ratio=1.0,
              flip_prob=0.5, photometric=False, mean=(0., 0., 0.), std=(1., 1., 1.),
              ignore_index=255, input_order="rgb", augmentation="mmseg",
              aspect_range=(0.9, 1.1), brightness_shift=10, num_classes=256)
  base.update(kw)
  return augment.TrainOptions(**base)


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
    img, lbl = augment.train_transform(tf.constant(image), tf.constant(label),
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
  img, lbl = augment.train_transform(tf.constant(image), tf.constant(label),
                                     tf.constant([0, 0], tf.int64),
                                     _opts(crop_size=(64, 64), scale=(32, 32),
                                           ratio_range=(2.0, 2.0), flip_prob=0.0))
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
    got = augment.resize_window_bilinear(tf.constant(image), tf.constant(out_hw),
                                         tf.constant(top_left), tf.constant(win)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-3)


def test_rescale_size_matches_mmcv_rule():
  def ref(h, w, scale, ratio):
    long_t, short_t = int(max(scale) * ratio), int(min(scale) * ratio)
    f = min(long_t / max(h, w), short_t / min(h, w))
    return [int(h * f + 0.5), int(w * f + 0.5)]
  for (h, w), scale, ratio in [((512, 683), (2048, 512), 1.0), ((512, 683), (2048, 512), 1.37),
                               ((1024, 2048), (2048, 1024), 0.5), ((375, 500), (2048, 512), 0.77),
                               ((96, 96), (96, 96), 1.3)]:
    got = augment.rescale_size(tf.constant([h, w]), scale, ratio).numpy().tolist()
    assert got == ref(h, w, scale, ratio), (h, w, scale, ratio)


def test_label_rescale_follows_the_cv2_nearest_rule():
  label = np.random.default_rng(0).integers(0, 250, (7, 9)).astype(np.uint8)
  image = np.zeros((7, 9, 3), np.uint8)
  for ratio in (0.6, 1.0, 1.7, 2.3):
    # The crop (40x40) holds the whole rescaled label: the output is the rescale.
    _, lbl = augment.train_transform(tf.constant(image), tf.constant(label),
                                     tf.constant([0, 0], tf.int64),
                                     _opts(crop_size=(40, 40), scale=(9, 7),
                                           ratio_range=(ratio, ratio), flip_prob=0.0))
    h, w = augment.rescale_size(tf.constant([7, 9]), (9, 7), ratio).numpy().tolist()
    rows = np.minimum(np.floor(np.arange(h) * 7 / h).astype(int), 6)
    cols = np.minimum(np.floor(np.arange(w) * 9 / w).astype(int), 8)
    lbl = lbl.numpy()
    np.testing.assert_array_equal(lbl[:h, :w], label[rows][:, cols], err_msg=str(ratio))
    assert np.all(lbl[h:] == 255) and np.all(lbl[:, w:] == 255)


@pytest.mark.parametrize("ignore_index", [255, 254])
def test_padding_uses_ignore_and_zero(ignore_index):
  # The label padding is the dataset's ignore index (opts.ignore_index).
  image, label = _position_pair(20, 30)
  img, lbl = augment.train_transform(tf.constant(image), tf.constant(label),
                                     tf.constant([1, 2], tf.int64),
                                     _opts(crop_size=(32, 40), scale=(30, 20), mean=(1., 1., 1.),
                                           ignore_index=ignore_index))
  img, lbl = img.numpy(), lbl.numpy()
  assert img.shape == (32, 40, 3)
  assert np.all(lbl[20:] == ignore_index) and np.all(lbl[:, 30:] == ignore_index)
  assert np.all(img[20:] == 0) and np.all(img[:, 30:] == 0)
  assert np.all(lbl[:20, :30] < 250)


def test_cat_max_ratio_check():
  def ok(values):
    crop = tf.constant(np.array(values, np.uint8))
    return bool(augment.crop_is_acceptable(crop, 0.75, 255).numpy())
  assert not ok([0] * 50)                       # one class
  assert not ok([0] * 50 + [255] * 50)          # ignore does not count as a class
  assert not ok([0] * 40 + [1] * 10 + [255] * 50)  # 0.8 of the labelled pixels
  assert ok([0] * 30 + [1] * 20 + [255] * 100)  # 0.6
  assert not ok([0] * 75 + [1] * 25)            # exactly 0.75 is not < 0.75
  assert ok([0] * 74 + [1] * 26)


def _crop_offset(label, crop, seed, cat_max_ratio):
  ch, cw = min(crop[0], label.shape[0]), min(crop[1], label.shape[1])
  offset, _ = augment.random_crop(lambda t, l: label[t:t + ch, l:l + cw], tf.shape(label), crop,
                                  seed, cat_max_ratio, 255)
  return offset.numpy().tolist()


def test_random_crop_picks_first_acceptable_candidate():
  # A 60x60 label: class 1 only in the top-left 20x20 corner, class 0 elsewhere.
  label = np.zeros((60, 60), np.uint8)
  label[:20, :20] = 1
  crop = (24, 24)
  used_fallback = used_retry = 0
  for s in range(40):
    seed = tf.constant([s, 7], tf.int64)
    tops, lefts = (t.numpy() for t in augment.crop_candidates(tf.constant([60, 60]), crop, seed))
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
    got = np.asarray(ops.scale_saturation(image, factor))
    np.testing.assert_allclose(got, ref, atol=0.05)


def test_photometric_distortion_range_and_determinism():
  """`ops.photometric_distortion` of `augment.photometric_draws`: in 0..255,
  a function of the seed, and most seeds change the image."""
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)

  def distorted(seeds):
    draws = [augment.photometric_draws(tf.constant([s, 0], tf.int64)) for s in seeds]
    draws = ops.PhotometricDraws(*(np.stack(v) for v in zip(*draws)))
    return np.asarray(ops.photometric_distortion(np.stack([image] * len(seeds)), draws))

  outs = distorted(range(8))
  for out in outs:
    assert out.min() >= 0 and out.max() <= 255
  np.testing.assert_array_equal(outs[3], distorted([3])[0])
  assert sum(not np.allclose(o, image, atol=1e-3) for o in outs) >= 6


def test_random_flip_flips_image_and_label_together():
  image = tf.constant(np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3))
  label = tf.constant(np.arange(6, dtype=np.int32).reshape(2, 3))
  img, lbl = augment.random_flip(image, label, tf.constant([0, 0], tf.int64), 1.0)
  np.testing.assert_array_equal(img.numpy(), image.numpy()[:, ::-1])
  np.testing.assert_array_equal(lbl.numpy(), label.numpy()[:, ::-1])
  img, lbl = augment.random_flip(image, label, tf.constant([0, 0], tf.int64), 0.0)
  np.testing.assert_array_equal(img.numpy(), image.numpy())
  np.testing.assert_array_equal(lbl.numpy(), label.numpy())


def test_normalize_is_per_channel_mean_std():
  image = tf.constant(np.array([[[10., 20., 30.]]], np.float32))
  got = ops.normalize_pixels(image, (1., 2., 3.), (3., 6., 9.), "rgb").numpy()
  np.testing.assert_allclose(got, [[[3., 3., 3.]]], rtol=1e-6)


# ---------------------------------------------------------------------------
# openseg (official ProtoSeg) transform and input order.


def _openseg_opts(**kw):
  base = dict(crop_size=(32, 48), scale=(40, 40), ratio_range=(1.0, 1.0), cat_max_ratio=1.0,
              flip_prob=0.5, photometric=False, mean=(0., 0., 0.), std=(1., 1., 1.),
              ignore_index=255, input_order="rgb", augmentation="openseg",
              aspect_range=(1.0, 1.0), brightness_shift=10, num_classes=256)
  base.update(kw)
  return augment.TrainOptions(**base)


def _seed(i):
  return tf.constant([i, 7], tf.int64)


@pytest.mark.parametrize("in_hw,out_hw", [((7, 9), (15, 20)), ((20, 16), (9, 11)), ((8, 8), (8, 8))])
def test_bicubic_matches_keys_a075_reference(in_hw, out_hw):
  image = np.random.RandomState(0).randint(0, 256, (*in_hw, 3)).astype(np.uint8)
  got = np.asarray(ops.resize_bicubic(image, out_hw))
  want = reference.keys_cubic_resize(image, *out_hw)
  np.testing.assert_allclose(got, want, atol=1e-3)
  if in_hw == out_hw:
    np.testing.assert_allclose(got, image, atol=1e-4)


def test_bicubic_matches_torch_bicubic_and_its_window_matches_the_full_resize():
  torch = pytest.importorskip("torch")
  image = np.random.RandomState(1).rand(11, 13, 3).astype(np.float32) * 255
  for out_hw in [(23, 30), (6, 5)]:
    got = np.asarray(ops.resize_bicubic(image, out_hw))
    want = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None], size=out_hw, mode="bicubic",
        align_corners=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, want, atol=2e-3)
  full = np.asarray(ops.resize_bicubic(image, (23, 30)))
  win = np.asarray(ops.resize_bicubic(image, (23, 30), (5, 7), (10, 12)))
  np.testing.assert_allclose(win, full[5:15, 7:19], atol=1e-4)


def test_openseg_resize_size_is_the_official_formula():
  for scale, aspect in [(1.5, 1.1), (0.5, 0.9), (2.0, 1.0), (0.73, 1.04)]:
    got = augment.openseg_resize_size(tf.constant([1024, 2048]), scale, aspect).numpy().tolist()
    # openseg RandomResize: (int(width * sqrt(a) * s), int(height * sqrt(1 / a) * s)).
    want = [int(1024 * np.sqrt(1.0 / aspect) * scale), int(2048 * np.sqrt(aspect) * scale)]
    assert abs(got[0] - want[0]) <= 1 and abs(got[1] - want[1]) <= 1, (got, want)


def _block_pair(h, w, block=8, seed=0):
  """Image whose channel 0 minus channel 1 is 20 x the block's class; label = that class."""
  r = np.random.RandomState(seed)
  classes = r.randint(0, 5, (-(-h // block), -(-w // block)))
  label = np.kron(classes, np.ones((block, block), np.int64))[:h, :w].astype(np.uint8)
  image = np.full((h, w, 3), 100, np.uint8)
  image[..., 0] += (20 * label).astype(np.uint8)
  return image, label


def test_openseg_keeps_image_and_label_aligned_through_rescale_crop_pad_and_flip():
  image, label = _block_pair(48, 64, block=12)
  opts = _openseg_opts(crop_size=(48, 64), ratio_range=(0.5, 2.0), aspect_range=(0.9, 1.1))
  padded = 0
  for i in range(40):
    img, lbl = augment.openseg_transform(tf.constant(image), tf.constant(label), _seed(i), opts)
    img, lbl = img.numpy(), lbl.numpy()
    assert img.shape == (48, 64, 3) and lbl.shape == (48, 64)
    valid = lbl != 255
    decoded = np.round((img[..., 0] - img[..., 1]) / 20.)
    agree = (decoded[valid] == lbl[valid]).mean()
    # Only block edges may disagree (bicubic ringing; cv2's nearest has no half-pixel shift).
    assert agree > 0.85, (i, agree)
    mirrored = (decoded[:, ::-1][valid[:, ::-1] & valid] == lbl[valid[:, ::-1] & valid]).mean()
    assert mirrored < agree or np.all(lbl[valid] == lbl[valid][0])
    # Padding: image exactly 0 (normalised), label ignore.
    np.testing.assert_array_equal(img[~valid], 0.)
    padded += (~valid).any()
  assert padded > 0


def test_openseg_pad_value_and_random_offset_range():
  image = np.full((10, 10, 3), 200, np.uint8)
  label = np.ones((10, 10), np.uint8)
  opts = _openseg_opts(crop_size=(16, 20), mean=(1., 2., 3.), std=(1., 1., 1.),
                       brightness_shift=0)
  tops, lefts = set(), set()
  for i in range(300):
    img, lbl = augment.openseg_transform(tf.constant(image), tf.constant(label), _seed(i), opts)
    img, lbl = img.numpy(), lbl.numpy()
    rows, cols = np.nonzero(lbl != 255)
    top, left = rows.min(), cols.min()
    assert rows.max() - top == 9 and cols.max() - left == 9
    tops.add(int(top))
    lefts.add(int(left))
    np.testing.assert_array_equal(lbl[top:top + 10, left:left + 10], 1)
    inside = np.zeros(lbl.shape, bool)
    inside[top:top + 10, left:left + 10] = True
    np.testing.assert_array_equal(lbl[~inside], 255)
    np.testing.assert_array_equal(img[~inside], 0.)               # pad after normalisation
    np.testing.assert_allclose(img[inside], np.array([199., 198., 197.])[None].repeat(100, 0))
  assert tops == set(range(7)) and lefts == set(range(11)), (tops, lefts)


def test_openseg_brightness_is_an_integer_shift_in_range_on_every_image():
  image = np.full((8, 8, 3), 128, np.uint8)
  label = np.zeros((8, 8), np.uint8)
  opts = _openseg_opts(crop_size=(8, 8))
  shifts = set()
  for i in range(400):
    img, _ = augment.openseg_transform(tf.constant(image), tf.constant(label), _seed(i), opts)
    img = img.numpy()
    assert np.all(img == img[0, 0, 0])
    shifts.add(float(img[0, 0, 0]) - 128.)
  assert shifts == {float(s) for s in range(-10, 11)}, sorted(shifts)
  bright = np.full((8, 8, 3), 250, np.uint8)
  outs = {float(augment.openseg_transform(tf.constant(bright), tf.constant(label), _seed(i),
                                          opts)[0].numpy().max()) for i in range(60)}
  assert max(outs) == 255. and min(outs) >= 240.


def test_openseg_aspect_jitter_range():
  image = np.full((100, 100, 3), 50, np.uint8)
  label = np.zeros((100, 100), np.uint8)
  opts = _openseg_opts(crop_size=(128, 128), aspect_range=(0.9, 1.1), brightness_shift=0)
  ratios = []
  for i in range(100):
    _, lbl = augment.openseg_transform(tf.constant(image), tf.constant(label), _seed(i), opts)
    rows, cols = np.nonzero(lbl.numpy() != 255)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    # h = int(100 / sqrt(a)), w = int(100 * sqrt(a)): w / h ~ a, h * w ~ 100^2.
    ratios.append(w / h)
    assert abs(h * w - 10_000) < 250, (h, w)
  ratios = np.array(ratios)
  assert ratios.min() >= 0.9 - 0.02 and ratios.max() <= 1.1 + 0.02
  assert ratios.min() < 0.93 and ratios.max() > 1.07


def test_openseg_crop_has_no_category_ratio_retries():
  # One class everywhere but a narrow strip: mmseg (cat_max_ratio 0.75) would retry
  # single-class crops; openseg takes the uniform offset as drawn.
  image = np.zeros((32, 200, 3), np.uint8)
  label = np.zeros((32, 200), np.uint8)
  label[:, 190:] = 1
  opts = _openseg_opts(crop_size=(32, 32), flip_prob=0.0, brightness_shift=0)
  single = 0
  for i in range(60):
    _, lbl = augment.openseg_transform(tf.constant(image), tf.constant(label), _seed(i), opts)
    single += len(np.unique(lbl.numpy())) == 1
  assert single > 40
  # cat_max_ratio is not consulted: the same crops with a strict ratio.
  strict = _openseg_opts(crop_size=(32, 32), flip_prob=0.0, brightness_shift=0,
                         cat_max_ratio=0.5)
  for i in range(10):
    a = augment.openseg_transform(tf.constant(image), tf.constant(label), _seed(i), opts)[1]
    b = augment.openseg_transform(tf.constant(image), tf.constant(label), _seed(i), strict)[1]
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_transform_dispatches_on_augmentation():
  image, label = _block_pair(40, 40)
  for aug, fn in [("mmseg", augment.train_transform), ("openseg", augment.openseg_transform)]:
    opts = _openseg_opts(augmentation=aug)
    a = augment.transform(tf.constant(image), tf.constant(label), _seed(3), opts)
    b = fn(tf.constant(image), tf.constant(label), _seed(3), opts)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x.numpy(), y.numpy())
  with pytest.raises(ValueError, match="augmentation"):
    augment.transform(tf.constant(image), tf.constant(label), _seed(3),
                      _openseg_opts(augmentation="nope"))


def test_input_order_bgr_reverses_channels_then_normalises_with_mean_std_as_listed():
  image = tf.constant(np.random.RandomState(2).rand(4, 5, 3).astype(np.float32) * 255)
  mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
  got = ops.normalize_pixels(image, mean, std, "bgr").numpy()
  bgr = image.numpy()[..., ::-1]
  want = np.stack([(bgr[..., i] - mean[i]) / std[i] for i in range(3)], -1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # the eval pipeline's (TF) and the train step's (jnp) run of the one expression
  on_device = ops.normalize_pixels(jax.numpy.asarray(image.numpy()), mean, std, "bgr")
  np.testing.assert_array_max_ulp(np.asarray(on_device), got, maxulp=1)
  with pytest.raises(ValueError, match="input_order"):
    ops.normalize_pixels(image, mean, std, "gbr")
  from protoseg_jax.convert import official
  assert augment.INPUT_ORDERS == official.INPUT_ORDERS
  # In the transforms: bgr == rgb with channels reversed (zero mean, unit std).
  image8, label = _block_pair(40, 40)
  for aug in augment.AUGMENTATIONS:
    rgb = augment.transform(tf.constant(image8), tf.constant(label), _seed(5),
                            _openseg_opts(augmentation=aug))[0].numpy()
    bgr = augment.transform(tf.constant(image8), tf.constant(label), _seed(5),
                            _openseg_opts(augmentation=aug, input_order="bgr"))[0].numpy()
    np.testing.assert_array_equal(bgr, rgb[..., ::-1])


def test_openseg_flip_in_the_crops_equals_flipping_the_crop():
  """flip_prob 1 vs 0 on the same seeds (no padding, so the pad offset cannot
  differ): the flipped example is the other one mirrored, image and label."""
  _, label = _block_pair(40, 60, seed=3)
  image = np.random.default_rng(3).integers(0, 256, (40, 60, 3)).astype(np.uint8)
  for i in range(6):
    kw = dict(crop_size=(24, 36), ratio_range=(0.8, 1.3), aspect_range=(0.9, 1.1),
              mean=(120., 110., 100.), std=(50., 60., 70.))
    kept = augment.openseg_transform(tf.constant(image), tf.constant(label), _seed(i),
                                     _openseg_opts(flip_prob=0.0, **kw))
    flipped = augment.openseg_transform(tf.constant(image), tf.constant(label), _seed(i),
                                        _openseg_opts(flip_prob=1.0, **kw))
    np.testing.assert_array_equal(flipped[0].numpy(), kept[0].numpy()[:, ::-1])
    np.testing.assert_array_equal(flipped[1].numpy(), kept[1].numpy()[:, ::-1])


@pytest.mark.parametrize("aug", ["mmseg", "mmseg+photometric"])
@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_raw_transform_finished_on_device_is_the_host_reference(aug, order):
  """`raw_transform` on the host, then the train step's `finish_batch`
  (jitted) = the host's former last steps (tests/reference.py: TF's
  photometric distortion with the same draws, then the normalisation)
  applied to the shipped uint8 crop: 0 in the padding, the image within 1
  ulp (XLA fuses the normalisation's multiply and subtract into one FMA) or,
  with the photometric distortion (its own formulas for saturation and hue
  on the device), within 2e-5 (1e-3 of a 0..255 level); `transform` is that
  composition on one example."""
  import jax
  import ml_collections
  from protoseg_jax import train
  _, label = _block_pair(40, 60, seed=4)
  image = np.random.default_rng(4).integers(0, 256, (40, 60, 3)).astype(np.uint8)
  mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
  config = ml_collections.ConfigDict({"dataset": {"mean": mean, "std": std,
                                                  "input_order": order}})
  opts = _opts(crop_size=(48, 48), scale=(60, 40), ratio_range=(0.5, 1.5),
               photometric=aug.endswith("photometric"), mean=mean, std=std, input_order=order)
  finish = jax.jit(lambda b: train.finish_batch(b, config))
  padded, draws = 0, []
  for i in range(24 if opts.photometric else 8):
    raw = augment.raw_transform(tf.constant(image), tf.constant(label), _seed(i), opts)
    assert sorted(raw) == sorted(["image", "image_box", "label"]
                                 + (["photometric"] if opts.photometric else []))
    assert raw["image"].dtype == tf.uint8 and raw["label"].dtype == tf.uint8
    got = finish(jax.tree.map(lambda v: v.numpy()[None], raw))
    assert sorted(got) == ["image", "label"] and got["label"].dtype == np.int32
    np.testing.assert_array_equal(got["label"][0], raw["label"].numpy())
    got = np.asarray(got["image"])[0]
    top, left, h, w = raw["image_box"].numpy().tolist()
    want = tf.cast(raw["image"], tf.float32)
    if opts.photometric:
      draws.append(raw["photometric"])
      want = reference.photometric_distortion_tf(
          want, jax.tree.map(lambda v: v.numpy(), raw["photometric"]))
    want = reference.normalize_reference(want.numpy(), mean, std, order)
    inside = np.zeros(want.shape[:2], bool)
    inside[top:top + h, left:left + w] = True
    if opts.photometric:
      np.testing.assert_allclose(got[inside], want[inside], rtol=0, atol=2e-5)
    else:
      np.testing.assert_array_max_ulp(got[inside], want[inside], maxulp=1)
    np.testing.assert_array_equal(got[~inside], 0.0)
    padded += (~inside).sum()
    eager_image, eager_label = augment.transform(tf.constant(image), tf.constant(label),
                                                 _seed(i), opts)
    np.testing.assert_allclose(eager_image.numpy(), got, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(eager_label.numpy(), raw["label"].numpy())
  assert padded > 0    # some crops were padded (the box is exercised)
  if draws:            # every step of the distortion was on and off
    flags = np.array([[d.brightness, d.contrast, d.saturation, d.hue, d.contrast_first]
                      for d in draws])
    assert flags.min(0).max() == 0 and flags.max(0).min() == 1


def test_photometric_draws_are_the_distortions_and_the_device_applies_them():
  """`photometric_draws` are the draws `photometric_distortion` applies: with
  every flag forced the device's `ops.photometric_distortion` of the same
  draws matches the host's steps one by one (tf.image.adjust_hue for the hue)."""
  import jax
  from protoseg_jax import ops
  image = np.random.default_rng(5).uniform(0, 255, (2, 16, 20, 3)).astype(np.float32)
  on = np.array([True, True])
  draws = ops.PhotometricDraws(
      brightness=on, delta=np.float32([20., -25.]), contrast=on, alpha=np.float32([1.3, 0.7]),
      saturation=on, factor=np.float32([0.6, 1.4]), hue=on, hue_shift=np.float32([-12., 17.]),
      contrast_first=np.array([True, False]))
  got = np.asarray(jax.jit(ops.photometric_distortion)(image, draws))
  for b in range(2):
    d = ops.PhotometricDraws(*(v[b] for v in draws))
    x = tf.clip_by_value(tf.constant(image[b]) + d.delta, 0., 255.)
    contrast = lambda y: tf.clip_by_value(y * d.alpha, 0., 255.)
    x = contrast(x) if d.contrast_first else x
    x = tf.image.adjust_hue(reference.scale_saturation_tf(x, d.factor), d.hue_shift / 180.)
    x = x if d.contrast_first else contrast(x)
    np.testing.assert_allclose(got[b], x.numpy(), rtol=0, atol=1e-3)
  for s in range(20):
    d = jax.tree.map(np.asarray, augment.photometric_draws(tf.constant([s, 2], tf.int64)))
    assert all(v.dtype == bool for v in (d.brightness, d.contrast, d.saturation, d.hue,
                                         d.contrast_first))
    assert -32 <= d.delta <= 32 and d.hue_shift == int(d.hue_shift)
    assert 0.5 <= d.alpha <= 1.5 and 0.5 <= d.factor <= 1.5 and -18 <= d.hue_shift < 18


def test_openseg_one_clip_with_moved_bounds_is_clip_then_brightness_then_clip():
  """openseg's cv2 uint8 resize output (clip to 0..255), + d, clip again, done
  by `ops.openseg_resize_crop` as one clip of round(resized) + d to
  [max(d, 0), min(255 + d, 255)]: the same values, here on 0/255 blocks
  whose bicubic overshoots both ends (its resample is `ops.resize_bicubic`'s)."""
  board = np.indices((6, 9)).sum(0) % 2 * 255
  image = np.kron(board, np.ones((4, 4))).astype(np.uint8)[..., None].repeat(3, -1)
  label = np.zeros((24, 36), np.uint8)
  seen = set()
  for shift in (10, 255):
    opts = _openseg_opts(crop_size=(30, 40), ratio_range=(1.2, 1.7), brightness_shift=shift)
    for i in range(12):
      raw = augment.raw_transform(tf.constant(image), tf.constant(label), _seed(i), opts)
      p = ops.ResizeParams(*(v.numpy() for v in raw["resize"]))
      top, left, h, w = raw["image_box"].numpy().tolist()
      got = np.asarray(ops.openseg_resize_crop(
          raw["image"].numpy()[None], ops.ResizeParams(*(np.asarray(v)[None] for v in p)),
          raw["image_box"].numpy()[None], opts.crop_size))[0, top:top + h, left:left + w]
      resized = np.asarray(ops.resize_bicubic(image, (p.out_h, p.out_w), (p.top, p.left), (h, w)))
      resized = resized[:, ::-1] if p.flip else resized
      rounded = np.round(resized)
      assert rounded.min() < 0 and rounded.max() > 255      # the resize overshoots
      d = float(p.brightness)
      seen.add(np.sign(d))
      want = np.clip(np.clip(rounded, 0., 255.) + d, 0., 255.)
      np.testing.assert_array_equal(got, want)
  assert seen >= {-1., 1.}


def test_bilinear_window_is_the_whole_resize_cropped_bits_or_within_1e3_of_it():
  """`resize_window_bilinear` resizes the whole image when the resize is at
  most WHOLE_RESIZE_MAX_AREA times the window (then tf.image.resize's bits),
  else only the window (ScaleAndTranslate: within 1e-3 of a 0..255 value,
  2e-4 seen);
  cases on both sides of the threshold and at it."""
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (30, 44, 3)).astype(np.uint8)
  whole, window = 0, 0
  for out_hw, top_left, win in [((30, 44), (0, 0), (30, 44)), ((45, 66), (7, 9), (30, 40)),
                                ((60, 88), (0, 0), (30, 44)), ((60, 88), (13, 21), (30, 44)),
                                ((61, 88), (3, 1), (30, 44)), ((120, 176), (50, 60), (30, 40)),
                                ((15, 22), (0, 0), (15, 22))]:
    full = tf.image.resize(image, out_hw, method="bilinear", antialias=False).numpy()
    want = full[top_left[0]:top_left[0] + win[0], top_left[1]:top_left[1] + win[1]]
    got = augment.resize_window_bilinear(tf.constant(image), tf.constant(out_hw),
                                         tf.constant(top_left), tf.constant(win)).numpy()
    assert got.shape == want.shape
    if out_hw[0] * out_hw[1] <= augment.WHOLE_RESIZE_MAX_AREA * win[0] * win[1]:
      np.testing.assert_array_equal(got, want, err_msg=str(out_hw))
      whole += 1
    else:
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-3, err_msg=str(out_hw))
      window += 1
  assert whole >= 3 and window >= 2


def test_mmseg_image_is_the_rounded_bilinear_resize_and_leaves_as_uint8():
  """mmseg's rescaled image is rounded to integers (cv2's uint8 resize):
  the host transform's image before normalisation (mean 0, std 1, no
  photometric distortion, no flip) is round(tf.image.resize) in the crop,
  and `raw_transform` ships those integers as uint8."""
  rng = np.random.default_rng(6)
  image = rng.integers(0, 256, (40, 60, 3)).astype(np.uint8)
  label = rng.integers(0, 20, (40, 60)).astype(np.uint8)
  for i, ratio in enumerate((0.6, 1.0, 1.7, 2.5)):
    opts = _opts(crop_size=(32, 48), scale=(60, 40), ratio_range=(ratio, ratio), flip_prob=0.0,
                 cat_max_ratio=1.0)
    img, _ = augment.train_transform(tf.constant(image), tf.constant(label), _seed(i), opts)
    raw = augment.raw_transform(tf.constant(image), tf.constant(label), _seed(i), opts)
    top, left, h, w = raw["image_box"].numpy().tolist()
    assert (top, left) == (0, 0)
    new_hw = augment.rescale_size(tf.constant([40, 60]), (60, 40), ratio).numpy()
    full = tf.image.resize(image, new_hw, method="bilinear", antialias=False).numpy()
    crop = img.numpy()[:h, :w]
    assert np.array_equal(crop, np.round(crop))       # integers
    # the crop is a window of the rounded resize (the offset is the seed's)
    found = [(t, l) for t in range(new_hw[0] - h + 1) for l in range(new_hw[1] - w + 1)
             if np.abs(np.round(full[t:t + h, l:l + w]) - crop).max() <= 1]
    assert found, ratio
    t, l = found[0]
    # equal, but where the window's ScaleAndTranslate (a resize of over 4x
    # the window's area: ratios 1.7, 2.5) rounds a value within 1e-3 of a
    # half the other way
    values = full[t:t + h, l:l + w]
    off = np.round(values) != crop
    assert np.all(np.abs(np.abs(values[off] - np.floor(values[off])) - 0.5) < 1e-3)
    whole = new_hw[0] * new_hw[1] <= augment.WHOLE_RESIZE_MAX_AREA * h * w
    assert not (whole and off.any())
    assert raw["image"].dtype == tf.uint8
    np.testing.assert_array_equal(raw["image"].numpy()[:h, :w], crop.astype(np.uint8))


def test_label_window_is_numpy_fancy_indexing_and_labels_ship_in_their_dtype():
  """`label_window` = label[rows][:, cols] (mirrored and repeated indices too);
  unfinished examples keep the stored label dtype when the ignore index fits
  (uint8 255, uint16 65535), else int32; finished ones are int32."""
  rng = np.random.default_rng(9)
  for dtype in (np.uint8, np.uint16):
    label = rng.integers(0, 200, (13, 17)).astype(dtype)
    rows = np.array([0, 0, 3, 12, 7], np.int32)
    cols = np.array([16, 15, 15, 2, 0, 9], np.int32)
    got = augment.label_window(tf.constant(label), tf.constant(rows), tf.constant(cols)).numpy()
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, label[rows][:, cols])
  pick = lambda dtype, ignore: augment._padded_label_dtype(dtype, _opts(ignore_index=ignore))
  assert pick(tf.uint8, 255) == tf.uint8 and pick(tf.uint16, 65535) == tf.uint16
  assert pick(tf.uint8, 300) == tf.int32
  image = np.zeros((20, 30, 3), np.uint8)
  label = rng.integers(0, 9, (20, 30)).astype(np.uint16)
  raw = augment.raw_transform(tf.constant(image), tf.constant(label), _seed(1),
                              _opts(crop_size=(32, 40), scale=(30, 20), ignore_index=65535))
  assert raw["label"].dtype == tf.uint16
  assert (raw["label"].numpy()[20:] == 65535).all() and (raw["label"].numpy()[:, 30:] == 65535).all()


@pytest.mark.parametrize("order,hw", [("rgb", (37, 53)), ("bgr", (37, 53)), ("rgb", (120, 160))])
def test_openseg_resize_on_the_device_is_the_reference(order, hw):
  """openseg's image on the device: the host ships the source rows and
  columns of the window's bicubic taps (`source_canvas`) and the resize's
  integers; the step's `finish_batch` (`ops.openseg_resize_crop`, then the
  normalisation) gives the float64 Keys bicubic (tests/reference.py) of the
  whole image, cropped, flipped, rounded, brightness-shifted, clipped and
  normalised: 0 in the padding, the same integers but where a value within
  float rounding of a half rounds the other way (at most 1 level, on under
  0.1% of the values), over scales 0.5-2 (down and up), aspect jitter,
  flips, brightness and random padding; the image whole in the canvas
  (37 x 53) or only the rows and columns the taps reach (120 x 160, larger
  than the canvas)."""
  import jax
  import ml_collections
  from protoseg_jax import train
  rng = np.random.default_rng(11)
  image = rng.integers(0, 256, (*hw, 3)).astype(np.uint8)
  image[5:20, 10:30] = 255       # flat blocks whose bicubic overshoots 0..255
  image[22:30, 30:50] = 0
  label = rng.integers(0, 30, hw).astype(np.uint8)
  std = (1., 1., 1.) if order == "rgb" else (58.395, 57.12, 57.375)
  mean = (0., 0., 0.) if order == "rgb" else (123.675, 116.28, 103.53)
  opts = _openseg_opts(crop_size=(40, 48), ratio_range=(0.5, 2.0), aspect_range=(0.9, 1.1),
                       mean=mean, std=std, input_order=order)
  config = ml_collections.ConfigDict({"dataset": {"mean": mean, "std": std, "input_order": order}})
  finish = jax.jit(lambda b: train.finish_batch(b, config))
  off, total, flips, scales, region = 0, 0, set(), [], 0
  for i in range(24):
    raw = augment.raw_transform(tf.constant(image), tf.constant(label), _seed(i), opts)
    assert sorted(raw) == ["image", "image_box", "label", "resize"]
    assert raw["image"].dtype == tf.uint8
    assert tuple(raw["image"].shape) == (*augment.source_canvas(opts), 3)
    p = jax.tree.map(lambda v: v.numpy().item(), raw["resize"])
    assert isinstance(p, ops.ResizeParams)
    if hw == (37, 53):        # the whole image fits the canvas
      assert p.source_top == p.source_left == 0
    region += p.source_top + p.source_left > 0
    flips.add(p.flip)
    scales.append(p.out_h / p.in_h)
    got = finish(jax.tree.map(lambda v: v.numpy()[None], raw))
    assert sorted(got) == ["image", "label"]
    np.testing.assert_array_equal(got["label"][0], raw["label"].numpy())
    got = np.asarray(got["image"])[0]
    top, left, h, w = raw["image_box"].numpy().tolist()
    window = reference.keys_cubic_resize(image, p.out_h, p.out_w)[
        p.top:p.top + h, p.left:p.left + w]
    window = window[:, ::-1] if p.flip else window
    d = p.brightness
    window = np.clip(np.clip(np.round(window), 0, 255) + d, 0, 255)
    want = np.zeros_like(got)
    want[top:top + h, left:left + w] = reference.normalize_reference(window, mean, std, order)
    inside = np.zeros(got.shape[:2], bool)
    inside[top:top + h, left:left + w] = True
    np.testing.assert_array_equal(got[~inside], 0.0)
    levels = np.abs(got - want) * np.asarray(std)[::-1 if order == "bgr" else 1]
    assert levels.max() <= 1 + 1e-3, (i, levels.max())
    off += int((levels > 1e-3).sum())
    total += levels.size
  assert off <= 1e-3 * total, off
  assert flips == {0, 1} and min(scales) < 0.7 and max(scales) > 1.5
  assert (region > 0) == (hw == (120, 160))


def test_openseg_source_canvas_holds_every_window():
  """The source canvas bounds the rows and columns any crop window's taps
  reach, for image sizes around and far above the crop / scale; a window
  that would not fit is an error naming config.dataset.resize_on_device."""
  opts = _openseg_opts(crop_size=(16, 24), ratio_range=(0.5, 2.0), aspect_range=(0.9, 1.1))
  sh, sw = augment.source_canvas(opts)
  for h, w in [(8, 8), (30, 50), (34, 52), (36, 54), (40, 60), (200, 300)]:
    image = np.zeros((h, w, 3), np.uint8)
    for i in range(30):
      raw = augment.raw_transform(tf.constant(image), tf.constant(np.zeros((h, w), np.uint8)),
                                  _seed(i), opts)
      assert tuple(raw["image"].shape) == (sh, sw, 3)
  # Windows drawn at scale 0.5 against the canvas of a recipe whose scales
  # start at 1: too few rows and columns.
  half = dataclasses.replace(opts, ratio_range=(0.5, 0.5))
  small = dataclasses.replace(opts, ratio_range=(1.0, 2.0))
  stages = augment.openseg_stages(half)[:2] + augment.openseg_stages(small)[2:3]
  with pytest.raises(tf.errors.InvalidArgumentError, match="resize_on_device"):
    augment.run_stages(stages, tf.constant(np.zeros((200, 300, 3), np.uint8)),
                       tf.constant(np.zeros((200, 300), np.uint8)), _seed(0))
