"""Tests for protoseg_jax.evaluate: metrics, inference modes, dynamic crop+resize."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protoseg_jax import evaluate as ev
from protoseg_jax.ops import resize_bilinear

IGNORE = 255


# ---------------------------------------------------------------- references


def _bruteforce_confusion(pred, label, c, mask=None, ignore=IGNORE):
  cm = np.zeros((c, c), np.int64)
  for b in range(label.shape[0]):
    if mask is not None and not mask[b]:
      continue
    for i in range(label.shape[1]):
      for j in range(label.shape[2]):
        t, p = int(label[b, i, j]), int(pred[b, i, j])
        if t == ignore or t < 0 or t >= c:
          continue
        cm[t, p] += 1
  return cm


def _mmseg_style_metrics(pred, label, c, mask, ignore=IGNORE):
  """Per-pixel areas as mmseg's intersect_and_union + total_area_to_metrics."""
  inter = np.zeros(c)
  area_p = np.zeros(c)
  area_l = np.zeros(c)
  for b in range(label.shape[0]):
    if not mask[b]:
      continue
    keep = label[b] != ignore
    p, t = pred[b][keep], label[b][keep]
    for k in range(c):
      inter[k] += np.sum((p == k) & (t == k))
      area_p[k] += np.sum(p == k)
      area_l[k] += np.sum(t == k)
  union = area_p + area_l - inter
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = inter / union
    acc = inter / area_l
  return dict(aAcc=inter.sum() / area_l.sum() * 100, IoU=iou * 100, Acc=acc * 100,
              mIoU=np.nanmean(iou) * 100, mAcc=np.nanmean(acc) * 100)


def _make_batch(rng, image_hws, label_hws, canvas, label_canvas, mask=None):
  b = len(image_hws)
  img = np.zeros((b, *canvas, 3), np.float32)
  lab = np.full((b, *label_canvas), IGNORE, np.int32)
  for k, ((h, w), (lh, lw)) in enumerate(zip(image_hws, label_hws)):
    img[k, :h, :w] = rng.randn(h, w, 3)
    lab[k, :lh, :lw] = rng.randint(0, 3, (lh, lw))
  return {"image": jnp.asarray(img), "image_hw": jnp.asarray(np.array(image_hws, np.int32)),
          "label": jnp.asarray(lab), "label_hw": jnp.asarray(np.array(label_hws, np.int32)),
          "mask": jnp.asarray(np.ones(b, bool) if mask is None else np.asarray(mask))}


def _per_pixel_fn(c=4, seed=0):
  """A translation- and flip-equivariant model: per-pixel linear map 3 -> C."""
  r = np.random.RandomState(seed)
  w = jnp.asarray(r.randn(3, c).astype(np.float32))
  bias = jnp.asarray(r.randn(c).astype(np.float32))
  return lambda x: jnp.einsum("bhwk,kc->bhwc", x, w, precision="highest") + bias


def _pooled_fn(c=4, seed=1):
  """A 1/2-resolution model (2x2 average pool + linear), like a real feature stride."""
  lin = _per_pixel_fn(c, seed)

  def fn(x):
    b, h, w, k = x.shape
    x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, k).mean((2, 4))
    return lin(x)
  return fn


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------- metrics


def test_confusion_matrix_matches_bruteforce_with_ignore_outliers_and_mask():
  rng = np.random.RandomState(0)
  c = 5
  label = rng.randint(0, c, (4, 7, 9)).astype(np.int32)
  pred = rng.randint(0, c, (4, 7, 9)).astype(np.int32)
  label[rng.rand(*label.shape) < 0.2] = IGNORE
  label[0, 0, :3] = [-1, c, c + 7]          # outside [0, C): not counted
  mask = np.array([True, False, True, True])
  cm = jax.jit(lambda p, l, m: ev.confusion_matrix(p, l, c, ignore_index=IGNORE, mask=m))(
      pred, label, mask)
  assert cm.dtype == jnp.int32 and cm.shape == (c, c)
  ref = _bruteforce_confusion(pred, label, c, mask)
  np.testing.assert_array_equal(np.asarray(cm), ref)
  assert ref.sum() > 0 and ref.sum() < np.sum(mask) * 7 * 9
  # Without a mask every row counts.
  np.testing.assert_array_equal(np.asarray(ev.confusion_matrix(pred, label, c)),
                                _bruteforce_confusion(pred, label, c))


def test_metrics_match_mmseg_semantics_with_absent_classes():
  rng = np.random.RandomState(1)
  c = 6
  label = rng.randint(0, 4, (3, 8, 8)).astype(np.int32)     # classes 4, 5 never in GT
  pred = rng.randint(0, 5, (3, 8, 8)).astype(np.int32)      # class 4 predicted, 5 never
  label[rng.rand(*label.shape) < 0.15] = IGNORE
  pred[label == IGNORE] = 5                                 # predictions on ignored pixels never count
  mask = np.array([True, True, False])
  cm = np.asarray(ev.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), c, mask=jnp.asarray(mask)))
  got = ev.metrics_from_confusion(cm)
  ref = _mmseg_style_metrics(pred, label, c, mask)
  assert np.isnan(got["IoU"][5]) and np.isnan(got["Acc"][5])  # absent from both: excluded
  assert got["IoU"][4] == 0.0 and np.isnan(got["Acc"][4])     # predicted only: IoU 0, counted
  np.testing.assert_allclose(got["IoU"], ref["IoU"], rtol=1e-12, equal_nan=True)
  np.testing.assert_allclose(got["Acc"], ref["Acc"], rtol=1e-12, equal_nan=True)
  for k in ("aAcc", "mIoU", "mAcc"):
    assert isinstance(got[k], float)
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-12)
  # mIoU averages 5 classes (0..4), mAcc 4 (0..3).
  np.testing.assert_allclose(got["mIoU"], np.mean(got["IoU"][:5]), rtol=1e-12)
  np.testing.assert_allclose(got["mAcc"], np.mean(got["Acc"][:4]), rtol=1e-12)


def test_metrics_hand_computed_and_empty():
  cm = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 5]], np.int64)
  m = ev.metrics_from_confusion(cm)
  np.testing.assert_allclose(m["IoU"], [3 / 5 * 100, 0.0, 5 / 6 * 100])
  np.testing.assert_allclose(m["Acc"][[0, 2]], [75.0, 5 / 6 * 100])
  assert np.isnan(m["Acc"][1])
  np.testing.assert_allclose(m["aAcc"], 8 / 10 * 100)
  np.testing.assert_allclose(m["mIoU"], (60 + 0 + 500 / 6) / 3)
  empty = ev.metrics_from_confusion(np.zeros((3, 3), np.int64))
  assert np.isnan(empty["mIoU"]) and np.isnan(empty["aAcc"]) and np.all(np.isnan(empty["IoU"]))


def test_format_table_has_class_names_and_summary():
  cm = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 5]], np.int64)
  table = ev.format_table(ev.metrics_from_confusion(cm), ["road", "sidewalk", "building"])
  lines = table.splitlines()
  for name in ("road", "sidewalk", "building"):
    assert any(name in l for l in lines)
  assert any("road" in l and "60.00" in l and "75.00" in l for l in lines)
  assert any("sidewalk" in l and "nan" in l for l in lines)
  assert "mIoU: 47.78" in lines[-1] and "aAcc: 80.00" in lines[-1]
  with pytest.raises(ValueError, match="2 class names for 3 classes"):
    ev.format_table(ev.metrics_from_confusion(cm), ["a", "b"])


# ---------------------------------------------------------------- dynamic resize and flip


@pytest.mark.parametrize("in_hw,out_hw", [((5, 7), (9, 11)), ((9, 12), (4, 5)), ((6, 6), (6, 6)),
                                          ((1, 3), (3, 1)), ((9, 12), (9, 12))])
def test_resize_valid_equals_static_resize_of_crop(in_hw, out_hw):
  rng = np.random.RandomState(2)
  x = rng.randn(2, 9, 12, 3).astype(np.float32)
  out_size = (10, 13)
  in_arr = jnp.asarray(np.array([in_hw, (9, 12)], np.int32))
  out_arr = jnp.asarray(np.array([out_hw, (10, 13)], np.int32))
  got = np.asarray(jax.jit(ev.resize_valid, static_argnums=3)(jnp.asarray(x), in_arr, out_arr, out_size))
  assert got.shape == (2, 10, 13, 3)
  ref0 = np.asarray(resize_bilinear(jnp.asarray(x[:1, :in_hw[0], :in_hw[1]]), out_hw, align_corners=False))
  np.testing.assert_allclose(got[0, :out_hw[0], :out_hw[1]], ref0[0], atol=1e-5)
  outside = np.ones((10, 13), bool)
  outside[:out_hw[0], :out_hw[1]] = False
  assert np.all(got[0][outside] == 0)
  ref1 = np.asarray(resize_bilinear(jnp.asarray(x[1:]), (10, 13), align_corners=False))
  np.testing.assert_allclose(got[1], ref1[0], atol=1e-5)


def test_flip_valid_keeps_padding_in_place():
  x = jnp.arange(2 * 1 * 5, dtype=jnp.float32).reshape(2, 1, 5, 1)
  got = np.asarray(ev.flip_valid(x, jnp.asarray([3, 5])))[..., 0]
  np.testing.assert_array_equal(got[0, 0], [2, 1, 0, 3, 4])
  np.testing.assert_array_equal(got[1, 0], [9, 8, 7, 6, 5])


# ---------------------------------------------------------------- inference modes


def test_slide_windows_follow_mmseg():
  wins = ev.slide_windows(10, 13, (4, 6), (3, 4))
  # h_grids = (10 - 4 + 2) // 3 + 1 = 3, w_grids = (13 - 6 + 3) // 4 + 1 = 3
  assert len(wins) == 9
  assert {(y1, y2) for y1, y2, _, _ in wins} == {(0, 4), (3, 7), (6, 10)}
  assert {(x1, x2) for _, _, x1, x2 in wins} == {(0, 6), (4, 10), (7, 13)}
  assert ev.slide_windows(3, 5, (4, 6), (3, 4)) == [(0, 3, 0, 5)]   # crop larger than canvas


def test_slide_equals_whole_for_translation_equivariant_fn():
  rng = np.random.RandomState(3)
  images = jnp.asarray(rng.randn(2, 11, 14, 3).astype(np.float32))
  fn = _per_pixel_fn()
  whole = ev.whole_inference(fn, images)
  slide = jax.jit(lambda x: ev.slide_inference(fn, x, crop_size=(5, 6), stride=(3, 4)))(images)
  np.testing.assert_allclose(np.asarray(slide), np.asarray(whole), atol=1e-5)


def test_slide_matches_loop_reference_with_feature_stride():
  rng = np.random.RandomState(4)
  images = rng.randn(2, 10, 13, 3).astype(np.float32)
  fn = _pooled_fn()
  crop, stride = (4, 6), (3, 4)
  got = np.asarray(jax.jit(lambda x: ev.slide_inference(fn, x, crop_size=crop, stride=stride))(
      jnp.asarray(images)))
  # mmseg's slide_inference, literally: loop, resize each window, pad-add, divide by count.
  h_grids = max(10 - crop[0] + stride[0] - 1, 0) // stride[0] + 1
  w_grids = max(13 - crop[1] + stride[1] - 1, 0) // stride[1] + 1
  preds = np.zeros((2, 10, 13, 4))
  count = np.zeros((10, 13))
  for hi in range(h_grids):
    for wi in range(w_grids):
      y1, x1 = hi * stride[0], wi * stride[1]
      y2, x2 = min(y1 + crop[0], 10), min(x1 + crop[1], 13)
      y1, x1 = max(y2 - crop[0], 0), max(x2 - crop[1], 0)
      win = jnp.asarray(images[:, y1:y2, x1:x2])
      out = resize_bilinear(fn(win), (y2 - y1, x2 - x1), align_corners=False)
      preds[:, y1:y2, x1:x2] += np.asarray(out)
      count[y1:y2, x1:x2] += 1
  ref = preds / count[None, :, :, None]
  np.testing.assert_allclose(got, ref, atol=1e-5)
  whole = np.asarray(ev.whole_inference(fn, jnp.asarray(images)))
  assert np.abs(whole - ref).max() > 1e-2   # the windows matter for this model


def test_predict_whole_single_scale_equals_crop_and_resize():
  rng = np.random.RandomState(5)
  batch = _make_batch(rng, [(8, 12), (6, 9)], [(11, 16), (5, 7)], (8, 12), (12, 16))
  fn = _pooled_fn()
  pred = np.asarray(jax.jit(lambda b: ev.predict(fn, b, num_classes=4))(batch))
  assert pred.shape == (2, 12, 16) and pred.dtype == np.int32
  logits = ev.whole_inference(fn, batch["image"])
  for k, ((h, w), (lh, lw)) in enumerate([((8, 12), (11, 16)), ((6, 9), (5, 7))]):
    ref = np.asarray(resize_bilinear(logits[k:k + 1, :h, :w], (lh, lw), align_corners=False))[0]
    np.testing.assert_array_equal(pred[k, :lh, :lw], ref.argmax(-1))
    assert np.all(pred[k, lh:] == 0) and np.all(pred[k, :, lw:] == 0)


def test_flip_with_symmetric_fn_changes_nothing():
  rng = np.random.RandomState(6)
  batch = _make_batch(rng, [(7, 10), (5, 6)], [(7, 10), (9, 11)], (7, 10), (9, 12))
  fn = _per_pixel_fn()
  plain, flipped, pred_plain, pred_flip = jax.jit(lambda b: (
      ev.predict_scores(fn, b), ev.predict_scores(fn, b, flip=True),
      ev.predict(fn, b), ev.predict(fn, b, flip=True)))(batch)
  inside = np.zeros((2, 9, 12), bool)
  inside[0, :7, :10] = True
  inside[1, :9, :11] = True
  np.testing.assert_allclose(np.asarray(flipped)[inside], _softmax(np.asarray(plain)[inside]), atol=1e-5)
  assert np.all(np.asarray(flipped)[~inside] == 0)
  np.testing.assert_array_equal(np.asarray(pred_flip), np.asarray(pred_plain))


def test_flip_flips_only_the_valid_region():
  # A position-dependent model: per-pixel map plus a ramp over the canvas column.
  rng = np.random.RandomState(7)
  hw = [(6, 9), (6, 5)]
  batch = _make_batch(rng, hw, hw, (6, 9), (6, 9))
  lin = _per_pixel_fn()
  ramp = jnp.linspace(-2.0, 2.0, 9)[None, None, :, None] * jnp.asarray([1.0, -1.0, 0.5, 0.0])
  fn = lambda x: lin(x) + ramp
  got = np.asarray(jax.jit(lambda b: ev.predict_scores(fn, b, flip=True))(batch))
  img = np.asarray(batch["image"])
  base = np.asarray(lin(jnp.asarray(img)))
  r = np.asarray(ramp)[0, 0]
  for k, (h, w) in enumerate(hw):
    p1 = _softmax(base[k, :h, :w] + r[:w])
    p2 = _softmax(base[k, :h, :w] + r[:w][::-1])   # flipped pass: ramp seen mirrored
    np.testing.assert_allclose(got[k, :h, :w], (p1 + p2) / 2, atol=1e-5)


def test_multiscale_flip_matches_reference():
  rng = np.random.RandomState(8)
  canvas, label_canvas = (8, 12), (10, 14)
  hw, lhw = [(8, 12), (6, 10)], [(10, 14), (7, 9)]
  batch = _make_batch(rng, hw, lhw, canvas, label_canvas)
  fn = _pooled_fn()
  scales = (0.5, 1.0, 1.5)
  got = np.asarray(jax.jit(lambda b: ev.predict_scores(fn, b, scales=scales, flip=True))(batch))
  img = np.asarray(batch["image"])

  @functools.partial(jax.jit, static_argnums=(1, 2, 3))
  def ref_pass(x, size, valid, out):   # static resizes only
    logits = ev.whole_inference(fn, resize_bilinear(x, size, align_corners=False))
    return resize_bilinear(logits[:, :valid[0], :valid[1]], out, align_corners=False)

  for k in range(2):
    (h, w), (lh, lw) = hw[k], lhw[k]
    acc = np.zeros((lh, lw, 4))
    for s in scales:
      size = (int(canvas[0] * s + 0.5), int(canvas[1] * s + 0.5))
      vh, vw = h * size[0] // canvas[0], w * size[1] // canvas[1]  # integral for these sizes
      assert vh * canvas[0] == h * size[0] and vw * canvas[1] == w * size[1]
      for flipped in (False, True):
        x = img[k:k + 1].copy()
        if flipped:
          x[:, :h, :w] = x[:, :h, :w][:, :, ::-1]
        out = np.asarray(ref_pass(jnp.asarray(x), size, (vh, vw), (lh, lw)))[0]
        p = _softmax(out)
        acc += p[:, ::-1] if flipped else p
    np.testing.assert_allclose(got[k, :lh, :lw], acc / (2 * len(scales)), atol=1e-5)
    assert np.all(got[k, lh:] == 0) and np.all(got[k, :, lw:] == 0)


def test_multiscale_slide_runs_and_single_pass_slide_equals_whole_for_equivariant_fn():
  rng = np.random.RandomState(9)
  batch = _make_batch(rng, [(9, 13), (7, 8)], [(9, 13), (10, 10)], (9, 13), (10, 13))
  fn = _per_pixel_fn()
  kw = dict(scales=(0.75, 1.25), flip=True, num_classes=4)
  slide, whole = jax.jit(lambda b: (
      ev.predict_scores(fn, b, mode="slide", crop_size=(5, 5), stride=(3, 3), **kw),
      ev.predict_scores(fn, b, **kw)))(batch)
  np.testing.assert_allclose(np.asarray(slide), np.asarray(whole), atol=1e-5)


def test_bad_arguments_are_reported():
  rng = np.random.RandomState(10)
  batch = _make_batch(rng, [(4, 4)], [(4, 4)], (4, 4), (4, 4))
  fn = _per_pixel_fn()
  with pytest.raises(ValueError, match="mode must be"):
    ev.predict(fn, batch, mode="sliding")
  with pytest.raises(ValueError, match="needs crop_size and stride"):
    ev.predict(fn, batch, mode="slide")
  with pytest.raises(ValueError, match="expected num_classes=5"):
    ev.predict(fn, batch, num_classes=5)


# ---------------------------------------------------------------- full pass


def test_predict_step_and_evaluator_match_bruteforce():
  rng = np.random.RandomState(11)
  c = 4
  r = np.random.RandomState(0)
  variables = {"w": jnp.asarray(r.randn(3, c).astype(np.float32)), "b": jnp.zeros((c,))}
  logits_fn = lambda v, x: jnp.einsum("bhwk,kc->bhwc", x, v["w"]) + v["b"]
  step = jax.jit(ev.make_predict_step(logits_fn, num_classes=c, ignore_index=IGNORE))
  batches, preds, labels, masks = [], [], [], []
  for i in range(3):
    mask = [True, True] if i < 2 else [True, False]       # last batch padded
    batch = _make_batch(rng, [(6, 8), (5, 7)], [(6, 8), (5, 7)], (6, 8), (6, 8), mask)
    batch = {k: np.asarray(v) for k, v in batch.items()}  # host batches, like tf.data
    batches.append(batch)
    logits = np.einsum("bhwk,kc->bhwc", batch["image"], np.asarray(variables["w"]))
    p = logits.argmax(-1)
    p[1, 5:] = 0
    p[1, :, 7:] = 0
    preds.append(p)
    labels.append(batch["label"])
    masks.append(batch["mask"])
  evaluator = ev.Evaluator(step, num_classes=c, class_names=list("abcd"), log_every=1)
  metrics = evaluator.evaluate(variables, iter(batches))
  pred, label, mask = map(np.concatenate, (preds, labels, masks))
  ref_cm = _bruteforce_confusion(pred, label, c, mask)
  np.testing.assert_array_equal(metrics["confusion"], ref_cm)
  assert metrics["confusion"].dtype == np.int64
  ref = _mmseg_style_metrics(pred, label, c, mask)
  for k in ("aAcc", "mIoU", "mAcc"):
    np.testing.assert_allclose(metrics[k], ref[k], rtol=1e-12)
  assert evaluator.confusion(variables, iter(batches), num_batches=1).sum() == 6 * 8 + 5 * 7


_SHARDED_SCRIPT = textwrap.dedent("""
    import numpy as np, jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from protoseg_jax import evaluate as ev
    assert jax.device_count() == 4, jax.devices()
    rng = np.random.RandomState(0)
    b, c = 8, 3
    hw = np.array([(6 - i % 3, 9 - i % 4) for i in range(b)], np.int32)
    lhw = np.array([(7 - i % 2, 10 - i % 3) for i in range(b)], np.int32)
    img = rng.randn(b, 6, 9, 3).astype(np.float32)
    lab = rng.randint(0, c, (b, 7, 10)).astype(np.int32)
    for i in range(b):
      img[i, hw[i, 0]:] = 0; img[i, :, hw[i, 1]:] = 0
      lab[i, lhw[i, 0]:] = 255; lab[i, :, lhw[i, 1]:] = 255
    batch = dict(image=img, image_hw=hw, label=lab, label_hw=lhw, mask=np.arange(b) < 7)
    w = rng.randn(3, c).astype(np.float32)
    fn = lambda v, x: jax.image.resize(jnp.einsum("bhwk,kc->bhwc", x, v), (x.shape[0], (x.shape[1] + 1) // 2, (x.shape[2] + 1) // 2, c), "linear")
    step = ev.make_predict_step(fn, num_classes=c, mode="slide", crop_size=(4, 4), stride=(3, 3), scales=(0.75, 1.0), flip=True)
    ref = np.asarray(jax.jit(step)(w, batch))
    assert ref.sum() > 0
    for axis_type in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto):
      mesh = jax.make_mesh((4,), ("data",), axis_types=(axis_type,))
      with jax.set_mesh(mesh):
        sh = {k: NamedSharding(mesh, P("data")) for k in batch}
        gb = {k: jax.device_put(v, sh[k]) for k, v in batch.items()}
        out = jax.jit(step, in_shardings=(NamedSharding(mesh, P()), sh),
                      out_shardings=NamedSharding(mesh, P()))(w, gb)
      got = ev._to_host_int64(out)
      np.testing.assert_array_equal(got, ref)
    print("SHARDED_OK", got.sum())
""")


def test_predict_step_sharded_over_four_devices_equals_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  res = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, cwd=root,
                       capture_output=True, text=True, timeout=240)
  assert res.returncode == 0 and "SHARDED_OK" in res.stdout, res.stdout + res.stderr


def test_padding_rows_with_zero_sizes_give_zero_scores():
  # The input pipeline pads the last batch with image_hw = label_hw = (0, 0).
  rng = np.random.RandomState(12)
  batch = _make_batch(rng, [(6, 8), (6, 8)], [(7, 9), (7, 9)], (6, 8), (7, 9), [True, False])
  batch["image_hw"] = batch["image_hw"].at[1].set(0)
  batch["label_hw"] = batch["label_hw"].at[1].set(0)
  fn = _pooled_fn()
  for kw in (dict(), dict(scales=(0.5, 1.0), flip=True),
             dict(mode="slide", crop_size=(4, 4), stride=(3, 3))):
    scores = np.asarray(jax.jit(lambda b: ev.predict_scores(fn, b, **kw))(batch))
    assert np.all(np.isfinite(scores)) and np.all(scores[1] == 0), kw
    assert np.abs(scores[0]).sum() > 0
