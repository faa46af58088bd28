"""Tests for protoseg_jax.metrics: confusion matrix, mmseg's metrics, the table."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protoseg_jax import metrics as mt

IGNORE = 255


# ---------------------------------------------------------------- references


def bruteforce_confusion(pred, label, c, mask=None, ignore=IGNORE):
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


def mmseg_style_metrics(pred, label, c, mask, ignore=IGNORE):
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


# ---------------------------------------------------------------- metrics


def test_confusion_matrix_matches_bruteforce_with_ignore_outliers_and_mask():
  rng = np.random.RandomState(0)
  c = 5
  label = rng.randint(0, c, (4, 7, 9)).astype(np.int32)
  pred = rng.randint(0, c, (4, 7, 9)).astype(np.int32)
  label[rng.rand(*label.shape) < 0.2] = IGNORE
  label[0, 0, :3] = [-1, c, c + 7]          # outside [0, C): not counted
  mask = np.array([True, False, True, True])
  cm = jax.jit(lambda p, l, m: mt.confusion_matrix(p, l, c, ignore_index=IGNORE, mask=m))(
      pred, label, mask)
  assert cm.dtype == jnp.int32 and cm.shape == (c, c)
  ref = bruteforce_confusion(pred, label, c, mask)
  np.testing.assert_array_equal(np.asarray(cm), ref)
  assert ref.sum() > 0 and ref.sum() < np.sum(mask) * 7 * 9
  # Without a mask every row counts.
  np.testing.assert_array_equal(np.asarray(mt.confusion_matrix(pred, label, c)),
                                bruteforce_confusion(pred, label, c))


def test_metrics_match_mmseg_semantics_with_absent_classes():
  rng = np.random.RandomState(1)
  c = 6
  label = rng.randint(0, 4, (3, 8, 8)).astype(np.int32)     # classes 4, 5 never in GT
  pred = rng.randint(0, 5, (3, 8, 8)).astype(np.int32)      # class 4 predicted, 5 never
  label[rng.rand(*label.shape) < 0.15] = IGNORE
  pred[label == IGNORE] = 5                                 # predictions on ignored pixels never count
  mask = np.array([True, True, False])
  cm = np.asarray(mt.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), c, mask=jnp.asarray(mask)))
  got = mt.metrics_from_confusion(cm)
  ref = mmseg_style_metrics(pred, label, c, mask)
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
  m = mt.metrics_from_confusion(cm)
  np.testing.assert_allclose(m["IoU"], [3 / 5 * 100, 0.0, 5 / 6 * 100])
  np.testing.assert_allclose(m["Acc"][[0, 2]], [75.0, 5 / 6 * 100])
  assert np.isnan(m["Acc"][1])
  np.testing.assert_allclose(m["aAcc"], 8 / 10 * 100)
  np.testing.assert_allclose(m["mIoU"], (60 + 0 + 500 / 6) / 3)
  empty = mt.metrics_from_confusion(np.zeros((3, 3), np.int64))
  assert np.isnan(empty["mIoU"]) and np.isnan(empty["aAcc"]) and np.all(np.isnan(empty["IoU"]))


def test_format_table_has_class_names_and_summary():
  cm = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 5]], np.int64)
  table = mt.format_table(mt.metrics_from_confusion(cm), ["road", "sidewalk", "building"])
  lines = table.splitlines()
  for name in ("road", "sidewalk", "building"):
    assert any(name in l for l in lines)
  assert any("road" in l and "60.00" in l and "75.00" in l for l in lines)
  assert any("sidewalk" in l and "nan" in l for l in lines)
  assert "mIoU: 47.78" in lines[-1] and "aAcc: 80.00" in lines[-1]
  with pytest.raises(ValueError, match="2 class names for 3 classes"):
    mt.format_table(mt.metrics_from_confusion(cm), ["a", "b"])
