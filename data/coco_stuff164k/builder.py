"""COCO-Stuff 164k (COCO 2017 images, stuffthingmaps labels), 171 classes."""

from __future__ import annotations

import os

from data import common
from data import coco_stuff

LABELS_ZIP = "stuffthingmaps_trainval2017.zip"
SPLITS = {"train": "train2017", "validation": "val2017"}
# The COCO 2017 image zip of each split folder.
IMAGE_ZIPS = {folder: f"{folder}.zip" for folder in SPLITS.values()}

INSTRUCTIONS = f"""\
Download {LABELS_ZIP} (https://github.com/nightrome/cocostuff, 'Downloads':
http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/{LABELS_ZIP})
and the COCO 2017 images train2017.zip and val2017.zip
(http://images.cocodataset.org/zips/train2017.zip, .../val2017.zip). Put the
three zips in the manual_dir, or their extracted contents as
images/{{train2017,val2017}}/*.jpg and annotations/{{train2017,val2017}}/*.png.
Then run
  python -m data.prepare coco_stuff164k --manual_dir=<manual_dir> [--data_dir=<data_dir>]
"""


class Builder(coco_stuff.Builder, skip_registration=True):
  """COCO-Stuff 164k, 171 classes: `data.get_builder('coco_stuff164k')`."""

  name = "coco_stuff164k"
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  SPLITS = SPLITS
  ARCHIVES = {LABELS_ZIP: "annotations", **{name: "images" for name in IMAGE_ZIPS.values()}}
  IMAGE_FORMAT = "jpeg"
  LUT = coco_stuff.LUT_164K
  RAW_IDS = coco_stuff.RAW_IDS_164K
  DESCRIPTION = __doc__ + "\n" + coco_stuff.__doc__
  HOMEPAGE = "https://github.com/nightrome/cocostuff"

  def example_files(self, files: common.ManualFiles, folder: str):
    labels = files.require_files(f"annotations/{folder}", ".png", f"label images of {LABELS_ZIP}")
    files.require_files(f"images/{folder}", ".jpg", f"images of {IMAGE_ZIPS[folder]}")
    for path in labels:
      stem = os.path.basename(path)[:-len(".png")]
      yield stem, f"images/{folder}/{stem}.jpg", path
