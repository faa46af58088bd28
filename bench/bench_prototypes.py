"""Benchmark: learn_prototypes vs a per-class loop written like the official code.

ADE20K scale by default: N = 65536 pixels, C = ADE20K's class count (150,
bench.harness.NUM_CLASSES), M = 10, D = 720, with the [N, C*M] similarity given
(the head computes it for the logits anyway).

Prints one table: the vectorised jitted learn_prototypes (argmax and gumbel),
the official-style per-class loop in PyTorch (boolean-mask gathers, one
Sinkhorn per class, Gumbel assignment, momentum update; the similarity is
given to it too instead of being recomputed with torch.mm), the same loop
in JAX eager mode, and a floor: one jitted pass that reads the embeddings and
the logits once.

  python -m bench.bench_prototypes [--n 65536 --c C --m 10 --d 720 --repeats 5] [--pieces]
                                   [--torch-device cuda]

Times are medians of `bench.harness.time_fn` (one warm-up, then --repeats
runs, blocking on the outputs). `measure(...)` returns the same figures as a
dict (`python -m bench.suite` uses it).
"""

from __future__ import annotations

import argparse
import os
import platform

import numpy as np

from bench import harness


def _timeit(fn, repeats, sync=None):
  """Median seconds of `repeats` calls of fn() after one warm-up (compile)."""
  return harness.time_fn(fn, warmup=1, runs=repeats, sync=sync).median_s


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


def measure(n: int, c: int, m: int = 10, d: int = 720, repeats: int = 5, *,
            pieces: bool = False, jax_loop: bool = False, torch_device: str = "cpu") -> dict:
  """Times learn_prototypes (jit, argmax and gumbel), the read-once floor and
  the official-style PyTorch loop on the same random inputs.

  Returns {"rows": [(what, seconds)], "pieces": [(what, seconds)], "t_torch",
  "t_read", "t_argmax", "t_gumbel", "torch": version, "torch_device"}; times
  are medians of `repeats` runs after a warm-up (the PyTorch loop:
  max(1, repeats // 2) runs). torch_device: "cpu" or "cuda" (then each run
  ends with torch.cuda.synchronize()).
  """
  import jax
  import jax.numpy as jnp
  from protoseg_jax.prototypes import learn_prototypes, prototype_similarity
  from protoseg_jax.sinkhorn import sinkhorn_knopp

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

  p_j, e_j, l_j, y_j = map(jnp.asarray, (protos, emb, logits, labels))
  sim_j = jax.block_until_ready(jax.jit(prototype_similarity)(e_j, p_j))

  rows = []
  for mode in ("argmax", "gumbel"):
    def run(p, e, lg, y, s, k, mode=mode):
      r = learn_prototypes(p, e, lg, y, assignment=mode, rng=k, similarity=s)
      return r.prototypes, r.proto_targets, r.assignments, r.counts
    f = jax.jit(run)
    key = jax.random.key(0)
    t = _timeit(lambda: f(p_j, e_j, l_j, y_j, sim_j, key), repeats)
    rows.append((f"protoseg_jax learn_prototypes (jit, {mode})", t))

  read_once = jax.jit(lambda e, lg: jnp.sum(e, axis=0).sum() + jnp.sum(lg, axis=0).sum())
  t_read = _timeit(lambda: read_once(e_j, l_j), repeats)
  rows.append(("floor: read embeddings + logits once (jit)", t_read))

  piece_rows = []
  if pieces:
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
      piece_rows.append((name, _timeit(lambda f=f, fargs=fargs: f(*fargs), repeats)))

  import torch
  import torch.nn.functional as F
  torch.manual_seed(0)
  dev = torch.device(torch_device)
  tp, te, tl, ty = (torch.from_numpy(a).to(dev)
                    for a in (protos, emb, logits, labels.astype(np.int64)))
  ty = torch.where(ty == 255, torch.full_like(ty, -1), ty)
  ts = torch.from_numpy(np.array(sim_j)).to(dev)
  sync = torch.cuda.synchronize if dev.type == "cuda" else None
  t_torch = _timeit(lambda: torch_official_loop(torch, F, tp, te, ts, tl, ty),
                    max(1, repeats // 2), sync)
  rows.append((f"official-style per-class loop (PyTorch eager, {dev.type})", t_torch))

  if jax_loop:
    def loop():
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
    rows.append(("same per-class loop in JAX eager", _timeit(loop, 1)))

  return {"rows": rows, "pieces": piece_rows, "t_torch": t_torch, "t_read": t_read,
          "t_argmax": rows[0][1], "t_gumbel": rows[1][1], "torch": torch.__version__,
          "torch_device": dev.type}


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
  ap.add_argument("--torch-device", default="cpu", help="cpu | cuda")
  args = ap.parse_args()

  import jax

  if args.c is None:
    args.c = harness.dataset_num_classes("ade20k")
  res = measure(args.n, args.c, args.m, args.d, args.repeats, pieces=args.pieces,
                jax_loop=not args.skip_jax_loop, torch_device=args.torch_device)
  dev = jax.devices()[0]
  print(f"device: {dev.platform} ({dev.device_kind}), {os.cpu_count()} CPU cores, "
        f"python {platform.python_version()}, jax {jax.__version__}, torch {res['torch']}")
  print(f"N={args.n} C={args.c} M={args.m} D={args.d}, similarity given, "
        f"median of {args.repeats} runs\n")
  print(f"| {'what':<50} | {'ms':>9} |")
  print(f"|{'-' * 52}|{'-' * 11}|")
  for name, t in res["rows"]:
    print(f"| {name:<50} | {t * 1e3:9.1f} |")
  t_torch, t_read, t_a, t_g = res["t_torch"], res["t_read"], res["t_argmax"], res["t_gumbel"]
  print(f"\nspeed-up vs PyTorch loop: {t_torch / t_g:.1f}x (gumbel), {t_torch / t_a:.1f}x (argmax); "
        f"time / read-once floor: {t_g / t_read:.2f}x (gumbel), {t_a / t_read:.2f}x (argmax)")
  if res["pieces"]:
    print(f"\npieces of learn_prototypes, each jitted alone, median of {args.repeats} runs\n")
    print(f"| {'piece':<50} | {'ms':>9} |")
    print(f"|{'-' * 52}|{'-' * 11}|")
    for name, t in res["pieces"]:
      print(f"| {name:<50} | {t * 1e3:9.1f} |")


if __name__ == "__main__":
  main()
