"""The two descriptions: of a dataset and of a run, as plain data.

  DatasetMeta   a dataset: its class facts (names, palette, ignore index and, where
                the release numbers its classes otherwise, their release ids), its
                splits and, once known, where it is prepared and its split sizes
  ClassMap      a run: the class id of each model output (held-out and added
                classes), the names and palette of every class id, its dataset's
                DatasetMeta; what DIR/run.json holds

A dataset's builder (data/) owns its DatasetMeta; the trainer writes the
run's ClassMap into the workdir (run.json), so that the tools that load a
run (evaluation, predict, diagnostics, visualize, add_class, export) know
which class each output is, and where its data is, without the dataset's
code or the config's held-out override. Class ids 0..C-1 are the dataset's
train ids; ids from C on are classes the dataset lacks, added by
`protoseg_jax.add_class`.

Pure Python and NumPy: part of the library.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

import protoseg_jax
from protoseg_jax import held_out

IGNORE_INDEX = 255
RUN_FORMAT = 1      # of ClassMap.to_json (run.json)


def _palette(colours) -> tuple[tuple[int, int, int], ...]:
  return tuple(tuple(int(v) for v in c) for c in colours)


def _text(x) -> Optional[str]:
  return None if x is None else str(x)


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
  tfds_name, builder_config, version: where the dataset is prepared,
  data_dir/<tfds_name>/<builder_config>/<version>
  (`trainer.datasets.prepared_dir`): what a run records so that it can be
  evaluated without the builders' code; None where not known (a builder's
  own description: the place depends on the config).
  """
  class_names: tuple[str, ...]
  palette: tuple[tuple[int, int, int], ...]
  ignore_index: int = IGNORE_INDEX
  release_ids: Optional[tuple[int, ...]] = None
  splits: tuple[str, ...] = ()
  split_sizes: tuple[tuple[str, int], ...] = ()
  tfds_name: Optional[str] = None
  builder_config: Optional[str] = None
  version: Optional[str] = None

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
    if self.tfds_name is not None:
      out["prepared"] = {"tfds_name": self.tfds_name, "builder_config": self.builder_config,
                         "version": self.version}
    return out

  @classmethod
  def from_metadata(cls, metadata: Mapping) -> DatasetMeta:
    """The inverse of `metadata()` (e.g. of a prepared `builder.info.metadata`;
    one prepared before splits were recorded has none; a builder's has no
    "prepared")."""
    release = metadata.get("release_ids")
    where = metadata.get("prepared") or {}
    meta = cls(class_names=tuple(metadata["class_names"]), palette=_palette(metadata["palette"]),
               ignore_index=int(metadata["ignore_index"]),
               release_ids=None if release is None else tuple(int(i) for i in release),
               splits=tuple(str(x) for x in metadata.get("splits", ())),
               split_sizes=tuple((str(k), int(n))
                                 for k, n in dict(metadata.get("split_sizes", {})).items()),
               tfds_name=_text(where.get("tfds_name")),
               builder_config=_text(where.get("builder_config")),
               version=_text(where.get("version")))
    if int(metadata["num_classes"]) != meta.num_classes:
      raise ValueError(f"metadata says {metadata['num_classes']} classes but names "
                       f"{meta.num_classes}.")
    return meta


@dataclasses.dataclass(frozen=True)
class ClassMap:
  """A run: which class each output of its model is, and its dataset.

  Attributes:
    dataset: the dataset's name (config.dataset.name).
    meta: the dataset's description: its C classes (names, palette, ignore
      index, release ids), its splits and where it is prepared.
    class_ids: the class id of each model output, in output order.
    new_names, new_palette: of the classes added that the dataset lacks
      (class ids C, C+1, ...).
    held_out_class: the dataset's class the run was trained without
      (config.dataset.held_out_class), or held_out.NONE.
    added: what `add_class` recorded of each class it added ({"name",
      "class_id", "support_images", "support_pixels", "from"}).
  """
  dataset: str
  meta: DatasetMeta
  class_ids: tuple[int, ...]
  new_names: tuple[str, ...] = ()
  new_palette: tuple[tuple[int, int, int], ...] = ()
  held_out_class: int = held_out.NONE
  added: tuple[dict, ...] = ()

  def __post_init__(self):
    if len(self.new_palette) != len(self.new_names):
      raise ValueError(f"{len(self.new_palette)} palette colours for {len(self.new_names)} "
                       "added classes")
    k = self.num_ids
    if len(set(self.class_ids)) != len(self.class_ids) or any(
        not 0 <= i < k for i in self.class_ids):
      raise ValueError(f"class_ids {self.class_ids} must be distinct ids in 0..{k - 1}")

  @classmethod
  def of_dataset(cls, name: str, meta: DatasetMeta, held_out_class: int = held_out.NONE
                 ) -> ClassMap:
    """A model trained on dataset `name`, without `held_out_class` if one is given."""
    return cls(dataset=name, meta=meta,
               class_ids=held_out.model_class_ids(meta.num_classes, held_out_class),
               held_out_class=held_out_class)

  @property
  def names(self) -> tuple[str, ...]:
    """Of every class id 0..K-1: the dataset's C classes, then the added ones."""
    return self.meta.class_names + self.new_names

  @property
  def palette(self) -> tuple[tuple[int, int, int], ...]:
    return self.meta.palette + self.new_palette

  @property
  def num_dataset_classes(self) -> int:
    """C (ids >= C never occur in the dataset's labels)."""
    return self.meta.num_classes

  @property
  def ignore_index(self) -> int:
    return self.meta.ignore_index

  @property
  def release_ids(self) -> Optional[tuple[int, ...]]:
    return self.meta.release_ids

  @property
  def num_outputs(self) -> int:
    return len(self.class_ids)

  @property
  def num_ids(self) -> int:
    """K: the dataset's classes and the added ones (the size of a confusion matrix)."""
    return self.num_dataset_classes + len(self.new_names)

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
    return dataclasses.replace(self, class_ids=self.class_ids + (k,),
                               new_names=self.new_names + (name,),
                               new_palette=self.new_palette + (generated_colour(k),))

  def to_json(self) -> dict:
    """run.json: the layout every version has written (RUN_FORMAT); its
    "classes" is also export.json's."""
    meta = self.meta.metadata()
    classes = {"dataset": self.dataset, "class_ids": [int(i) for i in self.class_ids],
               "names": list(self.names), "palette": [list(c) for c in self.palette],
               "num_dataset_classes": meta["num_classes"], "ignore_index": meta["ignore_index"]}
    if "release_ids" in meta:
      classes["release_ids"] = meta["release_ids"]
    return {"format": RUN_FORMAT, "package_version": protoseg_jax.__version__,
            "classes": classes, "splits": meta.get("splits", []),
            "prepared": meta.get("prepared"), "held_out_class": int(self.held_out_class),
            "added": [dict(a) for a in self.added]}

  @classmethod
  def from_json(cls, d: Mapping) -> ClassMap:
    """The inverse of `to_json` (of any version's run.json: the splits, the
    prepared place, held_out_class and added may be missing)."""
    c = d["classes"]
    n = int(c["num_dataset_classes"])
    names, palette = tuple(str(x) for x in c["names"]), _palette(c["palette"])
    if not 1 <= n <= len(names):
      raise ValueError(f"num_dataset_classes={n} must lie in 1..{len(names)}")
    meta = DatasetMeta.from_metadata({
        "num_classes": n, "class_names": names[:n], "palette": palette[:n],
        "ignore_index": c["ignore_index"], "release_ids": c.get("release_ids"),
        "splits": d.get("splits", ()), "prepared": d.get("prepared")})
    return cls(dataset=str(c["dataset"]), meta=meta,
               class_ids=tuple(int(i) for i in c["class_ids"]),
               new_names=names[n:], new_palette=palette[n:],
               held_out_class=int(d.get("held_out_class", held_out.NONE)),
               added=tuple(dict(a) for a in d.get("added", ())))


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
