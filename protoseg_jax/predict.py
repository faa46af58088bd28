"""Predict on your own images: label maps, colour maps and overlays.

  predictor = Predictor.from_workdir(config, workdir)            # orbax train state
  predictor = Predictor.from_variables(config, variables, C)     # e.g. converted weights
  labels = predictor.predict(image_uint8_hwc)                    # int32 [H, W] dataset ids
  predictor.predict_paths(["a.jpg", "dir/b.png"], "out/")        # files, see below

Images go through the eval pipeline's preprocessing (input_pipeline /
augment: config.dataset.eval_scale keep-ratio resize, mean/std, input_order)
and `inference.predict_scores` with config.eval (whole / slide, scales, flip,
resize, merge), so a prediction equals the evaluation's on the same image.

Any size and aspect ratio without a compile per image: the resized image is
zero-padded bottom/right to a static canvas, `config.dataset.eval_canvas`
when it fits (then exactly the eval canvas) and otherwise the resized size
rounded up to a multiple of `BUCKET`; the output (original-size) canvas
likewise with `eval_label_canvas`. Each image carries its valid sizes, which
inference.py's masked resizes honour; one compile per canvas pair.

Reading (`read_image`, PIL): EXIF orientation applied; grayscale, palette,
RGBA (alpha dropped), CMYK, ... -> RGB; 16-bit grayscale -> 8-bit (x * 255 /
65535); the same rule as the dataset builders (`data.common.to_rgb_uint8`).

Untrusted inputs (`predict_paths`): a file that cannot be read (truncated,
corrupt, not an image), an image of more than config.predict.max_pixels
pixels (checked from the header, before decoding), or an output path that
would leave the output folder (`..` in a relative path, a symlink in the
output folder pointing outside it, an output file that is a symlink) is
reported by name and skipped; the others are written, and the summary counts
and lists what was skipped. `list_images` leaves out (and reports) files of
an input folder or glob whose real path, symlinks resolved, is outside it.

Files written by `predict_paths` under the output dir, at each input's path
relative to its input root (subfolders kept), `<name>` without extension:
  default:     <name>.png label map (dataset ids, input H x W; uint8, uint16
               above 256 classes), <name>_color.png (the dataset palette),
               <name>_overlay.png (image and colour map blended)
  cityscapes:  <name>_labelIds.png, the 19 train ids mapped back to the
               official Cityscapes labelIds (cityscapesScripts' evaluator
               input); nothing else, so that the evaluator finds one file
               per image.

A trainer edge: imports TensorFlow (the eval preprocessing) and orbax (only
in `from_workdir`). One process; the batch is split over its local devices.
"""

from __future__ import annotations

import glob as globlib
import os
import time
from typing import Iterable, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps
import tensorflow as tf

import data
from data.common import READ_ERRORS, error_reason, to_rgb_uint8  # noqa: F401 (to_rgb_uint8: API)
from protoseg_jax import augment, inference, input_pipeline, sharding
from protoseg_jax.datasets import config_value
from protoseg_jax.models.segmentor import build_model

BUCKET = 32
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                    ".gif")
OUTPUT_FORMATS = ("default", "cityscapes")
OVERLAY_ALPHA = 0.5   # weight of the colour map in <name>_overlay.png


# --------------------------------------------------------------------------
# Reading images.


class ImageTooLarge(ValueError):
  """An input image has more pixels than config.predict.max_pixels."""


class UnsafeOutputPath(ValueError):
  """An output path would be written outside the output folder."""


def read_image(path: str, max_pixels: int = 0) -> np.ndarray:
  """uint8 [H, W, 3] RGB of an image file, EXIF orientation applied.

  Args:
    path: the file.
    max_pixels: > 0: refuse (ImageTooLarge) an image of more pixels, from
      its header, before decoding it.
  Raises:
    ImageTooLarge: over `max_pixels` (or PIL's decompression-bomb limit).
    OSError, SyntaxError, ... (`data.common.READ_ERRORS`): not a readable
      image (truncated, corrupt, unknown format).
  """
  try:
    img = Image.open(path)
  except Image.DecompressionBombError as e:  # PIL's own limit (2 * Image.MAX_IMAGE_PIXELS)
    raise ImageTooLarge(str(e)) from e
  with img:
    if max_pixels > 0 and img.width * img.height > max_pixels:
      raise ImageTooLarge(f"{img.width}x{img.height} = {img.width * img.height} pixels, more than "
                          f"config.predict.max_pixels={max_pixels}")
    img = ImageOps.exif_transpose(img)
    return to_rgb_uint8(img)


def _inside(path: str, root: str) -> bool:
  """Whether real path `path` is `root` (a real path) or below it."""
  return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def list_images(spec: str, exclude: Optional[str] = None,
                refused: Optional[list] = None) -> list[tuple[str, str]]:
  """(path, path relative to its root) of the images a spec names, sorted.

  `spec`: a file, a directory (searched recursively for IMAGE_EXTENSIONS) or
  a glob (`**` recursive; the root is the glob's directory part before its
  first wildcard). Files under `exclude` (the output dir) are skipped. Files
  of a directory or glob whose real path (symlinks resolved) is outside its
  root are left out with a warning, and appended as (path, reason) to
  `refused` when given (pass it on to `Predictor.predict_paths`, which
  counts them); a file named explicitly is read wherever it points.
  """
  spec = os.path.expanduser(spec)
  explicit = os.path.isfile(spec)
  if explicit:
    found, root = [spec], os.path.dirname(spec)
  elif os.path.isdir(spec):
    root, found = spec, []
    for d, _, files in os.walk(spec):
      found += [os.path.join(d, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
  elif globlib.has_magic(spec):
    parts = spec.split(os.sep)
    fixed = []
    for p in parts[:-1]:
      if globlib.has_magic(p):
        break
      fixed.append(p)
    root = os.sep.join(fixed) if fixed else ""
    if spec.startswith(os.sep) and not root:
      root = os.sep
    found = [p for p in globlib.glob(spec, recursive=True) if os.path.isfile(p)]
  else:
    raise FileNotFoundError(f"--input {spec!r}: no such file, directory or glob")
  root = root or "."
  if exclude is not None:
    ex = os.path.abspath(exclude) + os.sep
    found = [p for p in found if not os.path.abspath(p).startswith(ex)]
  if not found:
    raise FileNotFoundError(f"--input {spec!r} names no image files ({', '.join(IMAGE_EXTENSIONS)})")
  if not explicit:
    real_root, kept = os.path.realpath(root), []
    for p in found:
      if _inside(os.path.realpath(p), real_root):
        kept.append(p)
        continue
      reason = (f"refused: a symlink to {os.path.realpath(p)}, outside the input folder "
                f"{real_root}")
      logging.warning("predict: %s %s", p, reason)
      if refused is not None:
        refused.append((p, reason))
    found = kept
  return sorted((p, os.path.relpath(p, root)) for p in found)


# --------------------------------------------------------------------------
# Label maps -> files.


def cityscapes_label_ids(train_ids: np.ndarray) -> np.ndarray:
  """Cityscapes train ids (0..18) -> official labelIds (uint8); others -> 0 (unlabeled).

  The inverse of data/cityscapes/builder.py's LABEL_ID_TO_TRAIN_ID table.
  """
  from data.cityscapes import builder as cityscapes
  lut = np.zeros(256, np.uint8)
  for label_id, train_id in cityscapes.LABEL_ID_TO_TRAIN_ID.items():
    lut[train_id] = label_id
  train_ids = np.asarray(train_ids)
  if train_ids.size and (train_ids.min() < 0 or train_ids.max() > 255):
    raise ValueError("train ids must lie in [0, 255]")
  return lut[train_ids.astype(np.int64)]


def colorize(labels: np.ndarray, palette) -> np.ndarray:
  """uint8 [H, W, 3] colour map of ids `labels` (ids past the palette are black)."""
  table = np.zeros((max(len(palette), 256), 3), np.uint8)
  table[:len(palette)] = np.asarray(palette, np.uint8).reshape(-1, 3)
  return table[np.clip(labels, 0, len(table) - 1)]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
  mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
  return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def output_stem(output_dir: str, rel: str) -> str:
  """OUT/<rel without extension>."""
  return os.path.join(output_dir, os.path.splitext(rel)[0])


def output_paths(stem: str, output_format: str = "default") -> list[str]:
  """The files `write_outputs` writes for `stem`."""
  if output_format == "cityscapes":
    return [stem + "_labelIds.png"]
  return [stem + ".png", stem + "_color.png", stem + "_overlay.png"]


def check_output_paths(output_dir: str, rel: str, output_format: str = "default") -> str:
  """The output stem of input `rel` under `output_dir`, checked to stay inside it.

  Raises:
    UnsafeOutputPath: `rel` is absolute or has a `..`, a folder on the way
      is a symlink (or is reached through one) that leads outside
      `output_dir`, or an output file is a symlink.
  """
  parts = rel.replace("\\", "/").split("/")
  if os.path.isabs(rel) or os.pardir in parts:
    raise UnsafeOutputPath(f"refused: its relative path {rel!r} leaves the output folder")
  stem = output_stem(output_dir, rel)
  root = os.path.realpath(output_dir)
  folder = os.path.realpath(os.path.dirname(stem))  # symlinks of the existing part resolved
  if not _inside(folder, root):
    raise UnsafeOutputPath(f"refused: its output folder {os.path.dirname(stem)} leads to "
                           f"{folder}, outside the output folder {root} (a symlink)")
  for path in output_paths(stem, output_format):
    if os.path.islink(path):
      raise UnsafeOutputPath(f"refused: the output file {path} is a symlink (to "
                             f"{os.path.realpath(path)}); it is not written through")
  return stem


def _save_png(array: np.ndarray, path: str):
  """Image.save(path) that never follows a symlink at `path` (O_NOFOLLOW)."""
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o666)
  with os.fdopen(fd, "wb") as f:
    Image.fromarray(array).save(f, format="PNG")


def write_outputs(stem: str, image: np.ndarray, labels: np.ndarray, palette,
                  output_format: str = "default"):
  """The files of one image (see the module docstring); returns their paths.

  An existing symlink at an output file is not followed (OSError).
  """
  os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
  paths = output_paths(stem, output_format)
  if output_format == "cityscapes":
    _save_png(cityscapes_label_ids(labels), paths[0])
    return paths
  if output_format != "default":
    raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
  ids = labels.astype(np.uint8 if labels.max(initial=0) < 256 and len(palette) <= 256
                      else np.uint16)
  color = colorize(labels, palette)
  _save_png(ids, paths[0])
  _save_png(color, paths[1])
  _save_png(overlay(image, color), paths[2])
  return paths


# --------------------------------------------------------------------------
# The predictor.


def _round_up(n: int, m: int) -> int:
  return -(-int(n) // m) * m


def _bucket(hw: tuple[int, int], fixed: tuple[int, int]) -> tuple[int, int]:
  """`fixed` (a config canvas) when `hw` fits in it, else hw rounded up to BUCKET."""
  if hw[0] <= fixed[0] and hw[1] <= fixed[1]:
    return tuple(fixed)
  return _round_up(hw[0], BUCKET), _round_up(hw[1], BUCKET)


class Predictor:
  """A model, its variables and the run config's eval settings, for images of any size."""

  def __init__(self, config, model, variables, *, class_names=None, palette=None,
               ignore_index: int = 255, devices: Optional[Sequence[jax.Device]] = None):
    self.config, self.model = config, model
    self.mesh = sharding.create_mesh(devices if devices is not None else jax.local_devices())
    self._rep = sharding.replicated(self.mesh)
    self._data = sharding.batch_sharding(self.mesh)
    self.variables = jax.device_put(variables, self._rep)
    meta = data.dataset_meta(config.dataset.name)
    self.class_names = tuple(class_names if class_names is not None else meta.class_names)
    self.palette = tuple(palette if palette is not None else meta.palette)
    self.ignore_index = int(ignore_index)
    self.num_classes = len(self.class_names)
    # The eval pipeline's settings, read by its own helpers.
    self.eval_scale = input_pipeline._eval_scale(config)
    self.mean, self.std = input_pipeline._mean_std(config)
    self.input_order = input_pipeline._input_order(config)
    self.canvas = input_pipeline._pair(config.dataset.eval_canvas, "eval_canvas")
    self.label_canvas = input_pipeline._pair(config.dataset.eval_label_canvas, "eval_label_canvas")
    self.max_pixels = int(config_value(config, "predict.max_pixels"))
    e = config.eval
    self._infer_kwargs = dict(
        mode=e.mode, slide_crop=e.slide_crop, stride=e.stride, scales=tuple(e.scales),
        flip=bool(e.flip), num_classes=self.num_classes,
        align_corners=bool(config.model.align_corners), resize=e.resize, merge=e.merge)
    inference._check_mode(e.mode, e.slide_crop, e.stride, tuple(e.scales), e.resize, e.merge)
    self._steps = {}

  # -- construction ---------------------------------------------------------

  @classmethod
  def from_variables(cls, config, variables, num_classes: int, **kw) -> "Predictor":
    """From model variables ({'params', 'batch_stats', 'prototypes'}), e.g.
    `checkpoints.load_variables(DIR)` of converted weights."""
    meta = data.dataset_meta(config.dataset.name)
    if num_classes != meta.num_classes:
      logging.warning("num_classes=%d but dataset %r has %d classes: class names and palette "
                      "are numbered generically", num_classes, config.dataset.name,
                      meta.num_classes)
      kw.setdefault("class_names", tuple(f"class_{i}" for i in range(num_classes)))
      palette = list(meta.palette) + [((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)
                                      for i in range(len(meta.palette), num_classes)]
      kw.setdefault("palette", tuple(palette[:num_classes]))
    model = build_model(config, num_classes, meta.ignore_index)
    return cls(config, model, variables, ignore_index=meta.ignore_index, **kw)

  @classmethod
  def from_workdir(cls, config, workdir: str, step: Optional[int] = None, **kw) -> "Predictor":
    """From the train-state checkpoint of `workdir` (latest or `step`).

    Like `train.evaluate_checkpoint`: without any checkpoint and with
    config.init_from set, the weights init_from gives the model.
    """
    from protoseg_jax import train
    meta = data.dataset_meta(config.dataset.name)
    model = build_model(config, meta.num_classes, meta.ignore_index)
    mesh = sharding.create_mesh(jax.local_devices())
    crop = tuple(config.dataset.crop_size)
    state, _, _ = train.create_train_state(config, model, mesh, (1, crop[0], crop[1], 3))
    state = train.restore_checkpoint(config, os.path.expanduser(workdir), state, step)
    return cls(config, model, state.variables(), ignore_index=meta.ignore_index, **kw)

  # -- preprocessing --------------------------------------------------------

  def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 [H, W, 3] -> (normalised float32 [h, w, 3] at the test scale, (h, w)).

    The eval pipeline's steps (input_pipeline.make_eval_dataset): keep-ratio
    `augment.rescale_size` to eval_scale, bilinear resize, `normalize_input`.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    x = tf.convert_to_tensor(image)
    if self.eval_scale is None:
      x = tf.cast(x, tf.float32)
    else:
      new_hw = augment.rescale_size(tf.shape(x)[:2], self.eval_scale)
      x = tf.image.resize(x, new_hw, method="bilinear", antialias=False)
    x = augment.normalize_input(x, self.mean, self.std, self.input_order)
    x = x.numpy().astype(np.float32)
    return x, (int(x.shape[0]), int(x.shape[1]))

  def bucket_of(self, image_hw: tuple[int, int], resized_hw: tuple[int, int]):
    """(canvas, label canvas) static shapes of an image."""
    return _bucket(resized_hw, self.canvas), _bucket(image_hw, self.label_canvas)

  # -- the jitted step ------------------------------------------------------

  def _step(self, label_size: tuple[int, int], with_scores: bool):
    key = (label_size, with_scores)
    if key not in self._steps:
      model, kwargs = self.model, self._infer_kwargs

      def step(variables, image, image_hw, label_hw):
        batch = {"image": image, "image_hw": image_hw, "label_hw": label_hw,
                 "label": jnp.zeros((image.shape[0],) + label_size, jnp.int32)}
        scores = inference.predict_scores(
            lambda x: model.apply(variables, x, train=False).logits, batch, **kwargs)
        pred = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        return (pred, scores) if with_scores else pred

      d = self._data
      self._steps[key] = jax.jit(step, in_shardings=(self._rep, d, d, d),
                                 out_shardings=(d, d) if with_scores else d)
    return self._steps[key]

  def _batch_size(self, batch_size: Optional[int]) -> int:
    n = self.mesh.devices.size
    b = int(batch_size if batch_size else self.config.eval_batch_size)
    return max(n, _round_up(max(b, 1), n))

  def _run(self, items, canvas, label_canvas, batch_size, with_scores):
    """items: [(image uint8, preprocessed, resized hw)] of one bucket, len <= batch_size."""
    b = batch_size
    image = np.zeros((b,) + tuple(canvas) + (3,), np.float32)
    image_hw = np.ones((b, 2), np.int32)     # padding rows: a 1x1 image, thrown away
    label_hw = np.ones((b, 2), np.int32)
    for i, (img, x, hw) in enumerate(items):
      image[i, :hw[0], :hw[1]] = x
      image_hw[i] = hw
      label_hw[i] = img.shape[:2]
    out = self._step(tuple(label_canvas), with_scores)(self.variables, image, image_hw, label_hw)
    out = jax.device_get(out)
    preds, scores = out if with_scores else (out, None)
    results = []
    for i, (img, _, _) in enumerate(items):
      h, w = img.shape[:2]
      results.append((preds[i, :h, :w], None if scores is None else scores[i, :h, :w]))
    return results

  # -- public ---------------------------------------------------------------

  def predict_batch(self, images: Sequence[np.ndarray], *, return_scores: bool = False,
                    batch_size: Optional[int] = None):
    """Label maps (and scores) of uint8 [H, W, 3] images of any sizes, in order.

    Returns a list of int32 [H, W] (dataset ids), or of (labels, float32
    [H, W, C] scores: the logits for one pass, else the merged passes as
    inference.predict_scores gives them) with return_scores.
    """
    b = self._batch_size(batch_size)
    groups: dict = {}
    for idx, img in enumerate(images):
      x, hw = self.preprocess(img)
      groups.setdefault(self.bucket_of(img.shape[:2], hw), []).append((idx, (img, x, hw)))
    out = [None] * len(images)
    for (canvas, label_canvas), members in groups.items():
      for s in range(0, len(members), b):
        chunk = members[s:s + b]
        res = self._run([m[1] for m in chunk], canvas, label_canvas, b, return_scores)
        for (idx, _), (pred, scores) in zip(chunk, res):
          out[idx] = (pred, scores) if return_scores else pred
    return out

  def predict(self, image: np.ndarray, *, return_scores: bool = False):
    """Label map int32 [H, W] of one uint8 [H, W, 3] image (with scores: (labels, scores))."""
    return self.predict_batch([image], return_scores=return_scores, batch_size=1)[0]

  def predict_paths(self, paths: Iterable, output_dir: str, *, output_format: str = "default",
                    batch_size: Optional[int] = None, log_every: int = 10,
                    refused: Iterable[tuple[str, str]] = ()) -> dict:
    """Predict image files and write their outputs under `output_dir`.

    `paths`: file paths (written at their base names) or (path, relative
    path) pairs as `list_images` gives them (written at the relative path).
    Images are grouped by canvas and run in batches; a progress line every
    `log_every` batches and a summary at the end.

    An input that cannot be read, has more than config.predict.max_pixels
    pixels, or whose outputs would land outside `output_dir`
    (`check_output_paths`), or whose outputs cannot be written, is logged
    by name and skipped; the others are written. `refused`: (path, reason)
    of inputs refused before this call (`list_images(refused=...)`), added
    to the summary.

    Returns {'images': number written, 'failed': [(path, reason)] of the
    inputs not written, 'seconds', 'images_per_sec', 'outputs': [paths]}.
    """
    if output_format not in OUTPUT_FORMATS:
      raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    if output_format == "cityscapes" and self.config.dataset.name != "cityscapes":
      raise ValueError("output_format='cityscapes' needs config.dataset.name='cityscapes', got "
                       f"{self.config.dataset.name!r}")
    items = [(p, os.path.basename(p)) if isinstance(p, (str, os.PathLike)) else tuple(p)
             for p in paths]
    stems = {}
    for p, rel in items:
      stem = output_stem(output_dir, rel)
      if stem in stems:
        raise ValueError(f"{stems[stem]!r} and {p!r} would write the same outputs {stem}.*")
      stems[stem] = p
    b = self._batch_size(batch_size)
    total, done, batches, written = len(items), 0, 0, []
    failed = list(refused)
    pending: dict = {}
    t0 = time.time()

    def skip(path, reason):
      failed.append((path, reason))
      logging.warning("predict: skipping %s: %s", path, reason)

    def flush(key):
      nonlocal done, batches
      members = pending.pop(key)
      res = self._run([m[3] for m in members], key[0], key[1], b, False)
      for (path, rel, stem, (img, _, _)), (pred, _) in zip(members, res):
        try:
          check_output_paths(output_dir, rel, output_format)  # again: the folder may have changed
          written.extend(write_outputs(stem, img, pred, self.palette, output_format))
          done += 1
        except (UnsafeOutputPath, OSError) as e:
          skip(path, str(e) if isinstance(e, UnsafeOutputPath) else f"not written ({e})")
      batches += 1
      if batches % max(int(log_every), 1) == 0:
        dt = time.time() - t0
        logging.info("predict: %d/%d images, %.1fs, %.2f images/s", done, total, dt,
                     done / max(dt, 1e-9))

    for p, rel in items:
      try:
        stem = check_output_paths(output_dir, rel, output_format)
        img = read_image(p, self.max_pixels)
      except (UnsafeOutputPath, ImageTooLarge) as e:
        skip(p, str(e) if isinstance(e, UnsafeOutputPath) else f"refused: {e}")
        continue
      except READ_ERRORS as e:
        skip(p, f"unreadable, truncated or not an image ({error_reason(e)})")
        continue
      x, hw = self.preprocess(img)
      key = self.bucket_of(img.shape[:2], hw)
      pending.setdefault(key, []).append((p, rel, stem, (img, x, hw)))
      if len(pending[key]) == b:
        flush(key)
    for key in list(pending):
      flush(key)
    dt = time.time() - t0
    summary = {"images": done, "failed": failed, "seconds": dt,
               "images_per_sec": done / max(dt, 1e-9), "outputs": written}
    logging.info("predict: wrote %d images to %s in %.1fs (%.2f images/s, %d canvases compiled)",
                 done, output_dir, dt, summary["images_per_sec"], len(self._steps))
    if failed:
      logging.warning("predict: %d of %d input(s) not written:\n%s", len(failed),
                      len(failed) + done, "\n".join(f"  {p}: {r}" for p, r in failed))
    return summary
