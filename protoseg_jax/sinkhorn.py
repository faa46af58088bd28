"""Sinkhorn-Knopp online clustering, vectorised over classes.

The official code runs `distributed_sinkhorn` once per class on the N_c x M
matrix of that class's pixels against its own M prototypes. Here all classes
run in one pass: every per-class sum over pixels becomes a segment sum over
the class id, every per-pixel sum is a row sum. The first iteration runs in
the log domain and the later ones in the exp domain; this equals the official
exp-domain algorithm in exact arithmetic (the official normalisations by the
total sum, by M and by N_c are per-segment or per-row constants that the next
normalisation removes) and never overflows or divides by zero for small
epsilon.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sinkhorn_knopp(scores: jnp.ndarray, segment_ids: jnp.ndarray, num_segments: int, *,
                   num_iters: int = 3, epsilon: float = 0.05) -> jnp.ndarray:
  """Per-segment Sinkhorn-Knopp soft assignment of rows to the M columns.

  Args:
    scores: [N, M] similarities of each row (pixel) to the M prototypes of its
      own segment (class).
    segment_ids: [N] int segment (class) of each row; ids outside
      [0, num_segments) mark ignored rows.
    num_segments: number of segments C (static).
    num_iters: Sinkhorn iterations (>= 1, static).
    epsilon: entropy regularisation (> 0).

  Returns:
    Q [N, M] float32: for every segment c, the official algorithm's result on
    the rows of c (each row sums to 1; within a segment every column sums to
    N_c / M). Ignored rows are all zeros.
  """
  if scores.ndim != 2:
    raise ValueError(f"scores must be [N, M], got shape {scores.shape}")
  if segment_ids.shape != scores.shape[:1]:
    raise ValueError(f"segment_ids must be [N]={scores.shape[:1]}, got shape {segment_ids.shape}")
  if int(num_iters) < 1:
    raise ValueError(f"num_iters must be >= 1, got {num_iters}")
  if not float(epsilon) > 0:
    raise ValueError(f"epsilon must be > 0, got {epsilon}")

  valid = (segment_ids >= 0) & (segment_ids < num_segments)
  # Ignored rows go to an extra dummy segment so they never touch real ones.
  seg = jnp.where(valid, segment_ids, num_segments).astype(jnp.int32)
  num = num_segments + 1
  x = jnp.where(valid[:, None], scores.astype(jnp.float32) / epsilon, 0.0)

  # Iteration 1 in the log domain, where exp(S / epsilon) would overflow or
  # underflow. Rows of the official M x N_c matrix are each prototype over
  # the pixels of its class (a segment sum); columns are each pixel over its
  # M prototypes (a row sum here). Shifting every (segment, prototype) so
  # that its largest entry is 0 makes each segment sum include an exp(0) = 1.
  seg_max = jax.ops.segment_max(x, seg, num_segments=num)
  x = x - jnp.where(jnp.isfinite(seg_max), seg_max, 0.0)[seg]
  x = x - jnp.log(jax.ops.segment_sum(jnp.exp(x), seg, num_segments=num))[seg]
  q = jax.nn.softmax(x, axis=1)

  # Later iterations in the exp domain (3x cheaper: no exp/log per entry).
  # Safe: after a full iteration every pixel's row sums to 1, so it has an
  # entry >= 1/M, and every (segment, prototype) column had summed to 1
  # before the row division by at most M, so it has an entry >= 1/(N_c * M).
  # Each following division keeps both bounds, so no sum is ever 0.
  def body(_, q):
    q = q / jax.ops.segment_sum(q, seg, num_segments=num)[seg]
    return q / jnp.sum(q, axis=1, keepdims=True)

  q = jax.lax.fori_loop(0, int(num_iters) - 1, body, q)
  return jnp.where(valid[:, None], q, 0.0)
