"""A full evaluation pass: `Evaluator` runs a predict step over the eval batches,
sums the per-batch confusion matrices on the host and reduces them to mmseg's
metrics.

The predict step comes from `protoseg_jax.inference.make_predict_step` (one
batch -> int32 [C, C] confusion matrix, see that module for the inference
modes); the metrics and the per-class table from `protoseg_jax.metrics`.
`Evaluator.evaluate` logs the per-class table once per evaluation.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from protoseg_jax.metrics import format_table, metrics_from_confusion


def host_int64(cm) -> np.ndarray:
  """A (possibly multi-host, replicated) array, e.g. a [C, C] confusion matrix,
  as an int64 host array."""
  if isinstance(cm, jax.Array) and not cm.is_fully_addressable:
    if not cm.is_fully_replicated:
      raise ValueError("the array must be replicated (jit the step that makes it with "
                       "out_shardings=NamedSharding(mesh, P())) to be read on every host")
    cm = cm.addressable_data(0)
  return np.asarray(jax.device_get(cm)).astype(np.int64)


def _count_images(batch: Mapping[str, Any]):
  """Real (unpadded) images in a batch: an int, or a device scalar for a
  global array (summed on device, so every host gets the global count
  without blocking the loop; read by `_read_counts`)."""
  mask = batch.get("mask")
  if mask is None:
    return int(batch["image"].shape[0])
  if isinstance(mask, np.ndarray):
    return int(np.sum(mask))
  return jnp.sum(mask.astype(jnp.int32))


def _read_counts(counts: list) -> int:
  """Sums and empties `counts` (ints and replicated device scalars)."""
  n = sum(int(host_int64(c)) if isinstance(c, jax.Array) else int(c) for c in counts)
  counts.clear()
  return n


class Evaluator:
  """Runs `predict_step` over an eval iterator and reduces to metrics.

  Args:
    predict_step: jitted `(variables, batch) -> int32 [C, C]` (from
      `make_predict_step`).
    num_classes: C.
    class_names: optional names for `format_table`.
    log_every: log progress (batches, images/s) every this many batches;
      0 disables.
  """

  def __init__(self, predict_step: Callable[[Any, Mapping[str, Any]], Any], *, num_classes: int,
               class_names: Optional[Sequence[str]] = None, log_every: int = 50):
    self.predict_step = predict_step
    self.num_classes = int(num_classes)
    self.class_names = list(class_names) if class_names is not None else None
    self.log_every = int(log_every)

  def confusion(self, variables: Any, batches: Iterable[Mapping[str, Any]], *,
                num_batches: Optional[int] = None) -> np.ndarray:
    """int64 [C, C] summed over the batches (at most `num_batches`)."""
    total = np.zeros((self.num_classes, self.num_classes), np.int64)
    pending = None
    n_batches = n_images = 0
    counts = []   # images per batch not yet added to n_images (maybe on device)
    t0 = time.perf_counter()
    for batch in batches:
      if num_batches is not None and n_batches >= num_batches:
        break
      cm = self.predict_step(variables, batch)     # dispatched asynchronously
      if pending is not None:                      # read the previous one meanwhile
        total = self._add(total, pending)
      pending = cm
      n_batches += 1
      counts.append(_count_images(batch))
      if self.log_every and n_batches % self.log_every == 0:
        n_images += _read_counts(counts)
        dt = time.perf_counter() - t0
        total_str = f"/{num_batches}" if num_batches else ""
        logging.info("eval: %d%s batches, %d images, %.1f images/s", n_batches, total_str,
                     n_images, n_images / max(dt, 1e-9))
    if pending is not None:
      total = self._add(total, pending)
    n_images += _read_counts(counts)
    dt = time.perf_counter() - t0
    logging.info("eval: done, %d batches, %d images in %.1fs", n_batches, n_images, dt)
    return total

  def _add(self, total: np.ndarray, cm) -> np.ndarray:
    cm = host_int64(cm)
    if cm.shape != total.shape:
      raise ValueError(f"predict_step returned a {cm.shape} matrix, expected {total.shape}")
    return total + cm

  def evaluate(self, variables: Any, batches: Iterable[Mapping[str, Any]], *,
               num_batches: Optional[int] = None, log_table: bool = True) -> dict[str, Any]:
    """Metrics dict (`metrics_from_confusion`) plus 'confusion' (int64 [C, C])."""
    cm = self.confusion(variables, batches, num_batches=num_batches)
    metrics = metrics_from_confusion(cm)
    metrics["confusion"] = cm
    if log_table:
      logging.info("per-class results:\n%s", format_table(metrics, self.class_names))
    return metrics
