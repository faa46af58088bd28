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
  python -m bench.bench_few_shot --full_workdir=/tmp/fewshot/full \
      --held_out_workdir=/tmp/fewshot/held3 --held_out_class=3 --shots=5 \
      --output=/tmp/fewshot/add3

(add --data_dir=DIR to all three if the demo is not in TFDS's default
data_dir; --config=configs/<name>.py[:variant] names the run config both
models were trained with, default configs/demo.py). Support images: the first K train examples in stored order with at
least --min_pixels pixels of the class, written as <name>.png and
<name>_mask.png (1 = the class, 255 = the label's ignore band, 0 = rest).

The full and held-out models, and the added one (add_class's OUT, a workdir
of its own), are loaded with `protoseg_jax.trainer.run.load_run`: each
with its classes (`LoadedRun.classes`, from the workdir's run.json: the
dataset's class id of each model output).

Prints JSON lines: the support set, the add_class run (with the added
model's classes from OUT/run.json), then for each model (full / held_out /
added / readded) mIoU, mAcc, aAcc, per-class IoU, the held-out class's IoU
and the mean IoU of the other classes; all on the validation split against
the real labels (the run's `classes.class_ids` map each model output to its
dataset class). "readded" is a control: the FULL model with the class's
prototypes (and mask_norm entry) removed, re-added by
`add_class.add_class_from_support` from the same support images; it
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

from bench import harness

ROOT = harness.ROOT


def demo_config(data_dir, held_out_class=-1, spec="configs/demo.py"):
  """The run config of both trainings (`spec`, default the demo's)."""
  return harness.load_config(spec, {"dataset.data_dir": data_dir,
                                    "dataset.held_out_class": held_out_class})


def write_support(config, class_id: int, shots: int, min_pixels: int, out_dir: str) -> list:
  """The first `shots` train examples (stored order) with >= min_pixels of class_id."""
  import tensorflow_datasets as tfds
  from PIL import Image
  from protoseg_jax.trainer import datasets
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


def evaluate(config, model, variables, classes, mesh, held: int) -> dict:
  """Metrics of `variables` on the eval split, each output scored as its
  class id (`classes`: a `classes.ClassMap`; the confusion matrix is
  classes.num_ids square)."""
  import jax
  from protoseg_jax import evaluate as evaluation
  from protoseg_jax import sharding, train
  from protoseg_jax.trainer import input_pipeline
  step = train.make_eval_step(model, config, mesh, classes.num_ids, classes.ignore_index,
                              class_ids=classes.class_ids)
  evaluator = evaluation.Evaluator(step, num_classes=classes.num_ids, class_names=classes.names,
                                   log_every=0)
  batches = input_pipeline.create_eval_iterator(config, sharding.batch_sharding(mesh),
                                                run=classes)
  m = evaluator.evaluate(jax.device_put(variables, sharding.replicated(mesh)), batches)
  iou = np.asarray(m["IoU"], np.float64)
  others = np.delete(iou, held)
  names = classes.names
  return {"mIoU": round(float(m["mIoU"]), 2), "mAcc": round(float(m["mAcc"]), 2),
          "aAcc": round(float(m["aAcc"]), 2),
          "IoU": {n: round(float(v), 2) for n, v in zip(names, iou)},
          "held_out_IoU": round(float(iou[held]), 2),
          "others_mIoU": round(float(np.nanmean(others)), 2),
          # where the held-out class's pixels go, and what is predicted as it
          "held_out_pixels_predicted_as": dict(zip(names, m["confusion"][held].tolist())),
          "predicted_as_held_out": dict(zip(names, m["confusion"][:, held].tolist())),
          "class_ids": list(classes.class_ids)}


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


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--full_workdir", required=True)
  p.add_argument("--held_out_workdir", required=True)
  p.add_argument("--held_out_class", type=int, required=True)
  p.add_argument("--shots", type=int, default=5)
  p.add_argument("--min_pixels", type=int, default=150)
  p.add_argument("--output", required=True)
  p.add_argument("--data_dir", default=None)
  p.add_argument("--config", default="configs/demo.py",
                 help="the run config both models were trained with (configs/<name>.py[:variant])")
  args = p.parse_args(argv)

  import jax

  from protoseg_jax import add_class, held_out
  from protoseg_jax.trainer import run as runs
  k = args.held_out_class
  full_cfg = demo_config(args.data_dir, spec=args.config)
  held_cfg = demo_config(args.data_dir, k, spec=args.config)
  support = os.path.join(args.output, "support")
  chosen = write_support(full_cfg, k, args.shots, args.min_pixels, support)

  results, loaded = {}, {}
  for name, cfg, workdir in (("full", full_cfg, args.full_workdir),
                             ("held_out", held_cfg, args.held_out_workdir)):
    loaded[name] = runs.load_run(workdir, cfg, devices=jax.devices()[:1])
  classes_full = loaded["full"].classes
  print(json.dumps({"support": chosen, "class": classes_full.names[k], "class_id": k}),
        flush=True)

  added_dir = os.path.join(args.output, "added")
  cmd = [sys.executable, "-m", "protoseg_jax.add_class", f"--config={args.config}",
         f"--config.dataset.held_out_class={k}", f"--workdir={args.held_out_workdir}",
         f"--support={support}", f"--output={added_dir}"]
  if args.data_dir:
    cmd.append(f"--config.dataset.data_dir={args.data_dir}")
  run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if run.returncode != 0:
    sys.stderr.write(run.stdout[-2000:] + run.stderr[-4000:])
    raise SystemExit(f"add_class failed (exit {run.returncode}): {' '.join(cmd[1:])}")
  added = loaded["added"] = runs.load_run(added_dir, held_cfg, devices=jax.devices()[:1])
  if not added.classes.added:
    raise SystemExit(f"{added_dir} has no run.json recording the class: add_class wrote no "
                     "run description")
  # The added model's classes, from OUT/run.json (the fields classes.json had).
  classes = {"num_classes": added.classes.num_outputs,
             "class_names": list(added.classes.output_names),
             "added": dict(added.classes.added[-1]),
             "dataset_class_ids": list(added.classes.class_ids),
             "num_ids": added.classes.num_ids}
  print(json.dumps({"add_class": " ".join(cmd[1:]), "stdout": run.stdout.strip(),
                    "classes": classes}), flush=True)

  for name in ("full", "held_out"):
    r = loaded[name]
    results[name] = evaluate(r.config, r.model, r.variables, r.classes, r.mesh, k)
    results[name]["logged_mIoU"] = round(float(_last_val(
        args.full_workdir if name == "full" else args.held_out_workdir)["val/mIoU"]), 2)
    print(json.dumps({"model": name, **results[name]}), flush=True)
  ids = tuple(added.classes.class_ids)
  assert ids == held_out.model_class_ids(classes_full.num_dataset_classes, k, added=True), ids
  results["added"] = evaluate(added.config, added.model, added.variables, added.classes,
                              added.mesh, k)
  results["added"]["held_out_model_unchanged"] = _same_bits_except_new_class(
      jax.device_get(loaded["held_out"].variables), jax.device_get(added.variables))
  print(json.dumps({"model": "added", **results["added"]}), flush=True)

  # Control: the full model's embedding, the class's prototypes removed and re-added.
  from protoseg_jax.models.segmentor import build_model
  full = loaded["full"]
  dropped = drop_class(jax.device_get(full.variables), k)
  readded, n = add_class.add_class_from_support(
      held_cfg, build_model(held_cfg, classes_full.num_outputs - 1, classes_full.ignore_index),
      dropped, add_class.list_support(support))
  results["readded"] = evaluate(held_cfg, added.model, readded, added.classes, added.mesh, k)
  results["readded"]["support_pixels"] = int(n)
  print(json.dumps({"model": "readded", **results["readded"]}), flush=True)
  print(json.dumps({
      "summary": f"{classes_full.names[k]} ({k}) from {args.shots} train images",
      "held_out_IoU_after_adding": results["added"]["held_out_IoU"],
      "others_mIoU_before": results["held_out"]["others_mIoU"],
      "others_mIoU_after": results["added"]["others_mIoU"],
      "others_mIoU_full_model": results["full"]["others_mIoU"],
      "held_out_IoU_full_model": results["full"]["held_out_IoU"],
      "held_out_IoU_readded_to_full_model": results["readded"]["held_out_IoU"],
      "others_mIoU_readded_to_full_model": results["readded"]["others_mIoU"]}), flush=True)


if __name__ == "__main__":
  main()
