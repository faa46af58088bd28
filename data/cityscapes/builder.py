"""Cityscapes (fine annotations, 19 evaluation classes) from the official zips.

labelIds are mapped to the 19 trainIds of cityscapesScripts' label table;
every other id (unlabeled, ego vehicle, ..., license plate) becomes 255. The
'test' split keeps the released placeholder labels, which map to all 255.
"""

from __future__ import annotations

from data import common

IMAGES_ZIP = "leftImg8bit_trainvaltest.zip"
LABELS_ZIP = "gtFine_trainvaltest.zip"
SPLITS = {"train": "train", "validation": "val", "test": "test"}

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle")
PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
    (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
    (0, 0, 230), (119, 11, 32))
# labelId -> trainId (cityscapesScripts labels.py); everything else -> 255.
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LUT = common.lookup_table(LABEL_ID_TO_TRAIN_ID)
# The labelId of each trainId 0..18 (the inverse table): what official
# predictions (<name>_labelIds.png) and the evaluation scripts use.
RELEASE_IDS = tuple(sorted(LABEL_ID_TO_TRAIN_ID, key=LABEL_ID_TO_TRAIN_ID.__getitem__))
# The labelIds of cityscapesScripts (0 unlabeled .. 33 bicycle); any other is a bad file.
RAW_IDS = range(0, 34)

INSTRUCTIONS = f"""\
Log in at https://www.cityscapes-dataset.com/downloads/ and download
{IMAGES_ZIP} (package 3) and {LABELS_ZIP} (package 1). Put both zips, or
their extracted folders leftImg8bit/{{train,val,test}}/<city>/*_leftImg8bit.png
and gtFine/{{train,val,test}}/<city>/*_gtFine_labelIds.png, in the
manual_dir. Then run
  python -m data.prepare cityscapes --manual_dir=<manual_dir> [--data_dir=<data_dir>]
"""


class Builder(common.SegmentationBuilder, skip_registration=True):
  """Cityscapes fine, 19 classes: `data.get_builder('cityscapes')`."""

  name = "cityscapes"
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  SPLITS = SPLITS
  ARCHIVES = {IMAGES_ZIP: "", LABELS_ZIP: ""}
  IMAGE_FORMAT = "png"
  LUT = LUT
  RAW_IDS = RAW_IDS
  CLASS_NAMES = CLASS_NAMES
  PALETTE = PALETTE
  RELEASE_IDS = RELEASE_IDS
  DESCRIPTION = __doc__
  HOMEPAGE = "https://www.cityscapes-dataset.com/"

  def example_files(self, files: common.ManualFiles, folder: str):
    cities = self._cities(files, f"leftImg8bit/{folder}")
    self._cities(files, f"gtFine/{folder}")  # the labels' city folders must be there too
    for city in cities:
      for path in files.list(f"leftImg8bit/{folder}/{city}", "_leftImg8bit.png"):
        stem = path.rsplit("/", 1)[1][:-len("_leftImg8bit.png")]
        yield stem, path, f"gtFine/{folder}/{city}/{stem}_gtFine_labelIds.png"

  @staticmethod
  def _cities(files: common.ManualFiles, folder: str) -> list[str]:
    """The city folders in `folder`, or FileNotFoundError naming it."""
    return files.require(files.list_subfolders(folder), f"{folder}/<city>/",
                         files.why_empty(folder, "city folders"))
