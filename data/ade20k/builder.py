"""ADE20K (SceneParsing / ADEChallengeData2016, 150 classes) from the official zip.

Labels follow mmsegmentation's ADE20KDataset (reduce_zero_label=True): raw 0
('other objects', unlabelled) becomes 255, raw 1..150 become 0..149.
"""

from __future__ import annotations

import os

from data import common

ARCHIVE = "ADEChallengeData2016.zip"
ROOT = "ADEChallengeData2016"
SPLITS = {"train": "training", "validation": "validation"}

# objectInfo150 short names, in label order 1..150.
CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed",
    "windowpane", "grass", "cabinet", "sidewalk", "person", "earth", "door",
    "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill",
    "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food",
    "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag")
assert len(CLASS_NAMES) == 150, len(CLASS_NAMES)

# raw 0 -> ignore, k -> k - 1.
LUT = common.lookup_table({k: k - 1 for k in range(1, 151)})
# The ids of the released annotations; any other is a bad file.
RAW_IDS = range(0, 151)

INSTRUCTIONS = f"""\
Download {ARCHIVE} (the MIT Scene Parsing Benchmark / ADE20K challenge data,
http://data.csail.mit.edu/places/ADEchallenge/{ARCHIVE}) and put it, or its
extracted folder {ROOT}/ (images/{{training,validation}}/*.jpg,
annotations/{{training,validation}}/*.png), in the manual_dir. Then run
  python -m data.prepare ade20k --manual_dir=<manual_dir> [--data_dir=<data_dir>]
"""


class Builder(common.SegmentationBuilder, skip_registration=True):
  """ADE20K scene parsing, 150 classes: `data.get_builder('ade20k')`."""

  name = "ade20k"
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  SPLITS = SPLITS
  ARCHIVES = {ARCHIVE: ""}
  IMAGE_FORMAT = "jpeg"
  LUT = LUT
  RAW_IDS = RAW_IDS
  CLASS_NAMES = CLASS_NAMES
  PALETTE = common.generated_palette(150, seed=150)
  DESCRIPTION = __doc__
  HOMEPAGE = "http://sceneparsing.csail.mit.edu/"

  def example_files(self, files: common.ManualFiles, folder: str):
    images = files.require_files(f"{ROOT}/images/{folder}", ".jpg", "images")
    files.require_files(f"{ROOT}/annotations/{folder}", ".png", "label images")
    for path in images:
      stem = os.path.basename(path)[:-len(".jpg")]
      yield stem, path, f"{ROOT}/annotations/{folder}/{stem}.png"
