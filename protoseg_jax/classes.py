"""The classes of a dataset and of a run's model, as plain data.

  DatasetMeta   the one description of a dataset: its class facts (names, palette,
                ignore index and, where the release numbers its classes otherwise,
                their release ids), its splits and, once prepared, their sizes
  ClassMap      a run's classes: the class id of each model output (held-out and
                added classes), the names and palette of every class id

A dataset's builder (data/) owns its DatasetMeta; the trainer writes the
run's ClassMap into the workdir (run.json), so that the tools that load a
run (evaluation, predict, diagnostics, visualize, add_class, export) know
which class each output is without the dataset's code or the config's
held-out override. Class ids 0..C-1 are the dataset's train ids; ids from C
on are classes the dataset lacks, added by `protoseg_jax.add_class`.

Pure Python and NumPy: part of the library.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

from protoseg_jax import held_out

IGNORE_INDEX = 255


def _palette(colours) -> tuple[tuple[int, int, int], ...]:
  return tuple(tuple(int(v) for v in c) for c in colours)


def generated_colour(i: int) -> tuple[int, int, int]:
  """A fixed colour for class id `i` where no palette gives one."""
  return ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """The class facts of a dataset: what every builder stores as its metadata.

  release_ids: for datasets whose official files number the classes in
  another way (Cityscapes' labelIds), the release id of each train id;
  None where the train ids are what the release uses.
  splits: the dataset's split names (what `validate` checks a config's
  split specs against); () where unknown (checks skipped).
  split_sizes: ((split spec, examples), ...) of a prepared dataset, for
  the split specs a run reads (`examples`); () before preparing.
  """
  class_names: tuple[str, ...]
  palette: tuple[tuple[int, int, int], ...]
  ignore_index: int = IGNORE_INDEX
  release_ids: Optional[tuple[int, ...]] = None
  splits: tuple[str, ...] = ()
  split_sizes: tuple[tuple[str, int], ...] = ()

  def __post_init__(self):
    if len(self.palette) != len(self.class_names):
      raise ValueError(f"{len(self.palette)} palette colours for {len(self.class_names)} "
                       "classes")
    if self.release_ids is not None and len(self.release_ids) != len(self.class_names):
      raise ValueError(f"{len(self.release_ids)} release ids for {len(self.class_names)} "
                       "classes")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def examples(self, split: str) -> int:
    """Examples of a split spec whose size this description holds (`split_sizes`)."""
    sizes = dict(self.split_sizes)
    if split not in sizes:
      raise KeyError(f"no size of split {split!r} here; known: {sorted(sizes)}")
    return sizes[split]

  def metadata(self) -> dict:
    """The JSON-friendly form (a builder's metadata, run.json's "dataset")."""
    out = {"num_classes": self.num_classes, "ignore_index": int(self.ignore_index),
           "class_names": list(self.class_names), "palette": [list(c) for c in self.palette]}
    if self.release_ids is not None:
      out["release_ids"] = [int(i) for i in self.release_ids]
    if self.splits:
      out["splits"] = list(self.splits)
    if self.split_sizes:
      out["split_sizes"] = {k: int(n) for k, n in self.split_sizes}
    return out

  @classmethod
  def from_metadata(cls, metadata: Mapping) -> DatasetMeta:
    """The inverse of `metadata()` (e.g. of a prepared `builder.info.metadata`;
    one prepared before splits were recorded has none)."""
    release = metadata.get("release_ids")
    meta = cls(class_names=tuple(metadata["class_names"]), palette=_palette(metadata["palette"]),
               ignore_index=int(metadata["ignore_index"]),
               release_ids=None if release is None else tuple(int(i) for i in release),
               splits=tuple(str(x) for x in metadata.get("splits", ())),
               split_sizes=tuple((str(k), int(n))
                                 for k, n in dict(metadata.get("split_sizes", {})).items()))
    if int(metadata["num_classes"]) != meta.num_classes:
      raise ValueError(f"metadata says {metadata['num_classes']} classes but names "
                       f"{meta.num_classes}.")
    return meta


@dataclasses.dataclass(frozen=True)
class ClassMap:
  """Which class each output of a run's model is.

  Attributes:
    dataset: the dataset's name (config.dataset.name).
    class_ids: the class id of each model output, in output order.
    names, palette: of every class id 0..K-1 (the dataset's C classes, then
      the classes added that the dataset lacks).
    num_dataset_classes: C, the dataset's classes (ids >= C never occur in
      its labels).
    ignore_index: the dataset's ignored label.
    release_ids: the dataset's release id of each of its C classes, or None
      (`DatasetMeta.release_ids`).
  """
  dataset: str
  class_ids: tuple[int, ...]
  names: tuple[str, ...]
  palette: tuple[tuple[int, int, int], ...]
  num_dataset_classes: int
  ignore_index: int = IGNORE_INDEX
  release_ids: Optional[tuple[int, ...]] = None

  def __post_init__(self):
    k = len(self.names)
    if len(self.palette) != k:
      raise ValueError(f"{len(self.palette)} palette colours for {k} class names")
    if not 1 <= self.num_dataset_classes <= k:
      raise ValueError(f"num_dataset_classes={self.num_dataset_classes} must lie in 1..{k}")
    if len(set(self.class_ids)) != len(self.class_ids) or any(
        not 0 <= i < k for i in self.class_ids):
      raise ValueError(f"class_ids {self.class_ids} must be distinct ids in 0..{k - 1}")

  @classmethod
  def of_dataset(cls, name: str, meta: DatasetMeta, held_out_class: int = held_out.NONE
                 ) -> ClassMap:
    """A model trained on dataset `name`, without `held_out_class` if one is given."""
    return cls(dataset=name, class_ids=held_out.model_class_ids(meta.num_classes, held_out_class),
               names=meta.class_names, palette=meta.palette,
               num_dataset_classes=meta.num_classes, ignore_index=meta.ignore_index,
               release_ids=meta.release_ids)

  @property
  def num_outputs(self) -> int:
    return len(self.class_ids)

  @property
  def num_ids(self) -> int:
    """K: the dataset's classes and the added ones (the size of a confusion matrix)."""
    return len(self.names)

  @property
  def output_names(self) -> tuple[str, ...]:
    return tuple(self.names[i] for i in self.class_ids)

  @property
  def missing(self) -> tuple[int, ...]:
    """Class ids of the dataset that no output predicts (a held-out class)."""
    return tuple(i for i in range(self.num_dataset_classes) if i not in self.class_ids)

  def is_identity(self) -> bool:
    """Whether the outputs are the dataset's classes, in order."""
    return held_out.is_identity(self.class_ids) and self.num_ids == self.num_dataset_classes

  def label_lut(self, size: int = 256) -> np.ndarray:
    """int32 [size]: dataset label -> model output (`held_out.label_lut`)."""
    return held_out.label_lut(self.class_ids, self.ignore_index, size)

  def with_class(self, name: str) -> ClassMap:
    """The map after `heads.add_class` appended one output for class `name`:
    the dataset's (held-out) class of that name, else a new id K."""
    if name in self.output_names:
      raise ValueError(f"the model already has a class {name!r}")
    missing = [i for i in self.missing if self.names[i] == name]
    if missing:
      return dataclasses.replace(self, class_ids=self.class_ids + (missing[0],))
    if name in self.names:
      raise ValueError(f"class {name!r} (id {self.names.index(name)}) is not missing from the "
                       "model and cannot be added again")
    k = self.num_ids
    return dataclasses.replace(self, class_ids=self.class_ids + (k,), names=self.names + (name,),
                               palette=self.palette + (generated_colour(k),))

  def to_json(self) -> dict:
    out = {"dataset": self.dataset, "class_ids": [int(i) for i in self.class_ids],
           "names": list(self.names), "palette": [list(c) for c in self.palette],
           "num_dataset_classes": int(self.num_dataset_classes),
           "ignore_index": int(self.ignore_index)}
    if self.release_ids is not None:
      out["release_ids"] = [int(i) for i in self.release_ids]
    return out

  @classmethod
  def from_json(cls, d: Mapping) -> ClassMap:
    release = d.get("release_ids")
    return cls(dataset=str(d["dataset"]), class_ids=tuple(int(i) for i in d["class_ids"]),
               names=tuple(str(n) for n in d["names"]), palette=_palette(d["palette"]),
               num_dataset_classes=int(d["num_dataset_classes"]),
               ignore_index=int(d["ignore_index"]),
               release_ids=None if release is None else tuple(int(i) for i in release))


def output_ids(class_map: ClassMap, outputs: np.ndarray) -> np.ndarray:
  """Model outputs (argmax indices) -> class ids."""
  return np.asarray(class_map.class_ids, np.int64)[np.asarray(outputs)]


def release_label_ids(class_map: ClassMap, ids: np.ndarray, fill: int = 0) -> np.ndarray:
  """Class ids -> the dataset's release ids (`DatasetMeta.release_ids`); ids
  without one (added classes) -> `fill`."""
  if class_map.release_ids is None:
    raise ValueError(f"dataset {class_map.dataset!r} has no release ids")
  lut = np.full((max(class_map.num_ids, 1),), fill, np.int64)
  lut[:len(class_map.release_ids)] = class_map.release_ids
  ids = np.asarray(ids)
  if ids.size and (ids.min() < 0 or ids.max() >= len(lut)):
    raise ValueError(f"class ids must lie in 0..{len(lut) - 1}")
  return lut[ids]


def class_names_for(names: Sequence[str], num_classes: int) -> tuple[str, ...]:
  """`names` cut or extended (class_<i>) to `num_classes` names."""
  return tuple(list(names[:num_classes]) + [f"class_{i}" for i in range(len(names), num_classes)])
