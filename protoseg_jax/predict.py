"""Predict on your own images: label maps, colour maps and overlays.

  predictor = Predictor.from_workdir(workdir=DIR)                # a run (trainer.run.load_run)
  predictor = Predictor.from_workdir(config, DIR)                # ... with other eval settings
  predictor = Predictor.from_variables(config, variables, C)     # e.g. converted weights
  labels = predictor.predict(image_uint8_hwc)                    # int32 [H, W] class ids
  predictor.predict_paths(["a.jpg", "dir/b.png"], "out/")        # files, see below

Predictions are class ids: the dataset's ids for its classes (also for a
model trained without one, `config.dataset.held_out_class`, or with one
added back by `protoseg_jax.add_class`), then the ids of added classes the
dataset lacks (`classes.ClassMap`, from the workdir's run.json).

Images go through the eval pipeline's preprocessing (`trainer.augment.
eval_transform`: config.dataset.eval_scale keep-ratio resize, mean/std, input_order)
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

A tool on the trainer: the eval preprocessing is the trainer's
(`trainer.augment.eval_transform`, TensorFlow) and `from_workdir` loads the
run with `trainer.run.load_run`. One process; the batch is split over its
local devices.
"""

from __future__ import annotations

import glob as globlib
import io
import os
import re
import time
from typing import Iterable, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps

from protoseg_jax import classes as classes_lib
from protoseg_jax import inference, sharding
from protoseg_jax.classes import ClassMap
from protoseg_jax.models.segmentor import build_model
from protoseg_jax.trainer import augment, input_pipeline, paths, run as runs
from protoseg_jax.trainer.cli import ArgumentError
from protoseg_jax.trainer.images import READ_ERRORS, error_reason, open_image, to_rgb_uint8

BUCKET = 32
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                    ".gif")
OUTPUT_FORMATS = ("default", "cityscapes")
OVERLAY_ALPHA = 0.5   # weight of the colour map in <name>_overlay.png


# --------------------------------------------------------------------------
# Reading images.


class NoInputImages(ArgumentError, FileNotFoundError):
  """--input names nothing to predict (no such path, or no image files there)."""


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
    img = open_image(path)
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
  if paths.is_url(spec):
    return _list_bucket_images(spec, exclude)
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
    raise NoInputImages(f"--input={spec}: no such file, directory or glob")
  root = root or "."
  excluded = 0
  if exclude is not None:
    ex = os.path.abspath(exclude) + os.sep
    kept = [p for p in found if not os.path.abspath(p).startswith(ex)]
    excluded = len(found) - len(kept)
    if excluded:
      logging.warning("predict: %d image(s) under --output=%s left out (earlier outputs)",
                      excluded, exclude)
    found = kept
  if not found:
    raise _no_images(spec, exclude, excluded)
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


def _no_images(spec: str, exclude: Optional[str], excluded: int) -> "NoInputImages":
  if excluded:
    return NoInputImages(f"--input={spec}: its {excluded} image(s) all lie under "
                         f"--output={exclude}, which predict never reads (its own outputs); "
                         "choose an --output outside the input")
  return NoInputImages(f"--input={spec} names no image files ({', '.join(IMAGE_EXTENSIONS)})")


def _glob_regex(pattern: str) -> re.Pattern:
  """A glob over '/'-separated paths as a regex: `**` any number of folders
  (`a/**/b` includes `a/b`), `*` and `?` within one name, `[...]` a class."""
  out, i = [], 0
  while i < len(pattern):
    if pattern.startswith("**/", i):
      out.append("(?:.*/)?")
      i += 3
    elif pattern.startswith("**", i):
      out.append(".*")
      i += 2
    elif pattern[i] == "*":
      out.append("[^/]*")
      i += 1
    elif pattern[i] == "?":
      out.append("[^/]")
      i += 1
    elif pattern[i] == "[" and "]" in pattern[i + 1:]:
      end = pattern.index("]", i + 1)
      body = pattern[i + 1:end]
      out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
      i = end + 1
    else:
      out.append(re.escape(pattern[i]))
      i += 1
  return re.compile("".join(out) + r"\Z")


def _bucket_files(root):
  """Every file under a bucket folder (an epath.Path), recursively."""
  for p in root.iterdir():
    if p.is_dir():
      yield from _bucket_files(p)
    else:
      yield p


def _list_bucket_images(spec: str, exclude: Optional[str]) -> list[tuple[str, str]]:
  """`list_images` of a URL: a file, a folder (recursive) or a glob (`**`
  recursive, matched here: the store's own glob stops at one folder).
  A bucket has no symlinks, so nothing is refused."""
  spec = spec.rstrip("/")
  path = paths.resolve(spec)
  if path.is_file():
    found, root = [spec], spec.rsplit("/", 1)[0]
  elif globlib.has_magic(spec):
    scheme, rest = spec.split("://", 1)
    parts = rest.split("/")
    fixed = next(i for i, part in enumerate(parts) if globlib.has_magic(part))
    root = f"{scheme}://" + "/".join(parts[:fixed])
    matcher = _glob_regex("/".join(parts[fixed:]))
    base = paths.resolve(root)
    found = ([os.fspath(p) for p in _bucket_files(base)
              if matcher.match(os.fspath(p)[len(root) + 1:])] if base.is_dir() else [])
  elif path.is_dir():
    root = spec
    found = [os.fspath(p) for p in _bucket_files(path) if p.name.lower().endswith(
        IMAGE_EXTENSIONS)]
  else:
    raise NoInputImages(f"--input={spec}: no such file, folder or glob")
  excluded = 0
  if exclude is not None and paths.is_url(exclude):
    kept = [p for p in found if not p.startswith(exclude.rstrip("/") + "/")]
    excluded, found = len(found) - len(kept), kept
  if not found:
    raise _no_images(spec, exclude, excluded)
  return sorted((p, p[len(root) + 1:]) for p in found)


def check_output_dir(output: str, input_spec: str):
  """ArgumentError unless `output` can be written and does not write into the
  inputs: not the --input folder itself (`<name>.png` would replace an input
  `<name>.png`), creatable and writable. Checked before anything is loaded."""
  if paths.is_url(output):
    if output.rstrip("/") == input_spec.rstrip("/"):
      raise ArgumentError(f"--output={output} is the --input folder: the label maps "
                          "(<name>.png) would replace input images; choose another --output")
    probe = paths.resolve(output) / f".protoseg_write_test_{os.getpid()}"
    try:
      probe.write_bytes(b"")
      probe.unlink()
    except Exception as e:  # pylint: disable=broad-except (the store's own error types)
      raise ArgumentError(f"--output={output} cannot be written ({error_reason(e)})") from None
    return
  out = os.path.realpath(os.path.expanduser(output))
  spec = os.path.expanduser(input_spec)
  if os.path.isdir(spec) and os.path.realpath(spec) == out:
    raise ArgumentError(f"--output={output} is the --input folder: the label maps "
                        "(<name>.png) would replace input images; choose another --output")
  try:
    os.makedirs(out, exist_ok=True)
    probe = os.path.join(out, f".protoseg_write_test_{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise ArgumentError(f"--output={output} cannot be written ({e.strerror or e})") from None


# --------------------------------------------------------------------------
# Label maps -> files.


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
  if paths.is_url(output_dir):   # a bucket has no symlinks
    return stem
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
  """Image.save(path) that never follows a symlink at `path` (O_NOFOLLOW); a
  URL: one upload (`paths.write_bytes`)."""
  if paths.is_url(path):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    paths.write_bytes(path, buf.getvalue())
    return
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o666)
  with os.fdopen(fd, "wb") as f:
    Image.fromarray(array).save(f, format="PNG")


def write_outputs(stem: str, image: np.ndarray, labels: np.ndarray, palette,
                  output_format: str = "default", release_ids=None):
  """The files of one image (see the module docstring); returns their paths.

  labels: class ids; palette: a colour per class id; release_ids: the
  dataset's release id of each class id (`classes.DatasetMeta.release_ids`,
  output_format "cityscapes"; ids without one are written as 0, unlabeled).
  An existing symlink at an output file is not followed (OSError).
  """
  if not paths.is_url(stem):
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
  files = output_paths(stem, output_format)
  if output_format == "cityscapes":
    if release_ids is None:
      raise ValueError("output_format='cityscapes' needs the dataset's release ids")
    lut = np.zeros((max(len(release_ids), int(labels.max(initial=0)) + 1),), np.uint8)
    lut[:len(release_ids)] = release_ids
    _save_png(lut[labels.astype(np.int64)], files[0])
    return files
  if output_format != "default":
    raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
  ids = labels.astype(np.uint8 if labels.max(initial=0) < 256 and len(palette) <= 256
                      else np.uint16)
  color = colorize(labels, palette)
  _save_png(ids, files[0])
  _save_png(color, files[1])
  _save_png(overlay(image, color), files[2])
  return files


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
  """A model, its variables, its classes and the run config's eval settings,
  for images of any size.

  classes: the run's `classes.ClassMap` (the class id of each model
  output: predictions are class ids, the dataset's for every class it has;
  names and palette); default: the config's dataset, all its classes.
  """

  def __init__(self, config, model, variables, *, classes: Optional[ClassMap] = None,
               devices: Optional[Sequence[jax.Device]] = None):
    self.config, self.model = config, model
    self.mesh = sharding.create_mesh(devices if devices is not None else jax.local_devices())
    self._rep = sharding.replicated(self.mesh)
    self._data = sharding.batch_sharding(self.mesh)
    self.variables = jax.device_put(variables, self._rep)
    self.classes = classes if classes is not None else runs.classes_of_config(
        config, model.num_classes)
    if self.classes.num_outputs != model.num_classes:
      raise ValueError(f"the model has {model.num_classes} outputs, the class map "
                       f"{self.classes.num_outputs}")
    self.class_names = self.classes.names
    self.palette = self.classes.palette
    self.ignore_index = self.classes.ignore_index
    self.num_classes = self.classes.num_ids
    self.eval_options = input_pipeline.eval_options(config)
    self.canvas, self.label_canvas = input_pipeline.eval_canvases(config)
    self.max_pixels = int(config.predict.max_pixels)
    self.inference_options = inference.inference_options(config)
    self._class_ids = jnp.asarray(self.classes.class_ids, jnp.int32)
    self._steps = {}

  # -- construction ---------------------------------------------------------

  @classmethod
  def from_variables(cls, config, variables, num_classes: int, **kw) -> "Predictor":
    """From model variables ({'params', 'batch_stats', 'prototypes'}) of a
    model with `num_classes` outputs, e.g. `trainer.checkpoints.load_variables(DIR)`
    of converted weights; its classes as the config's dataset says
    (`trainer.run.classes_of_config`; a held-out class too)."""
    classes = kw.pop("classes", None) or runs.classes_of_config(config, num_classes)
    model = build_model(config, num_classes, classes.ignore_index)
    return cls(config, model, variables, classes=classes, **kw)

  @classmethod
  def from_workdir(cls, config=None, workdir: Optional[str] = None,
                   step: Optional[int] = None, **kw) -> "Predictor":
    """From a run (`trainer.run.load_run`): the newest intact checkpoint of
    `workdir` (or `step`), add_class's variables, or config.init_from; its
    classes from the workdir's run.json. config None: the workdir's
    config.json (`Predictor.from_workdir(workdir=DIR)`)."""
    if workdir is None:
      raise ValueError("from_workdir needs workdir=")
    run = runs.load_run(workdir, config, checkpoint_step=step,
                        devices=kw.get("devices") or jax.local_devices())
    return cls(run.config, run.model, run.variables, classes=run.classes, **kw)

  # -- preprocessing --------------------------------------------------------

  def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 [H, W, 3] -> (normalised float32 [h, w, 3] at the test scale, (h, w)):
    the eval pipeline's own preprocessing (`trainer.augment.eval_transform`)."""
    x = augment.preprocess_image(image, self.eval_options)
    return x, (int(x.shape[0]), int(x.shape[1]))

  def bucket_of(self, image_hw: tuple[int, int], resized_hw: tuple[int, int]):
    """(canvas, label canvas) static shapes of an image."""
    return _bucket(resized_hw, self.canvas), _bucket(image_hw, self.label_canvas)

  # -- the jitted step ------------------------------------------------------

  def _step(self, label_size: tuple[int, int], with_scores: bool):
    key = (label_size, with_scores)
    if key not in self._steps:
      model, options = self.model, self.inference_options

      def step(variables, image, image_hw, label_hw):
        batch = {"image": image, "image_hw": image_hw, "label_hw": label_hw,
                 "label": jnp.zeros((image.shape[0],) + label_size, jnp.int32)}
        logits_fn = lambda x: model.apply(variables, x, train=False).logits
        if not with_scores:   # labels only: the scores of a large vocabulary by chunks
          pred = inference.predict(logits_fn, batch, options, num_classes=model.num_classes)
          return self._class_ids[pred]                        # model output -> class id
        scores = inference.predict_scores(logits_fn, batch, options,
                                          num_classes=model.num_classes)
        pred = self._class_ids[jnp.argmax(scores, axis=-1)]   # model output -> class id
        return pred, scores

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

  def check_output_format(self, output_format: str):
    """ArgumentError unless `output_format` (OUTPUT_FORMATS) fits this run's dataset."""
    if output_format not in OUTPUT_FORMATS:
      raise ArgumentError(f"--output_format={output_format}: must be one of "
                          f"{', '.join(OUTPUT_FORMATS)}")
    if output_format == "cityscapes" and self.classes.dataset != "cityscapes":
      raise ArgumentError(f"--output_format=cityscapes writes Cityscapes labelIds: the run's "
                          f"dataset is {self.classes.dataset!r}, not 'cityscapes'")
    if output_format == "cityscapes" and self.classes.release_ids is None:
      raise ArgumentError("--output_format=cityscapes: the run's dataset facts have no "
                          "Cityscapes labelIds (release ids)")

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
    self.check_output_format(output_format)
    items = [(p, os.path.basename(p)) if isinstance(p, (str, os.PathLike)) else tuple(p)
             for p in paths]
    b = self._batch_size(batch_size)
    total, done, batches, written = len(items), 0, 0, []
    failed = list(refused)
    stems, unique = {}, []
    for p, rel in items:     # a.jpg beside a.png: the first one is written, the other skipped
      stem = output_stem(output_dir, rel)
      if stem in stems:
        reason = (f"skipped: {stems[stem]} writes the same outputs {stem}.* (rename one of "
                  "them, or predict them into different --output folders)")
        failed.append((p, reason))
        logging.warning("predict: %s %s", p, reason)
        continue
      stems[stem] = p
      unique.append((p, rel))
    items = unique
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
          written.extend(write_outputs(stem, img, pred, self.palette, output_format,
                                       self.classes.release_ids))
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
