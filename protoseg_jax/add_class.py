"""Add a class to a trained ProtoSeg model from a few labelled images, no retraining.

  python -m protoseg_jax.add_class --workdir=DIR --support=SUPPORT_DIR --output=OUT
      [--name=NEW] [--config=configs/X.py] [--checkpoint_step=N]

SUPPORT_DIR holds pairs `<stem>.png|.jpg|.jpeg` (an image) and
`<stem>_mask.png` (a one-channel mask: any value > 0 is the new class, 0 is
everything else, so 0/1, 0/255 and palette masks all work; a colour mask:
any channel > 0). Every support image goes through the eval pipeline's
preprocessing (`trainer.augment.eval_transform`); the run's model
(`trainer.run.load_run`: the newest intact checkpoint of DIR, or
--checkpoint_step) embeds it (`heads.support_embeddings`, the mask resized
to the embedding map with the head's nearest rule), and `heads.add_class`
clusters the new class's pixels into M prototypes and appends them as the
model's last output.

OUT is a workdir of its own: OUT/variables (`trainer.checkpoints.
save_variables`), OUT/config.json (the run's config) and OUT/run.json (the
run's classes with the new one last: the dataset's held-out class of that
name, else a new class id). Use it like any run, with no other flag (--config
is the run's config file as it is, without a held-out override, or left out):

  python main.py --config=configs/demo.py --workdir=OUT --mode=eval      (or --mode=predict)
  python -m protoseg_jax.diagnostics --workdir=OUT
  python -m protoseg_jax.visualize --workdir=OUT --image=IMG --output=DIR

A model trained with config.dataset.held_out_class=k gets k back when
--name is omitted (or is its name); predictions and evaluation then carry
the dataset's ids for every class.
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags
from etils import epath
import numpy as np

from protoseg_jax import heads
from protoseg_jax.trainer import augment, checkpoints, cli, input_pipeline, paths, run as runs
from protoseg_jax.trainer.images import READ_ERRORS, error_reason, open_image, to_rgb_uint8

FLAGS = flags.FLAGS
NAME = "python -m protoseg_jax.add_class"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
MASK_SUFFIX = "_mask.png"


def list_support(support_dir: str) -> list[tuple[str, str]]:
  """(image, mask) path pairs of SUPPORT_DIR (a folder or a gs:// URL), sorted by stem."""
  folder = epath.Path(paths.expand(support_dir))
  if not folder.is_dir():
    raise cli.ArgumentError(f"--support={support_dir}: no such directory")
  pairs = []
  masks = sorted(os.fspath(p) for p in folder.iterdir() if p.name.endswith(MASK_SUFFIX))
  for mask in masks:
    stem = mask[: -len(MASK_SUFFIX)]
    images = [stem + e for e in IMAGE_EXTS if epath.Path(stem + e).is_file()]
    if not images:
      raise cli.ArgumentError(f"no image {os.path.basename(stem)}{{{','.join(IMAGE_EXTS)}}} "
                              f"for the mask {mask}")
    pairs.append((images[0], mask))
  if not pairs:
    raise cli.ArgumentError(f"--support={support_dir}: no <stem>{MASK_SUFFIX} masks (each "
                            f"beside its image <stem>{'|'.join(IMAGE_EXTS)})")
  return pairs


def read_mask(mask_path: str) -> np.ndarray:
  """bool [H, W]: any value > 0 is the class (0/1, 0/255, palette indices,
  16-bit; a colour mask: any channel > 0)."""
  with open_image(mask_path) as im:
    m = np.asarray(im)
  if m.ndim == 3:
    m = m.max(axis=-1)
  return m > 0


def read_pair(image_path: str, mask_path: str) -> tuple[np.ndarray, np.ndarray]:
  """RGB uint8 [H, W, 3] and a bool mask [H, W] of the new class."""
  try:
    with open_image(image_path) as im:
      image = to_rgb_uint8(im)
    mask = read_mask(mask_path)
  except READ_ERRORS as e:
    raise cli.ArgumentError(f"{image_path} / {mask_path}: not readable ({error_reason(e)})") \
        from None
  if mask.shape != image.shape[:2]:
    raise cli.ArgumentError(f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]}, its image "
                            f"{image_path} is {image.shape[0]}x{image.shape[1]}")
  return image, mask


def collect_support_embeddings(config, model, variables, pairs) -> np.ndarray:
  """[N, D] head embeddings of the new class's pixels over all support pairs."""
  opts = input_pipeline.eval_options(config)
  out = []
  for image_path, mask_path in pairs:
    image, mask = read_pair(image_path, mask_path)
    x = augment.preprocess_image(image, opts)[None]
    out.append(np.asarray(heads.support_embeddings(model, variables, x,
                                                   mask[None].astype(np.int32), 1)))
  emb = np.concatenate(out)
  if emb.shape[0] == 0:
    raise cli.ArgumentError("no support pixel of the new class at the embedding resolution "
                            "(the masks are empty, or their regions smaller than the "
                            "embedding map's cells)")
  return emb


def add_class_from_support(config, model, variables, pairs) -> tuple[dict, int]:
  """(variables with the new class appended, number of support embeddings)."""
  p = config.protoseg
  emb = collect_support_embeddings(config, model, variables, pairs)
  new = heads.add_class(variables, emb, num_prototypes=p.num_prototypes,
                        sinkhorn_iters=p.sinkhorn_iters, sinkhorn_epsilon=p.sinkhorn_epsilon)
  return new, emb.shape[0]


def new_class(classes, name=None):
  """(the new class's name, the classes after adding it): --name, else the one class the
  model was trained without; cli.ArgumentError when neither gives a usable name."""
  missing = [classes.names[i] for i in classes.missing]
  name = name or (missing[0] if len(missing) == 1 else None)
  if not name:
    raise cli.ArgumentError("--name is required: the model lacks none of its dataset's classes "
                            f"({len(classes.output_names)} outputs), so the new class needs "
                            "a name")
  try:
    return name, classes.with_class(name)
  except ValueError as e:
    raise cli.ArgumentError(f"--name={name}: {e}") from None


def main(argv):
  del argv
  for flag in ("workdir", "support", "output"):
    if not getattr(FLAGS, flag):
      raise cli.ArgumentError(f"--{flag} is required")
  workdir = cli.expand(FLAGS.workdir, "--workdir")
  output = cli.expand(FLAGS.output, "--output")
  config = cli.run_config(workdir)          # every config problem first
  pairs = list_support(cli.expand(FLAGS.support, "--support"))
  recorded = runs.read_classes(workdir)
  if recorded is not None:                  # the run's classes, known before any weights load
    new_class(recorded, FLAGS.name)
  run = cli.load_tool_run(workdir, config=config, checkpoint_step=FLAGS.checkpoint_step,
                          needs_prototypes=True)
  name, classes = new_class(run.classes, FLAGS.name)
  import jax
  variables = jax.device_get(run.variables)
  new, n = add_class_from_support(run.config, run.model, variables, pairs)
  paths.resolve(output).mkdir(parents=True, exist_ok=True)
  checkpoints.save_variables(new, output)
  added = {"name": name, "class_id": classes.class_ids[-1], "support_images": len(pairs),
           "support_pixels": int(n), "from": run.source}
  runs.describe(output, run.config, dataclasses.replace(classes, added=classes.added + (added,)))
  print(f"added class {classes.num_outputs - 1} {name!r} (class id {classes.class_ids[-1]}) "
        f"from {len(pairs)} images ({n} embedding pixels); wrote {output}/variables, "
        f"config.json and run.json: use it as --workdir={output}")


def define_flags():
  cli.define_run_flags(config_required=False, workdir="The run (its checkpoints) to add to.")
  flags.DEFINE_string("support", None, "Directory of <stem>.png|jpg images and <stem>_mask.png "
                      "masks (any value > 0 is the new class: 0/1, 0/255 and palette masks).")
  flags.DEFINE_string("name", None, "Name of the new class (default: the class the model was "
                      "trained without, config.dataset.held_out_class).")
  flags.DEFINE_string("output", None, "Output directory, a workdir of its own: variables/, "
                      "config.json and run.json; use it as --workdir=OUT with main.py "
                      "--mode=eval|predict, diagnostics and visualize.")


if __name__ == "__main__":
  define_flags()
  cli.run(main, NAME)
