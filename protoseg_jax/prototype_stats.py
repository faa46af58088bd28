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

  For a dataset that records each pixel's appearance a (its look within its
  class: the demo's 'appearance' map):
  look counts[c, a, m] pixels of class c and look a retrieving m        [C, A, M]
  appearance NMI      per class with >= 2 looks among its pixels: the
                      normalised mutual information between look and
                      retrieved prototype, I / ((H(look) + H(proto)) / 2)
                      (sklearn's normalized_mutual_info_score, arithmetic);
                      1 = each look has prototypes of its own, 0 = the
                      prototype says nothing about the look             [C]

All functions are pure jax.numpy (jit-able) and also take NumPy arrays.
`scalars(prototypes, prefix)` gives the cheap prototype-only numbers for a
training log; `eval_summaries` the `val/proto_*` entries of an evaluation
(usage counts over eval batches, `make_usage_step` jitted on device);
`format_table` the per-class table that `python -m protoseg_jax.diagnostics`
prints for a run.

Library code (jax and NumPy); the command is `protoseg_jax/diagnostics.py`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from protoseg_jax import heads
from protoseg_jax.evaluate import host_int64

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
  # The head's [N, C*M] similarity, then the pixel's own class's M columns
  # (no [N, M, D] gather of prototypes: that is D times larger).
  sim = (e @ p.reshape(c * m, d).T).reshape(-1, c, m)
  own = jnp.take_along_axis(sim, jnp.where(valid, y, 0)[:, None, None], axis=1)[:, 0]
  idx = jnp.argmax(own, axis=-1)
  return jnp.where(valid, idx, -1).reshape(jnp.shape(labels))


def usage_counts(prototypes, embeddings, labels, retrieved=None) -> jnp.ndarray:
  """[C, M] int: pixels of class c whose retrieved prototype is m (retrieved:
  `retrieved_prototype` of these pixels where the caller has it already)."""
  c, m, _ = prototype_array(prototypes).shape
  idx = (retrieved if retrieved is not None
         else retrieved_prototype(prototypes, embeddings, labels)).reshape(-1)
  y = jnp.asarray(labels).reshape(-1)
  valid = idx >= 0
  seg = jnp.where(valid, y * m + idx, c * m)              # invalid -> dropped bin
  counts = jax.ops.segment_sum(valid.astype(jnp.int32), seg, num_segments=c * m + 1)
  return counts[:-1].reshape(c, m)


def look_counts(prototypes, embeddings, labels, looks, num_looks: int,
                retrieved=None) -> jnp.ndarray:
  """[C, A, M] int: pixels of class c and look a (< num_looks = A; other
  values are not counted) whose retrieved prototype is m (retrieved: as in
  `usage_counts`)."""
  c, m, _ = prototype_array(prototypes).shape
  idx = (retrieved if retrieved is not None
         else retrieved_prototype(prototypes, embeddings, labels)).reshape(-1)
  y = jnp.asarray(labels).reshape(-1)
  a = jnp.asarray(looks).reshape(-1).astype(jnp.int32)
  valid = (idx >= 0) & (a >= 0) & (a < num_looks)
  seg = jnp.where(valid, (y * num_looks + a) * m + idx, c * num_looks * m)
  counts = jax.ops.segment_sum(valid.astype(jnp.int32), seg, num_segments=c * num_looks * m + 1)
  return counts[:-1].reshape(c, num_looks, m)


def appearance_nmi(look_counts) -> np.ndarray:
  """[C] float64 (host): the appearance NMI of each class from its look x
  prototype contingency table [C, A, M]; NaN for a class with fewer than two
  looks among its pixels. The arithmetic-mean normalisation of
  `sklearn.metrics.normalized_mutual_info_score` (natural log)."""
  t = np.asarray(look_counts, np.float64)
  out = np.full(t.shape[0], np.nan)
  for c, table in enumerate(t):
    n = table.sum()
    rows, cols = table.sum(1), table.sum(0)
    if np.count_nonzero(rows) < 2:
      continue
    nz = table > 0
    mi = float(np.sum(table[nz] / n * np.log(n * table[nz] / np.outer(rows, cols)[nz])))
    h = [float(-np.sum(v[v > 0] / n * np.log(v[v > 0] / n))) for v in (rows, cols)]
    out[c] = 0.0 if mi <= 0 else min(mi / (0.5 * (h[0] + h[1])), 1.0)
  return out


def mean_appearance_nmi(look_counts) -> float:
  """Mean of `appearance_nmi` over the classes with two looks or more (NaN if none)."""
  v = appearance_nmi(look_counts)
  return float(np.nanmean(v)) if np.any(~np.isnan(v)) else float("nan")


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
    out[f"{prefix}/proto_used_frac"] = used_fraction(usage_counts(p, embeddings, labels),
                                                     min_fraction)
  return out


def used_fraction(counts, min_fraction: float = 0.0) -> jnp.ndarray:
  """Used prototypes / (M * classes present), over the classes present in counts [C, M]."""
  counts = jnp.asarray(counts)
  present = present_classes(counts)
  used = jnp.sum(jnp.where(present, used_prototypes(counts, min_fraction), 0))
  return used / jnp.maximum(counts.shape[-1] * jnp.sum(present), 1)


# --- usage over eval batches ----------------------------------------------------

# Looks per class the usage step counts (the demo has at most 3).
MAX_LOOKS = 8


def make_usage_step(model, label_lut=None):
  """`(variables, batch) -> (int32 [C, M] usage counts, int32 images, int32
  [C, MAX_LOOKS, M] look counts or None)` of one eval batch (input_pipeline's
  dict: image, image_hw, label, label_hw, mask, and 'appearance' like the
  label where the dataset records it); jit-able, every size per example is data.

  Each example's embeddings [h, w] cover the whole canvas [Hc, Wc]; its
  image's part is the first fh = ceil(image_h * h / Hc) rows and
  fw = ceil(image_w * w / Wc) columns, and its original-size label is
  resized to (fh, fw) with PyTorch `nearest` (row i <- floor(i * label_h /
  fh)), as the head resizes labels. Pixels outside that part and masked rows count
  nowhere. label_lut (int [L], e.g. `held_out.label_lut`): dataset label ->
  model class, for a model whose classes are not the dataset's.
  """
  lut = None if label_lut is None else jnp.asarray(label_lut, jnp.int32)

  def step(variables, batch):
    emb = heads.proto_head_output(model, variables, batch["image"]).embeddings  # [B, h, w, D]
    _, h, w, _ = emb.shape
    hc, wc = batch["image"].shape[1:3]
    hl, wl = batch["label"].shape[1:3]
    ihw = batch["image_hw"].astype(jnp.int32)
    lhw = batch["label_hw"].astype(jnp.int32)
    fh = (ihw[:, 0] * h + hc - 1) // hc
    fw = (ihw[:, 1] * w + wc - 1) // wc
    i, j = jnp.arange(h), jnp.arange(w)

    def one(label, fh, fw, lh, lw, keep, is_label=True):
      rows = jnp.minimum(i * lh // jnp.maximum(fh, 1), hl - 1)
      cols = jnp.minimum(j * lw // jnp.maximum(fw, 1), wl - 1)
      y = label[rows[:, None], cols[None, :]].astype(jnp.int32)
      if lut is not None and is_label:
        inside_lut = (y >= 0) & (y < lut.shape[0])
        y = jnp.where(inside_lut, lut[jnp.clip(y, 0, lut.shape[0] - 1)], -1)
      inside = (i[:, None] < fh) & (j[None, :] < fw) & keep
      return jnp.where(inside, y, -1)

    sizes = (fh, fw, lhw[:, 0], lhw[:, 1], batch["mask"].astype(bool))
    labels = jax.vmap(one)(batch["label"], *sizes)
    protos = variables["prototypes"]
    retrieved = retrieved_prototype(protos, emb, labels)    # one similarity for both counts
    counts = usage_counts(protos, emb, labels, retrieved)
    looks = None
    if "appearance" in batch:       # the look map, resized as the labels are
      appearance = jax.vmap(functools.partial(one, is_label=False))(batch["appearance"], *sizes)
      looks = look_counts(protos, emb, labels, appearance, MAX_LOOKS, retrieved)
    return counts, jnp.sum(batch["mask"].astype(jnp.int32)), looks

  return step


def jit_usage_step(model, label_lut=None, mesh=None):
  """`make_usage_step` jitted once: build it once per run and pass it to
  `eval_usage_counts` / `eval_summaries` at every evaluation (its label map
  goes with it). mesh: the eval batches' mesh (replicated counts on every
  host); None: the batches' own placement."""
  kw = {}
  if mesh is not None:
    kw["out_shardings"] = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(make_usage_step(model, label_lut), **kw)


def eval_usage(step, variables, batches, num_batches: Optional[int]
               ) -> tuple[np.ndarray, int, Optional[np.ndarray]]:
  """([C, M] usage counts, images counted, [C, MAX_LOOKS, M] look counts or
  None when the batches carry no appearance map) over the first
  `num_batches` eval batches (None or -1: all). step: `jit_usage_step(model,
  label_lut, mesh)`; global batches sharded over that mesh give replicated
  counts on every host."""
  c, m = prototype_array(variables["prototypes"]).shape[:2]
  counts = np.zeros((c, m), np.int64)
  looks = None
  images = 0
  for i, batch in enumerate(batches):
    if num_batches is not None and 0 <= num_batches <= i:
      break
    n_counts, n_images, n_looks = step(variables, batch)
    counts += host_int64(n_counts)
    images += int(host_int64(n_images))
    if n_looks is not None:
      looks = host_int64(n_looks) + (0 if looks is None else looks)
  return counts, images, looks


def eval_usage_counts(step, variables, batches, num_batches: Optional[int]
                      ) -> tuple[np.ndarray, int]:
  """`eval_usage`'s ([C, M] usage counts, images counted)."""
  counts, images, _ = eval_usage(step, variables, batches, num_batches)
  return counts, images


def usage_summaries(counts, images: int, class_names, prefix: str = "val",
                    min_fraction: float = 0.0, looks=None) -> tuple[dict, dict]:
  """(metrics.jsonl record, TensorBoard scalars) of usage counts [C, M]:

    <prefix>/proto_used_frac  used prototypes / (M * classes present)
    <prefix>/proto_used       {class: prototypes used by its pixels; None
                              when it has no pixel}; TensorBoard:
                              <prefix>/proto_used/<class>
    <prefix>/proto_usage      {class: [fraction of its pixels retrieving
                              prototype m, m < M]; None when no pixel}
                              (metrics.jsonl only: C*M numbers)
    <prefix>/proto_images     images the counts come from
  and, given look counts [C, A, M] (a dataset that records appearances):
    <prefix>/proto_appearance_nmi  mean appearance NMI over the classes
                              with two looks or more among their pixels
    <prefix>/proto_appearance_nmi_per_class  {class: NMI or None}
                              (metrics.jsonl; TensorBoard: .../<class>)
  """
  counts = np.asarray(counts)
  prefix = prefix.rstrip("/")
  present = np.asarray(present_classes(counts))
  used = np.asarray(used_prototypes(counts, min_fraction))
  frac = np.asarray(usage_fraction(counts))
  names = list(class_names)
  if len(names) != counts.shape[0]:
    raise ValueError(f"{len(names)} class names for {counts.shape[0]} classes")
  used_frac = float(used_fraction(counts, min_fraction))
  record = {f"{prefix}/proto_used_frac": used_frac,
            f"{prefix}/proto_images": int(images),
            f"{prefix}/proto_used": {n: int(used[c]) if present[c] else None
                                     for c, n in enumerate(names)},
            f"{prefix}/proto_usage": {n: [round(float(f), 6) for f in frac[c]] if present[c]
                                      else None for c, n in enumerate(names)}}
  tb = {f"{prefix}/proto_used_frac": used_frac}
  tb.update({f"{prefix}/proto_used/{n}": int(used[c]) for c, n in enumerate(names) if present[c]})
  if looks is not None:
    nmi = appearance_nmi(looks)
    per = {n: None if np.isnan(nmi[c]) else round(float(nmi[c]), 6) for c, n in enumerate(names)}
    mean = mean_appearance_nmi(looks)
    if not math.isnan(mean):
      record[f"{prefix}/proto_appearance_nmi"] = tb[f"{prefix}/proto_appearance_nmi"] = mean
    record[f"{prefix}/proto_appearance_nmi_per_class"] = per
    tb.update({f"{prefix}/proto_appearance_nmi/{n}": v for n, v in per.items() if v is not None})
  return record, tb


def eval_summaries(config, step, variables, batches, class_names, *,
                   prefix: str = "val") -> tuple[dict, dict]:
  """The `<prefix>/proto_*` entries of an evaluation: `scalars` of the
  prototypes and `usage_summaries` of the usage counts over at most
  config.eval.proto_usage_batches eval batches (-1: all; also at most
  config.max_eval_batches when that is >= 0). -> (metrics.jsonl record,
  TensorBoard scalars). step: `jit_usage_step` (built once per run, with
  the run's label map); class_names: the model's, in output order."""
  protos = prototype_array(variables["prototypes"])
  limits = [int(n) for n in (config.eval.proto_usage_batches, config.max_eval_batches)
            if n is not None and int(n) >= 0]
  counts, images, looks = eval_usage(step, variables, batches, min(limits) if limits else None)
  record, tb = usage_summaries(counts, images, class_names, prefix, looks=looks)
  cheap = {k: float(v) for k, v in scalars(protos, prefix).items()}
  logging.info("prototype usage over %d eval images:\n%s", images,
               format_table(protos, class_names, counts, looks=looks))
  return {**cheap, **record}, {**cheap, **tb}


# --- the table ------------------------------------------------------------------------

def _fmt(x, spec: str) -> str:
  """format(x, spec), or "-" as wide as the spec's width for a missing value."""
  if x is None or (isinstance(x, float) and math.isnan(x)):
    width = spec.split(".")[0]
    return "-".rjust(int(width) if width.isdigit() else 1)
  return format(x, spec)


def format_table(prototypes, class_names=None, counts=None, *, threshold: float = DISTINCT_THRESHOLD,
                 min_fraction: float = 0.0, looks=None) -> str:
  """The per-class table: mean / max cosine, distinct and (given counts) used
  prototypes and the usage fraction of each prototype; given look counts
  [C, A, M], the appearance NMI of each class with two looks or more."""
  p = prototype_array(prototypes)
  c, m, _ = p.shape
  names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
  mean_cos = np.asarray(mean_pairwise_cosine(p))
  max_cos = np.asarray(max_pairwise_cosine(p))
  distinct = np.asarray(distinct_prototypes(p, threshold))
  width = max(8, max(len(n) for n in names))
  head = f"{'class':<{width}}  {'mean_cos':>8}  {'max_cos':>8}  {'distinct':>8}"
  nmi = appearance_nmi(looks) if looks is not None else None
  if nmi is not None:
    head += f"  {'look_nmi':>8}"
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
    if nmi is not None:
      row += f"  {_fmt(float(nmi[i]), '8.3f')}"
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
  if nmi is not None and np.any(~np.isnan(nmi)):
    lines.append(f"appearance NMI (look vs retrieved prototype; 1 = each look its own "
                 f"prototypes): mean {np.nanmean(nmi):.3f} over the "
                 f"{int(np.sum(~np.isnan(nmi)))} classes with two looks or more")
  return "\n".join(lines)
