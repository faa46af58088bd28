"""ADE20K-Full: the 847-class semantic segmentation of the full ADE20K release
(ADE20K_2021_17_01), as MaskFormer / Mask2Former define it.

The release: `ADE20K_2021_17_01/images/ADE/{training,validation}/<category>/<scene>/`
holds `<name>.jpg` and `<name>_seg.png` (plus parts, json and instance files,
not read). A pixel's ADE20K object class is decoded from the RGB `_seg.png`
as R // 10 * 256 + G (0 = not annotated); the 847 classes are those of
Mask2Former's ADE20K_SEM_SEG_FULL_CATEGORIES (`classes.py`), object id ->
train id 0..846, every other id (0 included) -> ignore.

The preparation script (MaskFormer's datasets/prepare_ade20k_full_sem_seg.py,
whose output, images_detectron2/ and annotations_detectron2/, Mask2Former's
register_ade20k_full.py reads; Mask2Former ships no script of its own) also
shrinks every image whose short side exceeds 512 to a short side of 512
(long side round(long / short * 512)): the image bilinearly, the label by
nearest neighbour (OpenCV's INTER_LINEAR / INTER_NEAREST). Their models are
trained and evaluated on those sizes, and so are the examples here.

Labels are stored as 16-bit PNGs (847 train ids do not fit in 8 bits), with
ignore = 65535 (`IGNORE_INDEX`, the dataset's `ignore_index`), the value of
the 16-bit label files of that preparation (Mask2Former's ignore_label).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os

from absl import logging
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from data import common
from data.ade20k_full.classes import CLASSES
from protoseg_jax.trainer.images import to_rgb_uint8

ROOT = "ADE20K_2021_17_01"
ARCHIVE = f"{ROOT}.zip"
IMAGES = f"{ROOT}/images/ADE"
SPLITS = {"train": "training", "validation": "validation"}
LABEL_SUFFIX = "_seg.png"
# The stored ignore label: outside every train id (255 is one here) and outside
# the ids `protoseg_jax.add_class` gives new classes (847, 848, ...).
IGNORE_INDEX = 65535
# The MaskFormer / Mask2Former preparation resizes images whose short side exceeds this.
SHORT_SIDE = 512

ADE_IDS = tuple(ade_id for ade_id, _ in CLASSES)
CLASS_NAMES = tuple(name for _, name in CLASSES)
assert len(CLASSES) == 847 and len(set(ADE_IDS)) == 847 and len(set(CLASS_NAMES)) == 847
# The release's object classes: 3,688 (its README), numbered 1..3688 in the
# _seg.png files (index_ade20k.pkl's objectnames[k - 1] is class k); 0 = not annotated.
NUM_OBJECT_CLASSES = 3688
RAW_IDS = range(0, NUM_OBJECT_CLASSES + 1)
# Every id a _seg.png can encode: R // 10 <= 25, G <= 255.
_NUM_DECODABLE = (255 // 10) * 256 + 256
# uint16 [6656]: ADE object id -> train id 0..846, IGNORE_INDEX for the others.
LUT = np.full((_NUM_DECODABLE,), IGNORE_INDEX, np.uint16)
LUT[list(ADE_IDS)] = np.arange(len(ADE_IDS), dtype=np.uint16)

INSTRUCTIONS = f"""\
Download {ARCHIVE} (the full ADE20K release {ROOT}: register at
https://ade20k.csail.mit.edu/request_data/ and download it from the link you get;
index_ade20k.pkl is not needed) and put it, or its extracted folder {ROOT}/
({IMAGES[len(ROOT) + 1:]}/{{training,validation}}/<category>/<scene>/<name>.jpg, each with
<name>{LABEL_SUFFIX} beside it), in the manual_dir. Then run
  python -m data.prepare ade20k_full --manual_dir=<manual_dir> [--data_dir=<data_dir>]
"""


def decode_object_ids(data: bytes) -> np.ndarray:
  """A `<name>_seg.png` -> int32 [H, W] ADE20K object class ids (0 = not annotated).

  The class is R // 10 * 256 + G (the release's utils_ade20k.loadAde20K, which
  MaskFormer's preparation script copies); B holds instances and is not read.

  Raises:
    ValueError: not an RGB(A) image.
    OSError, SyntaxError, ...: the file is truncated or not an image.
  """
  img = Image.open(io.BytesIO(data))
  if img.mode not in ("RGB", "RGBA"):
    raise ValueError(f"expected an RGB _seg.png (class in R and G), got mode {img.mode}")
  seg = np.asarray(img)
  return (seg[..., 0].astype(np.int32) // 10) * 256 + seg[..., 1].astype(np.int32)


def mask2former_size(h: int, w: int) -> tuple[int, int] | None:
  """(h, w) after Mask2Former's resize, or None where it keeps the size.

  A short side above 512 becomes 512, the long side round(long / short * 512)
  (Python's round, as theirs).
  """
  if w >= h > SHORT_SIDE:
    return SHORT_SIDE, round(w / float(h) * SHORT_SIDE)
  if h >= w > SHORT_SIDE:
    return round(h / float(w) * SHORT_SIDE), SHORT_SIDE
  return None


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
  """OpenCV INTER_NEAREST source indices: min(floor(i * (1 / (n_out / n_in))), n_in - 1)."""
  inv = 1.0 / (n_out / n_in)
  return np.minimum(np.floor(np.arange(n_out) * inv).astype(np.int64), n_in - 1)


def _linear_taps(n_in: int, n_out: int):
  """OpenCV INTER_LINEAR taps along one axis: (index0, index1, weight of index1)."""
  f = ((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5).astype(np.float32)
  s = np.floor(f).astype(np.int64)
  f = f - s
  f[s < 0], s[s < 0] = 0, 0
  high = s >= n_in - 1
  f[high], s[high] = 0, n_in - 1
  return s, np.minimum(s + 1, n_in - 1), f


def resize_bilinear(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [h, w, 3], OpenCV's INTER_LINEAR (half-pixel centres,
  no antialiasing) computed in float and rounded (OpenCV's fixed point can differ by 1)."""
  r0, r1, fr = _linear_taps(image.shape[0], hw[0])
  c0, c1, fc = _linear_taps(image.shape[1], hw[1])
  # Rows first (the separable result is the same; fewer rows to interpolate across).
  x = image[r0].astype(np.float32) * (1 - fr)[:, None, None]
  x += image[r1].astype(np.float32) * fr[:, None, None]
  x = x[:, c0] * (1 - fc)[None, :, None] + x[:, c1] * fc[None, :, None]
  return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def resize_nearest(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """[H, W] -> [h, w] by OpenCV's INTER_NEAREST rule."""
  return label[nearest_index(label.shape[0], hw[0])[:, None],
               nearest_index(label.shape[1], hw[1])[None, :]]


def encode_label_png16(label: np.ndarray) -> bytes:
  """uint16 [H, W] -> PNG bytes of a 16-bit grayscale image."""
  if label.dtype != np.uint16 or label.ndim != 2:
    raise ValueError(f"Expected a uint16 [H, W] label, got {label.dtype} {label.shape}.")
  buf = io.BytesIO()
  Image.fromarray(label).save(buf, format="PNG", compress_level=1)  # mode I;16
  return buf.getvalue()


def present_classes(label: np.ndarray) -> list[int]:
  """Sorted train ids present in a uint16 label map (ignore excluded)."""
  counts = np.bincount(label.reshape(-1), minlength=len(CLASS_NAMES))
  return [int(c) for c in np.flatnonzero(counts[:len(CLASS_NAMES)])]


class Files(common.ManualFiles):
  """`common.ManualFiles` that also lists the files of a whole folder tree."""

  def list_tree(self, folder: str, suffix: str) -> list[str]:
    """Sorted logical paths of the files at any depth under `folder` ending with `suffix`."""
    folder = folder.rstrip("/")
    found = set()
    for dirpath, _, names in os.walk(os.path.join(self.root, folder)):
      rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
      found.update(f"{rel}/{n}" for n in names if n.endswith(suffix))
    prefix = folder + "/"
    found.update(p for p in self._members if p.startswith(prefix) and p.endswith(suffix))
    return sorted(found)


def _split_of_name(stem: str) -> str:
  """The preparation script's split rule: 'validation' if the name's 2nd field is 'val'."""
  parts = stem.split("_")
  return "validation" if len(parts) > 1 and parts[1] == "val" else "training"


class Builder(common.SegmentationBuilder, skip_registration=True):
  """ADE20K-Full, 847 classes: `data.get_builder('ade20k_full')`.

  The class facts of `common.SegmentationBuilder`, with 16-bit labels: RAW_IDS
  are the release's object ids (0..3688, 0 = not annotated), LUT a uint16
  table object id -> train id (IGNORE_INDEX = 65535 for the ids outside the
  847), `read_label` decodes a _seg.png to object ids; `read_example` checks
  them as `common.load_example` does for 8-bit datasets, applies
  Mask2Former's resize and stores the train ids as a 16-bit PNG.
  """

  name = "ade20k_full"
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  SPLITS = SPLITS
  ARCHIVES = {ARCHIVE: ""}
  IMAGE_FORMAT = "jpeg"
  LUT = LUT
  RAW_IDS = RAW_IDS
  CLASS_NAMES = CLASS_NAMES
  PALETTE = common.generated_palette(847, seed=847)
  RELEASE_IDS = ADE_IDS
  IGNORE_INDEX = IGNORE_INDEX
  LABEL_DTYPE = np.uint16         # 847 classes and 65535 = ignore do not fit 8 bits
  DESCRIPTION = __doc__
  HOMEPAGE = "https://ade20k.csail.mit.edu/"

  read_label = staticmethod(decode_object_ids)

  @classmethod
  def meta(cls):
    return dataclasses.replace(super().meta(), ignore_index=cls.IGNORE_INDEX)

  def _split_generators(self, dl_manager):
    files = Files(dl_manager.manual_dir, self.ARCHIVES, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return {split: self._generate_examples(files, folder) for split, folder in self.SPLITS.items()}

  def example_files(self, files: Files, folder: str):
    tree = f"{IMAGES}/{folder}"
    images = files.require(files.list_tree(tree, ".jpg"), f"images ({tree}/**/<name>.jpg)",
                           files.why_empty(tree, "*.jpg in its scene folders"))
    files.require(files.list_tree(tree, LABEL_SUFFIX),
                  f"label images ({tree}/**/<name>{LABEL_SUFFIX})",
                  files.why_empty(tree, f"*{LABEL_SUFFIX} in its scene folders"))
    seen = collections.defaultdict(list)
    for path in images:
      seen[os.path.basename(path)[:-len(".jpg")]].append(path)
    twice = {stem: paths for stem, paths in seen.items() if len(paths) > 1}
    if twice:
      raise ValueError(f"{self.name}: image names occur more than once in {tree}: {twice}")
    other = sorted(stem for stem in seen if _split_of_name(stem) != folder)
    if other:
      logging.warning("%s: %d image(s) in %s whose names put them in the other split by "
                      "prepare_ade20k_full_sem_seg.py's rule (kept in %s): %s", self.name,
                      len(other), tree, folder,
                      ", ".join(other[:10]) + (", ..." if len(other) > 10 else ""))
    for path in images:
      yield os.path.basename(path)[:-len(".jpg")], path, path[:-len(".jpg")] + LABEL_SUFFIX

  def _load_image(self, data: bytes):
    """(encoded image or None, (H, W), pixels or None) of an image file.

    An image Mask2Former keeps at its size: as `common.rgb_image_bytes`
    keeps or converts it, no pixels. One it resizes: its uint8 RGB pixels
    (`to_rgb_uint8`), to be resized and encoded again.
    """
    img = Image.open(io.BytesIO(data))
    hw = (img.height, img.width)
    if mask2former_size(*hw) is None:
      return common.rgb_image_bytes(data, self.IMAGE_FORMAT)[0], hw, None
    img.load()  # the whole file: truncation raises here
    return None, hw, to_rgb_uint8(img)

  def read_example(self, files: common.ManualFiles, stem: str, image_path: str,
                   label_path: str) -> dict:
    """The checked, resized example of one (image, _seg.png) pair.

    Raises:
      common.BadFile: a missing, unreadable or truncated image or label, a
        label of another size than its image, or object ids outside RAW_IDS.
    """
    image_name, label_name = files.describe(image_path), files.describe(label_path)
    encoded, (h, w), pixels = common.read_decoded(
        files, image_path, self._load_image, "image", label_name)
    raw = common.read_decoded(
        files, label_path, self.read_label, "label", image_name)
    if tuple(raw.shape) != (h, w):
      raise common.BadFile(label_name, f"label is {raw.shape[0]}x{raw.shape[1]} but its image "
                                       f"{image_name} is {h}x{w} (expected the same size)")
    counts = np.bincount(raw.reshape(-1))
    unknown = np.flatnonzero(counts[self.RAW_IDS.stop:]) + self.RAW_IDS.stop
    if unknown.size:
      shown = ", ".join(str(int(i)) for i in unknown[:10]) + (", ..." if unknown.size > 10 else "")
      raise common.BadFile(label_name, f"label ids {shown} are not ADE20K object ids (expected "
                                       f"{self.RAW_IDS.start}..{self.RAW_IDS.stop - 1})")
    label = self.LUT[raw]
    if pixels is not None:  # Mask2Former's resize
      size = mask2former_size(h, w)
      buf = io.BytesIO()
      Image.fromarray(resize_bilinear(pixels, size)).save(
          buf, format="JPEG", quality=95, subsampling=0)
      encoded, label = buf.getvalue(), resize_nearest(label, size)
    return {
        "image": encoded,
        "label": encode_label_png16(label),
        "classes": present_classes(label),
        "file_name": stem,
    }
