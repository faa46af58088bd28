"""COCO-Stuff 10k (cocostuff-10k-v1.1), 9000 train / 1000 test, 171 classes.

Labels come from the 'S' array of annotations/<name>.mat (1-based ids, 0 =
unlabelled); the split lists are imageLists/train.txt and test.txt. Reading
the .mat files needs scipy.
"""

from __future__ import annotations

import io

import numpy as np

from data import common
from data import coco_stuff

ARCHIVE = "cocostuff-10k-v1.1.zip"
SPLITS = {"train": "train", "test": "test"}

INSTRUCTIONS = f"""\
Download {ARCHIVE} (https://github.com/nightrome/cocostuff10k,
http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/{ARCHIVE})
and put it, or its extracted contents images/*.jpg, annotations/*.mat,
imageLists/{{train,test}}.txt, in the manual_dir. Then run
  python -m data.prepare coco_stuff10k --manual_dir=<manual_dir> [--data_dir=<data_dir>]
"""


def read_mat_labels(data: bytes) -> np.ndarray:
  """The 'S' array of a cocostuff-10k annotation .mat file as uint8 [H, W]."""
  try:
    from scipy import io as sio  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("coco_stuff10k needs scipy to read its .mat labels: pip install scipy") from e
  try:
    s = np.asarray(sio.loadmat(io.BytesIO(data))["S"])
  except Exception as e:  # scipy's MatReadError is no OSError/ValueError
    raise ValueError(f"not a readable .mat file with an 'S' array ({type(e).__name__}: {e})") from e
  if s.ndim != 2 or s.min() < 0 or s.max() > 255:
    raise ValueError(f"Unexpected 'S' array: shape {s.shape}, range {s.min()}..{s.max()}.")
  return s.astype(np.uint8)


class Builder(coco_stuff.Builder, skip_registration=True):
  """COCO-Stuff 10k, 171 classes: `data.get_builder('coco_stuff10k')`."""

  name = "coco_stuff10k"
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  SPLITS = SPLITS  # TFDS split -> its image list, imageLists/<name>.txt
  ARCHIVES = {ARCHIVE: ""}
  IMAGE_FORMAT = "jpeg"
  LUT = coco_stuff.LUT_10K
  RAW_IDS = coco_stuff.RAW_IDS_10K
  DESCRIPTION = __doc__ + "\n" + coco_stuff.__doc__
  HOMEPAGE = "https://github.com/nightrome/cocostuff10k"

  read_label = staticmethod(read_mat_labels)

  def example_files(self, files: common.ManualFiles, list_name: str):
    list_path = f"imageLists/{list_name}.txt"
    if not files.exists(list_path):
      files.require([], list_path, files.why_empty("imageLists", f"{list_name}.txt"))
    names = [n.strip() for n in files.read(list_path).decode().splitlines() if n.strip()]
    files.require(names, f"image names in {list_path}", f"{files.describe(list_path)} is empty")
    files.require_files("images", ".jpg", "images")
    files.require_files("annotations", ".mat", "label files")
    return [(stem, f"images/{stem}.jpg", f"annotations/{stem}.mat") for stem in names]
