"""Benchmark: learn_prototypes vs a per-class loop written like the official code.

ADE20K scale by default: N = 65536 pixels, C = ADE20K's class count (150, read
from data.dataset_meta), M = 10, D = 720, with the [N, C*M] similarity given
(the head computes it for the logits anyway).

Prints one table: the vectorised jitted learn_prototypes (argmax and gumbel),
the official-style per-class loop in PyTorch (boolean-mask gathers, one
Sinkhorn per class, Gumbel assignment, momentum update; the similarity is
given to it too instead of being recomputed with torch.mm), the same loop
in JAX eager mode, and a floor: one jitted pass that reads the embeddings and
the logits once.

  python bench/bench_prototypes.py [--n 65536 --c C --m 10 --d 720 --repeats 5] [--pieces]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np


def _timeit(fn, repeats):
  fn()  # warm-up / compile
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts))


def torch_official_loop(torch, F, protos, _c, masks, out_seg, gt_seg, gamma=0.999):
  """The official prototype_learning, minus the duplicate torch.mm (masks given)."""
  c, m, d = protos.shape
  pred_seg = torch.max(out_seg, 1)[1]
  mask = gt_seg == pred_seg
  proto_target = gt_seg.clone().float()
  protos = protos.clone()
  masks = masks.view(-1, c, m).transpose(1, 2)  # the official 'nmk' layout
  for k in range(c):
    init_q = masks[..., k]
    init_q = init_q[gt_seg == k, ...]
    if init_q.shape[0] == 0:
      continue
    L = torch.exp(init_q / 0.05).t()
    B, K = L.shape[1], L.shape[0]
    L /= torch.sum(L)
    for _ in range(3):
      L /= torch.sum(L, dim=1, keepdim=True)
      L /= K
      L /= torch.sum(L, dim=0, keepdim=True)
      L /= B
    L *= B
    L = L.t()
    indexs = torch.argmax(L, dim=1)
    q = F.gumbel_softmax(L, tau=0.5, hard=True)
    m_k = mask[gt_seg == k]
    c_k = _c[gt_seg == k, ...]
    m_q = q * m_k[:, None].float()
    c_q = c_k * m_k[:, None].float()
    f = m_q.transpose(0, 1) @ c_q
    n = torch.sum(m_q, dim=0)
    if torch.sum(n) > 0:
      f = F.normalize(f, p=2, dim=-1)
      protos[k, n != 0, :] = gamma * protos[k, n != 0, :] + (1 - gamma) * f[n != 0, :]
    proto_target[gt_seg == k] = indexs.float() + (m * k)
  return F.normalize(protos, p=2, dim=-1), proto_target


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--n", type=int, default=65536)
  ap.add_argument("--c", type=int, default=None, help="classes (default: ADE20K's)")
  ap.add_argument("--m", type=int, default=10)
  ap.add_argument("--d", type=int, default=720)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--skip-jax-loop", action="store_true")
  ap.add_argument("--pieces", action="store_true",
                  help="also time the main pieces of learn_prototypes, each jitted alone")
  args = ap.parse_args()

  import jax
  import jax.numpy as jnp
  from protoseg_jax.prototypes import learn_prototypes, prototype_similarity
  from protoseg_jax.sinkhorn import sinkhorn_knopp

  if args.c is None:
    import data  # pylint: disable=g-import-not-at-top
    args.c = data.dataset_meta("ade20k").num_classes
  n, c, m, d = args.n, args.c, args.m, args.d
  rng = np.random.RandomState(0)
  protos = rng.randn(c, m, d).astype(np.float32)
  protos /= np.linalg.norm(protos, axis=-1, keepdims=True)
  emb = rng.randn(n, d).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
  # ADE-like label statistics: a Zipf-ish class frequency, 10% ignored.
  freq = 1.0 / np.arange(1, c + 1)
  labels = rng.choice(c, n, p=freq / freq.sum())
  labels[rng.rand(n) < 0.1] = 255
  logits = rng.randn(n, c).astype(np.float32)
  good = (rng.rand(n) < 0.7) & (labels != 255)
  logits[np.nonzero(good)[0], labels[good]] += 5

  dev = jax.devices()[0]
  p_j, e_j, l_j, y_j = map(jnp.asarray, (protos, emb, logits, labels))
  sim_j = jax.block_until_ready(jax.jit(prototype_similarity)(e_j, p_j))

  rows = []
  for mode in ("argmax", "gumbel"):
    # proto_logits is the caller's own similarity passed through; returning it
    # from a standalone jit would time a 400 MB copy that never happens inside
    # the head's program, so the benchmark returns everything else.
    def run(p, e, lg, y, s, k, mode=mode):
      r = learn_prototypes(p, e, lg, y, assignment=mode, rng=k, similarity=s)
      return r.prototypes, r.proto_targets, r.assignments, r.counts
    f = jax.jit(run)
    key = jax.random.key(0)
    t = _timeit(lambda: jax.block_until_ready(f(p_j, e_j, l_j, y_j, sim_j, key)), args.repeats)
    rows.append((f"protoseg_jax learn_prototypes (jit, {mode})", t))

  read_once = jax.jit(lambda e, lg: jnp.sum(e, axis=0).sum() + jnp.sum(lg, axis=0).sum())
  t_read = _timeit(lambda: jax.block_until_ready(read_once(e_j, l_j)), args.repeats)
  rows.append(("floor: read embeddings + logits once (jit)", t_read))

  pieces = []
  if args.pieces:
    valid = (y_j >= 0) & (y_j < c)
    cls = jnp.where(valid, y_j, 0)
    own = jnp.take_along_axis(sim_j.reshape(n, c, m), cls[:, None, None], axis=1)[:, 0, :]
    seg = jnp.where(valid, cls * m + jnp.asarray(rng.randint(0, m, n)), c * m)
    for name, fn, fargs in [
        ("feature sum segment_sum([N, D] -> [C*M, D])",
         lambda e, s_: jax.ops.segment_sum(e, s_, num_segments=c * m + 1), (e_j, seg)),
        ("correctness check argmax(logits) == label", lambda lg, y: jnp.argmax(lg, 1) == y,
         (l_j, y_j)),
        ("plain row max of the logits (for scale)", lambda lg: jnp.max(lg, 1), (l_j,)),
        ("sinkhorn_knopp on [N, M] (3 iterations)",
         lambda q, y: sinkhorn_knopp(q, jnp.where(valid, y, -1), c), (own, y_j))]:
      f = jax.jit(fn)
      pieces.append((name, _timeit(lambda f=f, fargs=fargs: jax.block_until_ready(f(*fargs)),
                                   args.repeats)))

  import torch
  import torch.nn.functional as F
  torch.manual_seed(0)
  tp, te, tl, ty = map(torch.from_numpy, (protos, emb, logits, labels.astype(np.int64)))
  ty = torch.where(ty == 255, torch.full_like(ty, -1), ty)
  ts = torch.from_numpy(np.asarray(sim_j))
  t_torch = _timeit(lambda: torch_official_loop(torch, F, tp, te, ts, tl, ty), max(1, args.repeats // 2))
  rows.append(("official-style per-class loop (PyTorch eager)", t_torch))

  if not args.skip_jax_loop:
    def jax_loop():
      out = np.array(protos)
      for k in range(c):
        idx = np.nonzero(labels == k)[0]
        if len(idx) == 0:
          continue
        s = sim_j[idx].reshape(len(idx), c, m)[:, k, :]
        L = jnp.exp(s / 0.05).T
        L = L / L.sum()
        for _ in range(3):
          L = L / L.sum(1, keepdims=True) / m
          L = L / L.sum(0, keepdims=True) / len(idx)
        q = (L * len(idx)).T
        index = jnp.argmax(q, 1)
        ok = jnp.asarray(np.argmax(logits[idx], 1) == k)
        f = jax.nn.one_hot(index, m).T @ (e_j[idx] * ok[:, None])
        out[k] = np.asarray(f)
      return out
    t_jl = _timeit(jax_loop, 1)
    rows.append(("same per-class loop in JAX eager", t_jl))

  print(f"device: {dev.platform} ({dev.device_kind}), {os.cpu_count()} CPU cores, "
        f"python {platform.python_version()}, jax {jax.__version__}, torch {torch.__version__}")
  print(f"N={n} C={c} M={m} D={d}, similarity given, median of {args.repeats} runs\n")
  print(f"| {'what':<50} | {'ms':>9} |")
  print(f"|{'-' * 52}|{'-' * 11}|")
  for name, t in rows:
    print(f"| {name:<50} | {t * 1e3:9.1f} |")
  print(f"\nspeed-up vs PyTorch loop: {t_torch / rows[1][1]:.1f}x (gumbel), "
        f"{t_torch / rows[0][1]:.1f}x (argmax); "
        f"time / read-once floor: {rows[1][1] / t_read:.2f}x (gumbel), {rows[0][1] / t_read:.2f}x (argmax)")
  if pieces:
    print(f"\npieces of learn_prototypes, each jitted alone, median of {args.repeats} runs\n")
    print(f"| {'piece':<50} | {'ms':>9} |")
    print(f"|{'-' * 52}|{'-' * 11}|")
    for name, t in pieces:
      print(f"| {name:<50} | {t * 1e3:9.1f} |")


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
