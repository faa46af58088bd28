"""Add a class after training from a few images (issue 11, item 5), measured on the demo.

A model trained with one class held out of its labels
(config.dataset.held_out_class) gets that class back from K support images
of the TRAIN split (`python -m protoseg_jax.add_class`: its M prototypes are
appended, nothing else changes); it is evaluated before and after, beside the
same model trained with all classes. Run the two trainings first, one after
the other:

  python main.py --config=configs/demo.py --workdir=/tmp/fewshot/full
  python main.py --config=configs/demo.py --workdir=/tmp/fewshot/held3 \
      --config.dataset.held_out_class=3
  python bench/bench_few_shot.py --full_workdir=/tmp/fewshot/full \
      --held_out_workdir=/tmp/fewshot/held3 --held_out_class=3 --shots=5 \
      --output=/tmp/fewshot/add3

(add --data_dir=DIR to all three if the demo is not in TFDS's default
data_dir). Support images: the first K train examples in stored order with at
least --min_pixels pixels of the class, written as <name>.png and
<name>_mask.png (1 = the class, 255 = the label's ignore band, 0 = rest).

Prints JSON lines: the support set, the add_class run, then for each model
(full / held_out / added / readded) mIoU, mAcc, aAcc, per-class IoU, the
held-out class's IoU and the mean IoU of the other classes; all on the
validation split against the real labels (`held_out.model_class_ids` maps
each model output to its dataset class). "readded" is a control: the FULL
model with the class's prototypes (and mask_norm entry) removed, re-added
by `add_class.add_class_from_support` from the same support images; it
separates what the add-class step can do from what the held-out training's
embedding allows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def demo_config(data_dir, held_out_class=-1):
  from configs import demo
  config = demo.get_config()
  config.dataset.data_dir = data_dir
  config.dataset.held_out_class = held_out_class
  return config


def write_support(config, class_id: int, shots: int, min_pixels: int, out_dir: str) -> list:
  """The first `shots` train examples (stored order) with >= min_pixels of class_id."""
  import tensorflow_datasets as tfds
  from PIL import Image
  from protoseg_jax import datasets
  builder = datasets.check_prepared(config)
  ignore = datasets.builder_meta(builder).ignore_index
  os.makedirs(out_dir, exist_ok=True)
  chosen = []
  ds = builder.as_dataset(split=config.dataset.train_split, shuffle_files=False,
                          read_config=tfds.ReadConfig(try_autocache=False))
  for ex in tfds.as_numpy(ds):
    label = ex["label"][..., 0] if ex["label"].ndim == 3 else ex["label"]
    n = int((label == class_id).sum())
    if n < min_pixels:
      continue
    name = ex["file_name"].decode()
    Image.fromarray(ex["image"]).save(os.path.join(out_dir, f"{name}.png"))
    mask = np.where(label == class_id, 1, np.where(label == ignore, 255, 0)).astype(np.uint8)
    Image.fromarray(mask).save(os.path.join(out_dir, f"{name}_mask.png"))
    chosen.append({"name": name, "pixels": n})
    if len(chosen) == shots:
      return chosen
  raise ValueError(f"only {len(chosen)} train examples with >= {min_pixels} pixels of class "
                   f"{class_id}")


def evaluate(config, model, variables, class_ids, info, held: int) -> dict:
  """Metrics of `variables` on the eval split, each output scored as its dataset class."""
  import jax
  from protoseg_jax import evaluate as evaluation
  from protoseg_jax import input_pipeline, sharding, train
  mesh = sharding.create_mesh(jax.devices()[:1])
  step = train.make_eval_step(model, config, mesh, info.num_classes, info.ignore_index,
                              class_ids=class_ids)
  evaluator = evaluation.Evaluator(step, num_classes=info.num_classes,
                                   class_names=info.class_names, log_every=0)
  batches = input_pipeline.create_eval_iterator(config, sharding.batch_sharding(mesh))
  m = evaluator.evaluate(jax.device_put(variables, sharding.replicated(mesh)), batches)
  iou = np.asarray(m["IoU"], np.float64)
  others = np.delete(iou, held)
  return {"mIoU": round(float(m["mIoU"]), 2), "mAcc": round(float(m["mAcc"]), 2),
          "aAcc": round(float(m["aAcc"]), 2),
          "IoU": {n: round(float(v), 2) for n, v in zip(info.class_names, iou)},
          "held_out_IoU": round(float(iou[held]), 2),
          "others_mIoU": round(float(np.nanmean(others)), 2),
          # where the held-out class's pixels go, and what is predicted as it
          "held_out_pixels_predicted_as": dict(zip(info.class_names,
                                                   m["confusion"][held].tolist())),
          "predicted_as_held_out": dict(zip(info.class_names, m["confusion"][:, held].tolist())),
          "class_ids": list(class_ids)}


def drop_class(variables: dict, k: int) -> dict:
  """A ProtoSeg Segmentor's variables without class k (prototypes and mask_norm)."""
  if "aux_head" in variables["params"]:
    raise ValueError("drop_class: models with an auxiliary head are not handled")
  head = dict(variables["params"]["head"])
  head["mask_norm"] = {n: np.delete(np.asarray(a), k, axis=-1)
                       for n, a in head["mask_norm"].items()}
  protos = np.delete(np.asarray(variables["prototypes"]["head"]["prototypes"]), k, axis=0)
  return {**variables, "params": {**variables["params"], "head": head},
          "prototypes": {"head": {"prototypes": protos}}}


def _last_val(workdir: str) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    recs = [json.loads(line) for line in f]
  return [r for r in recs if "val/mIoU" in r][-1]


def _same_bits_except_new_class(old, new) -> bool:
  """Every array of `old` equal in bits to `new`'s (for the arrays with one
  more class, their first C entries along the class axis)."""
  import jax
  flat_new = dict(jax.tree_util.tree_flatten_with_path(new)[0])
  for path, a in jax.tree_util.tree_flatten_with_path(old)[0]:
    a, b = np.asarray(a), np.asarray(flat_new[path])
    if a.shape != b.shape:
      axis = 0 if "'prototypes'" in jax.tree_util.keystr(path) else -1
      b = np.take(b, np.arange(a.shape[axis]), axis=axis)
    if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
      return False
  return True


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--full_workdir", required=True)
  p.add_argument("--held_out_workdir", required=True)
  p.add_argument("--held_out_class", type=int, required=True)
  p.add_argument("--shots", type=int, default=5)
  p.add_argument("--min_pixels", type=int, default=150)
  p.add_argument("--output", required=True)
  p.add_argument("--data_dir", default=None)
  args = p.parse_args()

  from protoseg_jax import add_class, checkpoints, datasets, held_out
  k = args.held_out_class
  full_cfg = demo_config(args.data_dir)
  held_cfg = demo_config(args.data_dir, k)
  info = datasets.get_dataset_info(full_cfg)
  support = os.path.join(args.output, "support")
  chosen = write_support(full_cfg, k, args.shots, args.min_pixels, support)
  print(json.dumps({"support": chosen, "class": info.class_names[k], "class_id": k}), flush=True)

  added_dir = os.path.join(args.output, "added")
  cmd = [sys.executable, "-m", "protoseg_jax.add_class", "--config=configs/demo.py",
         f"--config.dataset.held_out_class={k}", f"--workdir={args.held_out_workdir}",
         f"--support={support}", f"--output={added_dir}"]
  if args.data_dir:
    cmd.append(f"--config.dataset.data_dir={args.data_dir}")
  run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
  with open(os.path.join(added_dir, "classes.json")) as f:
    classes = json.load(f)
  print(json.dumps({"add_class": " ".join(cmd[1:]), "stdout": run.stdout.strip(),
                    "classes": classes}), flush=True)

  from protoseg_jax.models.segmentor import build_model
  results, restored = {}, {}
  for name, cfg, workdir in (("full", full_cfg, args.full_workdir),
                             ("held_out", held_cfg, args.held_out_workdir)):
    model, variables, _ = add_class.restore_variables(cfg, workdir)
    restored[name] = (model, variables)
    ids = held_out.model_class_ids(info.num_classes, held_out.held_out_class(cfg, info.num_classes))
    results[name] = evaluate(cfg, model, variables, ids, info, k)
    results[name]["logged_mIoU"] = round(float(_last_val(workdir)["val/mIoU"]), 2)
    print(json.dumps({"model": name, **results[name]}), flush=True)
  ids = tuple(classes["dataset_class_ids"])
  assert ids == held_out.model_class_ids(info.num_classes, k, added=True)
  model_added = build_model(held_cfg, len(ids), info.ignore_index)
  new = checkpoints.load_variables(added_dir)
  results["added"] = evaluate(held_cfg, model_added, new, ids, info, k)
  results["added"]["held_out_model_unchanged"] = _same_bits_except_new_class(
      restored["held_out"][1], new)
  print(json.dumps({"model": "added", **results["added"]}), flush=True)

  # Control: the full model's embedding, the class's prototypes removed and re-added.
  dropped = drop_class(restored["full"][1], k)
  readded, n = add_class.add_class_from_support(
      held_cfg, build_model(held_cfg, info.num_classes - 1, info.ignore_index), dropped,
      add_class.list_support(support))
  results["readded"] = evaluate(held_cfg, model_added, readded, ids, info, k)
  results["readded"]["support_pixels"] = int(n)
  print(json.dumps({"model": "readded", **results["readded"]}), flush=True)
  print(json.dumps({
      "summary": f"{info.class_names[k]} ({k}) from {args.shots} train images",
      "held_out_IoU_after_adding": results["added"]["held_out_IoU"],
      "others_mIoU_before": results["held_out"]["others_mIoU"],
      "others_mIoU_after": results["added"]["others_mIoU"],
      "others_mIoU_full_model": results["full"]["others_mIoU"],
      "held_out_IoU_full_model": results["full"]["held_out_IoU"],
      "held_out_IoU_readded_to_full_model": results["readded"]["held_out_IoU"],
      "others_mIoU_readded_to_full_model": results["readded"]["others_mIoU"]}), flush=True)


if __name__ == "__main__":
  main()
