"""Prototype diagnostics: are the M prototypes of each class alive and distinct?

Definitions (C classes, M prototypes per class, prototypes P [C, M, D]; every
statistic L2-normalises P along D first, as the head does):

  pairwise cosine     cos[c, i, j] = <P[c, i], P[c, j]>                 [C, M, M]
  mean cosine         mean over the M*(M-1) off-diagonal entries of
                      cos[c] (i != j); NaN when M == 1                  [C]
  distinct            prototypes of class c that are not near-copies of
                      an earlier one: m counts when cos[c, m, m'] <
                      `threshold` (0.99) for every m' < m. Identical
                      prototypes give 1, M orthogonal ones give M.      [C]

  From prototypes + pixel embeddings e [..., D] (unit norm, as the head's)
  + labels y [...] at the embeddings' resolution (ignored: outside [0, C)):

  retrieved prototype idx[n] = argmax_m <e_n, P[y_n, m]>: the nearest
                      prototype OF THE PIXEL'S OWN CLASS (the one that
                      gives the class score max_m in the head).
  counts[c, m]        pixels of class c retrieving prototype m          [C, M]
  usage fraction      counts[c, m] / N_c, N_c = pixels of class c;
                      NaN for a class with no pixel                     [C, M]
  used                prototypes of class c with counts[c, m] >= 1 and
                      counts[c, m] / N_c >= `min_fraction` (default 0:
                      "retrieved by at least one pixel"); 0 for a class
                      with no pixel (see `present`)                     [C]

All functions are pure jax.numpy (jit-able) and also take NumPy arrays.
`scalars(prototypes, prefix)` gives the cheap prototype-only numbers for a
training log; `main` prints the per-class table of a checkpoint or of a
converted model:

  python -m protoseg_jax.diagnostics --config=configs/X.py --workdir=DIR [--checkpoint_step=N]
  python -m protoseg_jax.diagnostics --config=configs/X.py --variables=CONVERTED_DIR
      [--num_batches=2] [--min_fraction=0.01] [--threshold=0.99]
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

DISTINCT_THRESHOLD = 0.99


def _normalize(x: jnp.ndarray) -> jnp.ndarray:
  x = jnp.asarray(x, jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prototype_array(prototypes: Any) -> jnp.ndarray:
  """The [C, M, D] array from an array, a TrainState's `prototypes` tree
  ({"head": {"prototypes": ...}}) or a whole variables dict."""
  if isinstance(prototypes, dict):
    if "prototypes" in prototypes and isinstance(prototypes["prototypes"], dict):
      prototypes = prototypes["prototypes"]      # a variables dict
    leaves = jax.tree.leaves(prototypes)
    if len(leaves) != 1:
      raise ValueError(f"expected one prototype array in the tree, found {len(leaves)}")
    prototypes = leaves[0]
  if prototypes.ndim != 3:
    raise ValueError(f"prototypes must be [C, M, D], got shape {prototypes.shape}")
  return prototypes


# --- from the prototypes alone --------------------------------------------------

def pairwise_cosine(prototypes) -> jnp.ndarray:
  """[C, M, D] -> [C, M, M] cosine similarity between a class's prototypes."""
  p = _normalize(prototype_array(prototypes))
  return jnp.einsum("cmd,cnd->cmn", p, p)


def mean_pairwise_cosine(prototypes) -> jnp.ndarray:
  """[C]: mean off-diagonal cosine of each class's prototypes (NaN if M == 1)."""
  cos = pairwise_cosine(prototypes)
  m = cos.shape[-1]
  off = 1.0 - jnp.eye(m, dtype=cos.dtype)
  if m < 2:
    return jnp.full(cos.shape[:1], jnp.nan, cos.dtype)
  return jnp.sum(cos * off, axis=(1, 2)) / (m * (m - 1))


def max_pairwise_cosine(prototypes) -> jnp.ndarray:
  """[C]: the largest off-diagonal cosine of each class (NaN if M == 1)."""
  cos = pairwise_cosine(prototypes)
  m = cos.shape[-1]
  if m < 2:
    return jnp.full(cos.shape[:1], jnp.nan, cos.dtype)
  return jnp.max(jnp.where(jnp.eye(m, dtype=bool), -jnp.inf, cos), axis=(1, 2))


def distinct_prototypes(prototypes, threshold: float = DISTINCT_THRESHOLD) -> jnp.ndarray:
  """[C] int: prototypes m with cosine < threshold to every earlier m' < m."""
  cos = pairwise_cosine(prototypes)
  m = cos.shape[-1]
  earlier = jnp.tril(jnp.ones((m, m), bool), k=-1)          # [m, m'] with m' < m
  copy = jnp.any((cos >= threshold) & earlier, axis=-1)     # [C, M]
  return jnp.sum(~copy, axis=-1).astype(jnp.int32)


# --- from prototypes + embeddings + labels ----------------------------------------

def retrieved_prototype(prototypes, embeddings, labels) -> jnp.ndarray:
  """[...] int: index m of the own-class prototype nearest each pixel (labels
  outside [0, C) give -1). embeddings [..., D], labels [...]."""
  p = _normalize(prototype_array(prototypes))
  c, m, d = p.shape
  e = jnp.asarray(embeddings, jnp.float32).reshape(-1, d)
  y = jnp.asarray(labels).reshape(-1)
  valid = (y >= 0) & (y < c)
  own = p[jnp.where(valid, y, 0)]                       # [N, M, D]
  idx = jnp.argmax(jnp.einsum("nd,nmd->nm", e, own), axis=-1)
  return jnp.where(valid, idx, -1).reshape(jnp.shape(labels))


def usage_counts(prototypes, embeddings, labels) -> jnp.ndarray:
  """[C, M] int: pixels of class c whose retrieved prototype is m."""
  c, m, _ = prototype_array(prototypes).shape
  idx = retrieved_prototype(prototypes, embeddings, labels).reshape(-1)
  y = jnp.asarray(labels).reshape(-1)
  valid = idx >= 0
  seg = jnp.where(valid, y * m + idx, c * m)              # invalid -> dropped bin
  counts = jax.ops.segment_sum(valid.astype(jnp.int32), seg, num_segments=c * m + 1)
  return counts[:-1].reshape(c, m)


def usage_fraction(counts) -> jnp.ndarray:
  """[C, M]: counts / pixels of the class; NaN rows for absent classes."""
  counts = jnp.asarray(counts, jnp.float32)
  n = jnp.sum(counts, axis=-1, keepdims=True)
  return jnp.where(n > 0, counts / jnp.maximum(n, 1.0), jnp.nan)


def used_prototypes(counts, min_fraction: float = 0.0) -> jnp.ndarray:
  """[C] int: prototypes with >= 1 pixel and a usage fraction >= min_fraction."""
  counts = jnp.asarray(counts)
  frac = jnp.nan_to_num(usage_fraction(counts), nan=0.0)
  return jnp.sum((counts >= 1) & (frac >= min_fraction), axis=-1).astype(jnp.int32)


def present_classes(counts) -> jnp.ndarray:
  """[C] bool: classes with at least one labelled pixel."""
  return jnp.sum(jnp.asarray(counts), axis=-1) > 0


# --- log scalars ---------------------------------------------------------------------

def scalars(prototypes, prefix: str = "train", *, embeddings=None, labels=None,
            threshold: float = DISTINCT_THRESHOLD, min_fraction: float = 0.0) -> dict:
  """Scalar summaries under `<prefix>/proto_*` (jax scalars; jit-able).

  From the prototypes alone (cheap: one [C, M, M] product, fine every log step):
    proto_mean_cosine   mean over classes of the mean off-diagonal cosine
    proto_max_cosine    largest off-diagonal cosine over all classes
    proto_distinct_frac distinct prototypes / (C * M) (1 = no near-copies)
  With embeddings and labels (same pixels, labels at the embeddings' size):
    proto_used_frac     used prototypes / (M * classes present), over present classes
  `prototypes` may be the array or a TrainState's prototypes tree. With
  M == 1 the two cosine keys are left out (no pairs; never a NaN in a log).
  """
  p = prototype_array(prototypes)
  c, m, _ = p.shape
  prefix = prefix.rstrip("/")
  out = {f"{prefix}/proto_distinct_frac": jnp.sum(distinct_prototypes(p, threshold)) / (c * m)}
  if m > 1:
    out[f"{prefix}/proto_mean_cosine"] = jnp.mean(mean_pairwise_cosine(p))
    out[f"{prefix}/proto_max_cosine"] = jnp.max(max_pairwise_cosine(p))
  if (embeddings is None) != (labels is None):
    raise ValueError("give both embeddings and labels, or neither")
  if embeddings is not None:
    counts = usage_counts(p, embeddings, labels)
    present = present_classes(counts)
    used = jnp.sum(jnp.where(present, used_prototypes(counts, min_fraction), 0))
    out[f"{prefix}/proto_used_frac"] = used / jnp.maximum(m * jnp.sum(present), 1)
  return out


# --- embeddings of a Segmentor with the ProtoSeg head ------------------------------

def _is_proto_head(module, method_name) -> bool:
  from protoseg_jax import heads
  return isinstance(module, heads.ProtoSegHead) and method_name == "__call__"


def embed(model, variables, images):
  """(logits [B, h, w, C], embeddings [B, h, w, D]) of a Segmentor whose head is
  ProtoSegHead, at inference (train=False, nothing updated).

  The Segmentor's output has no embeddings; the head's HeadOutput does, so it
  is captured with flax's `capture_intermediates` (filtered to the head).
  """
  out, state = model.apply(variables, images, train=False, capture_intermediates=_is_proto_head,
                           mutable=["intermediates"])
  found = [v for v in jax.tree.leaves(state["intermediates"],
                                      is_leaf=lambda x: hasattr(x, "embeddings"))
           if hasattr(v, "embeddings")]
  if len(found) != 1 or found[0].embeddings is None:
    raise ValueError("the model has no ProtoSeg head (config.model.head must be 'proto')")
  return out.logits, found[0].embeddings


def labels_at(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """[H, W] -> size with PyTorch `nearest` (floor(dst * H / h)), as the head."""
  h, w = size
  rows = (np.arange(h) * labels.shape[0]) // h
  cols = (np.arange(w) * labels.shape[1]) // w
  return labels[rows][:, cols]


def eval_usage_counts(model, variables, batches, num_classes: int, num_prototypes: int,
                      num_batches: int) -> tuple[np.ndarray, int]:
  """[C, M] usage counts over `num_batches` eval batches (input_pipeline's
  dict with image_hw / label_hw / mask); each example's embeddings are cut to
  its image and its label resized (nearest) to that size. -> (counts, images)."""
  fn = jax.jit(lambda v, x: embed(model, v, x)[1])
  protos = prototype_array(variables["prototypes"])
  counts = np.zeros((num_classes, num_prototypes), np.int64)
  images = 0
  for i, batch in enumerate(batches):
    if i >= num_batches:
      break
    emb = np.asarray(jax.device_get(fn(variables, batch["image"])))
    host = jax.device_get({k: batch[k] for k in ("image_hw", "label", "label_hw", "mask")})
    stride = batch["image"].shape[1] / emb.shape[1]
    for b in range(emb.shape[0]):
      if not host["mask"][b]:
        continue
      fh, fw = (math.ceil(int(s) / stride) for s in host["image_hw"][b])
      lh, lw = (int(s) for s in host["label_hw"][b])
      lab = labels_at(np.asarray(host["label"][b][:lh, :lw]), (fh, fw))
      counts += np.asarray(usage_counts(protos, emb[b, :fh, :fw], lab))
      images += 1
  return counts, images


# --- the table ------------------------------------------------------------------------

def _fmt(x, spec: str) -> str:
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_table(prototypes, class_names=None, counts=None, *, threshold: float = DISTINCT_THRESHOLD,
                 min_fraction: float = 0.0) -> str:
  """The per-class table: mean / max cosine, distinct and (given counts) used
  prototypes and the usage fraction of each prototype."""
  p = prototype_array(prototypes)
  c, m, _ = p.shape
  names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
  mean_cos = np.asarray(mean_pairwise_cosine(p))
  max_cos = np.asarray(max_pairwise_cosine(p))
  distinct = np.asarray(distinct_prototypes(p, threshold))
  width = max(8, max(len(n) for n in names))
  head = f"{'class':<{width}}  {'mean_cos':>8}  {'max_cos':>8}  {'distinct':>8}"
  if counts is not None:
    frac = np.asarray(usage_fraction(counts))
    used = np.asarray(used_prototypes(counts, min_fraction))
    present = np.asarray(present_classes(counts))
    pixels = np.asarray(counts).sum(-1)
    head += f"  {'pixels':>9}  {'used':>5}  usage fraction per prototype"
  lines = [head, "-" * len(head)]
  for i in range(c):
    row = (f"{names[i]:<{width}}  {_fmt(float(mean_cos[i]), '8.3f')}  "
           f"{_fmt(float(max_cos[i]), '8.3f')}  {distinct[i]:>5d}/{m:<2d}")
    if counts is not None:
      row += f"  {pixels[i]:>9d}  "
      if present[i]:
        row += f"{used[i]:>2d}/{m:<2d}  " + " ".join(f"{f:.2f}" for f in frac[i])
      else:
        row += f"{'-':>5}  (no pixels)"
    lines.append(row)
  s = scalars(p, "all", threshold=threshold)
  lines.append("-" * len(head))
  lines.append(f"all: mean cosine {float(s['all/proto_mean_cosine']):.3f}, max cosine "
               f"{float(s['all/proto_max_cosine']):.3f}, distinct "
               f"{float(s['all/proto_distinct_frac']):.1%} of {c}x{m} (threshold {threshold})")
  if counts is not None:
    present = np.asarray(present_classes(counts))
    used = np.asarray(used_prototypes(counts, min_fraction))
    n = int(present.sum())
    lines.append(f"used (>= 1 pixel and >= {min_fraction:.1%} of the class's pixels): "
                 f"{int(used[present].sum())} of {n * m} prototypes of the {n} classes present")
  return "\n".join(lines)


# --- the command ------------------------------------------------------------------------

def load_model_variables(config, workdir: Optional[str], checkpoint_step: Optional[int],
                         variables_dir: Optional[str]):
  """(model, variables (host arrays), DatasetMeta) of the latest (or
  `checkpoint_step`) checkpoint in `workdir`, or of converted weights in
  `variables_dir`. The class facts (names, palette) come from the dataset's
  builder class: no prepared data needed."""
  import data
  import orbax.checkpoint as ocp
  from protoseg_jax import checkpoints
  from protoseg_jax.models.segmentor import build_model
  meta = data.dataset_meta(config.dataset.name)
  model = build_model(config, meta.num_classes, meta.ignore_index)
  if variables_dir:
    variables = checkpoints.load_variables(variables_dir)
  elif workdir:
    # The saved TrainState restored as a plain tree (no template, so no
    # train.create_train_state here: train.py may import this module).
    mngr = checkpoints.checkpoint_manager(workdir, config, read_only=True)
    step = mngr.latest_step() if checkpoint_step is None else checkpoint_step
    if step is None or step not in mngr.all_steps():
      raise FileNotFoundError(f"no checkpoint {'' if step is None else step} in {mngr.directory}; "
                              f"available: {sorted(mngr.all_steps())}")
    saved = mngr.restore(step, args=ocp.args.StandardRestore())
    mngr.close()
    variables = {k: saved[k] for k in ("params", "batch_stats", "prototypes") if saved.get(k)}
  else:
    raise ValueError("give a workdir (a checkpoint) or a variables dir (converted weights)")
  if not variables.get("prototypes"):
    raise ValueError(f"{variables_dir or workdir!r} holds no prototypes (config.model.head "
                     "is not 'proto')")
  return model, jax.device_get(variables), meta


def main(argv):
  from absl import app
  from absl import flags
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f.workdir and not f.variables:
    raise app.UsageError("give --workdir (a checkpoint) or --variables (converted weights)")
  model, variables, meta = load_model_variables(
      f.config, f.workdir and os.path.expanduser(f.workdir), f.checkpoint_step,
      f.variables and os.path.expanduser(f.variables))
  protos = prototype_array(variables["prototypes"])
  counts = None
  if f.num_batches > 0:
    from protoseg_jax import datasets, input_pipeline, sharding
    try:
      batches = input_pipeline.create_eval_iterator(
          f.config, sharding.batch_sharding(sharding.create_mesh()))
    except datasets.DatasetNotPreparedError:
      print("dataset not prepared: prototype-only statistics")
    else:
      counts, n = eval_usage_counts(model, variables, batches, protos.shape[0], protos.shape[1],
                                    f.num_batches)
      print(f"usage over {n} images of {f.config.dataset.eval_split} "
            f"(up to {f.num_batches} eval batches)")
  print(format_table(protos, meta.class_names, counts, threshold=f.threshold,
                     min_fraction=f.min_fraction))


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Run config (configs/*.py[:variant]).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory whose checkpoint to read.")
  flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("variables", None, "Converted weights (python -m protoseg_jax.convert "
                      "--dst DIR) instead of a checkpoint.")
  flags.DEFINE_integer("num_batches", 2, "Eval batches for the usage statistics (0: none).")
  flags.DEFINE_float("min_fraction", 0.0, "A prototype is used when it has >= 1 pixel and at "
                     "least this fraction of its class's pixels.")
  flags.DEFINE_float("threshold", DISTINCT_THRESHOLD, "Cosine at or above which a prototype "
                     "counts as a copy of an earlier one (distinct).")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  from absl import app as _app
  _define_flags()
  _app.run(main)
