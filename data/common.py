"""Shared pieces of the segmentation TFDS builders.

Every builder stores examples with the same features:

  'image':     uint8 [H, W, 3] (JPEG or PNG bytes, kept as released when possible)
  'label':     uint8 [H, W, 1] PNG, train ids 0..num_classes-1, 255 = ignore
  'classes':   the sorted train ids present in 'label' (ClassLabel names)
  'file_name': the official file stem

and the same metadata (`builder.info.metadata`, a MetadataDict saved as JSON):
num_classes, ignore_index, class_names, palette ([[r, g, b], ...]), written
and read back through `DatasetMeta`.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

IGNORE_INDEX = 255


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """The class facts of a dataset: what every builder stores as its metadata.

  `SegmentationBuilder.meta()` gives them from the builder's constants (no
  preparation needed), `from_metadata` from a prepared builder's info.
  """
  class_names: tuple[str, ...]
  palette: tuple[tuple[int, int, int], ...]
  ignore_index: int = IGNORE_INDEX

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def metadata(self) -> dict:
    """The builder metadata (JSON-friendly) holding these facts."""
    return {"num_classes": self.num_classes, "ignore_index": int(self.ignore_index),
            "class_names": list(self.class_names), "palette": [list(c) for c in self.palette]}

  @classmethod
  def from_metadata(cls, metadata: Mapping) -> DatasetMeta:
    """The inverse of `metadata()` (e.g. of a prepared `builder.info.metadata`)."""
    meta = cls(class_names=tuple(metadata["class_names"]), palette=_palette(metadata["palette"]),
               ignore_index=int(metadata["ignore_index"]))
    if int(metadata["num_classes"]) != meta.num_classes:
      raise ValueError(f"metadata says {metadata['num_classes']} classes but names "
                       f"{meta.num_classes}.")
    return meta


def _palette(colours) -> tuple[tuple[int, int, int], ...]:
  return tuple(tuple(int(v) for v in c) for c in colours)


def lookup_table(mapping: Mapping[int, int], default: int = IGNORE_INDEX) -> np.ndarray:
  """uint8 [256] table: raw id -> train id, `default` for ids not in `mapping`."""
  lut = np.full((256,), default, np.uint8)
  for raw, train in mapping.items():
    if not 0 <= raw < 256 or not 0 <= train < 256:
      raise ValueError(f"Label mapping {raw} -> {train} is outside 0..255.")
    lut[raw] = train
  return lut


def encode_label_png(label: np.ndarray) -> bytes:
  """uint8 [H, W] -> PNG bytes of an 8-bit grayscale image."""
  if label.dtype != np.uint8 or label.ndim != 2:
    raise ValueError(f"Expected a uint8 [H, W] label, got {label.dtype} {label.shape}.")
  buf = io.BytesIO()
  Image.fromarray(label, mode="L").save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def decode_label_png(data: bytes) -> np.ndarray:
  """PNG bytes of an 8-bit label (grayscale or palette) -> uint8 [H, W] raw values."""
  img = Image.open(io.BytesIO(data))
  if img.mode not in ("L", "P"):
    raise ValueError(f"Expected an 8-bit label PNG (mode L or P), got mode {img.mode}.")
  return np.asarray(img, dtype=np.uint8)


def rgb_image_bytes(data: bytes, fmt: str) -> tuple[bytes, tuple[int, int]]:
  """(encoded image, (height, width)); `data` unchanged when already RGB/gray `fmt`.

  Other modes (CMYK JPEGs, palette or RGBA PNGs) are converted to RGB and
  re-encoded, so that decoding with 3 channels is well defined.
  """
  img = Image.open(io.BytesIO(data))
  hw = (img.height, img.width)
  if img.format == fmt.upper() and img.mode in ("RGB", "L"):
    return data, hw
  buf = io.BytesIO()
  img.convert("RGB").save(buf, format=fmt.upper(), **({"quality": 95} if fmt == "jpeg" else {}))
  return buf.getvalue(), hw


def present_classes(label: np.ndarray, num_classes: int) -> list[int]:
  """Sorted train ids present in a uint8 label map (ignore excluded)."""
  counts = np.bincount(label.reshape(-1), minlength=256)
  return [int(c) for c in np.flatnonzero(counts[:num_classes])]


def make_example(name: str, image: tuple[bytes, tuple[int, int]], label: np.ndarray,
                 num_classes: int) -> dict:
  """The feature dict of one example.

  Args:
    name: the official file stem.
    image: (encoded bytes, (H, W)) as returned by `rgb_image_bytes`.
    label: uint8 [H, W] train ids, 255 = ignore.
    num_classes: number of train ids.
  """
  image, hw = image
  if tuple(label.shape) != tuple(hw):
    raise ValueError(f"{name}: image is {hw[0]}x{hw[1]} but its label is "
                     f"{label.shape[0]}x{label.shape[1]} (expected the same size).")
  return {
      "image": image,
      "label": encode_label_png(label),
      "classes": present_classes(label, num_classes),
      "file_name": name,
  }


def generated_palette(n: int, seed: int) -> tuple[tuple[int, int, int], ...]:
  """A fixed pseudo-random palette for datasets without an official one."""
  rng = np.random.RandomState(seed)
  return tuple(tuple(int(v) for v in rgb) for rgb in rng.randint(0, 256, size=(n, 3)))


class ManualFiles:
  """The official files in `manual_dir`: the release zips, or their extracted contents.

  `archives` maps a release archive name to the folder (relative to
  `manual_dir`, '' for none) its members would land in when extracted, so a
  logical path like 'ADEChallengeData2016/images/training/x.jpg' resolves to
  `manual_dir/<that path>` or to the member of the zip. Extracted files win
  over zip members.
  """

  def __init__(self, manual_dir: os.PathLike | str, archives: Mapping[str, str]):
    self.root = os.fspath(manual_dir)
    self._members: dict[str, tuple[str, str]] = {}  # logical path -> (zip path, member)
    self._zips: dict[str, zipfile.ZipFile] = {}
    self.found_archives = []
    for name, mount in archives.items():
      path = os.path.join(self.root, name)
      if os.path.isfile(path):
        self.found_archives.append(name)
        with zipfile.ZipFile(path) as zf:
          for member in zf.namelist():
            if not member.endswith("/"):
              self._members[_join(mount, member)] = (path, member)

  def list(self, folder: str, suffix: str) -> list[str]:
    """Sorted logical paths of the files directly in `folder` ending with `suffix`."""
    folder = folder.rstrip("/")
    found = set()
    disk = os.path.join(self.root, folder)
    if os.path.isdir(disk):
      found.update(_join(folder, f) for f in os.listdir(disk) if f.endswith(suffix))
    prefix = folder + "/"
    for path in self._members:
      if path.startswith(prefix) and path.endswith(suffix) and "/" not in path[len(prefix):]:
        found.add(path)
    return sorted(found)

  def list_subfolders(self, folder: str) -> list[str]:
    """Sorted names of the immediate sub-folders of `folder`."""
    folder = folder.rstrip("/")
    found = set()
    disk = os.path.join(self.root, folder)
    if os.path.isdir(disk):
      found.update(f for f in os.listdir(disk) if os.path.isdir(os.path.join(disk, f)))
    prefix = folder + "/"
    for path in self._members:
      if path.startswith(prefix) and "/" in path[len(prefix):]:
        found.add(path[len(prefix):].split("/", 1)[0])
    return sorted(found)

  def exists(self, path: str) -> bool:
    return os.path.isfile(os.path.join(self.root, path)) or path in self._members

  def read(self, path: str) -> bytes:
    disk = os.path.join(self.root, path)
    if os.path.isfile(disk):
      with open(disk, "rb") as f:
        return f.read()
    if path not in self._members:
      raise FileNotFoundError(
          f"{path} is neither in {self.root} nor in the archives found there "
          f"({', '.join(self.found_archives) or 'none'}).")
    zpath, member = self._members[path]
    if zpath not in self._zips:
      self._zips[zpath] = zipfile.ZipFile(zpath)
    return self._zips[zpath].read(member)


def _join(mount: str, member: str) -> str:
  return f"{mount.rstrip('/')}/{member}" if mount else member


def require(files: Iterable[str], what: str, manual_dir: str, instructions: str) -> list[str]:
  """Raises FileNotFoundError with the download instructions when `files` is empty."""
  files = list(files)
  if not files:
    raise FileNotFoundError(
        f"Found no {what} under manual_dir={manual_dir}.\n{instructions}")
  return files


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the semantic segmentation builders (not registered with TFDS).

  Subclasses set `name`, VERSION, CLASS_NAMES, PALETTE, IMAGE_FORMAT and
  implement `_split_generators` / `_generate_examples`. They are not
  registered in TFDS's global registry (TFDS ships unrelated 'cityscapes'
  and similar builders): instantiate them through `data.get_builder`.
  """

  CLASS_NAMES: Sequence[str] = ()
  PALETTE: Sequence[tuple[int, int, int]] = ()
  IMAGE_FORMAT = "jpeg"
  DESCRIPTION = ""
  HOMEPAGE = ""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own version imports `importlib_resources`, which tensorflow-
    # datasets uses without declaring it; the module file is all it needs.
    return epath.Path(inspect.getfile(cls))

  @classmethod
  def meta(cls) -> DatasetMeta:
    """The class facts of this dataset, from the class constants."""
    if len(cls.PALETTE) != len(cls.CLASS_NAMES):
      raise ValueError(f"{cls.name}: {len(cls.PALETTE)} palette colours for "
                       f"{len(cls.CLASS_NAMES)} classes.")
    return DatasetMeta(class_names=tuple(cls.CLASS_NAMES), palette=_palette(cls.PALETTE))

  def _info(self) -> tfds.core.DatasetInfo:
    meta = self.meta()
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format=self.IMAGE_FORMAT),
            "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "classes": tfds.features.Sequence(
                tfds.features.ClassLabel(names=list(meta.class_names))),
            "file_name": tfds.features.Text(),
        }),
        homepage=self.HOMEPAGE or None,
        metadata=tfds.core.MetadataDict(**meta.metadata()),
    )
