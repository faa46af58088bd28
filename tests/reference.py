"""Plain per-class NumPy references written line by line from PROTOSEG.md.

Independent of protoseg_jax on purpose: loops over classes, exp domain,
float64, exactly the official algorithm's steps.
"""

import numpy as np


def sinkhorn_one_class(s, num_iters=3, epsilon=0.05):
  """Official distributed_sinkhorn on one class's [N_c, M] scores (no Gumbel)."""
  s = np.asarray(s, np.float64)
  L = np.exp(s / epsilon).T  # M x N_c
  n_c = L.shape[1]
  m = L.shape[0]
  L = L / L.sum()
  for _ in range(num_iters):
    L = L / L.sum(axis=1, keepdims=True)
    L = L / m
    L = L / L.sum(axis=0, keepdims=True)
    L = L / n_c
  L = L * n_c
  return L.T  # N_c x M


def sinkhorn_per_class(scores, segment_ids, num_segments, num_iters=3, epsilon=0.05):
  q = np.zeros(scores.shape, np.float64)
  for c in range(num_segments):
    idx = np.nonzero(segment_ids == c)[0]
    if len(idx) == 0:
      continue
    q[idx] = sinkhorn_one_class(scores[idx], num_iters, epsilon)
  return q


def l2n(x, axis=-1):
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def learn_prototypes_reference(prototypes, embeddings, logits, labels, gamma=0.999,
                               num_iters=3, epsilon=0.05):
  """Argmax-assignment prototype learning, one class at a time.

  Labels outside [0, C) are ignored; their targets are -1 (official code)."""
  P = l2n(np.asarray(prototypes, np.float64))
  C, M, D = P.shape
  e = np.asarray(embeddings, np.float64)
  labels = np.asarray(labels)
  sim = e @ P.reshape(C * M, D).T  # [N, C*M]
  pred = np.argmax(logits, axis=1)
  correct = pred == labels
  targets = np.full(labels.shape, -1, np.int64)
  new = P.copy()
  for c in range(C):
    idx = np.nonzero(labels == c)[0]
    if len(idx) == 0:
      continue
    s_c = sim[idx].reshape(len(idx), C, M)[:, c, :]
    q = sinkhorn_one_class(s_c, num_iters, epsilon)
    index = np.argmax(q, axis=1)
    targets[idx] = c * M + index
    for m in range(M):
      members = idx[(index == m) & correct[idx]]
      if len(members) == 0:
        continue
      f = l2n(e[members].sum(axis=0))
      new[c, m] = gamma * P[c, m] + (1 - gamma) * f
  return l2n(new), sim, targets
