"""Tests for protoseg_jax.evaluate: a full evaluation pass (Evaluator)."""

from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from protoseg_jax import evaluate as ev
from protoseg_jax import inference
from protoseg_jax.metrics import format_table
from test_inference import IGNORE, make_batch, options
from test_metrics import bruteforce_confusion, mmseg_style_metrics


def test_predict_step_and_evaluator_match_bruteforce():
  rng = np.random.RandomState(11)
  c = 4
  r = np.random.RandomState(0)
  variables = {"w": jnp.asarray(r.randn(3, c).astype(np.float32)), "b": jnp.zeros((c,))}
  logits_fn = lambda v, x: jnp.einsum("bhwk,kc->bhwc", x, v["w"]) + v["b"]
  step = jax.jit(inference.make_predict_step(logits_fn, options(), num_classes=c,
                                           ignore_index=IGNORE))
  batches, preds, labels, masks = [], [], [], []
  for i in range(3):
    mask = [True, True] if i < 2 else [True, False]       # last batch padded
    batch = make_batch(rng, [(6, 8), (5, 7)], [(6, 8), (5, 7)], (6, 8), (6, 8), mask)
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
  ref_cm = bruteforce_confusion(pred, label, c, mask)
  np.testing.assert_array_equal(metrics["confusion"], ref_cm)
  assert metrics["confusion"].dtype == np.int64
  ref = mmseg_style_metrics(pred, label, c, mask)
  for k in ("aAcc", "mIoU", "mAcc"):
    np.testing.assert_allclose(metrics[k], ref[k], rtol=1e-12)
  assert evaluator.confusion(variables, iter(batches), num_batches=1).sum() == 6 * 8 + 5 * 7


def test_evaluate_logs_the_per_class_table_once():
  c = 3
  cm = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 5]], np.int32)
  evaluator = ev.Evaluator(lambda v, b: cm, num_classes=c, class_names=["x", "y", "z"],
                           log_every=0)
  batches = [{"image": np.zeros((1, 2, 2, 3), np.float32), "mask": np.ones(1, bool)}] * 2
  with mock.patch.object(ev.logging, "info") as info:
    metrics = evaluator.evaluate(None, iter(batches))
  table = format_table(metrics, ["x", "y", "z"])
  logged = [" ".join(str(a) for a in call.args) for call in info.call_args_list]
  assert sum(table in line for line in logged) == 1, logged
  with mock.patch.object(ev.logging, "info") as info:
    evaluator.evaluate(None, iter(batches), log_table=False)
  assert not any(table in " ".join(str(a) for a in call.args) for call in info.call_args_list)
