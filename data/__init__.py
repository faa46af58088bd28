"""TFDS builders for the segmentation datasets (one sub-package per dataset).

The builders are not put in TFDS's global registry (TFDS ships unrelated
builders under some of these names); get them through `get_builder`:

  builder = data.get_builder("ade20k", data_dir="~/tensorflow_datasets")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir="~/Downloads"))     # or: python -m data.prepare ade20k ...

Dataset names (config.dataset.name) -> builder modules:
  demo            data.demo            (procedural, builds itself, no download)
  ade20k          data.ade20k          ADEChallengeData2016.zip
  ade20k_full     data.ade20k_full     ADE20K_2021_17_01.zip (847 classes, 16-bit labels)
  cityscapes      data.cityscapes      leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip
  coco_stuff164k  data.coco_stuff164k  stuffthingmaps_trainval2017.zip, train2017.zip, val2017.zip
  coco_stuff10k   data.coco_stuff10k   cocostuff-10k-v1.1.zip
pascal_context59 is not provided: see docs/datasets.md.

The facts of a dataset (its splits, class names and count, ignore index,
palette, release ids) are written once, as attributes of its builder class;
`dataset_meta(name)` returns the class facts without preparing anything, a
prepared builder stores the same facts as its metadata, and `SPLITS` maps
each name to its builder's split names (read from the builder classes on
first use, so that `import data` itself needs no TFDS).
"""

from __future__ import annotations

import importlib
import os

DATASETS = {
    "demo": "data.demo",
    "ade20k": "data.ade20k",
    "ade20k_full": "data.ade20k_full",
    "cityscapes": "data.cityscapes",
    "coco_stuff164k": "data.coco_stuff164k",
    "coco_stuff10k": "data.coco_stuff10k",
}


def builder_class(name: str):
  """The TFDS builder class of dataset `name` (a key of DATASETS)."""
  if name not in DATASETS:
    if name == "pascal_context59":
      raise ValueError(
          "pascal_context59 is not provided yet: see docs/datasets.md for why. "
          f"Available datasets: {sorted(DATASETS)}.")
    raise ValueError(f"Unknown dataset {name!r}; expected one of {sorted(DATASETS)}.")
  return importlib.import_module(DATASETS[name]).Builder


def __getattr__(attr: str):
  """`SPLITS`: {name: (TFDS split names)} of every dataset, from its builder's SPLITS.

  Computed when first asked for (it imports every builder, hence TFDS); {}
  where TFDS is not installed (nothing can be prepared or read then, and the
  config checks that need the splits are skipped).
  """
  if attr != "SPLITS":
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
  try:
    splits = {name: tuple(builder_class(name).SPLITS) for name in DATASETS}
  except ImportError:
    try:
      import tensorflow_datasets  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:  # no TFDS: the builders cannot be imported
      return {}
    raise  # another import error: a builder's own
  globals()["SPLITS"] = splits
  return splits


def dataset_meta(name: str):
  """`DatasetMeta` (num_classes, class_names, ignore_index, palette, release_ids) of `name`.

  (`protoseg_jax.classes.DatasetMeta`, also `data.common.DatasetMeta`.)

  Read from the builder's class constants: no data_dir, no preparation.
  """
  return builder_class(name).meta()


def get_builder(name: str, data_dir: str | None = None, config: str | None = None,
                on_bad_file: str = "stop"):
  """A builder instance of dataset `name` reading/writing under `data_dir`.

  Args:
    name: a key of DATASETS.
    data_dir: TFDS data dir; None = TFDS's default (~/tensorflow_datasets or
      $TFDS_DATA_DIR).
    config: builder config name (the demo has 'default' and 'tiny').
    on_bad_file: when preparing, what to do with unreadable or inconsistent
      files of the release: "stop" (raise `data.common.BadFilesError` naming
      them all, prepare nothing) or "skip" (leave them out, log each and a
      summary). See `data.common.ON_BAD_FILE`.
  """
  cls = builder_class(name)
  if data_dir is not None:
    data_dir = os.path.expanduser(os.fspath(data_dir))
  kwargs = {"data_dir": data_dir, "on_bad_file": on_bad_file}
  if config is not None:
    kwargs["config"] = config
  return cls(**kwargs)
