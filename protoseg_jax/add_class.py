"""Add a class to a trained ProtoSeg model from a few labelled images, no retraining.

  python -m protoseg_jax.add_class --config=configs/demo.py --workdir=DIR \
      --support=SUPPORT_DIR --name=NEW --output=OUT [--checkpoint_step=N]

SUPPORT_DIR holds pairs `<stem>.png|.jpg|.jpeg` (an RGB image) and
`<stem>_mask.png` (a single-channel mask: pixels > 0 and != 255 are the new
class, everything else is ignored). The model of the latest (or
--checkpoint_step) checkpoint in DIR/checkpoints embeds every support image
at its own size (`heads.support_embeddings`); `heads.add_class` clusters the
new class's pixels into M prototypes and appends them as class C.

Writes OUT/variables (`checkpoints.save_variables`, the converted-weights
format: load with `checkpoints.load_variables`; the model is
`build_model(config, C + 1)`) and OUT/classes.json (class names, the new one
last, and the class count).

A model trained with config.dataset.held_out_class=k (pass the same config)
has the dataset's classes minus k; adding k back (--name defaults to its
name) appends it last, and classes.json gives `dataset_class_ids`, the
dataset id of each output (`held_out.model_class_ids(C, k, added=True)`):
evaluate with them as `class_ids` of `train.make_eval_step`
(bench/bench_few_shot.py does).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Optional

import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
MASK_SUFFIX = "_mask.png"


def list_support(support_dir: str) -> list[tuple[str, str]]:
  """(image, mask) path pairs of SUPPORT_DIR, sorted by stem."""
  pairs = []
  for mask in sorted(glob.glob(os.path.join(support_dir, "*" + MASK_SUFFIX))):
    stem = mask[: -len(MASK_SUFFIX)]
    images = [stem + e for e in IMAGE_EXTS if os.path.isfile(stem + e)]
    if not images:
      raise FileNotFoundError(f"no image {os.path.basename(stem)}{{{','.join(IMAGE_EXTS)}}} "
                              f"for the mask {mask}")
    pairs.append((images[0], mask))
  if not pairs:
    raise FileNotFoundError(f"no <stem>{MASK_SUFFIX} masks in {support_dir!r}")
  return pairs


def read_pair(image_path: str, mask_path: str) -> tuple[np.ndarray, np.ndarray]:
  """RGB uint8 [H, W, 3] and a bool mask [H, W] of the new class."""
  from PIL import Image
  with Image.open(image_path) as im:
    image = np.asarray(im.convert("RGB"))
  with Image.open(mask_path) as im:
    m = np.asarray(im)
  if m.ndim == 3:
    m = m[..., 0]
  if m.shape != image.shape[:2]:
    raise ValueError(f"mask {mask_path} is {m.shape}, image {image_path} is {image.shape[:2]}")
  return image, (m > 0) & (m != 255)


def normalize_image(config, image: np.ndarray) -> np.ndarray:
  """The network input of an RGB uint8 image: config.dataset's channel order, mean and std."""
  ds = config.dataset
  x = image.astype(np.float32)
  if ds.input_order == "bgr":
    x = x[..., ::-1]
  elif ds.input_order != "rgb":
    raise ValueError(f"config.dataset.input_order must be rgb or bgr, got {ds.input_order!r}")
  return (x - np.asarray(ds.mean, np.float32)) / np.asarray(ds.std, np.float32)


def collect_support_embeddings(config, model, variables, pairs) -> np.ndarray:
  """[N, D] head embeddings of the new class's pixels over all support pairs."""
  from protoseg_jax import heads
  out = []
  for image_path, mask_path in pairs:
    image, mask = read_pair(image_path, mask_path)
    x = normalize_image(config, image)[None]
    out.append(np.asarray(heads.support_embeddings(model, variables, x,
                                                   mask[None].astype(np.int32), 1)))
  emb = np.concatenate(out)
  if emb.shape[0] == 0:
    raise ValueError("no support pixel of the new class at the embedding resolution "
                     "(masks empty or too small)")
  return emb


def add_class_from_support(config, model, variables, pairs) -> tuple[dict, int]:
  """(variables with the new class appended, number of support embeddings)."""
  from protoseg_jax import heads
  p = config.protoseg
  emb = collect_support_embeddings(config, model, variables, pairs)
  new = heads.add_class(variables, emb, num_prototypes=p.num_prototypes,
                        sinkhorn_iters=p.sinkhorn_iters, sinkhorn_epsilon=p.sinkhorn_epsilon)
  return new, emb.shape[0]


def restore_variables(config, workdir: str, step: Optional[int] = None):
  """(model, variables, dataset info) of a checkpoint in WORKDIR (the model's
  classes: the dataset's, minus config.dataset.held_out_class if set)."""
  import jax
  from protoseg_jax import datasets, held_out, sharding, train
  from protoseg_jax.models.segmentor import build_model
  if config.model.head != "proto":
    raise ValueError(f"adding a class needs the ProtoSeg head, config.model.head={config.model.head!r}")
  info = datasets.get_dataset_info(config)
  ids = held_out.model_class_ids(info.num_classes, held_out.held_out_class(config, info.num_classes))
  model = build_model(config, len(ids), info.ignore_index)
  crop = tuple(config.dataset.crop_size)
  mesh = sharding.create_mesh(jax.devices()[:1])
  state, _, _ = train.create_train_state(config, model, mesh, (1, crop[0], crop[1], 3))
  state = train.restore_checkpoint(config, workdir, state, step)
  return model, jax.device_get(state.variables()), info


def main(argv):
  from absl import app, flags
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from protoseg_jax import checkpoints, held_out
  workdir = os.path.expanduser(FLAGS.workdir)
  output = os.path.expanduser(FLAGS.output)
  pairs = list_support(os.path.expanduser(FLAGS.support))
  model, variables, info = restore_variables(FLAGS.config, workdir, FLAGS.checkpoint_step)
  k = held_out.held_out_class(FLAGS.config, info.num_classes)
  name = FLAGS.name or (info.class_names[k] if k != held_out.NONE else None)
  if not name:
    raise app.UsageError("--name is required (no config.dataset.held_out_class to add back)")
  new, n = add_class_from_support(FLAGS.config, model, variables, pairs)
  os.makedirs(output, exist_ok=True)
  checkpoints.save_variables(new, output)
  names = list(held_out.class_names(info.class_names,
                                    held_out.model_class_ids(info.num_classes, k))) + [name]
  record = {"num_classes": len(names), "class_names": names,
            "added": {"name": name, "support_images": len(pairs), "support_pixels": int(n)}}
  if k != held_out.NONE and name == info.class_names[k]:   # the held-out class comes back
    record["dataset_class_ids"] = list(held_out.model_class_ids(info.num_classes, k, added=True))
  with open(os.path.join(output, "classes.json"), "w") as f:
    json.dump(record, f, indent=1)
  print(f"added class {len(names) - 1} {name!r} from {len(pairs)} images ({n} embedding "
        f"pixels); wrote {output}/variables and classes.json")


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  flags.DEFINE_string("workdir", None, "Training directory with checkpoints.")
  flags.DEFINE_string("support", None, "Directory of <stem>.png|jpg images and <stem>_mask.png masks.")
  flags.DEFINE_string("name", None, "Name of the new class (default: the dataset's name of "
                      "config.dataset.held_out_class).")
  flags.DEFINE_string("output", None, "Output directory (variables/ and classes.json).")
  flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step (default: latest).")
  config_flags.DEFINE_config_file("config", None, "Run config (configs/*.py[:variant]).",
                                  lock_config=True)
  flags.mark_flags_as_required(["config", "workdir", "support", "output"])


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
