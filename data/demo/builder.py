"""protoseg_demo: procedurally drawn scenes, no download, fixed seed.

96x96 RGB scenes of shapes on a textured background. Six classes; 'disc',
'box' and 'bar' come in two or three visually distinct appearances (colour
or texture), so one softmax weight per class has to cover several modes
while several prototypes per class can each take one. Labels carry 255 on a
one-pixel band along every boundary (the top/left side of each change).
Everything is decided by the class, appearance and placement drawn from a
NumPy generator seeded with (seed, split, index), so every build is
identical.

Besides the label, each example stores its appearance map ('appearance',
uint8 [H, W, 1] PNG): the index of each pixel's look within its class's
APPEARANCES (0 for background and the one-look classes), 255 where the
label is 255. `val/proto_appearance_nmi` measures how well the prototypes
take a class's looks apart (protoseg_jax.prototype_stats). Version 1.1.0
added it; images, labels and splits are those of 1.0.0.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from data import common

SIZE = 96
CLASS_NAMES = ("background", "disc", "box", "triangle", "bar", "ring")
PALETTE = (
    (120, 120, 120), (245, 140, 20), (40, 160, 50),
    (210, 30, 40), (0, 150, 140), (240, 220, 30))
# Appearances per class: (name, colour a, colour b, pattern). Patterns:
# 'solid' (a), 'checker' / 'hstripes' / 'diag' / 'dots' / 'zebra' (a and b).
APPEARANCES = {
    1: (("orange", (245, 140, 20), None, "solid"),
        ("purple-checker", (130, 40, 170), (235, 235, 235), "checker")),
    2: (("green", (40, 160, 50), None, "solid"),
        ("blue-stripes", (30, 60, 200), (150, 220, 255), "hstripes"),
        ("pink-dots", (240, 120, 180), (90, 20, 60), "dots")),
    3: (("red", (210, 30, 40), None, "solid"),),
    4: (("teal", (0, 150, 140), None, "solid"),
        ("zebra", (235, 235, 235), (35, 35, 35), "zebra")),
    5: (("yellow", (240, 220, 30), None, "solid"),),
}
# TFDS split -> its id in each scene's seed (seed, split id, index); the
# builder config's num_<split> says how many scenes it has.
SPLITS = {"train": 0, "validation": 1}


@dataclasses.dataclass
class DemoConfig(tfds.core.BuilderConfig):
  num_train: int = 800
  num_validation: int = 100
  seed: int = 0


def _lowfreq(rng: np.random.Generator, cells: int) -> np.ndarray:
  """Smooth noise in about [-1, 1], float32 [SIZE, SIZE]."""
  grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
  return np.asarray(Image.fromarray(grid, mode="F").resize((SIZE, SIZE), Image.BICUBIC),
                    dtype=np.float32)


def _pattern(kind: str, yy, xx, rng) -> np.ndarray:
  """bool [SIZE, SIZE]: where colour b is used."""
  phase = rng.integers(0, 8)
  if kind == "checker":
    p = int(rng.integers(5, 8))
    return (((yy + phase) // p + (xx + phase) // p) % 2).astype(bool)
  if kind == "hstripes":
    p = int(rng.integers(4, 6))
    return ((yy + phase) % p) < p // 2
  if kind == "dots":
    p = int(rng.integers(5, 7))
    return (((yy + phase) % p - p // 2) ** 2 + ((xx + phase) % p - p // 2) ** 2) <= 2
  raise ValueError(f"Unknown pattern {kind!r}.")


def _shape_mask(cls: int, yy, xx, rng) -> tuple[np.ndarray, np.ndarray | None]:
  """bool [SIZE, SIZE] mask of one object; for bars also the along-axis coordinate."""
  cy, cx = rng.uniform(8, SIZE - 8, 2)
  if cls == 1:  # disc
    r = rng.uniform(8, 19)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r, None
  if cls == 2:  # axis-aligned box
    h, w = rng.uniform(14, 40, 2)
    return (np.abs(yy - cy) <= h / 2) & (np.abs(xx - cx) <= w / 2), None
  if cls == 3:  # triangle: three vertices around the centre
    r = rng.uniform(12, 24)
    a0 = rng.uniform(0, 2 * np.pi)
    angles = a0 + np.array([0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
    vy, vx = cy + r * np.sin(angles), cx + r * np.cos(angles)
    inside = np.ones_like(yy, dtype=bool)
    sign = np.sign((vx[1] - vx[0]) * (vy[2] - vy[0]) - (vy[1] - vy[0]) * (vx[2] - vx[0]))
    for i in range(3):
      j = (i + 1) % 3
      cross = (vx[j] - vx[i]) * (yy - vy[i]) - (vy[j] - vy[i]) * (xx - vx[i])
      inside &= sign * cross >= 0
    return inside, None
  if cls == 4:  # bar across the image
    theta = rng.uniform(0, np.pi)
    half = rng.uniform(4, 7)
    ny, nx = np.cos(theta), -np.sin(theta)
    dist = (yy - cy) * ny + (xx - cx) * nx
    along = (yy - cy) * nx - (xx - cx) * ny
    return np.abs(dist) <= half, along
  if cls == 5:  # ring
    r = rng.uniform(11, 21)
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2), None
  raise ValueError(f"Unknown class {cls}.")


_GRID = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
_IGRID = _GRID.astype(np.int32)


def render(seed: int, split_id: int, index: int) -> tuple[np.ndarray, np.ndarray]:
  """One scene: (uint8 [96, 96, 3] image, uint8 [96, 96] label with 255 band)."""
  return render_with_appearance(seed, split_id, index)[:2]


def render_with_appearance(seed: int, split_id: int, index: int
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One scene: (image, label, uint8 [96, 96] appearance map: each pixel's
  look within its class, 255 where the label is 255)."""
  rng = np.random.default_rng([seed, split_id, index])
  yy, xx = _GRID
  # Background: greyish, low-frequency blotches plus fine grain.
  base = np.array([125, 118, 108], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
  image = base + 28 * _lowfreq(rng, 6)[..., None] * np.array([1.0, 0.95, 0.9], np.float32)
  image += 10 * _lowfreq(rng, 24)[..., None]
  label = np.zeros((SIZE, SIZE), np.uint8)
  look = np.zeros((SIZE, SIZE), np.uint8)

  n = int(rng.integers(2, 6))
  classes = sorted(rng.integers(1, 6, n), key=lambda c: c != 4)  # bars underneath
  for cls in classes:
    mask, along = _shape_mask(int(cls), yy, xx, rng)
    if mask.sum() < 12:
      continue
    app = APPEARANCES[int(cls)]
    which_look = int(rng.integers(0, len(app)))
    _, col_a, col_b, kind = app[which_look]
    jitter = (rng.uniform(-18, 18, 3) + rng.uniform(-12, 12)).astype(np.float32)
    col_a = np.clip(np.array(col_a, np.float32) + jitter, 0, 255)
    if kind == "solid":
      fill = np.broadcast_to(col_a, (SIZE, SIZE, 3))
    else:
      col_b = np.clip(np.array(col_b, np.float32) + jitter, 0, 255)
      if kind == "zebra":
        which = (np.floor((along + 100) / 3.0) % 2).astype(bool)
      else:
        which = _pattern(kind, _IGRID[0], _IGRID[1], rng)
      fill = np.where(which[..., None], col_b, col_a)
    gy, gx = rng.uniform(-0.1, 0.1, 2).astype(np.float32)
    shade = (1.0 + gy * (yy - SIZE / 2) / SIZE + gx * (xx - SIZE / 2) / SIZE)[..., None]
    image = np.where(mask[..., None], fill * shade, image)
    label[mask] = cls
    look[mask] = which_look

  image = image + 5 * rng.standard_normal(image.shape, dtype=np.float32)
  image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  # Ignore band: pixels whose right or lower neighbour has another class.
  edge = np.zeros((SIZE, SIZE), bool)
  edge[:, :-1] |= label[:, :-1] != label[:, 1:]
  edge[:-1, :] |= label[:-1, :] != label[1:, :]
  label = np.where(edge, np.uint8(common.IGNORE_INDEX), label)
  look = np.where(label == common.IGNORE_INDEX, np.uint8(common.IGNORE_INDEX), look)
  return image, label, look


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


class Builder(common.SegmentationBuilder, skip_registration=True):
  """The demo dataset: `data.get_builder('demo', data_dir=...)`."""

  name = "protoseg_demo"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "The appearance map (images, labels and splits unchanged)."}
  BUILDER_CONFIGS = [
      DemoConfig(name="default", description="800 train / 100 validation scenes."),
      DemoConfig(name="tiny", description="24 train / 10 validation scenes (tests).",
                 num_train=24, num_validation=10),
  ]
  SPLITS = SPLITS
  IMAGE_FORMAT = "png"
  CLASS_NAMES = CLASS_NAMES
  PALETTE = PALETTE
  DESCRIPTION = __doc__

  def _split_generators(self, dl_manager):
    del dl_manager  # procedural: no files
    cfg = self.builder_config
    return {split: self._generate_examples(split, split_id, getattr(cfg, f"num_{split}"))
            for split, split_id in self.SPLITS.items()}

  def _features(self, meta):
    return {**super()._features(meta),
            "appearance": tfds.features.Image(shape=(None, None, 1), encoding_format="png")}

  def _generate_examples(self, split: str, split_id: int, count: int):
    seed = self.builder_config.seed
    for i in range(count):
      image, label, look = render_with_appearance(seed, split_id, i)
      name = f"{split}_{i:05d}"
      example = common.make_example(name, (_png(image), label.shape), label, len(CLASS_NAMES))
      yield name, {**example, "appearance": common.encode_label_png(look)}
