"""COCO-Stuff 164k (COCO 2017 images, stuffthingmaps labels), 171 classes."""

from __future__ import annotations

import functools
import os

import tensorflow_datasets as tfds

from data import common
from data import coco_stuff

LABELS_ZIP = "stuffthingmaps_trainval2017.zip"
IMAGE_ZIPS = {"train": "train2017.zip", "validation": "val2017.zip"}
SPLITS = {"train": "train2017", "validation": "val2017"}
IMAGE_ZIPS_BY_FOLDER = {SPLITS[split]: name for split, name in IMAGE_ZIPS.items()}

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


class Builder(common.SegmentationBuilder, skip_registration=True):
  """COCO-Stuff 164k, 171 classes: `data.get_builder('coco_stuff164k')`."""

  name = "coco_stuff164k"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  CLASS_NAMES = coco_stuff.CLASS_NAMES
  PALETTE = coco_stuff.PALETTE
  IMAGE_FORMAT = "jpeg"
  DESCRIPTION = __doc__ + "\n" + coco_stuff.__doc__
  HOMEPAGE = "https://github.com/nightrome/cocostuff"

  def _split_generators(self, dl_manager):
    archives = {LABELS_ZIP: "annotations"}
    archives.update({name: "images" for name in IMAGE_ZIPS.values()})
    files = common.ManualFiles(dl_manager.manual_dir, archives)
    return {split: self._generate_examples(files, folder) for split, folder in SPLITS.items()}

  def _generate_examples(self, files: common.ManualFiles, folder: str):
    labels = files.require_files(f"annotations/{folder}", ".png",
                                 f"label images of {LABELS_ZIP}", INSTRUCTIONS)
    files.require_files(f"images/{folder}", ".jpg", f"images of {IMAGE_ZIPS_BY_FOLDER[folder]}",
                        INSTRUCTIONS)

    def load(path, stem):
      return common.load_example(
          files, stem, f"images/{folder}/{stem}.jpg", path, image_format="jpeg",
          lut=coco_stuff.LUT_164K, raw_ids=coco_stuff.RAW_IDS_164K,
          num_classes=len(coco_stuff.CLASS_NAMES))

    stems = [(os.path.basename(path)[:-len(".png")], path) for path in labels]
    yield from self.checked_examples(
        folder, ((stem, functools.partial(load, path, stem)) for stem, path in stems))
