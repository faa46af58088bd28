"""config.dataset.held_out_class: training labels without the class, evaluation mapped back
(protoseg_jax/held_out.py; the add-back is tests/test_add_class.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protoseg_jax import held_out, inference
from protoseg_jax.trainer import input_pipeline as ip
from protoseg_jax.metrics import metrics_from_confusion
from test_datasets import demo_config
from test_inference import IGNORE, make_batch, options
from test_metrics import bruteforce_confusion


def test_class_ids_and_label_lut():
  assert held_out.model_class_ids(6) == (0, 1, 2, 3, 4, 5)
  assert held_out.model_class_ids(6, 3) == (0, 1, 2, 4, 5)
  assert held_out.model_class_ids(6, 3, added=True) == (0, 1, 2, 4, 5, 3)
  lut = held_out.label_lut(held_out.model_class_ids(6, 3), 255)
  assert lut.shape == (256,)
  # 3 -> ignore, ids above it down by one, ignore and unknown ids -> ignore.
  np.testing.assert_array_equal(lut[[0, 1, 2, 3, 4, 5, 6, 255]], [0, 1, 2, 255, 3, 4, 255, 255])
  added = held_out.label_lut(held_out.model_class_ids(6, 3, added=True), 255)
  np.testing.assert_array_equal(added[[0, 1, 2, 3, 4, 5, 255]], [0, 1, 2, 5, 3, 4, 255])
  assert held_out.class_names("abcdef", held_out.model_class_ids(6, 3, added=True)) == tuple("abcefd")
  assert held_out.is_identity(range(4)) and not held_out.is_identity((0, 2, 1))

  config = demo_config("/nonexistent")
  assert held_out.held_out_class(config, 6) == -1
  assert held_out.class_ids_for_model(config, 6, 6) == tuple(range(6))
  config.dataset.held_out_class = 3
  assert held_out.held_out_class(config, 6) == 3
  assert held_out.class_ids_for_model(config, 6, 5) == (0, 1, 2, 4, 5)
  assert held_out.class_ids_for_model(config, 6, 6) == (0, 1, 2, 4, 5, 3)
  with pytest.raises(ValueError, match="does not fit"):
    held_out.class_ids_for_model(config, 6, 4)
  config.dataset.held_out_class = 6
  with pytest.raises(ValueError, match="held_out_class=6"):
    held_out.held_out_class(config, 6)
  config.dataset.held_out_class = 1
  config.loss.class_weights = (1.0,) * 6
  with pytest.raises(ValueError, match="class_weights"):
    held_out.held_out_class(config, 6)


def test_training_labels_drop_the_held_out_class(demo_dir):
  """Same batches as the full dataset's, labels through the map: with
  cat_max_ratio=1 the crop does not depend on the labels."""
  kw = dict(crop_size=(48, 48), scale=(96, 96), cat_max_ratio=1.0, photometric=False,
            shuffle_buffer=4, num_parallel_calls=1, prefetch=1)
  full_cfg, held_cfg = demo_config(demo_dir, **kw), demo_config(demo_dir, held_out_class=3, **kw)
  for c in (full_cfg, held_cfg):
    c.batch_size = 2
  lut = held_out.label_lut(held_out.model_class_ids(6, 3), 255)
  full = ip.make_train_dataset(full_cfg, process_index=0, process_count=1).as_numpy_iterator()
  held = ip.make_train_dataset(held_cfg, process_index=0, process_count=1).as_numpy_iterator()
  seen = 0
  for _ in range(4):
    a, b = next(full), next(held)
    np.testing.assert_array_equal(b["image"], a["image"])
    np.testing.assert_array_equal(b["label"], lut[a["label"]])
    # the stored uint8 labels (config.dataset.finish_on_device: the step casts them)
    assert b["label"].dtype == np.uint8 and not np.isin(b["label"], [5]).any()
    seen += int((a["label"] == 3).sum())
  assert seen > 0                              # the triangles were there, now ignored


def test_eval_scores_model_outputs_as_dataset_classes():
  """A model without class 1 (3 outputs), then with it appended (4 outputs):
  each prediction is scored as its dataset class."""
  c, k = 4, 1
  rng = np.random.RandomState(0)
  batch = make_batch(rng, [(6, 8), (5, 7)], [(6, 8), (5, 7)], (6, 8), (6, 8), [True, True])
  w = rng.randn(3, c).astype(np.float32)
  labels = np.asarray(batch["label"])
  assert (labels == k).any()
  for ids in (held_out.model_class_ids(c, k), held_out.model_class_ids(c, k, added=True)):
    n = len(ids)
    fn = lambda v, x: jnp.einsum("bhwk,kc->bhwc", x, v, precision="highest")
    step = jax.jit(inference.make_predict_step(fn, options(), num_classes=c,
                                               ignore_index=IGNORE, class_ids=ids))
    cm = np.asarray(step(jnp.asarray(w[:, :n]), batch))
    pred = np.einsum("bhwk,kc->bhwc", np.asarray(batch["image"]), w[:, :n]).argmax(-1)
    np.testing.assert_array_equal(cm, bruteforce_confusion(np.asarray(ids)[pred], labels, c))
    iou = metrics_from_confusion(cm)["IoU"]
    if n == c - 1:                # class 1 is never predicted: IoU 0, its pixels miss
      assert cm[:, k].sum() == 0 and iou[k] == 0 and cm[k].sum() > 0
    else:
      assert cm[:, k].sum() > 0 and iou[k] > 0
  with pytest.raises(ValueError, match="class_ids"):
    inference.make_predict_step(fn, options(), num_classes=c, class_ids=(0, 4))
