"""Segmentation metrics as mmsegmentation computes them: confusion matrix, IoU, Acc.

  * `confusion_matrix` (jit-able): int32 [C, C] pixel counts of one batch,
    rows = ground truth, columns = prediction; accumulate batches as int64 on
    the host.
  * `metrics_from_confusion`: per-class IoU = TP / (TP + FP + FN), Acc =
    TP / (TP + FN); the means skip NaN classes (IoU: no ground truth and no
    prediction; Acc: no ground truth), aAcc = sum TP / number of labelled
    pixels.
  * `format_table`: the per-class table and summary line for a log.

Known difference from mmsegmentation: confusion_matrix drops pixels whose
label is outside [0, C) (besides ignore_index); mmseg drops only
ignore_index and would still count the prediction of such a pixel in the
union. With well-formed labels the two are identical. Counts are exact
integers (mmseg accumulates float32 histograms).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(pred: jnp.ndarray, label: jnp.ndarray, num_classes: int, *,
                     ignore_index: int = 255,
                     mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """int32 [C, C] pixel counts, rows = ground truth, columns = prediction.

  Args:
    pred: int [B, ...] predicted class ids (e.g. [B, Hl, Wl]).
    label: int [B, ...] same shape; `ignore_index` and ids outside [0, C) are
      not counted.
    num_classes: C.
    mask: optional bool [B]; rows where it is False are not counted.

  A segment_sum over the flat index label * C + pred per row (invalid pixels
  go to an extra bin that is dropped), summed over rows; no one-hot tensor. int32 is enough for one
  batch (< 2^31 pixels); accumulate batches as int64 on the host.
  """
  if pred.shape != label.shape:
    raise ValueError(f"pred shape {pred.shape} != label shape {label.shape}")
  c = int(num_classes)
  label = label.astype(jnp.int32)
  pred = pred.astype(jnp.int32)
  valid = (label != ignore_index) & (label >= 0) & (label < c) & (pred >= 0) & (pred < c)
  if mask is not None:
    if mask.shape != label.shape[:1]:
      raise ValueError(f"mask must have shape {label.shape[:1]} (one entry per row), got {mask.shape}")
    valid = valid & mask.astype(bool).reshape(mask.shape + (1,) * (label.ndim - 1))
  idx = jnp.where(valid, label * c + pred, c * c).reshape(label.shape[0], -1)
  # One histogram per row, then a sum over the batch axis: the scatter stays
  # local to each row's device and the batch sum is an ordinary reduction
  # (a single scatter of a batch-sharded index into one replicated histogram
  # is rejected on Explicit meshes).
  hist = jax.vmap(lambda i: jax.ops.segment_sum(jnp.ones(i.shape, jnp.int32), i,
                                                num_segments=c * c + 1))(idx)
  return jnp.sum(hist, axis=0)[:c * c].reshape(c, c)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den as float64 with NaN where den == 0 (no warnings)."""
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  out = np.full(np.broadcast(num, den).shape, np.nan)
  np.divide(num, den, out=out, where=den != 0)
  return out


def _nanmean(x: np.ndarray) -> float:
  x = x[~np.isnan(x)]
  return float(x.mean()) if x.size else float("nan")


def metrics_from_confusion(cm: np.ndarray) -> dict[str, Any]:
  """mmseg's IoU metrics from a [C, C] confusion matrix (rows = ground truth).

  Returns (percent): 'aAcc', 'mIoU', 'mAcc' (floats, not rounded) and per-class
  'IoU', 'Acc' (float64 [C]). IoU is NaN for a class with neither ground truth
  nor prediction; Acc is NaN for a class without ground truth; the means skip
  NaNs (as mmseg's nanmean). A class that is predicted but absent from the
  ground truth has IoU 0 and counts in mIoU, as in mmseg.
  """
  cm = np.asarray(cm, np.int64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"confusion matrix must be square [C, C], got shape {cm.shape}")
  intersect = np.diag(cm)
  area_label = cm.sum(axis=1)
  area_pred = cm.sum(axis=0)
  union = area_label + area_pred - intersect
  iou = _safe_div(intersect, union) * 100.0
  acc = _safe_div(intersect, area_label) * 100.0
  aacc = float(_safe_div(intersect.sum(), area_label.sum()) * 100.0)
  return {"aAcc": aacc, "mIoU": _nanmean(iou), "mAcc": _nanmean(acc), "IoU": iou, "Acc": acc}


def format_table(metrics: Mapping[str, Any], class_names: Optional[Sequence[str]] = None) -> str:
  """Per-class IoU / Acc table plus a summary line, for a terminal or a log.

  `metrics` as returned by `metrics_from_confusion`; `class_names` defaults to
  the class indices. NaN (class absent) prints as "nan".
  """
  iou = np.asarray(metrics["IoU"], np.float64)
  acc = np.asarray(metrics["Acc"], np.float64)
  if class_names is None:
    class_names = [str(i) for i in range(len(iou))]
  if len(class_names) != len(iou):
    raise ValueError(f"got {len(class_names)} class names for {len(iou)} classes")
  fmt = lambda v: "nan" if np.isnan(v) else f"{v:.2f}"
  rows = [(str(n), fmt(i), fmt(a)) for n, i, a in zip(class_names, iou, acc)]
  header = ("Class", "IoU", "Acc")
  widths = [max(len(header[k]), *(len(r[k]) for r in rows)) for k in range(3)]
  sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
  line = lambda r: ("| " + r[0].ljust(widths[0]) + " | "
                    + " | ".join(r[k].rjust(widths[k]) for k in (1, 2)) + " |")
  out = [sep, line(header), sep, *(line(r) for r in rows), sep]
  out.append(f"aAcc: {fmt(metrics['aAcc'])}  mIoU: {fmt(metrics['mIoU'])}  "
             f"mAcc: {fmt(metrics['mAcc'])}  ({len(iou)} classes)")
  return "\n".join(out)
