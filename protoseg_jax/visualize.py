"""See the prototypes: which prototype each pixel retrieves, and a PCA of the embedding space.

  python -m protoseg_jax.visualize --workdir=DIR --image=FILE --output=OUT [--config=configs/X.py]
      [--checkpoint_step=N | --variables=CONVERTED_DIR] [--classes=road,car] [--max_points=2000]

For one image (read and preprocessed as evaluation does: `trainer.augment.
eval_transform`) it writes
  OUT/<name>_prototypes.png   the retrieved-prototype map at the image's own size: the
      pixel's predicted class c = argmax of the logits (what the model
      segments) and, of that class, the prototype m nearest the pixel's
      embedding (the one giving the class score max_m). Colour: the class's
      palette colour, darker for low m, lighter for high m
      (`prototype_colors`; every (c, m) has its own colour, so the PNG
      decodes back with `decode_prototype_map`).
  OUT/<name>_overview.png     image | prototype map, with a legend.
  OUT/<name>_pca.png          2-D PCA (NumPy SVD) of the pixel embeddings
      predicted as the chosen classes and of those classes' prototypes
      (stars), coloured as in the map.

The embeddings come from the ProtoSeg head (`heads.proto_head_output`,
flax `capture_intermediates` on the head: the Segmentor's output carries no
embeddings); the run from `trainer.run.load_run`. matplotlib is imported
here only.
"""

from __future__ import annotations

import io
import os
from typing import Optional, Sequence

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from protoseg_jax import heads, prototype_stats
from protoseg_jax.ops import nearest_indices
from protoseg_jax.trainer import augment, cli, input_pipeline, paths
from protoseg_jax.trainer.images import READ_ERRORS, error_reason, open_image, to_rgb_uint8

FLAGS = flags.FLAGS
NAME = "python -m protoseg_jax.visualize"

SHADE_RANGE = 0.55   # prototype 0 is the colour darkened by this much, prototype M-1 lightened


def prototype_colors(palette, num_prototypes: int) -> np.ndarray:
  """uint8 [C, M, 3]: shades of each class's palette colour, all distinct."""
  base = np.asarray(palette, np.float64)[:, None, :]                    # [C, 1, 3]
  m = num_prototypes
  t = np.linspace(-SHADE_RANGE, SHADE_RANGE, m) if m > 1 else np.zeros(1)
  t = t[None, :, None]
  shades = np.where(t < 0, base * (1 + t), base + (255 - base) * t)
  colors = np.clip(np.round(shades), 0, 255).astype(np.int64).reshape(-1, 3)
  seen = set()
  for i in range(len(colors)):              # make every colour unique (e.g. a black class)
    key, step = tuple(int(v) for v in colors[i]), 0
    while key in seen:
      step += 1
      key = tuple(int(v) for v in (colors[i] + np.array([step, 2 * step, 3 * step])) % 256)
    colors[i] = key
    seen.add(key)
  return colors.reshape(-1, m, 3).astype(np.uint8)


def retrieval(prototypes, embeddings, logits) -> tuple[np.ndarray, np.ndarray]:
  """(class [h, w], prototype [h, w]): the predicted class and, of its
  prototypes, the one nearest each pixel. embeddings [h, w, D], logits [h, w, C]."""
  cls = jnp.argmax(jnp.asarray(logits), axis=-1)
  proto = prototype_stats.retrieved_prototype(prototypes, embeddings, cls)
  return np.asarray(cls), np.asarray(proto)


def prototype_map(cls: np.ndarray, proto: np.ndarray, colors: np.ndarray) -> np.ndarray:
  """uint8 [h, w, 3] colours of the (class, prototype) pairs."""
  return colors[cls, proto]


def decode_prototype_map(rgb: np.ndarray, colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(class, prototype) of every pixel of a map written with `colors`; -1 where
  a colour is not in the table."""
  c, m, _ = colors.shape
  table = {tuple(int(v) for v in colors[i, j]): (i, j) for i in range(c) for j in range(m)}
  flat = rgb.reshape(-1, 3)
  out = np.array([table.get(tuple(int(v) for v in px), (-1, -1)) for px in flat])
  return out[:, 0].reshape(rgb.shape[:2]), out[:, 1].reshape(rgb.shape[:2])


def pca_2d(points: np.ndarray, fit_on: Optional[np.ndarray] = None) -> np.ndarray:
  """[N, D] -> [N, 2]: projection on the top-2 principal axes of `fit_on`
  (default the points), centred on its mean (NumPy SVD)."""
  fit = points if fit_on is None else fit_on
  mean = fit.mean(axis=0)
  _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
  axes = vt[:2]
  if axes.shape[0] < 2:
    axes = np.concatenate([axes, np.zeros((2 - axes.shape[0], fit.shape[1]))], 0)
  return (points - mean) @ axes.T


# --- the image --------------------------------------------------------------------

def preprocess(image: np.ndarray, config, stride: int = 32) -> tuple[np.ndarray, tuple[int, int]]:
  """uint8 RGB [H, W, 3] -> (normalised float32 [1, H', W', 3] padded to a
  multiple of `stride`, (h, w) of the preprocessed image): the eval
  pipeline's preprocessing (`trainer.augment.eval_transform`)."""
  x = augment.preprocess_image(image, input_pipeline.eval_options(config))
  h, w = x.shape[:2]
  ph, pw = -(-h // stride) * stride, -(-w // stride) * stride
  return np.pad(x, ((0, ph - h), (0, pw - w), (0, 0)))[None], (h, w)


def _resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """[h, w] -> size with PyTorch `nearest` (ops.nearest_indices), as the head."""
  return a[nearest_indices(a.shape[0], size[0])][:, nearest_indices(a.shape[1], size[1])]


def visualize(model, variables, image: np.ndarray, config, palette, class_names, output_dir: str,
              name: str = "image", classes: Optional[Sequence[int]] = None,
              max_points: int = 2000, seed: int = 0) -> dict:
  """Writes the three PNGs of `image` (uint8 RGB [H, W, 3]); returns their paths
  {'prototypes', 'overview', 'pca'}. `classes`: class ids for the PCA
  (default: the up to 3 classes predicted on most pixels)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  x, (h, w) = preprocess(image, config)
  out = jax.jit(lambda v, x: heads.proto_head_output(model, v, x))(variables, jnp.asarray(x))
  logits, emb = out.logits, out.embeddings
  protos = np.asarray(prototype_stats.prototype_array(variables["prototypes"]), np.float32)
  c, m, _ = protos.shape
  stride = x.shape[1] / logits.shape[1]
  fh, fw = int(np.ceil(h / stride)), int(np.ceil(w / stride))
  logits, emb = np.asarray(logits[0, :fh, :fw]), np.asarray(emb[0, :fh, :fw])
  cls, proto = retrieval(protos, emb, logits)
  colors = prototype_colors(palette, m)
  shown = image
  size = image.shape[:2]            # the map at the image's own size
  pmap = prototype_map(_resize_nearest(cls, size), _resize_nearest(proto, size), colors)
  out = paths.resolve(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  files = {k: os.fspath(out / f"{name}_{k}.png") for k in ("prototypes", "overview", "pca")}
  _write_png(Image.fromarray(pmap), files["prototypes"])    # exact colours (decodable)

  present, pixels = np.unique(cls, return_counts=True)
  fig, axes = plt.subplots(1, 3, figsize=(13, 4.5), gridspec_kw={"width_ratios": [4, 4, 2]})
  axes[0].imshow(shown)
  axes[0].set_title("image")
  axes[1].imshow(pmap, interpolation="nearest")
  axes[1].set_title(f"retrieved prototype ({c} classes x {m})")
  for ax in axes[:2]:
    ax.axis("off")
  handles = [plt.Rectangle((0, 0), 1, 1, color=colors[k, j] / 255) for k in present for j in range(m)]
  labels = [f"{class_names[k]} #{j} ({np.mean(proto[cls == k] == j):.0%})"
            for k in present for j in range(m)]
  axes[2].legend(handles, labels, loc="center", fontsize=7, ncol=1 + len(labels) // 30, frameon=False)
  axes[2].axis("off")
  fig.tight_layout()
  _write_png(fig, files["overview"])
  plt.close(fig)

  if classes is None:
    classes = [int(k) for k in present[np.argsort(-pixels)][:3]]
  rng = np.random.default_rng(seed)
  pts, pcol, ids = [], [], []
  for k in classes:
    sel = np.flatnonzero(cls.reshape(-1) == k)
    if sel.size > max_points:
      sel = rng.choice(sel, max_points, replace=False)
    pts.append(emb.reshape(-1, emb.shape[-1])[sel])
    pcol.append(colors[k, proto.reshape(-1)[sel]])
  pts = np.concatenate(pts, 0) if pts else np.zeros((0, emb.shape[-1]), np.float32)
  pcol = np.concatenate(pcol, 0) if pcol else np.zeros((0, 3), np.uint8)
  unit = protos / np.maximum(np.linalg.norm(protos, axis=-1, keepdims=True), 1e-12)
  chosen = unit[list(classes)].reshape(-1, unit.shape[-1])
  both = np.concatenate([pts, chosen], 0)
  proj = pca_2d(both)
  fig, ax = plt.subplots(figsize=(6.5, 6))
  if len(pts):
    ax.scatter(proj[:len(pts), 0], proj[:len(pts), 1], s=4, c=pcol / 255, alpha=0.5, linewidths=0)
  for i, k in enumerate(classes):
    p = proj[len(pts) + i * m: len(pts) + (i + 1) * m]
    ax.scatter(p[:, 0], p[:, 1], s=180, marker="*", c=colors[k] / 255, edgecolors="black",
               linewidths=0.8, label=f"{class_names[k]} prototypes")
  ax.set_title("PCA of pixel embeddings (dots) and prototypes (stars)")
  ax.set_xlabel("PC 1")
  ax.set_ylabel("PC 2")
  if classes:
    ax.legend(fontsize=8)
  fig.tight_layout()
  _write_png(fig, files["pca"])
  plt.close(fig)
  return files


def _write_png(figure, path: str):
  """A PIL image or a matplotlib figure (100 dpi) as a PNG at `path`, local or
  a URL (`paths.write_bytes`)."""
  buf = io.BytesIO()
  if isinstance(figure, Image.Image):
    figure.save(buf, format="PNG")
  else:
    figure.savefig(buf, format="png", dpi=100)
  paths.write_bytes(path, buf.getvalue())


# --- the command ------------------------------------------------------------------

def _class_ids(spec: Optional[str], class_names) -> Optional[list[int]]:
  if not spec:
    return None
  ids = []
  for part in spec.split(","):
    part = part.strip()
    if part.isdigit():
      ids.append(int(part))
    elif part in class_names:
      ids.append(list(class_names).index(part))
    else:
      raise ValueError(f"--classes: unknown class {part!r}; known: {list(class_names)}")
  return ids


def main(argv):
  del argv
  for flag in ("image", "output"):
    if not getattr(FLAGS, flag):
      raise cli.ArgumentError(f"--{flag} is required")
  workdir = cli.expand(FLAGS.workdir, "--workdir")
  config = cli.run_config(workdir)          # every config problem first, then the image
  path = cli.expand(FLAGS.image, "--image")
  try:
    with open_image(path) as im:
      image = to_rgb_uint8(im)
  except READ_ERRORS as e:
    raise cli.ArgumentError(f"--image={FLAGS.image}: not a readable image "
                            f"({error_reason(e)})") from None
  run = cli.load_tool_run(workdir, config=config,
                          variables_dir=cli.expand(FLAGS.variables, "--variables"),
                          checkpoint_step=FLAGS.checkpoint_step, needs_prototypes=True)
  names = run.classes.output_names
  palette = [run.classes.palette[i] for i in run.classes.class_ids]
  try:
    classes = _class_ids(FLAGS.classes, names)
  except ValueError as e:
    raise cli.ArgumentError(str(e)) from None
  name = paths.resolve(path).stem
  files = visualize(run.model, jax.device_get(run.variables), image, run.config, palette, names,
                    cli.expand(FLAGS.output, "--output"), name=name, classes=classes,
                    max_points=FLAGS.max_points)
  for p in files.values():
    print(p)


def define_flags():
  cli.define_run_flags(config_required=False, workdir="Run directory whose checkpoint to read.",
                       variables=True)
  flags.DEFINE_string("image", None, "The image file (any format Pillow reads).")
  flags.DEFINE_string("output", None, "Directory for the PNGs.")
  flags.DEFINE_string("classes", None, "Comma-separated class names or ids for the PCA "
                      "(default: the 3 classes predicted on most pixels).")
  flags.DEFINE_integer("max_points", 2000, "Pixels per class in the PCA plot (random subset).")


if __name__ == "__main__":
  define_flags()
  cli.run(main, NAME)
