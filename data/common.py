"""Shared pieces of the segmentation TFDS builders.

Every builder stores examples with the same features:

  'image':     uint8 [H, W, 3] (JPEG or PNG bytes, kept as released when possible)
  'label':     uint8 [H, W, 1] PNG, train ids 0..num_classes-1, 255 = ignore
  'classes':   the sorted train ids present in 'label' (ClassLabel names)
  'file_name': the official file stem

and the same metadata (`builder.info.metadata`, a MetadataDict saved as JSON):
num_classes, ignore_index, class_names, palette ([[r, g, b], ...]) and, where
the release numbers its classes otherwise, release_ids, written and read back
through `DatasetMeta` (protoseg_jax.classes).

A builder of a release is a `SegmentationBuilder` subclass that states its
facts as class attributes (SPLITS, ARCHIVES, IMAGE_FORMAT, LUT, RAW_IDS,
CLASS_NAMES, PALETTE, ...) and the (stem, image, label) files of a split
(`example_files`); the base class reads and checks every example.
"""

from __future__ import annotations

import functools
import inspect
import io
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from protoseg_jax.classes import DatasetMeta
from protoseg_jax.trainer.images import READ_ERRORS, error_reason, to_rgb_uint8

IGNORE_INDEX = 255
# What a builder does with a bad file (unreadable, truncated, label of another
# size, label ids the dataset does not define): "stop" (default) finishes the
# scan, then raises BadFilesError naming every bad file and prepares nothing;
# "skip" leaves them out, logging each and a summary, and records their names
# in the prepared metadata ('skipped_files').
ON_BAD_FILE = ("stop", "skip")
class BadFile(ValueError):
  """One file of a release that cannot become an example.

  Attributes:
    name: the file (its path under manual_dir, or `archive.zip:member`).
    reason: what is wrong with it.
  """

  def __init__(self, name: str, reason: str):
    super().__init__(f"{name}: {reason}")
    self.name, self.reason = name, reason


class BadFilesError(ValueError):
  """Preparation found bad files and on_bad_file='stop': nothing was prepared."""

  def __init__(self, message: str, bad_files: Sequence[tuple[str, str]]):
    super().__init__(message)
    self.bad_files = list(bad_files)  # [(name, reason)]


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
  """Bytes of a label image (one id per pixel) -> uint8 [H, W] raw ids.

  8-bit grayscale (L) or palette (P: the palette indices) images, and 16-bit
  or 32-bit integer ones (I;16, I) whose ids all lie in 0..255 (taken as
  they are, not rescaled). Colour (RGB) masks are refused: their colours
  are not ids.

  Raises:
    ValueError: another mode, or ids above 255.
    OSError, SyntaxError, ...: the file is truncated or not an image.
  """
  img = Image.open(io.BytesIO(data))
  if img.mode in ("L", "P"):
    return np.asarray(img, dtype=np.uint8)
  if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
    ids = np.asarray(img)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
      raise ValueError(f"{img.mode} label with ids {ids.min()}..{ids.max()}: label ids must lie "
                       "in 0..255")
    return ids.astype(np.uint8)
  raise ValueError(f"expected a one-channel label image of ids (8-bit L or P, or 16-bit), got "
                   f"mode {img.mode}")


def _png_bit_depth(data: bytes) -> int | None:
  """The bit depth in a PNG's IHDR, None for other formats."""
  if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 24:
    return data[24]
  return None


def rgb_image_bytes(data: bytes, fmt: str) -> tuple[bytes, tuple[int, int]]:
  """(encoded image, (height, width)) of an image file, checked by decoding it.

  `data` is kept as released when it is an 8-bit RGB or grayscale `fmt`
  file that the trainer's decoder (`tf.io.decode_image`) reads whole. Other
  files (RGBA or palette PNGs, CMYK JPEGs, 16-bit PNGs or TIFFs, another
  format) are decoded with PIL, converted by `to_rgb_uint8` and re-encoded
  as `fmt` (JPEG: quality 95, 4:4:4), so decoding with 3 channels is well defined.

  Raises:
    OSError, ValueError, SyntaxError, ... (`READ_ERRORS`): the file is
      truncated, corrupt or not an image.
  """
  img = Image.open(io.BytesIO(data))
  hw = (img.height, img.width)
  if img.format == fmt.upper() and img.mode in ("RGB", "L") and _png_bit_depth(data) in (None, 8):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top (only when preparing)
    try:
      decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError as e:
      raise ValueError(f"the trainer's decoder fails: {error_reason(e)}") from e
    if tuple(decoded.shape[:2]) != hw:
      raise ValueError(f"decodes to {tuple(decoded.shape[:2])}, its header says {hw}")
    return data, hw
  img.load()  # the whole file: truncation raises here
  rgb = to_rgb_uint8(img)
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format=fmt.upper(),
                            **({"quality": 95, "subsampling": 0} if fmt == "jpeg" else {}))
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
  over zip members. `instructions` (the builder's download instructions)
  end the errors of `require_files` and `require`.
  """

  def __init__(self, manual_dir: os.PathLike | str, archives: Mapping[str, str],
               instructions: str = ""):
    self.root = os.fspath(manual_dir)
    self.instructions = instructions
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

  def describe(self, path: str) -> str:
    """Where logical `path` is: `manual_dir/path`, or `archive.zip:member`."""
    disk = os.path.join(self.root, path)
    if not os.path.isfile(disk) and path in self._members:
      zpath, member = self._members[path]
      return f"{zpath}:{member}"
    return disk

  def why_empty(self, folder: str, pattern: str) -> str:
    """Why `folder` (logical) holds no `pattern`: for errors naming the folder."""
    disk = os.path.join(self.root, folder)
    if not os.path.isdir(self.root):
      return f"manual_dir {self.root} does not exist"
    if os.path.isdir(disk):
      inside = "is empty" if not os.listdir(disk) else f"holds no {pattern}"
      return f"the folder {disk} {inside}"
    if self.found_archives:
      return (f"there is no folder {disk}, and the archive(s) {', '.join(self.found_archives)} "
              f"found there hold no {folder}/{pattern}")
    return f"there is no folder {disk} and none of the release archives is in {self.root}"

  def require_files(self, folder: str, suffix: str, what: str,
                    instructions: str | None = None) -> list[str]:
    """`list(folder, suffix)`, or FileNotFoundError naming the folder and what it should hold.

    `instructions` (default: this release's) end the message.
    """
    found = self.list(folder, suffix)
    if not found:
      raise FileNotFoundError(
          f"Found no {what} ({folder}/*{suffix}) under manual_dir={self.root}: "
          f"{self.why_empty(folder, '*' + suffix)}.\n"
          f"{self.instructions if instructions is None else instructions}")
    return found

  def require(self, found: Iterable[str], what: str, why: str = "") -> list[str]:
    """`common.require` under this manual_dir, with this release's instructions."""
    return require(found, what, self.root, self.instructions, why)

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


def require(files: Iterable[str], what: str, manual_dir: str, instructions: str,
            why: str = "") -> list[str]:
  """Raises FileNotFoundError with the download instructions when `files` is empty.

  Args:
    files: what was found.
    what: what was expected (named in the message).
    manual_dir: where it was looked for.
    instructions: the builder's download instructions.
    why: optional detail (e.g. `ManualFiles.why_empty`).
  """
  files = list(files)
  if not files:
    raise FileNotFoundError(
        f"Found no {what} under manual_dir={manual_dir}{': ' + why if why else ''}."
        f"\n{instructions}")
  return files


def _ranges(ids: Iterable[int]) -> str:
  """'0..150' / '0..181, 255': a sorted id set as ranges."""
  ids, parts = sorted(set(int(i) for i in ids)), []
  for i in ids:
    if parts and parts[-1][1] == i - 1:
      parts[-1][1] = i
    else:
      parts.append([i, i])
  return ", ".join(f"{a}..{b}" if b > a else f"{a}" for a, b in parts)


def read_decoded(files: ManualFiles, path: str, decode: Callable[[bytes], object], what: str,
                  of: str):
  """decode(bytes of `path`); every failure as BadFile naming the file."""
  name = files.describe(path)
  if not files.exists(path):
    raise BadFile(name, f"missing (the {what} of {of})")
  try:
    return decode(files.read(path))
  except READ_ERRORS as e:
    raise BadFile(name, f"unreadable {what}, truncated or corrupt ({error_reason(e)})") from e


def load_example(files: ManualFiles, stem: str, image_path: str, label_path: str, *,
                 image_format: str, lut: np.ndarray, raw_ids: Iterable[int], num_classes: int,
                 read_label: Callable[[bytes], np.ndarray] = decode_label_png) -> dict:
  """The checked example of one (image, label) pair of a release.

  Args:
    files: the release.
    stem: the example's file stem.
    image_path, label_path: logical paths (see `ManualFiles`).
    image_format: 'jpeg' | 'png', the stored image encoding.
    lut: uint8 [256] raw id -> train id.
    raw_ids: every raw id the release defines; any other id in the label is
      an error (the dataset's ignore ids, e.g. ADE20K's 0, are in it).
    num_classes: train ids are 0..num_classes-1, or IGNORE_INDEX.
    read_label: label bytes -> uint8 [H, W] raw ids.
  Raises:
    BadFile: naming the file at fault: a missing, unreadable or truncated
      image or label, a label of another size than its image, or label ids
      outside `raw_ids`.
  """
  image = read_decoded(files, image_path, lambda b: rgb_image_bytes(b, image_format), "image",
                        files.describe(label_path))
  raw = read_decoded(files, label_path, read_label, "label", files.describe(image_path))
  (h, w), label_name = image[1], files.describe(label_path)
  if tuple(raw.shape) != (h, w):
    raise BadFile(label_name, f"label is {raw.shape[0]}x{raw.shape[1]} but its image "
                              f"{files.describe(image_path)} is {h}x{w} (expected the same size)")
  valid = np.zeros((256,), bool)
  valid[[i for i in raw_ids if 0 <= i < 256]] = True
  found = np.unique(raw)
  unknown = found[~valid[found]]
  if unknown.size:
    shown = ", ".join(str(int(i)) for i in unknown[:10]) + (", ..." if unknown.size > 10 else "")
    raise BadFile(label_name, f"label ids {shown} are not ids of this dataset (expected "
                              f"{_ranges(raw_ids)})")
  label = lut[raw]
  mapped = np.unique(label)
  if np.any((mapped >= num_classes) & (mapped != IGNORE_INDEX)):
    raise BadFile(label_name, f"label maps to train ids {mapped.tolist()} outside "
                              f"0..{num_classes - 1} and {IGNORE_INDEX} (ignore)")
  return make_example(stem, image, label, num_classes)


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the semantic segmentation builders (not registered with TFDS).

  A builder of an official release states its facts as class attributes and
  says which files make the examples of a split; this class reads, checks
  and stores them (`_split_generators`, `_generate_examples`). Besides TFDS's
  `name` (and VERSION, RELEASE_NOTES: 1.0.0 unless set; DESCRIPTION, HOMEPAGE):

    SPLITS        TFDS split name -> the release's folder / split name of it
                  (`data.SPLITS` lists their keys)
    ARCHIVES      release archive name -> the folder its members land in when
                  extracted ('' for none), for `ManualFiles`
    MANUAL_DOWNLOAD_INSTRUCTIONS  what to download and where to put it (ends
                  every missing-files error)
    IMAGE_FORMAT  'jpeg' | 'png': the stored image encoding
    LUT           uint8 [256] raw label id -> train id (`lookup_table`)
    RAW_IDS       every raw id the release defines (others: a bad file)
    CLASS_NAMES, PALETTE  the train ids' names and colours
    RELEASE_IDS   optional: the release's id of each train id, where the
                  release numbers its classes otherwise (`DatasetMeta`)
    example_files(files, folder)  the (stem, image path, label path) of each
                  example of a split, raising FileNotFoundError (through
                  `files.require_files` / `files.require`) where the layout
                  lacks them
    read_label    optional: label file bytes -> uint8 [H, W] raw ids
                  (default `decode_label_png`)

  A builder without files (the procedural demo) sets SPLITS and overrides
  `_split_generators` / `_generate_examples` instead. Builders are not
  registered in TFDS's global registry (TFDS ships unrelated 'cityscapes'
  and similar builders): instantiate them through `data.get_builder`.

  Bad files (`BadFile`: unreadable, truncated, a label of another size,
  label ids the dataset does not define) are all found and named, then
  handled by the constructor's `on_bad_file` (see `ON_BAD_FILE`): "stop"
  raises `BadFilesError` listing them after the scan (nothing is prepared),
  "skip" leaves them out with a warning each and a summary, and stores their
  names as `info.metadata['skipped_files']`. `bad_files` holds the
  (split, name, reason) of the last preparation, `split` being the
  release's folder (a value of SPLITS).
  """

  # Every builder is at its first release; one whose prepared data change sets
  # its own VERSION and RELEASE_NOTES.
  VERSION = tfds.core.Version("1.0.0")
  LABEL_DTYPE = np.uint8          # np.uint16: 16-bit label PNGs (ADE20K-Full)
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  SPLITS: Mapping[str, object] = {}
  ARCHIVES: Mapping[str, str] = {}
  IMAGE_FORMAT = "jpeg"
  LUT: np.ndarray | None = None
  RAW_IDS: Sequence[int] = ()
  CLASS_NAMES: Sequence[str] = ()
  PALETTE: Sequence[tuple[int, int, int]] = ()
  RELEASE_IDS: Sequence[int] | None = None
  DESCRIPTION = ""
  HOMEPAGE = ""

  read_label = staticmethod(decode_label_png)

  def __init__(self, *, on_bad_file: str = "stop", **kwargs):
    """Args: on_bad_file: "stop" | "skip" (`ON_BAD_FILE`); **kwargs: TFDS's."""
    if on_bad_file not in ON_BAD_FILE:
      raise ValueError(f"on_bad_file must be one of {ON_BAD_FILE}, got {on_bad_file!r}")
    super().__init__(**kwargs)
    self._original_state["on_bad_file"] = on_bad_file  # kept when pickled
    self.on_bad_file = on_bad_file
    self.bad_files: list[tuple[str, str, str]] = []
    self._split_counts: dict[str, list[int]] = {}

  def example_files(self, files: ManualFiles, folder) -> Iterable[tuple[str, str, str]]:
    """(stem, image path, label path) of each example of the release's `folder`.

    Paths are logical (see `ManualFiles`). Raises FileNotFoundError naming
    what is missing where the layout lacks the folder or its files.
    """
    raise NotImplementedError(f"{type(self).__name__} must implement example_files")

  def _split_generators(self, dl_manager):
    files = ManualFiles(dl_manager.manual_dir, self.ARCHIVES, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return {split: self._generate_examples(files, folder) for split, folder in self.SPLITS.items()}

  def _generate_examples(self, files: ManualFiles, folder):
    yield from self.checked_examples(folder, (
        (stem, functools.partial(self.read_example, files, stem, image_path, label_path))
        for stem, image_path, label_path in self.example_files(files, folder)))

  def read_example(self, files: ManualFiles, stem: str, image_path: str, label_path: str) -> dict:
    """The checked example of one (image, label) pair: `load_example` with this dataset's facts."""
    return load_example(files, stem, image_path, label_path, image_format=self.IMAGE_FORMAT,
                        lut=self.LUT, raw_ids=self.RAW_IDS, num_classes=len(self.CLASS_NAMES),
                        read_label=self.read_label)

  def checked_examples(self, split: str, candidates: Iterable[tuple[str, Callable[[], dict]]]
                       ) -> Iterator[tuple[str, dict]]:
    """(key, example) of each (key, load) whose `load()` does not raise BadFile.

    A BadFile is logged (with its name and reason) and recorded in
    `bad_files`; the scan goes on, so that every bad file is found.
    """
    good = bad = 0
    for key, load in candidates:
      try:
        example = load()
      except BadFile as e:
        bad += 1
        self.bad_files.append((split, e.name, e.reason))
        logging.warning("%s %s: bad file %s: %s (%s)", self.name, split, e.name, e.reason,
                        "skipped" if self.on_bad_file == "skip" else "reported at the end")
        continue
      good += 1
      yield key, example
    self._split_counts[split] = [good, bad]
    if bad and not good:  # TFDS cannot write an empty split: stop here, naming what was found
      raise BadFilesError(self._bad_files_message(
          f"every one of the {bad} files of {split} is bad"), self._named_bad_files())

  def _named_bad_files(self) -> list[tuple[str, str]]:
    return [(name, reason) for _, name, reason in self.bad_files]

  def _bad_files_message(self, headline: str) -> str:
    listing = "\n".join(f"  {name}: {reason}" for _, name, reason in self.bad_files)
    return (f"{self.name}: {headline}; {len(self.bad_files)} bad file(s), nothing was prepared:\n"
            f"{listing}\nReplace these files (e.g. download the release again), or prepare "
            f"without them: python -m data.prepare {self.meta_name()} --on_bad_file=skip ... "
            f"(builder kwarg on_bad_file='skip'); the skipped files are logged and listed in "
            f"the prepared metadata ('skipped_files').")

  @classmethod
  def meta_name(cls) -> str:
    """The name `data.DATASETS` knows this builder by (config.dataset.name)."""
    import data  # pylint: disable=g-import-not-at-top
    for key, module in data.DATASETS.items():
      if cls.__module__ == module or cls.__module__.startswith(module + "."):
        return key
    return cls.name

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    self.bad_files, self._split_counts = [], {}
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    if self.bad_files and self.on_bad_file == "stop":
      raise BadFilesError(self._bad_files_message("found bad files"), self._named_bad_files())
    if self.bad_files:
      counts = ", ".join(f"{split}: {bad} of {good + bad}"
                         for split, (good, bad) in self._split_counts.items() if bad)
      logging.warning("%s: skipped %d bad file(s) (%s), listed in the metadata as "
                      "'skipped_files':\n%s", self.name, len(self.bad_files), counts,
                      "\n".join(f"  {name}: {reason}" for _, name, reason in self.bad_files))
    self.info.metadata["skipped_files"] = [name for _, name, _ in self.bad_files]

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
    return DatasetMeta(
        class_names=tuple(cls.CLASS_NAMES),
        palette=tuple(tuple(int(v) for v in c) for c in cls.PALETTE),
        release_ids=None if cls.RELEASE_IDS is None else tuple(int(i) for i in cls.RELEASE_IDS),
        splits=tuple(cls.SPLITS))

  def _features(self, meta: DatasetMeta) -> dict:
    """The stored features (the module docstring's); a builder with more
    (the demo's appearance map) or 16-bit labels (LABEL_DTYPE) says so here."""
    return {
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format=self.IMAGE_FORMAT),
        "label": tfds.features.Image(shape=(None, None, 1), dtype=self.LABEL_DTYPE,
                                     encoding_format="png"),
        "classes": tfds.features.Sequence(tfds.features.ClassLabel(names=list(meta.class_names))),
        "file_name": tfds.features.Text(),
    }

  def _info(self) -> tfds.core.DatasetInfo:
    meta = self.meta()
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict(self._features(meta)),
        homepage=self.HOMEPAGE or None,
        metadata=tfds.core.MetadataDict(**meta.metadata()),
    )
