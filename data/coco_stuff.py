"""COCO-Stuff classes shared by the 164k and 10k builders (and their base, `Builder`).

The released label maps use 182 ids (0-based: 0..90 things, 91..181 stuff),
of which 11 thing ids are never used (COCO dropped those categories), leaving
171 classes. Train id = rank of the raw id among the 171 used ids, as in
mmsegmentation's coco_stuff converters.
"""

from __future__ import annotations

from data import common

# 0-based stuffthingmaps ids with no COCO category (1-based ids 12, 26, 29,
# 30, 45, 66, 68, 69, 71, 83, 91).
UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
USED_IDS = tuple(i for i in range(182) if i not in UNUSED_IDS)
# 0-based raw id -> train id 0..170.
RAW_TO_TRAIN = {raw: train for train, raw in enumerate(USED_IDS)}

CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "stop sign",
    "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
    # stuff (raw ids 91..181)
    "banner", "blanket", "branch", "bridge", "building-other", "bush",
    "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile",
    "cloth", "clothes", "clouds", "counter", "cupboard", "curtain",
    "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel",
    "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof",
    "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table",
    "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other",
    "wood")
assert len(USED_IDS) == 171 and len(CLASS_NAMES) == 171, (len(USED_IDS), len(CLASS_NAMES))
PALETTE = common.generated_palette(171, seed=171)

# stuffthingmaps PNGs: 0-based ids, 255 unlabelled.
LUT_164K = common.lookup_table(RAW_TO_TRAIN)
# cocostuff-10k .mat 'S': 1-based ids, 0 unlabelled.
LUT_10K = common.lookup_table({raw + 1: train for raw, train in RAW_TO_TRAIN.items()})
# The ids the releases use (the unused thing ids included); any other is a bad file.
RAW_IDS_164K = tuple(range(182)) + (255,)
RAW_IDS_10K = tuple(range(183))


class Builder(common.SegmentationBuilder, skip_registration=True):
  """Base of the COCO-Stuff builders (164k, 10k): their classes and palette."""

  CLASS_NAMES = CLASS_NAMES
  PALETTE = PALETTE
