"""The dataset of a run config: its prepared TFDS builder and what it holds.

`check_prepared` finds the builder of `config.dataset` (generating the demo
dataset where it is missing, one process at a time); `get_dataset_info` gives
its class facts (`data.common.DatasetMeta`, as the builder stored them) and
split sizes. `config_value` reads a config key without a fallback of its own:
every key the data modules read is set in configs/default.py.

Importing this module keeps TensorFlow (TFDS, tf.data) off the accelerators.
"""

from __future__ import annotations

import dataclasses

import jax
import tensorflow as tf

import data
from data.common import DatasetMeta

try:  # tf.data must not take accelerator memory.
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # pragma: no cover - devices already initialised
  pass


class DatasetNotPreparedError(FileNotFoundError):
  """A real dataset has not been prepared in the TFDS data_dir."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  ignore_index: int
  class_names: tuple[str, ...]
  palette: tuple[tuple[int, int, int], ...]
  num_train_examples: int
  num_eval_examples: int


def config_value(config, key: str):
  """config.<key> for a dotted `key` ('dataset.crop_size'); no default of its own.

  Raises:
    KeyError: naming the key, when it (or a parent) is absent.
  """
  node = config
  for part in key.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      raise KeyError(f"config.{key} is missing; it is set in configs/default.py") from None
  return node


def _builder(config, name: str):
  return data.get_builder(name, data_dir=config_value(config, "dataset.data_dir"),
                          config=config_value(config, "dataset.builder_config"))


def check_prepared(config):
  """Returns the prepared TFDS builder of config.dataset, preparing the demo if needed.

  Raises:
    DatasetNotPreparedError: a real dataset is not prepared in the data_dir;
      the message says which files to download, where to put them and the
      command that prepares them.
  """
  name = config_value(config, "dataset.name")
  builder = _builder(config, name)
  if name == "demo":
    return _prepare_demo(builder, config)
  if builder.is_prepared():
    return builder
  raise DatasetNotPreparedError(
      f"Dataset {name!r} is not prepared: nothing at {builder.data_dir}.\n"
      f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
      f"(use the same --data_dir as config.dataset.data_dir="
      f"{config_value(config, 'dataset.data_dir')!r}; None means TFDS's default, "
      f"{builder.data_dir_root}).")


def _prepare_demo(builder, config):
  """Generates the demo dataset where it is missing, one process at a time.

  Process 0 goes first; the others wait for it and then find the data ready
  on a shared data_dir or generate their own copy on a local disk. Two
  processes never write the same dataset directory at once.
  """
  from jax.experimental import multihost_utils
  barrier = "protoseg_jax: demo dataset prepared by process 0"
  first = jax.process_index() == 0
  if not first:
    multihost_utils.sync_global_devices(barrier)
    builder = _builder(config, "demo")
  if not builder.is_prepared():
    builder.download_and_prepare()
  if first and jax.process_count() > 1:
    multihost_utils.sync_global_devices(barrier)
  return builder


def split_size(builder, split: str) -> int:
  """Number of examples of `split` (a split name or a sub-split spec)."""
  try:
    return int(builder.info.splits[split].num_examples)
  except KeyError as e:
    raise ValueError(f"Dataset {builder.name} has no split {split!r}; it has "
                     f"{sorted(builder.info.splits.keys())}.") from e


def builder_meta(builder) -> DatasetMeta:
  """The class facts a prepared builder stored (its info's metadata)."""
  return DatasetMeta.from_metadata(builder.info.metadata)


def get_dataset_info(config) -> DatasetInfo:
  """Class count, ignore index, names, palette and split sizes of config.dataset."""
  builder = check_prepared(config)
  meta = builder_meta(builder)
  return DatasetInfo(
      name=str(config_value(config, "dataset.name")),
      num_classes=meta.num_classes,
      ignore_index=meta.ignore_index,
      class_names=meta.class_names,
      palette=meta.palette,
      num_train_examples=split_size(builder, config_value(config, "dataset.train_split")),
      num_eval_examples=split_size(builder, config_value(config, "dataset.eval_split")),
  )
