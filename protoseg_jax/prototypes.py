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

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp

from protoseg_jax.ops import l2_normalize
from protoseg_jax.sinkhorn import sinkhorn_knopp

ASSIGNMENTS = ("gumbel", "argmax")
# proto_targets of ignored pixels (as the official code). Not the label
# ignore_index: with C*M > 255 (ADE20K 1500) target 255 is a real prototype.
PROTO_IGNORE = -1


@flax.struct.dataclass
class PrototypeUpdate:
  """Result of one prototype-learning step.

  prototypes:    [C, M, D] updated prototypes, unit norm.
  proto_logits:  [N, C*M] cosine similarity to the OLD prototypes (gradients
                 flow into the embeddings only).
  proto_targets: [N] int32 c*M + index (Sinkhorn argmax) in [0, C*M);
                 PROTO_IGNORE (-1) for ignored pixels.
  assignments:   [N] int32 prototype (0..M-1) each pixel was assigned to for
                 the update (gumbel or argmax); -1 for ignored pixels.
  counts:        [C, M] int32 number of correctly classified pixels that
                 updated each prototype.
  """
  prototypes: jnp.ndarray
  proto_logits: jnp.ndarray
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
  c, m, d = prototypes.shape
  flat = prototypes.reshape(c * m, d)
  p = jax.lax.stop_gradient(l2_normalize(flat))
  if trainable is not False:
    # p + (flat - sg(flat)): exactly p in value, identity gradient to flat.
    p = jnp.where(trainable, p + (flat - jax.lax.stop_gradient(flat)), p)
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
                     similarity: Optional[jnp.ndarray] = None) -> PrototypeUpdate:
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

  Returns:
    PrototypeUpdate (prototypes, proto_logits, proto_targets, assignments, counts).
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

  if similarity is None:
    similarity = prototype_similarity(embeddings, prototypes)
  elif similarity.shape != (n, c * m):
    raise ValueError(f"similarity must be [N={n}, C*M={c * m}], got shape {similarity.shape}")

  # The update is state, not a function to differentiate.
  old = jax.lax.stop_gradient(l2_normalize(prototypes.astype(jnp.float32).reshape(c * m, d)))
  labels = labels.astype(jnp.int32)
  valid = (labels >= 0) & (labels < c) & (labels != ignore_index)
  cls = jnp.where(valid, labels, 0)

  # Each pixel's similarities to the M prototypes of its own class: [N, M].
  own = jnp.take_along_axis(similarity.reshape(n, c, m), cls[:, None, None], axis=1)[:, 0, :]
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
      proto_logits=similarity,
      proto_targets=targets,
      assignments=jnp.where(valid, assign, -1),
      counts=counts.reshape(c, m),
  )


PROTOTYPE_UPDATES = ("global", "per_device_mean")


def learn_prototypes_per_device(mesh, axis_name: str, prototypes: jnp.ndarray,
                                embeddings: jnp.ndarray, logits: jnp.ndarray,
                                labels: jnp.ndarray, *, rng: Optional[jax.Array] = None,
                                similarity: Optional[jnp.ndarray] = None,
                                **kwargs) -> PrototypeUpdate:
  """`learn_prototypes` the official multi-GPU way: each device on its own pixels.

  The N pixel rows are split over `axis_name` of `mesh` (device i holds rows
  [i*N/n, (i+1)*N/n): its own images when the batch is sharded over that
  axis). Every device runs Sinkhorn and the momentum update on its local
  pixels alone, then the updated (unit-norm) prototypes are averaged over the
  devices (pmean, not re-normalised: the official all_reduce / world_size;
  the next use normalises). Targets and proto_logits are the local ones;
  `counts` are summed over devices. The Gumbel draw of device i uses
  fold_in(rng, i). kwargs: as `learn_prototypes` (gamma, num_iters, epsilon,
  assignment, ignore_index).
  """
  from jax.sharding import PartitionSpec as P
  n = embeddings.shape[0]
  size = mesh.shape[axis_name]
  if n % size:
    raise ValueError(f"{n} pixels do not split over {size} devices of mesh axis {axis_name!r}")
  if similarity is None:
    similarity = prototype_similarity(embeddings, prototypes)
  use_rng = rng is not None
  key = rng if use_rng else jax.random.key(0)

  def local(p, e, lg, y, s, k):
    if use_rng:
      k = jax.random.fold_in(k, jax.lax.axis_index(axis_name))
    r = learn_prototypes(p, e, lg, y, rng=k if use_rng else None, similarity=s, **kwargs)
    return r.replace(prototypes=jax.lax.pmean(r.prototypes, axis_name),
                     counts=jax.lax.psum(r.counts, axis_name))

  row, rep = P(axis_name), P()
  out_specs = PrototypeUpdate(prototypes=rep, proto_logits=row, proto_targets=row,
                              assignments=row, counts=rep)
  fn = jax.shard_map(local, mesh=mesh, in_specs=(rep, row, row, row, row, rep),
                     out_specs=out_specs)
  return fn(prototypes, embeddings, logits, labels, similarity, key)
