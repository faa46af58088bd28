"""Prototype learning: assignment, targets and momentum update (pure functions).

`learn_prototypes` is the vectorised form of the official
`prototype_learning` (see PROTOSEG.md): no Python loop over classes, memory
beyond the [N, C*M] similarity is O(N*M + N*D + C*M*D).

Data parallelism: under `jax.jit` with the batch sharded over a mesh axis all
sums here (Sinkhorn segment sums, feature sums, counts) run over the GLOBAL
batch, as SwAV's distributed Sinkhorn does; the update is then identical on
every device. The official code instead updates per GPU from local pixels and
averages the resulting prototypes; the two differ only in how pixels of
different GPUs are pooled. `learn_prototypes_per_device` is that official
form (shard_map over the data axis, then pmean).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp

from protoseg_jax.chunking import auto_chunk_size
from protoseg_jax.ops import l2_normalize, pick
from protoseg_jax.sinkhorn import sinkhorn_knopp

ASSIGNMENTS = ("gumbel", "argmax")
# proto_targets of ignored pixels (as the official code). Not the label
# ignore_index: with C*M > 255 (ADE20K 1500) target 255 is a real prototype.
PROTO_IGNORE = -1


@flax.struct.dataclass
class PrototypeUpdate:
  """Result of one prototype-learning step.

  prototypes:    [C, M, D] updated prototypes, unit norm.
  proto_targets: [N] int32 c*M + index (Sinkhorn argmax) in [0, C*M);
                 PROTO_IGNORE (-1) for ignored pixels.
  assignments:   [N] int32 prototype (0..M-1) each pixel was assigned to for
                 the update (gumbel or argmax); -1 for ignored pixels.
  counts:        [C, M] int32 number of correctly classified pixels that
                 updated each prototype.
  """
  prototypes: jnp.ndarray
  proto_targets: jnp.ndarray
  assignments: jnp.ndarray
  counts: jnp.ndarray


def prototype_similarity(embeddings: jnp.ndarray, prototypes: jnp.ndarray,
                         trainable: Any = False) -> jnp.ndarray:
  """Cosine similarity [N, C*M] of unit embeddings [N, D] to prototypes [C, M, D].

  The prototypes are L2-normalised and the gradient through them is stopped:
  they are learned by the momentum update, never by gradient descent.

  trainable (bool or traced bool; official `pretrain_prototype` warm-up):
  where true the gradient flows into `prototypes` as if the normalised value
  were the leaf (the official code normalises `prototypes.data` in place
  before the forward pass, outside the graph): the value is unchanged and
  the normalisation's Jacobian is replaced by the identity.
  """
  p = normalized_prototypes(prototypes, trainable)
  return jnp.einsum("nd,kd->nk", embeddings, p.astype(embeddings.dtype))


@jax.custom_jvp
def max_over_prototypes(similarity: jnp.ndarray) -> jnp.ndarray:
  """Class scores [N, C]: the max over M of the similarity [N, C, M].

  Value and gradient are `jnp.max`'s and the official `torch.amax`'s: the
  gradient is split evenly among exactly tied maxima. Only the form of the
  gradient differs from `jnp.max`'s: a boolean [N, C, M] mask and an
  elementwise select, where `jnp.max`'s JVP builds a float mask and
  multiplies (one full-size f32 buffer more in the train step;
  bench/bench_vocab.py measures the head step's memory).
  """
  return jnp.max(similarity, axis=-1)


@max_over_prototypes.defjvp
def _max_over_prototypes_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  best = jnp.max(x, axis=-1)
  hit = x == best[..., None]
  count = jnp.sum(hit, axis=-1).astype(t.dtype)
  return best, jnp.sum(jnp.where(hit, t, jnp.zeros_like(t)), axis=-1) / count


# --- Large vocabularies: the similarity a chunk of classes at a time ----------------

def resolve_class_chunk(class_chunk: int, num_pixels: int, num_classes: int,
                        num_prototypes: int) -> int:
  """Classes per chunk of the head's similarity (static; >= num_classes: all at once).

  class_chunk > 0: that many (>= num_classes: all at once, today's program);
  0 (automatic): `chunking.auto_chunk_size` of the similarity [N, C*M]
  (float32), a class being N * M of it: all at once up to 4 GiB (ADE20K's 150
  and COCO-Stuff's 171 classes x 10 prototypes at 16 crops of 512x512 keep
  today's program), else balanced chunks of about 256 MiB.
  """
  c = int(num_classes)
  if class_chunk < 0:
    raise ValueError(f"class_chunk must be >= 0 (0: automatic), got {class_chunk}")
  if class_chunk > 0:
    return min(int(class_chunk), c)
  return auto_chunk_size(c, 4 * int(num_pixels) * int(num_prototypes))


def normalized_prototypes(prototypes: jnp.ndarray, trainable: Any = False) -> jnp.ndarray:
  """[C*M, D] unit prototypes, the gradient stopped (or, where `trainable`,
  passed straight to `prototypes`): what `prototype_similarity` multiplies."""
  c, m, d = prototypes.shape
  flat = prototypes.reshape(c * m, d)
  p = jax.lax.stop_gradient(l2_normalize(flat))
  if trainable is not False:
    # p + (flat - sg(flat)): exactly p in value, identity gradient to flat.
    p = jnp.where(trainable, p + (flat - jax.lax.stop_gradient(flat)), p)
  return p


@flax.struct.dataclass
class ChunkedRetrieval:
  """What the head needs of the similarity, computed a chunk of classes at a time.

  scores: [N, C] class scores, max over M (as `max_over_prototypes`).
  lse:    [N] log-sum-exp over all C*M of similarity / ppc_temperature (the
          PPC normaliser), or None when not asked for.
  own:    [N, M] stop-gradient similarity of each pixel to the M prototypes of
          its own class (labels outside [0, C): zeros), or None without labels.
  """
  scores: jnp.ndarray
  lse: Optional[jnp.ndarray] = None
  own: Optional[jnp.ndarray] = None


def chunked_retrieval(embeddings: jnp.ndarray, prototypes: jnp.ndarray, class_chunk: int, *,
                      trainable: Any = False, labels: Optional[jnp.ndarray] = None,
                      with_lse: bool = False, ppc_temperature: float = 1.0
                      ) -> ChunkedRetrieval:
  """The class scores (and PPC's log-sum-exp, and each pixel's own-class
  similarities) of unit embeddings [N, D] to prototypes [C, M, D] without the
  [N, C*M] similarity: a loop over chunks of `class_chunk` classes, each
  chunk's similarity [N, chunk*M] computed, reduced and dropped, its scores
  written in place into the [N, C] result. The gradient is a custom VJP that
  loops over the chunks again, recomputing each similarity, so neither pass
  holds more than one chunk's similarity, and only the [N, C] scores and
  their cotangent are full size. When C is not a multiple of the chunk the
  last chunk is the last `class_chunk` classes (it overlaps the one before;
  classes already counted are masked out of the log-sum-exp and of the
  gradient). Value and gradient equal the all-at-once forms up to float
  rounding of the reductions; the gradient of the max over M is
  `max_over_prototypes`'s (ties split evenly); `own` is stop-gradient.
  """
  c, m, d = prototypes.shape
  k = int(class_chunk)
  if not 1 <= k <= c:
    raise ValueError(f"class_chunk must be in [1, C={c}], got {k}")
  p = normalized_prototypes(prototypes, trainable).astype(embeddings.dtype)   # [C*M, D]
  y = (jnp.full(embeddings.shape[:1], -1, jnp.int32) if labels is None
       else labels.astype(jnp.int32))
  spec = _ChunkSpec(c, m, k, 1.0 / float(ppc_temperature), trainable is not False,
                    bool(with_lse), labels is not None)
  scores, lse, own = _chunked_retrieval(spec, embeddings, p, y)
  return ChunkedRetrieval(scores=scores, lse=lse if with_lse else None,
                          own=own if labels is not None else None)


@flax.struct.dataclass
class _ChunkSpec:
  """Static sizes of `_chunked_retrieval`: C, M, classes per chunk, 1 / PPC
  temperature, and which of the prototypes' gradient, the log-sum-exp and the
  own-class similarity are wanted (inference needs none of them)."""
  c: int = flax.struct.field(pytree_node=False)
  m: int = flax.struct.field(pytree_node=False)
  k: int = flax.struct.field(pytree_node=False)
  inv_t: float = flax.struct.field(pytree_node=False)
  grad_prototypes: bool = flax.struct.field(pytree_node=False)
  with_lse: bool = flax.struct.field(pytree_node=False)
  with_own: bool = flax.struct.field(pytree_node=False)

  @property
  def chunks(self) -> int:
    return -(-self.c // self.k)

  def chunk(self, j, embeddings, p):
    """Chunk j's first class (the last chunk ends at C), its similarity
    [N, k, M], and the mask [k] of the classes not in an earlier chunk."""
    start = jnp.minimum(j * self.k, self.c - self.k)
    p_j = jax.lax.dynamic_slice_in_dim(p, start * self.m, self.k * self.m, axis=0)
    sim = jnp.einsum("nd,kd->nk", embeddings, p_j).reshape(-1, self.k, self.m)
    new = start + jnp.arange(self.k) >= j * self.k
    return start, sim, new


def _logits_for_lse(spec, sim, new):
  x = sim if spec.inv_t == 1.0 else sim * spec.inv_t
  return jnp.where(new[None, :, None], x, -jnp.inf).reshape(x.shape[0], -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked_retrieval(spec, embeddings, p, labels):
  return _chunked_retrieval_fwd(spec, embeddings, p, labels)[0]


def _chunked_retrieval_fwd(spec, embeddings, p, labels):
  n = embeddings.shape[0]
  dtype = embeddings.dtype
  valid = (labels >= 0) & (labels < spec.c)

  def body(j, carry):
    scores, lse, own = carry
    start, sim, new = spec.chunk(j, embeddings, p)
    scores = jax.lax.dynamic_update_slice_in_dim(scores, max_over_prototypes(sim), start, axis=1)
    if spec.with_lse:
      lse = jnp.logaddexp(lse, jax.nn.logsumexp(_logits_for_lse(spec, sim, new), axis=1))
    if spec.with_own:
      mine = valid & (labels // spec.k == j)
      idx = jnp.clip(labels - start, 0, spec.k - 1)
      own = jnp.where(mine[:, None], jnp.take_along_axis(sim, idx[:, None, None], axis=1)[:, 0],
                      own)
    return scores, lse, own

  init = (jnp.zeros((n, spec.c), dtype), jnp.full((n,), -jnp.inf, dtype),
          jnp.zeros((n, spec.m), dtype))
  scores, lse, own = jax.lax.fori_loop(0, spec.chunks, body, init)
  return (scores, lse, own), (embeddings, p, lse)


def _chunked_retrieval_bwd(spec, res, cotangents):
  embeddings, p, lse = res
  g_scores, g_lse, _ = cotangents                      # `own` is stop-gradient
  n = embeddings.shape[0]

  def body(j, carry):
    g_emb, g_p = carry
    start, sim, new = spec.chunk(j, embeddings, p)
    g_s = jax.lax.dynamic_slice_in_dim(g_scores, start, spec.k, axis=1)
    g_s = jnp.where(new[None, :], g_s, 0).astype(jnp.float32)          # [N, k]
    best = jnp.max(sim, axis=-1, keepdims=True)
    hit = sim == best
    share = g_s / jnp.sum(hit, axis=-1).astype(jnp.float32)
    g_sim = jnp.where(hit, share[:, :, None], 0.0).reshape(n, -1)       # [N, k*M]
    if spec.with_lse:
      x = _logits_for_lse(spec, sim, new).astype(jnp.float32)
      soft = jnp.exp(x - lse.astype(jnp.float32)[:, None])              # 0 where masked
      g_sim = g_sim + (g_lse.astype(jnp.float32) * spec.inv_t)[:, None] * soft
    g_sim = g_sim.astype(embeddings.dtype)
    p_j = jax.lax.dynamic_slice_in_dim(p, start * spec.m, spec.k * spec.m, axis=0)
    g_emb = g_emb + jnp.dot(g_sim, p_j, preferred_element_type=jnp.float32)
    if spec.grad_prototypes:
      g_pj = jnp.dot(g_sim.T, embeddings, preferred_element_type=jnp.float32)
      old = jax.lax.dynamic_slice_in_dim(g_p, start * spec.m, spec.k * spec.m, axis=0)
      g_p = jax.lax.dynamic_update_slice_in_dim(g_p, old + g_pj, start * spec.m, axis=0)
    return g_emb, g_p

  g_p0 = jnp.zeros(p.shape if spec.grad_prototypes else (0, p.shape[1]), jnp.float32)
  g_emb, g_p = jax.lax.fori_loop(0, spec.chunks, body,
                                 (jnp.zeros(embeddings.shape, jnp.float32), g_p0))
  g_p = g_p.astype(p.dtype) if spec.grad_prototypes else jnp.zeros_like(p)
  return g_emb.astype(embeddings.dtype), g_p, None


_chunked_retrieval.defvjp(_chunked_retrieval_fwd, _chunked_retrieval_bwd)


def target_similarity(embeddings: jnp.ndarray, prototypes: jnp.ndarray,
                      proto_targets: jnp.ndarray, trainable: Any = False) -> jnp.ndarray:
  """[N] cosine of each pixel to its target prototype (`proto_targets` in
  [0, C*M); negative: 0): the PPC / PPD target term without the [N, C*M]
  similarity. The gradient goes into the embeddings (and, where
  `trainable`, to the prototypes, as `prototype_similarity`'s)."""
  p = normalized_prototypes(prototypes, trainable).astype(embeddings.dtype)  # [C*M, D]
  t = proto_targets.astype(jnp.int32)
  valid = t >= 0
  picked = jnp.take(p, jnp.where(valid, t, 0), axis=0)                      # [N, D]
  return jnp.where(valid, jnp.sum(embeddings * picked, axis=-1), 0.0)


def contrast_terms(similarity: jnp.ndarray, proto_targets: jnp.ndarray,
                   ppc_temperature: float = 1.0) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(proto_lse [N], proto_target_logits [N]) of the whole similarity [N, C*M]:
  the log-sum-exp over C*M of similarity / ppc_temperature and the cosine to
  the target prototype (`proto_targets`; negative: 0). What
  `chunked_retrieval(with_lse=True)` and `target_similarity` give a chunk of
  classes at a time; `losses.ppc_ppd_from_target` takes either."""
  t = proto_targets.astype(jnp.int32)
  valid = t >= 0
  x = similarity if float(ppc_temperature) == 1.0 else similarity / ppc_temperature
  target = jnp.where(valid, pick(similarity, jnp.where(valid, t, 0)), 0.0)
  return jax.nn.logsumexp(x, axis=-1), target


def _argmax_equals(logits: jnp.ndarray, idx: jnp.ndarray) -> jnp.ndarray:
  """argmax(logits, 1) == idx, the first maximum winning as torch.max does.

  One variadic argmax reads every logit once, so there is no second reading
  to disagree with it. (Comparing a gathered label logit with a separately
  reduced row maximum is NOT safe inside a large jitted program: XLA may
  recompute the producer, e.g. the mask_norm LayerNorm, in two fusions whose
  last bits differ; this was seen on CPU for ~2% of pixels.) It is also the
  cheapest form on XLA:CPU: masked max-reductions over [N, C] that broadcast
  a per-row value run several times slower there.
  """
  return jnp.argmax(logits, axis=1).astype(jnp.int32) == idx


def sample_gumbel_argmax(rng: jax.Array, q: jnp.ndarray) -> jnp.ndarray:
  """A draw of argmax_m(q[n, m] + g[n, m]) with g ~ Gumbel(0, 1) i.i.d.

  This is the index `F.gumbel_softmax(q, tau, hard=True)` returns (tau does
  not change the argmax). By the Gumbel-max trick it is a categorical draw
  with probabilities softmax(q[n]); this samples that distribution by
  inverting the CDF with ONE uniform per row instead of M Gumbel variates
  (M times fewer random bits; the draw dominated the update on CPU).

  Args:
    rng: PRNG key.
    q: [N, M] scores (Sinkhorn's Q for the prototype update).

  Returns:
    [N] int32 indices in [0, M).
  """
  m = q.shape[1]
  cdf = jnp.cumsum(jax.nn.softmax(q.astype(jnp.float32), axis=1), axis=1)
  u = jax.random.uniform(rng, q.shape[:1], jnp.float32) * cdf[:, -1]
  return jnp.minimum(jnp.sum(cdf <= u[:, None], axis=1), m - 1).astype(jnp.int32)


def learn_prototypes(prototypes: jnp.ndarray, embeddings: jnp.ndarray, logits: jnp.ndarray,
                     labels: jnp.ndarray, *, gamma: float = 0.999, num_iters: int = 3,
                     epsilon: float = 0.05, assignment: str = "gumbel",
                     rng: Optional[jax.Array] = None, ignore_index: int = 255,
                     similarity: Optional[jnp.ndarray] = None,
                     own_similarity: Optional[jnp.ndarray] = None) -> PrototypeUpdate:
  """One ProtoSeg prototype-learning step (PROTOSEG.md, "Prototype learning").

  Args:
    prototypes: [C, M, D] current prototypes (normalised here before use).
    embeddings: [N, D] unit-norm pixel embeddings.
    logits: [N, C] segmentation logits (their argmax decides which pixels are
      correctly predicted and may update prototypes).
    labels: [N] int class per pixel; `ignore_index` and any id outside [0, C)
      are ignored.
    gamma: momentum of the prototype update.
    num_iters, epsilon: Sinkhorn-Knopp parameters.
    assignment: "gumbel" (official: argmax of Q + Gumbel noise decides which
      prototype a pixel updates; drawn by `sample_gumbel_argmax`, same
      distribution) or "argmax" (deterministic).
    rng: PRNG key, required for assignment="gumbel".
    ignore_index: label of ignored pixels in `labels` (their proto_targets
      are PROTO_IGNORE = -1, never ignore_index).
    similarity: optional [N, C*M] `prototype_similarity(embeddings,
      prototypes)` if the caller already has it.
    own_similarity: optional [N, M] similarity of each pixel to its own
      class's M prototypes (`chunked_retrieval(..., labels=)` computes it a
      chunk of classes at a time): then no [N, C*M] similarity is formed.

  Returns:
    PrototypeUpdate (prototypes, proto_targets, assignments, counts). The
    PPC / PPD terms of the targets: `contrast_terms` of the similarity, or
    `target_similarity` with `chunked_retrieval`'s log-sum-exp.
  """
  if assignment not in ASSIGNMENTS:
    raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
  if assignment == "gumbel" and rng is None:
    raise ValueError("assignment='gumbel' needs an rng key (pass rng=...)")
  if prototypes.ndim != 3:
    raise ValueError(f"prototypes must be [C, M, D], got shape {prototypes.shape}")
  c, m, d = prototypes.shape
  n = embeddings.shape[0]
  if embeddings.shape != (n, d):
    raise ValueError(f"embeddings must be [N, D={d}], got shape {embeddings.shape}")
  if logits.shape != (n, c):
    raise ValueError(f"logits must be [N={n}, C={c}], got shape {logits.shape}")
  if labels.shape != (n,):
    raise ValueError(f"labels must be [N={n}], got shape {labels.shape}")

  if own_similarity is not None:
    if own_similarity.shape != (n, m):
      raise ValueError(f"own_similarity must be [N={n}, M={m}], got shape "
                       f"{own_similarity.shape}")
  elif similarity is None:
    similarity = prototype_similarity(embeddings, prototypes)
  elif similarity.shape != (n, c * m):
    raise ValueError(f"similarity must be [N={n}, C*M={c * m}], got shape {similarity.shape}")

  # The update is state, not a function to differentiate.
  old = jax.lax.stop_gradient(l2_normalize(prototypes.astype(jnp.float32).reshape(c * m, d)))
  labels = labels.astype(jnp.int32)
  valid = (labels >= 0) & (labels < c) & (labels != ignore_index)
  cls = jnp.where(valid, labels, 0)

  # Each pixel's similarities to the M prototypes of its own class: [N, M].
  if own_similarity is None:
    own = jnp.take_along_axis(similarity.reshape(n, c, m), cls[:, None, None], axis=1)[:, 0, :]
  else:
    own = own_similarity
  own = jax.lax.stop_gradient(own).astype(jnp.float32)
  q = sinkhorn_knopp(own, jnp.where(valid, labels, -1), c, num_iters=num_iters, epsilon=epsilon)
  index = jnp.argmax(q, axis=1).astype(jnp.int32)
  if assignment == "gumbel":
    # F.gumbel_softmax(Q, tau, hard=True) in the forward pass is one_hot(argmax(Q + g)).
    assign = sample_gumbel_argmax(rng, q)
  else:
    assign = index

  correct = valid & _argmax_equals(logits, cls)

  # One segment per prototype (+1 dummy for pixels that do not update).
  upd_seg = jnp.where(correct, cls * m + assign, c * m)
  emb = jax.lax.stop_gradient(embeddings).astype(jnp.float32)
  feat_sum = jax.ops.segment_sum(emb, upd_seg, num_segments=c * m + 1)[: c * m]
  counts = jax.ops.segment_sum(correct.astype(jnp.int32), upd_seg, num_segments=c * m + 1)[: c * m]
  moved = gamma * old + (1.0 - gamma) * l2_normalize(feat_sum)
  new = l2_normalize(jnp.where((counts > 0)[:, None], moved, old))

  targets = jnp.where(valid, cls * m + index, PROTO_IGNORE).astype(jnp.int32)
  return PrototypeUpdate(
      prototypes=new.reshape(c, m, d).astype(prototypes.dtype),
      proto_targets=targets,
      assignments=jnp.where(valid, assign, -1),
      counts=counts.reshape(c, m),
  )


PROTOTYPE_UPDATES = ("global", "per_device_mean")


def learn_prototypes_per_device(mesh, axis_name: str, prototypes: jnp.ndarray,
                                embeddings: jnp.ndarray, logits: jnp.ndarray,
                                labels: jnp.ndarray, *, rng: Optional[jax.Array] = None,
                                similarity: Optional[jnp.ndarray] = None,
                                own_similarity: Optional[jnp.ndarray] = None,
                                **kwargs) -> PrototypeUpdate:
  """`learn_prototypes` the official multi-GPU way: each device on its own pixels.

  The N pixel rows are split over `axis_name` of `mesh` (device i holds rows
  [i*N/n, (i+1)*N/n): its own images when the batch is sharded over that
  axis). Every device runs Sinkhorn and the momentum update on its local
  pixels alone, then the updated (unit-norm) prototypes are averaged over the
  devices (pmean, not re-normalised: the official all_reduce / world_size;
  the next use normalises). Targets and assignments are the local ones;
  `counts` are summed over devices. The Gumbel draw of device i uses
  fold_in(rng, i). kwargs: as `learn_prototypes` (gamma, num_iters, epsilon,
  assignment, ignore_index).
  """
  from jax.sharding import PartitionSpec as P
  n = embeddings.shape[0]
  size = mesh.shape[axis_name]
  if n % size:
    raise ValueError(f"{n} pixels do not split over {size} devices of mesh axis {axis_name!r}")
  # Each device's rows of what the caller has: its own-class similarities
  # (class chunks: no [N, C*M] similarity is ever formed) or the similarity.
  if own_similarity is not None:
    rows, name = own_similarity, "own_similarity"
  else:
    rows = prototype_similarity(embeddings, prototypes) if similarity is None else similarity
    name = "similarity"
  use_rng = rng is not None
  key = rng if use_rng else jax.random.key(0)

  def local(p, e, lg, y, s, k):
    if use_rng:
      k = jax.random.fold_in(k, jax.lax.axis_index(axis_name))
    r = learn_prototypes(p, e, lg, y, rng=k if use_rng else None, **{name: s}, **kwargs)
    return r.replace(prototypes=jax.lax.pmean(r.prototypes, axis_name),
                     counts=jax.lax.psum(r.counts, axis_name))

  row, rep = P(axis_name), P()
  out_specs = PrototypeUpdate(prototypes=rep, proto_targets=row,
                              assignments=row, counts=rep)
  fn = jax.shard_map(local, mesh=mesh, in_specs=(rep, row, row, row, row, rep),
                     out_specs=out_specs)
  return fn(prototypes, embeddings, logits, labels, rows, key)
