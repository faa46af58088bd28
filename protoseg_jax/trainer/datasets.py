"""The dataset of a run config: where it is prepared, how to read it, its class facts.

  check_prepared(config, run=None)     the prepared TFDS dataset of config.dataset, read
                                       from its directory (the demo generates itself)
  dataset_meta(config, run=None)       its description (`classes.DatasetMeta`: class
                                       facts and splits)
  prepared(config, run=None)           the same, with where it is prepared (what a
                                       run records); prepared_dir(meta, data_dir)
  get_dataset_info(config, run=None)   the same, prepared: with the sizes of the
                                       config's train and eval splits
  catalog(run=None)                    every known dataset's description, for
                                       `validate.validate_config`
  split_size(builder, split)           examples of a split (or a sub-split spec)

The TFDS builders live in `data/` beside the package (a checkout): they
prepare datasets and know where a config's dataset is. Reading always goes
through the prepared directory (`tfds.builder_from_directory`), so a
workdir's evaluation also works where only the installed package is: the
trainer records the dataset's facts and its prepared directory in the
workdir (run.json: the run's `classes.ClassMap`, `protoseg_jax.trainer.run`),
and `run` passes them here.
Preparing a dataset, or training on one, needs the checkout.

Importing this module keeps TensorFlow (TFDS, tf.data) off the accelerators.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Optional

import jax
import tensorflow as tf
import tensorflow_datasets as tfds

from protoseg_jax.classes import DatasetMeta
from protoseg_jax.trainer import paths

try:  # tf.data must not take accelerator memory.
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # pragma: no cover - devices already initialised
  pass

CHECKOUT_NOTE = ("the dataset builders (data/) and the run configs (configs/) come with a "
                 "checkout of protoseg_jax: run from the checkout's root")


class DatasetNotPreparedError(FileNotFoundError):
  """A dataset has not been prepared in the TFDS data_dir (or cannot be found)."""


def prepared_dir(meta: DatasetMeta, data_dir: Optional[str]) -> str:
  """Where the dataset `meta` locates (`DatasetMeta.tfds_name`...) is in
  `data_dir`: data_dir/<tfds name>/<builder config>/<version>."""
  path = paths.resolve(data_dir or tfds.core.constants.DATA_DIR) / meta.tfds_name
  if meta.builder_config:
    path = path / meta.builder_config
  return str(path / meta.version)


def builders():
  """The `data` package of the checkout (the TFDS builders), or None where it
  is not importable (an installed package used elsewhere)."""
  try:
    module = importlib.import_module("data")
  except ImportError:
    return None
  # Another top-level "data" module on sys.path is not ours.
  return module if hasattr(module, "DATASETS") and hasattr(module, "get_builder") else None


def catalog(run=None) -> Optional[dict[str, DatasetMeta]]:
  """{dataset name: DatasetMeta} of the checkout's builders; without them, of
  the workdir's dataset (`run`: its `classes.ClassMap`); None if neither."""
  data = builders()
  if data is not None:
    return {name: data.dataset_meta(name) for name in data.DATASETS}
  if run is not None:
    return {run.dataset: run.meta}
  return None


def dataset_meta(config, run=None) -> DatasetMeta:
  """The class facts of config.dataset (from its builder; else from the workdir's run.json)."""
  name = config.dataset.name
  data = builders()
  if data is not None:
    return data.dataset_meta(name)
  if run is not None and run.dataset == name:
    return run.meta
  raise DatasetNotPreparedError(f"dataset {name!r}: its class facts are in neither a workdir's "
                                f"run.json nor the dataset builders; {CHECKOUT_NOTE}")


def _data_dir(config) -> Optional[str]:
  """config.dataset.data_dir, None (TFDS's default directory) when unset or
  empty: an empty string would otherwise prepare the demo in the current
  directory."""
  return config.dataset.data_dir or None


def _builder(config, name: str):
  data = builders()
  return data.get_builder(name, data_dir=_data_dir(config),
                          config=config.dataset.builder_config)


def prepared(config, run=None) -> DatasetMeta:
  """`dataset_meta` of config.dataset with where it is prepared (or would be):
  from its builder; without the builders, what the workdir's run.json (`run`)
  recorded."""
  meta = dataset_meta(config, run)
  if builders() is None:
    return meta
  builder = _builder(config, config.dataset.name)
  return dataclasses.replace(
      meta, tfds_name=builder.name, version=str(builder.version),
      builder_config=builder.builder_config.name if builder.builder_config else None)


def check_prepared(config, run=None):
  """The prepared TFDS dataset of config.dataset (a read-only builder of its directory).

  With the checkout's builders: the demo is generated where it is missing
  (one process at a time); a real dataset must be prepared. Without them,
  the dataset `run` (the workdir's run.json) recorded is read at the
  config's data_dir.

  Raises:
    DatasetNotPreparedError: nothing prepared there; the message says which
      files to download, where to put them and the command that prepares them.
  """
  name = config.dataset.name
  data_dir = _data_dir(config)
  if builders() is None:
    if run is None or run.meta.tfds_name is None or run.dataset != name:
      raise DatasetNotPreparedError(f"dataset {name!r}: {CHECKOUT_NOTE}")
    path = prepared_dir(run.meta, data_dir)
    if not (paths.resolve(path) / "dataset_info.json").is_file():
      raise DatasetNotPreparedError(
          f"dataset {name!r} is not prepared: nothing at {path} (config.dataset.data_dir="
          f"{data_dir!r}); preparing it needs the builders: {CHECKOUT_NOTE}")
    return tfds.builder_from_directory(path)
  builder = _builder(config, name)
  if name == "demo":
    builder = _prepare_demo(builder, config)
  elif not builder.is_prepared():
    raise DatasetNotPreparedError(
        f"Dataset {name!r} is not prepared: nothing at {builder.data_dir}.\n"
        f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        f"(use the same --data_dir as config.dataset.data_dir={data_dir!r}; None means TFDS's "
        f"default, {builder.data_dir_root}).")
  return tfds.builder_from_directory(builder.data_dir)


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


def get_dataset_info(config, run=None) -> DatasetMeta:
  """`dataset_meta` of config.dataset (prepared, or the demo generated), with
  the sizes of its train and eval splits (`DatasetMeta.examples`)."""
  builder = check_prepared(config, run)
  specs = {config.dataset.train_split, config.dataset.eval_split}
  return dataclasses.replace(dataset_meta(config, run), split_sizes=tuple(
      (spec, split_size(builder, spec)) for spec in sorted(specs)))
