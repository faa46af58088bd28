"""Tests for protoseg_jax.inference: inference modes, dynamic crop+resize, predict step."""

from __future__ import annotations

import dataclasses
import functools
import textwrap

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from protoseg_jax import chunking
from protoseg_jax import inference as inf
from protoseg_jax.ops import resize_bilinear

import tool_runner
from conftest import xla_flags

IGNORE = 255


# ---------------------------------------------------------------- references


def options(**overrides) -> inf.InferenceOptions:
  """The default config's inference options with these tests' conventions
  (mmseg's align_corners=False; class_chunk None: never chunk), then `overrides`."""
  fields = dict(align_corners=False, class_chunk=None) | overrides
  return dataclasses.replace(inf.inference_options(default.get_config()), **fields)


def make_batch(rng, image_hws, label_hws, canvas, label_canvas, mask=None):
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


# ---------------------------------------------------------------- dynamic resize and flip


@pytest.mark.parametrize("in_hw,out_hw", [((5, 7), (9, 11)), ((9, 12), (4, 5)), ((6, 6), (6, 6)),
                                          ((1, 3), (3, 1)), ((9, 12), (9, 12))])
def test_resize_valid_equals_static_resize_of_crop(in_hw, out_hw):
  rng = np.random.RandomState(2)
  x = rng.randn(2, 9, 12, 3).astype(np.float32)
  out_size = (10, 13)
  in_arr = jnp.asarray(np.array([in_hw, (9, 12)], np.int32))
  out_arr = jnp.asarray(np.array([out_hw, (10, 13)], np.int32))
  got = np.asarray(jax.jit(inf.resize_valid, static_argnums=3)(jnp.asarray(x), in_arr, out_arr, out_size))
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
  got = np.asarray(inf.flip_valid(x, jnp.asarray([3, 5])))[..., 0]
  np.testing.assert_array_equal(got[0, 0], [2, 1, 0, 3, 4])
  np.testing.assert_array_equal(got[1, 0], [9, 8, 7, 6, 5])


# ---------------------------------------------------------------- inference modes


def test_slide_windows_follow_mmseg():
  wins = inf.slide_windows(10, 13, (4, 6), (3, 4))
  # h_grids = (10 - 4 + 2) // 3 + 1 = 3, w_grids = (13 - 6 + 3) // 4 + 1 = 3
  assert len(wins) == 9
  assert {(y1, y2) for y1, y2, _, _ in wins} == {(0, 4), (3, 7), (6, 10)}
  assert {(x1, x2) for _, _, x1, x2 in wins} == {(0, 6), (4, 10), (7, 13)}
  assert inf.slide_windows(3, 5, (4, 6), (3, 4)) == [(0, 3, 0, 5)]   # crop larger than canvas


def test_slide_equals_whole_for_translation_equivariant_fn():
  rng = np.random.RandomState(3)
  images = jnp.asarray(rng.randn(2, 11, 14, 3).astype(np.float32))
  fn = _per_pixel_fn()
  whole = inf.whole_inference(fn, images)
  slide = jax.jit(lambda x: inf.slide_inference(fn, x, slide_crop=(5, 6), stride=(3, 4)))(images)
  np.testing.assert_allclose(np.asarray(slide), np.asarray(whole), atol=1e-5)


def test_slide_matches_loop_reference_with_feature_stride():
  rng = np.random.RandomState(4)
  images = rng.randn(2, 10, 13, 3).astype(np.float32)
  fn = _pooled_fn()
  crop, stride = (4, 6), (3, 4)
  got = np.asarray(jax.jit(lambda x: inf.slide_inference(fn, x, slide_crop=crop, stride=stride))(
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
  whole = np.asarray(inf.whole_inference(fn, jnp.asarray(images)))
  assert np.abs(whole - ref).max() > 1e-2   # the windows matter for this model


def test_predict_whole_single_scale_equals_crop_and_resize():
  rng = np.random.RandomState(5)
  batch = make_batch(rng, [(8, 12), (6, 9)], [(11, 16), (5, 7)], (8, 12), (12, 16))
  fn = _pooled_fn()
  pred = np.asarray(jax.jit(lambda b: inf.predict(fn, b, options(), num_classes=4))(batch))
  assert pred.shape == (2, 12, 16) and pred.dtype == np.int32
  logits = inf.whole_inference(fn, batch["image"])
  for k, ((h, w), (lh, lw)) in enumerate([((8, 12), (11, 16)), ((6, 9), (5, 7))]):
    ref = np.asarray(resize_bilinear(logits[k:k + 1, :h, :w], (lh, lw), align_corners=False))[0]
    np.testing.assert_array_equal(pred[k, :lh, :lw], ref.argmax(-1))
    assert np.all(pred[k, lh:] == 0) and np.all(pred[k, :, lw:] == 0)


def test_flip_with_symmetric_fn_changes_nothing():
  rng = np.random.RandomState(6)
  batch = make_batch(rng, [(7, 10), (5, 6)], [(7, 10), (9, 11)], (7, 10), (9, 12))
  fn = _per_pixel_fn()
  plain, flipped, pred_plain, pred_flip = jax.jit(lambda b: (
      inf.predict_scores(fn, b, options()), inf.predict_scores(fn, b, options(flip=True)),
      inf.predict(fn, b, options()), inf.predict(fn, b, options(flip=True))))(batch)
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
  batch = make_batch(rng, hw, hw, (6, 9), (6, 9))
  lin = _per_pixel_fn()
  ramp = jnp.linspace(-2.0, 2.0, 9)[None, None, :, None] * jnp.asarray([1.0, -1.0, 0.5, 0.0])
  fn = lambda x: lin(x) + ramp
  got = np.asarray(jax.jit(lambda b: inf.predict_scores(fn, b, options(flip=True)))(batch))
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
  batch = make_batch(rng, hw, lhw, canvas, label_canvas)
  fn = _pooled_fn()
  scales = (0.5, 1.0, 1.5)
  got = np.asarray(jax.jit(lambda b: inf.predict_scores(fn, b, options(scales=scales, flip=True)))(batch))
  img = np.asarray(batch["image"])

  @functools.partial(jax.jit, static_argnums=(1, 2, 3))
  def ref_pass(x, size, valid, out):   # static resizes only
    logits = inf.whole_inference(fn, resize_bilinear(x, size, align_corners=False))
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
  batch = make_batch(rng, [(9, 13), (7, 8)], [(9, 13), (10, 10)], (9, 13), (10, 13))
  fn = _per_pixel_fn()
  kw = dict(scales=(0.75, 1.25), flip=True)
  slide, whole = jax.jit(lambda b: (
      inf.predict_scores(fn, b, options(mode="slide", slide_crop=(5, 5), stride=(3, 3), **kw),
                         num_classes=4),
      inf.predict_scores(fn, b, options(**kw), num_classes=4)))(batch)
  np.testing.assert_allclose(np.asarray(slide), np.asarray(whole), atol=1e-5)


def test_bad_arguments_are_reported():
  rng = np.random.RandomState(10)
  batch = make_batch(rng, [(4, 4)], [(4, 4)], (4, 4), (4, 4))
  fn = _per_pixel_fn()
  with pytest.raises(ValueError, match="mode must be"):
    options(mode="sliding")
  with pytest.raises(ValueError, match="needs slide_crop and stride"):
    options(mode="slide")
  with pytest.raises(ValueError, match="expected num_classes=5"):
    inf.predict(fn, batch, options(), num_classes=5)
  with pytest.raises(ValueError, match="expected num_classes=5"):
    inf.predict(fn, batch, options(class_chunk=2), num_classes=5)
  with pytest.raises(TypeError, match="InferenceOptions"):
    inf.make_predict_step(lambda v, x: fn(x), {"mode": "whole"}, num_classes=4)


_SHARDED_SCRIPT = textwrap.dedent("""
    import numpy as np, jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from protoseg_jax import evaluate, inference
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
    kw = dict(mode="slide", slide_crop=(4, 4), stride=(3, 3), scales=(0.75, 1.0), flip=True,
              resize="bilinear", merge="mean_softmax", align_corners=False)
    step = inference.make_predict_step(fn, inference.InferenceOptions(class_chunk=None, **kw),
                                       num_classes=c)
    chunked = inference.make_predict_step(fn, inference.InferenceOptions(class_chunk=2, **kw),
                                          num_classes=c)   # 2 chunks, one padded class
    ref = np.asarray(jax.jit(step)(w, batch))
    assert ref.sum() > 0
    for axis_type in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto):
      mesh = jax.make_mesh((4,), ("data",), axis_types=(axis_type,))
      for st in (step, chunked):
        with jax.set_mesh(mesh):
          sh = {k: NamedSharding(mesh, P("data")) for k in batch}
          gb = {k: jax.device_put(v, sh[k]) for k, v in batch.items()}
          out = jax.jit(st, in_shardings=(NamedSharding(mesh, P()), sh),
                        out_shardings=NamedSharding(mesh, P()))(w, gb)
        got = evaluate.host_int64(out)
        np.testing.assert_array_equal(got, ref)
    print("SHARDED_OK", got.sum())
""")


def test_predict_step_sharded_over_four_devices_equals_single_device():
  # A process with 4 CPU devices (tests/tool_runner.py: a child of the worker's
  # driver, its XLA_FLAGS set before its JAX backend starts).
  res = tool_runner.run(["-c", _SHARDED_SCRIPT], timeout=240, env={"XLA_FLAGS": xla_flags(4)})
  assert res.returncode == 0 and "SHARDED_OK" in res.stdout, res.stdout + res.stderr


def test_padding_rows_with_zero_sizes_give_zero_scores():
  # The input pipeline pads the last batch with image_hw = label_hw = (0, 0).
  rng = np.random.RandomState(12)
  batch = make_batch(rng, [(6, 8), (6, 8)], [(7, 9), (7, 9)], (6, 8), (7, 9), [True, False])
  batch["image_hw"] = batch["image_hw"].at[1].set(0)
  batch["label_hw"] = batch["label_hw"].at[1].set(0)
  fn = _pooled_fn()
  for kw in (dict(), dict(scales=(0.5, 1.0), flip=True),
             dict(mode="slide", slide_crop=(4, 4), stride=(3, 3))):
    scores = np.asarray(jax.jit(lambda b: inf.predict_scores(fn, b, options(**kw)))(batch))
    assert np.all(np.isfinite(scores)) and np.all(scores[1] == 0), kw
    assert np.abs(scores[0]).sum() > 0


# ---------------------------------------------------------------- openseg resize / merge options


def _torch_resize(x, size, mode, align_corners):
  """[B, H, W, C] numpy -> F.interpolate(NCHW) -> [B, h, w, C] numpy."""
  torch = pytest.importorskip("torch")
  t = torch.from_numpy(np.array(x, np.float64)).permute(0, 3, 1, 2)
  out = torch.nn.functional.interpolate(t, size=tuple(size), mode=mode, align_corners=align_corners)
  return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("in_hw,out_hw", [((5, 7), (9, 11)), ((9, 12), (4, 5)), ((6, 6), (6, 6)),
                                          ((9, 12), (10, 13))])
def test_resize_valid_bicubic_equals_torch_bicubic_of_crop(in_hw, out_hw):
  x = np.random.RandomState(3).randn(1, 9, 12, 3).astype(np.float32)
  got = np.asarray(inf.resize_valid(jnp.asarray(x), jnp.asarray([in_hw]), jnp.asarray([out_hw]),
                                    (10, 13), method="bicubic"))
  want = _torch_resize(x[:, :in_hw[0], :in_hw[1]], out_hw, "bicubic", False)
  np.testing.assert_allclose(got[0, :out_hw[0], :out_hw[1]], want[0], atol=1e-4)
  outside = np.ones((10, 13), bool)
  outside[:out_hw[0], :out_hw[1]] = False
  assert np.all(got[0][outside] == 0)


def test_predict_bicubic_resizes_feature_logits_straight_to_the_label():
  rng = np.random.RandomState(4)
  fn = _pooled_fn()
  batch = make_batch(rng, [(8, 12), (6, 10)], [(15, 23), (6, 10)], (8, 12), (16, 24))
  got = np.asarray(inf.predict_scores(fn, batch, options(resize="bicubic")))
  feats = np.asarray(fn(batch["image"]))                      # [B, 4, 6, C]
  # Example 0 fills the canvas: its whole 4x6 map goes to 15x23 (openseg update_score).
  want0 = _torch_resize(feats[:1], (15, 23), "bicubic", False)[0]
  np.testing.assert_allclose(got[0, :15, :23], want0, atol=1e-4)
  assert np.all(got[0, 15:] == 0) and np.all(got[0, :, 23:] == 0)
  # Example 1: valid extent 6x10 of the 8x12 canvas = 3x5 feature pixels.
  want1 = _torch_resize(feats[1:, :3, :5], (6, 10), "bicubic", False)[0]
  np.testing.assert_allclose(got[1, :6, :10], want1, atol=1e-4)
  with pytest.raises(ValueError, match="bicubic"):
    options(resize="bicubic", mode="slide", slide_crop=(4, 4), stride=(2, 2))
  with pytest.raises(ValueError, match="resize"):
    options(resize="nearest")
  with pytest.raises(ValueError, match="merge"):
    options(merge="max")


def test_predict_bilinear_align_corners_is_openseg_tester():
  rng = np.random.RandomState(5)
  fn = _pooled_fn()
  batch = make_batch(rng, [(8, 12), (6, 10)], [(8, 12), (9, 14)], (8, 12), (10, 14))
  got = np.asarray(inf.predict_scores(fn, batch, options(resize="bilinear_align_corners",
                                                        align_corners=False)))
  up = _torch_resize(np.asarray(fn(batch["image"])), (8, 12), "bilinear", True)  # ss_test
  np.testing.assert_allclose(got[0, :8, :12], up[0], atol=1e-4)                   # same size: as is
  want1 = _torch_resize(up[1:, :6, :10], (9, 14), "bicubic", False)[0]            # cv2 INTER_CUBIC
  np.testing.assert_allclose(got[1, :9, :14], want1, atol=1e-4)


def test_sum_logits_merge_is_openseg_ms_test():
  rng = np.random.RandomState(6)
  fn = _pooled_fn()
  batch = make_batch(rng, [(8, 12)], [(8, 12)], (8, 12), (8, 12))
  scales = (0.5, 1.0)
  got = np.asarray(inf.predict_scores(fn, batch, options(scales=scales, flip=True,
                                                        merge="sum_logits")))
  img = np.asarray(batch["image"])
  want = 0.
  for s in scales:
    for flipped in (False, True):
      x = img[:, :, ::-1] if flipped else img
      size = (int(8 * s + 0.5), int(12 * s + 0.5))
      x = _torch_resize(x, size, "bilinear", False)
      y = _torch_resize(np.asarray(fn(jnp.asarray(x.astype(np.float32)))), size, "bilinear", False)
      y = _torch_resize(y, (8, 12), "bilinear", False)
      want = want + (y[:, :, ::-1] if flipped else y)
  np.testing.assert_allclose(got, want, atol=1e-4)
  mean_sm = np.asarray(inf.predict_scores(fn, batch, options(scales=scales, flip=True)))
  assert np.all(mean_sm >= 0) and np.allclose(mean_sm.sum(-1), 1., atol=1e-5)


# ---------------------------------------------------------------- chunks of classes (large vocabularies)

_C = 6   # chunks of 3 divide it, chunks of 4 do not (padded to 8)


def _padded_batch(seed=13):
  """Valid sizes smaller than both canvases, and a padding row of size 0."""
  rng = np.random.RandomState(seed)
  batch = make_batch(rng, [(8, 12), (6, 9), (8, 12)], [(11, 16), (5, 7), (11, 16)],
                     (8, 12), (12, 16), [True, True, False])
  batch["image_hw"] = batch["image_hw"].at[2].set(0)
  batch["label_hw"] = batch["label_hw"].at[2].set(0)
  return batch


def _slide_kw(mode):
  return dict(mode="slide", slide_crop=(5, 6), stride=(3, 4)) if mode == "slide" else {}


@pytest.mark.parametrize("mode,resize", [("whole", "bilinear"), ("whole", "bilinear_align_corners"),
                                         ("whole", "bicubic"), ("slide", "bilinear"),
                                         ("slide", "bilinear_align_corners")])
def test_chunked_single_pass_equals_unchunked(mode, resize):
  batch = _padded_batch()
  fn = _pooled_fn(_C)
  kw = dict(_slide_kw(mode), resize=resize)
  want, got3, got4 = jax.jit(lambda b: [inf.predict(fn, b, options(class_chunk=k, **kw),
                                                    num_classes=_C)
                                        for k in (None, 3, 4)])(batch)
  want = np.asarray(want)
  assert len(np.unique(want[:2] // 3)) == 2 and len(np.unique(want[:2] // 4)) == 2  # both chunks win
  np.testing.assert_array_equal(np.asarray(got3), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(got4), np.asarray(want))


@pytest.mark.parametrize("mode,resize,merge,chunk", [
    ("whole", "bilinear", "mean_softmax", 4), ("whole", "bilinear", "sum_logits", 3),
    ("whole", "bilinear_align_corners", "mean_softmax", 3), ("whole", "bicubic", "sum_logits", 4),
    ("whole", "bicubic", "mean_softmax", 1), ("slide", "bilinear", "mean_softmax", 3),
    ("slide", "bilinear_align_corners", "sum_logits", 4)])
def test_chunked_multiscale_flip_equals_unchunked(mode, resize, merge, chunk):
  batch = _padded_batch()
  fn = _pooled_fn(_C)
  kw = dict(_slide_kw(mode), resize=resize, merge=merge, scales=(0.5, 1.0), flip=True)
  want, got = jax.jit(lambda b: [inf.predict(fn, b, options(class_chunk=k, **kw))
                                 for k in (None, chunk)])(batch)
  want = np.asarray(want)
  assert len(np.unique(want[:2] // chunk)) >= 2              # classes of several chunks win
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_chunked_ties_go_to_the_lowest_class_across_chunks():
  batch = _padded_batch()
  lin = _pooled_fn(3)
  fn = lambda x: jnp.concatenate([lin(x)] * 2, axis=-1)      # class c + 3 ties with class c
  want, got = jax.jit(lambda b: [inf.predict(fn, b, options(class_chunk=k)) for k in (None, 4)])(batch)
  assert np.asarray(want).max() < 3
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_automatic_class_chunk_rule():
  r = inf.resolve_class_chunk
  assert r(None, 2, (512, 512), 10000) is None                # None: never chunked
  assert r(0, 2, (256, 256), 847) is None                     # 444 MB <= 4 GiB: as before
  assert r(0, 8, (1024, 2048), 19) is None                    # Cityscapes, 1.19 GiB
  assert r(0, 8, (640, 640), 171) is None                     # COCO-Stuff, 2.09 GiB
  assert r(5, 1, (4, 4), 5) is None and r(9, 1, (4, 4), 5) is None
  assert r(2, 1, (4, 4), 5) == 2
  # 8 x 512 x 512 x 847 x 4 B = 6.6 GiB: chunks of <= 256 MiB of scores (32 classes), balanced.
  assert r(0, 8, (512, 512), 847) == 32
  assert r(0, 6, (512, 512), 847) == 41                       # <= 42 classes: 21 chunks of 41
  assert r(0, 1, (1024, 2048), 10000) == 32                   # 8 MiB per class: 32 classes
  assert r(0, 8, (2112, 2112), 150) == 1                      # ADE20K's canvas: 136 MiB per class
  with pytest.raises(ValueError, match="class_chunk"):
    r(-1, 1, (4, 4), 5)
  fn = _pooled_fn(2)
  with pytest.raises(ValueError, match="class_chunk"):
    options(class_chunk=-1)


def _jaxpr_shapes(jaxpr, out=None):
  """Shapes of every variable of a (closed) jaxpr and of its sub-jaxprs (scan, while, pjit, ...)."""
  out = [] if out is None else out
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for v in list(jaxpr.invars) + list(jaxpr.constvars):
    out.append(tuple(v.aval.shape))
  for eqn in jaxpr.eqns:
    out.extend(tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      _jaxpr_shapes(sub, out)
  return out


def _num_eqns(jaxpr):
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  return sum(1 + sum(_num_eqns(s) for s in jax.extend.core.jaxprs_in_params(e.params))
             for e in jaxpr.eqns)


@pytest.mark.parametrize("mode,resize,merge", [("whole", "bilinear", "mean_softmax"),
                                               ("slide", "bilinear_align_corners", "mean_softmax"),
                                               ("whole", "bicubic", "sum_logits")])
def test_chunked_program_never_holds_all_classes_at_label_or_input_resolution(mode, resize, merge):
  batch = _padded_batch()
  kw = dict(_slide_kw(mode), resize=resize, merge=merge, scales=(0.5, 1.0), flip=True)
  b, (hl, wl), c = 3, (12, 16), 7
  # All classes at the input canvas (8 x 12) or the label canvas: >= 3 * 96 * 7 elements. The
  # chunked program's largest: a chunk at label resolution 3 * 192 * 2, the padded feature
  # logits 3 * 24 * 8 (slide: 6 windows of 2 x 3).
  limit = b * 8 * 12 * c

  def shapes(chunk, classes=c):
    fn = _pooled_fn(classes)
    return _jaxpr_shapes(jax.make_jaxpr(lambda x: inf.predict(fn, x, options(class_chunk=chunk, **kw)))(
        batch))

  plain = shapes(None)
  assert (b, hl, wl, c) in plain                              # today's program has them
  assert ((b, 8, 12, c) in plain) == (resize != "bicubic")   # and at input resolution
  chunked = shapes(2)
  assert max(np.prod(s) for s in chunked) < limit, sorted(chunked, key=np.prod)[-3:]
  assert (b, hl, wl, 2) in chunked
  # The program does not grow with C / chunk: 7 classes in 4 chunks, 41 in 21.
  n = [_num_eqns(jax.make_jaxpr(lambda x: inf.predict(_pooled_fn(classes), x,
                                                      options(class_chunk=2, **kw)))(batch))
       for classes in (c, 41)]
  assert n[0] == n[1], n


def test_automatic_class_chunk_is_todays_program_when_small(monkeypatch):
  batch = _padded_batch()
  fn = _pooled_fn(_C)
  kw = dict(scales=(0.5, 1.0), flip=True)

  def program(chunk):
    return jax.make_jaxpr(lambda x: inf.predict(fn, x, options(class_chunk=chunk, **kw),
                                                num_classes=_C))(batch)

  today = str(program(None))
  for chunk in (0, _C, 100):
    assert str(program(chunk)) == today
  # Over the budget the same call chunks (here: 3 x 12 x 16 x 6 x 4 B > 1 KiB, 2 classes per chunk).
  monkeypatch.setattr(chunking, "ALL_AT_ONCE_BYTES", 1024)
  monkeypatch.setattr(chunking, "CHUNK_BYTES", 3 * 12 * 16 * 4 * 2)
  assert inf.resolve_class_chunk(0, 3, (12, 16), _C) == 2
  auto = program(0)
  assert str(auto) == str(program(2))
  assert str(auto) != today and (3, 12, 16, _C) not in _jaxpr_shapes(auto)


def test_chunked_predict_step_with_class_ids():
  batch = _padded_batch()
  fn = _pooled_fn(4)
  kw = dict(num_classes=6, ignore_index=IGNORE, class_ids=(0, 2, 3, 5))
  want, got = jax.jit(lambda b: [inf.make_predict_step(
      lambda v, x: fn(x), options(class_chunk=k, scales=(0.5, 1.0), flip=True), **kw)(None, b)
                                 for k in (None, 3)])(batch)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert np.asarray(want).sum() == 11 * 16 + 5 * 7             # the padding row never counts
