"""Where the looks go (issue 32, item 2): which representation still knows a pixel's look?

The demo records each pixel's look within its class ('appearance'). The
prototypes' appearance NMI (prototype_stats) is near 0 on the trained demo
runs: the prototype a pixel retrieves says nothing about its look. Either
the embedding still separates the looks and the assignment fails to give
each look its prototypes, or the looks are gone from the embedding already
and no prototype update can bring them back. This compares, for each class
with two looks or more, over the validation pixels of that class at feature
resolution (exactly the pixels `prototype_stats.make_usage_step` counts:
every labelled pixel inside the image, correctly classified or not, label
and look resized to the feature map with the head's PyTorch-nearest rule):

  nmi_embedding  NMI(look, k-means of the head's unit embeddings [D]):
                 spherical (cosine) k-means, the geometry the prototypes live in
  nmi_decoder    NMI(look, k-means of the decoder output, the tensor the
                 ProtoSegHead receives before its projection (for the demo's
                 HRNet: concatenated branches -> 3x3 conv -> BN -> ReLU) [D_in]):
                 Euclidean k-means
  nmi_rgb        NMI(look, k-means of the input colours at the same pixels:
                 the eval image (un-normalised with the config's mean / std)
                 resized to the feature map as the labels are): Euclidean
  nmi_prototype  NMI(look, retrieved prototype): prototype_stats' appearance
                 NMI on these pixels (next to it, nmi_prototype_logged: the
                 run's val/proto_appearance_nmi_per_class logged at the
                 checkpoint's step, the same number where the pixels agree)

with k = M (the run's prototypes per class), k-means++ initialisation from a
fixed seed, `--restarts` restarts, the one of least inertia kept. Every NMI
is `prototype_stats.appearance_nmi` of the look x cluster count table.

A low k-means NMI says the looks are not the main structure of a
representation, not that they are absent from it; so, next to it:

  probe_*        held-out accuracy of a linear softmax probe predicting the
                 look from the same embedding / decoder output / colours,
                 trained on the pixels of the even validation images and
                 scored on those of the odd ones (probe_majority: the most
                 frequent look's share of the scored pixels, the chance level)

  python -m bench.bench_looks --workdir=/tmp/demo_base31 [--data_dir=DIR]
      [--checkpoint_step=200 | --at_init]
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from protoseg_jax import prototype_stats, sharding, train
from protoseg_jax.heads import ProtoSegHead
from protoseg_jax.models.segmentor import Segmentor
from protoseg_jax.trainer import cli, input_pipeline, paths
from protoseg_jax.trainer import run as runs

REPRESENTATIONS = ("embedding", "decoder", "rgb")


# --- k-means and NMI -------------------------------------------------------------

def _plus_plus(x: np.ndarray, k: int, gen: np.random.Generator) -> np.ndarray:
  """k-means++ seeds: each next centre drawn with probability ~ its squared
  distance to the nearest centre so far."""
  centres = [x[gen.integers(len(x))]]
  d2 = np.sum((x - centres[0]) ** 2, axis=1)
  for _ in range(1, k):
    total = d2.sum()
    i = gen.choice(len(x), p=d2 / total) if total > 0 else gen.integers(len(x))
    centres.append(x[i])
    d2 = np.minimum(d2, np.sum((x - x[i]) ** 2, axis=1))
  return np.stack(centres)


def kmeans(x, k: int, *, cosine: bool = False, restarts: int = 10, iters: int = 100,
           seed: int = 0) -> np.ndarray:
  """Cluster ids [N] of the rows of x [N, F] (deterministic for a seed).

  cosine: spherical k-means (rows and centres on the unit sphere; a pixel
  goes to the centre of largest cosine, which on unit vectors is the
  nearest one); else Euclidean. Of `restarts` k-means++ runs, the one of
  least inertia (sum of squared distances to the centres) is kept.
  """
  x = np.asarray(x, np.float64)
  if cosine:
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  k = min(k, len(x))
  gen = np.random.default_rng(seed)
  sq = np.sum(x * x, axis=1)
  best, best_inertia = None, math.inf
  for _ in range(restarts):
    centres = _plus_plus(x, k, gen)
    for _ in range(iters):
      d2 = sq[:, None] - 2 * x @ centres.T + np.sum(centres * centres, axis=1)[None]
      ids = np.argmin(d2, axis=1)
      sums = np.zeros_like(centres)
      np.add.at(sums, ids, x)
      sizes = np.bincount(ids, minlength=k)
      # An emptied cluster keeps its centre (it may win pixels back).
      new = np.where(sizes[:, None] > 0, sums / np.maximum(sizes, 1)[:, None], centres)
      if cosine:
        new = new / np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
      done = np.allclose(new, centres)
      centres = new
      if done:
        break
    d2 = sq[:, None] - 2 * x @ centres.T + np.sum(centres * centres, axis=1)[None]
    ids = np.argmin(d2, axis=1)
    inertia = float(np.sum(np.maximum(d2[np.arange(len(x)), ids], 0.0)))
    if inertia < best_inertia:
      best, best_inertia = ids, inertia
  return best


def look_cluster_nmi(looks, clusters) -> float:
  """NMI between looks [N] and cluster ids [N] (ints >= 0), by
  `prototype_stats.appearance_nmi` of their [1, A, K] count table (NaN with
  fewer than two looks)."""
  looks, clusters = np.asarray(looks, np.int64), np.asarray(clusters, np.int64)
  table = np.zeros((1, looks.max() + 1, clusters.max() + 1), np.int64)
  np.add.at(table[0], (looks, clusters), 1)
  return float(prototype_stats.appearance_nmi(table)[0])


def probe_accuracy(x, looks, train, *, steps: int = 300, lr: float = 0.05,
                   l2: float = 1e-3) -> float:
  """Held-out accuracy of a linear softmax probe predicting the look from x
  [N, F]: trained (full batch, Adam, L2 `l2`, features standardised with the
  training rows' mean / std) on the rows where `train`, scored on the
  others. Where k-means asks whether the looks are the main structure of a
  representation, this asks whether they are in it at all."""
  x, looks, train = np.asarray(x, np.float32), np.asarray(looks), np.asarray(train, bool)
  mean, std = x[train].mean(0), x[train].std(0) + 1e-6
  x = jnp.asarray((x - mean) / std)
  num_looks = int(looks.max()) + 1
  onehot = jax.nn.one_hot(jnp.asarray(looks), num_looks)
  weight = jnp.asarray(train, jnp.float32) / max(int(train.sum()), 1)

  def loss(params):
    logits = x @ params["w"] + params["b"]
    ce = -jnp.sum(onehot * jax.nn.log_softmax(logits), axis=1)
    return jnp.sum(weight * ce) + l2 * jnp.sum(params["w"] ** 2)

  opt = optax.adam(lr)
  params = {"w": jnp.zeros((x.shape[1], num_looks)), "b": jnp.zeros(num_looks)}

  @jax.jit
  def fit(params):
    def step(carry, _):
      params, state = carry
      updates, state = opt.update(jax.grad(loss)(params), state)
      return (optax.apply_updates(params, updates), state), None
    return jax.lax.scan(step, (params, opt.init(params)), None, length=steps)[0][0]

  params = fit(params)
  hit = np.asarray(jnp.argmax(x @ params["w"] + params["b"], axis=1)) == looks
  return float(hit[~train].mean())


# --- the validation pixels at feature resolution ---------------------------------------

def to_feature_grid(maps, src_hw, part_hw, grid_hw, fill=-1) -> np.ndarray:
  """maps [B, H, W, ...] (each example's content in its first src_hw [B, 2]
  rows / columns) -> [B, h, w, ...]: the content resized to its part
  part_hw [B, 2] of the grid (h, w) with PyTorch `nearest` (row i <-
  floor(i * src_h / part_h)), `fill` outside the part; the resizing of
  `prototype_stats.make_usage_step`, in NumPy."""
  maps = np.asarray(maps)
  h, w = grid_hw
  out = np.full((maps.shape[0], h, w) + maps.shape[3:], fill, maps.dtype)
  for b, ((sh, sw), (ph, pw)) in enumerate(zip(np.asarray(src_hw), np.asarray(part_hw))):
    rows = np.minimum(np.arange(ph) * sh // max(ph, 1), maps.shape[1] - 1)
    cols = np.minimum(np.arange(pw) * sw // max(pw, 1), maps.shape[2] - 1)
    out[b, :ph, :pw] = maps[b][rows[:, None], cols[None, :]]
  return out


def head_input_and_embeddings(model, variables, images):
  """(decoder output [B, h, w, D_in]: what the ProtoSegHead projects, its
  unit embeddings [B, h, w, D]) at inference, read with flax's
  capture_intermediates (the model's outputs are unchanged)."""
  wanted = lambda mdl, method: method == "__call__" and (
      isinstance(mdl, ProtoSegHead)
      or (mdl.name == "decoder" and isinstance(mdl.parent, Segmentor)))
  _, state = model.apply(variables, images, train=False, capture_intermediates=wanted,
                         mutable=["intermediates"])
  inter = state["intermediates"]
  return inter["decoder"]["__call__"][0], inter["head"]["__call__"][0].embeddings


PIXEL_KEYS = ("label", "look", "embedding", "decoder", "rgb", "prototype", "image")


def batch_pixels(batch: dict, features, embeddings, prototypes, label_lut, mean, std
                 ) -> dict[str, np.ndarray]:
  """Per pixel that `prototype_stats.make_usage_step` counts in one eval batch
  (labelled, inside the image, look recorded): label, look, embedding,
  decoder feature, RGB colour, retrieved prototype, image (its row in the
  batch). features / embeddings [B, h, w, *]: the model's on batch["image"]
  (`head_input_and_embeddings`);
  label_lut: dataset label -> model class; mean, std: the image's
  normalisation, undone for the colours."""
  batch = {k: np.asarray(v) for k, v in batch.items()}
  emb = np.asarray(embeddings)
  h, w = emb.shape[1:3]
  hc, wc = batch["image"].shape[1:3]
  ihw, lhw = batch["image_hw"].astype(np.int64), batch["label_hw"].astype(np.int64)
  part = np.stack([-(-ihw[:, 0] * h // hc), -(-ihw[:, 1] * w // wc)], axis=1)
  lut = np.asarray(label_lut)
  y = to_feature_grid(batch["label"], lhw, part, (h, w))
  y = np.where((y >= 0) & (y < len(lut)), lut[np.clip(y, 0, len(lut) - 1)], -1)
  y = np.where(batch["mask"][:, None, None], y, -1)
  look = to_feature_grid(batch["appearance"], lhw, part, (h, w))
  rgb = to_feature_grid(batch["image"] * np.asarray(std) + np.asarray(mean), ihw, part, (h, w),
                        fill=0)
  c = prototype_stats.prototype_array(prototypes).shape[0]
  keep = (y >= 0) & (y < c) & (look >= 0) & (look < prototype_stats.MAX_LOOKS)
  retrieved = np.asarray(prototype_stats.retrieved_prototype(prototypes, emb, y))
  image = np.broadcast_to(np.arange(len(y))[:, None, None], y.shape)
  values = (y, look, emb, np.asarray(features), rgb, retrieved, image)
  return {k: v[keep] for k, v in zip(PIXEL_KEYS, values)}


def class_pixels(run, max_batches: Optional[int], variables=None) -> dict[str, np.ndarray]:
  """`batch_pixels` over the first `max_batches` eval batches (None: all), of
  the run's model with `variables` (default: the run's)."""
  variables = run.variables if variables is None else variables
  batches = input_pipeline.create_eval_iterator(run.config, sharding.batch_sharding(run.mesh),
                                                run=run.classes)
  forward = jax.jit(lambda v, x: head_input_and_embeddings(run.model, v, x))
  norm = (np.asarray(run.config.dataset.mean, np.float32),
          np.asarray(run.config.dataset.std, np.float32))
  out = {k: [] for k in PIXEL_KEYS}
  for i, batch in enumerate(batches):
    if max_batches is not None and 0 <= max_batches <= i:
      break
    if "appearance" not in batch:
      raise SystemExit("the dataset records no looks ('appearance'): nothing to measure")
    feat, emb = forward(variables, batch["image"])
    got = batch_pixels(batch, feat, emb, variables["prototypes"], run.classes.label_lut(),
                       *norm)
    got["image"] = got["image"] + i * len(batch["mask"])    # the image's row in the split
    for k in PIXEL_KEYS:
      out[k].append(got[k])
  return {k: np.concatenate(v) for k, v in out.items()}


# --- per class -------------------------------------------------------------------------

def class_rows(pixels: dict, names, k: int, restarts: int = 10, seed: int = 0) -> list[dict]:
  """One record per class with two looks or more among its pixels."""
  rows = []
  for c, name in enumerate(names):
    sel = pixels["label"] == c
    looks = pixels["look"][sel]
    per_look = np.bincount(looks, minlength=1) if looks.size else np.zeros(0, np.int64)
    if np.count_nonzero(per_look) < 2:
      continue
    row = {"class": name, "pixels": int(sel.sum()),
           "pixels_per_look": {int(a): int(n) for a, n in enumerate(per_look) if n},
           "k": k}
    for rep in REPRESENTATIONS:
      ids = kmeans(pixels[rep][sel], k, cosine=rep == "embedding", restarts=restarts, seed=seed)
      row[f"nmi_{rep}"] = round(look_cluster_nmi(looks, ids), 4)
    row["nmi_prototype"] = round(look_cluster_nmi(looks, pixels["prototype"][sel]), 4)
    # Probes: trained on the even images' pixels, scored on the odd images'.
    train = pixels["image"][sel] % 2 == 0
    test_looks = looks[~train]
    row["probe_majority"] = round(float(np.bincount(test_looks).max() / max(test_looks.size, 1)), 4)
    for rep in REPRESENTATIONS:
      row[f"probe_{rep}"] = round(probe_accuracy(pixels[rep][sel], looks, train), 4)
    rows.append(row)
  return rows


def logged_prototype_nmi(workdir: str, step: Optional[int]) -> dict:
  """{class: NMI} of val/proto_appearance_nmi_per_class in the run's
  metrics.jsonl at `step` (the last such record of that step; {} if none)."""
  per = {}
  path = paths.resolve(workdir) / "metrics.jsonl"
  if step is None or not path.exists():
    return per
  for line in path.read_text().splitlines():
    rec = json.loads(line) if line.strip() else {}
    if rec.get("step") == step and "val/proto_appearance_nmi_per_class" in rec:
      per = rec["val/proto_appearance_nmi_per_class"]
  return per


def markdown(rows: list[dict]) -> str:
  head = ("| class | pixels per look | NMI embedding (cos k-means) | NMI decoder output | "
          "NMI RGB | NMI prototype (logged) | probe acc. embedding / decoder / RGB "
          "(majority) |")
  lines = [head, "|" + "---|" * 7]
  for r in rows:
    looks = ", ".join(f"{a}: {n}" for a, n in r["pixels_per_look"].items())
    logged = r.get("nmi_prototype_logged")
    probes = " / ".join(f"{r[f'probe_{rep}']:.2f}" for rep in REPRESENTATIONS)
    lines.append(f"| {r['class']} | {looks} | {r['nmi_embedding']:.3f} | {r['nmi_decoder']:.3f} "
                 f"| {r['nmi_rgb']:.3f} | {r['nmi_prototype']:.3f} "
                 f"({'-' if logged is None else format(logged, '.3f')}) "
                 f"| {probes} ({r['probe_majority']:.2f}) |")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--data_dir", default=None, help="where the dataset is prepared, if moved")
  ap.add_argument("--max_batches", type=int, default=None,
                  help="eval batches (default: the run's config.eval.proto_usage_batches, "
                       "as its logged NMI; -1: all)")
  ap.add_argument("--checkpoint_step", type=int, default=None,
                  help="that checkpoint instead of the newest")
  ap.add_argument("--at_init", action="store_true",
                  help="the run's step-0 variables (train.init_variables from its config.seed, "
                       "no init_from): were the looks in the untrained network?")
  ap.add_argument("--restarts", type=int, default=10)
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args(argv)
  config = runs.read_config(a.workdir)
  if a.data_dir:
    config.dataset.data_dir = a.data_dir
  run = cli.load_tool_run(a.workdir, config=config, needs_prototypes=True,
                          checkpoint_step=a.checkpoint_step)
  variables, step = run.variables, run.step
  if a.at_init:
    if config.init_from:
      raise SystemExit("--at_init: the run starts from config.init_from, not from its seed")
    variables, step = train.init_variables(config, run.model, run.mesh)[0], 0
  limits = [int(n) for n in (a.max_batches if a.max_batches is not None
                             else config.eval.proto_usage_batches, config.max_eval_batches)
            if n is not None and int(n) >= 0]
  pixels = class_pixels(run, min(limits) if limits else None, variables)
  m = prototype_stats.prototype_array(variables["prototypes"]).shape[1]
  # The run's own evaluation of these prototypes (none for --at_init).
  logged = logged_prototype_nmi(a.workdir, step) if not a.at_init else {}
  rows = class_rows(pixels, run.classes.names, m, a.restarts, a.seed)
  for r in rows:
    r["nmi_prototype_logged"] = logged.get(r["class"])
    print(json.dumps({"workdir": a.workdir, "checkpoint_step": step, **r}))
  print(markdown(rows))


if __name__ == "__main__":
  main()
