"""Train without one class, add it back later: which dataset class each model output is.

`config.dataset.held_out_class = k` (-1: none, the default) trains the model
on the dataset's classes minus k, in order: C - 1 outputs, the dataset ids
0 .. k-1, k+1 .. C-1. In the training labels class k becomes the ignore index
and every id above k moves down by one (`label_lut`, applied by
input_pipeline before the augmentation), so the model never learns k, and
the images still show it. `heads.add_class` (`python -m protoseg_jax.add_class`)
later appends k as the LAST output from a few support images:

  model_class_ids(C, k)              (0, .., k-1, k+1, .., C-1)     C-1 outputs
  model_class_ids(C, k, added=True)  (0, .., k-1, k+1, .., C-1, k)  C outputs
  model_class_ids(C)                 (0, .., C-1)                   no class held out

Evaluation maps each predicted output to its dataset id (`class_ids` of
`inference.make_predict_step` / `train.make_eval_step`) and scores it
against the real labels with all C classes: before adding, the held-out
class is never predicted (IoU 0 where it has pixels) and its pixels count
against whatever class they are predicted as; after adding, it is scored
like any other class.

Pure NumPy: part of the library (no TensorFlow).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

NONE = -1


def held_out_class(config, num_classes: int) -> int:
  """config.dataset.held_out_class, checked: -1 (none) or a class id in [0, C).

  Raises:
    ValueError: out of range, or combined with per-class loss weights
      (config.loss.class_weights has one entry per dataset class).
  """
  k = int(config.dataset.held_out_class)
  if k == NONE:
    return NONE
  if not 0 <= k < num_classes:
    raise ValueError(f"config.dataset.held_out_class={k} is not -1 or a class id in "
                     f"[0, {num_classes})")
  if num_classes < 2:
    raise ValueError("config.dataset.held_out_class needs a dataset of at least 2 classes")
  if config.loss.class_weights is not None:
    raise ValueError("config.dataset.held_out_class with config.loss.class_weights is not "
                     "supported (the weights are per dataset class)")
  return k


def model_class_ids(num_classes: int, held_out: int = NONE, added: bool = False
                    ) -> tuple[int, ...]:
  """The dataset class id of each model output (see the module docstring)."""
  if held_out == NONE:
    if added:
      raise ValueError("added=True needs a held-out class")
    return tuple(range(num_classes))
  if not 0 <= held_out < num_classes:
    raise ValueError(f"held_out={held_out} is not a class id in [0, {num_classes})")
  ids = tuple(i for i in range(num_classes) if i != held_out)
  return ids + (held_out,) if added else ids


def class_ids_for_model(config, num_classes: int, num_outputs: int) -> tuple[int, ...]:
  """`model_class_ids` of a model with `num_outputs` outputs under `config`:
  C - 1 outputs with a held-out class: before adding it; C: after (it is the
  last output); without a held-out class the model must have C outputs."""
  k = held_out_class(config, num_classes)
  if k != NONE and num_outputs == num_classes - 1:
    return model_class_ids(num_classes, k)
  if num_outputs == num_classes:
    return model_class_ids(num_classes, k, added=k != NONE)
  raise ValueError(f"a model with {num_outputs} classes does not fit dataset "
                   f"{config.dataset.name!r} ({num_classes} classes, held_out_class={k})")


def label_lut(class_ids: Sequence[int], ignore_index: int, size: int = 256) -> np.ndarray:
  """int32 [size]: dataset label -> model label. Class `class_ids[i]` -> i;
  every other value (a held-out class, the ignore index, ids the model does
  not have) -> ignore_index. size: 256 covers uint8 label PNGs."""
  size = max(int(size), int(ignore_index) + 1, max(class_ids, default=-1) + 1)
  lut = np.full((size,), ignore_index, np.int32)
  ids = np.asarray(class_ids, np.int64)
  if len(np.unique(ids)) != len(ids) or (ids < 0).any():
    raise ValueError(f"class_ids must be distinct dataset ids >= 0, got {tuple(class_ids)}")
  lut[ids] = np.arange(len(ids), dtype=np.int32)
  return lut


def is_identity(class_ids: Sequence[int]) -> bool:
  """Whether the model's outputs are the dataset's classes in order."""
  return tuple(class_ids) == tuple(range(len(class_ids)))


def class_names(dataset_names: Sequence[str], class_ids: Sequence[int]) -> tuple[str, ...]:
  """The model's class names, in output order."""
  return tuple(dataset_names[i] for i in class_ids)
