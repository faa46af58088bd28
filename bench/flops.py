"""FLOP counts that do not depend on the accelerator's compiler.

XLA's cost analysis of a program compiled for GPU misses the convolutions
that become cuDNN custom calls, so a GPU run's own `compiled.cost_analysis()`
undercounts conv nets. Two counts that do not have that problem:

* `matmul_conv_flops(jaxpr)`: the FLOPs of every `dot_general` and
  `conv_general_dilated` in a jaxpr (forward, backward, remat recomputation,
  loop bodies times their trip count), 2 per multiply-add, every output
  position counted in full (padding included). This is the usual numerator
  of MFU ("model FLOPs" of matmuls and convolutions; elementwise work not
  counted).
* `cost_flops(lowered.cost_analysis())` of the same program lowered for the
  CPU backend (inputs given as `abstract(tree, cpu_sharding)`): XLA's
  HloCostAnalysis BEFORE optimisation (`Lowered.cost_analysis`; no compile
  needed, seconds even for the largest models; on GPU/TPU backends, which
  jax drives through the PJRT C API, `Lowered.cost_analysis` is not
  available, hence the CPU lowering). It counts
  every op, elementwise included. It is computed on the unoptimised HLO on
  purpose: after CPU optimisation the kernel gradient of a depthwise
  convolution is rewritten into a form the analysis over-counts ~250x
  (docs/benchmarks.md, MiT); before it, it is counted right.

Both are checked against each other in docs/benchmarks.md.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.extend import core as jex_core


def _sub_jaxprs(value):
  """The jaxprs inside one equation parameter (a jaxpr, or a tuple/list of them)."""
  if isinstance(value, jex_core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jex_core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def _eqn_flops(eqn) -> float:
  name = eqn.primitive.name
  if name == "dot_general":
    (lc, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    k = math.prod(lhs[d] for d in lc)
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
    per_output = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
  return 0.0


def _count(jaxpr, stats: dict) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
    name = eqn.primitive.name
    subs = [(k, list(_sub_jaxprs(v))) for k, v in eqn.params.items()]
    subs = [(k, js) for k, js in subs if js]
    if not subs:
      continue
    if name == "cond":
      total += max(_count(j, stats) for _, js in subs for j in js)
      continue
    inner = sum(_count(j, stats) for _, js in subs for j in js)
    if name == "scan":
      inner *= int(eqn.params["length"])
    elif name == "while":
      if inner:
        stats["while_loops_with_flops"] += 1   # trip count unknown: counted once
    elif name == "shard_map":
      inner *= int(eqn.params["mesh"].size)    # the body runs once per device
    total += inner
  return total


def matmul_conv_flops(closed_jaxpr) -> dict:
  """{"flops": matmul + conv FLOPs, "while_loops_with_flops": loops counted once}."""
  stats = {"while_loops_with_flops": 0}
  jaxpr = getattr(closed_jaxpr, "jaxpr", closed_jaxpr)
  return {"flops": _count(jaxpr, stats), **stats}


def abstract(tree, sharding):
  """ShapeDtypeStructs of `tree`'s arrays placed on `sharding` (e.g. one CPU device)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def cost_flops(cost: Any, key: str = "flops") -> float | None:
  """An entry ("flops", "bytes accessed", ...) of a cost analysis (a dict, or
  a list of them in older jax); None where it has none."""
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or key not in cost:
    return None
  return float(cost[key])


def _self_check():
  """The counter on programs whose FLOPs are known by hand."""
  import jax.numpy as jnp
  from jax import lax

  x, w = jnp.ones((8, 32)), jnp.ones((32, 16))
  got = matmul_conv_flops(jax.make_jaxpr(jax.grad(lambda x, w: (x @ w).sum(), (0, 1)))(x, w))
  assert got["flops"] == 3 * 2 * 8 * 32 * 16, got          # forward + 2 gradients
  img, k = jnp.ones((2, 16, 16, 8)), jnp.ones((3, 3, 1, 8))   # depthwise 3x3, 8 channels

  def dw(img, k):
    return lax.conv_general_dilated(img, k, (1, 1), "SAME", feature_group_count=8,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()

  fwd = 2 * 2 * 16 * 16 * 8 * 9
  assert matmul_conv_flops(jax.make_jaxpr(dw)(img, k))["flops"] == fwd
  got = matmul_conv_flops(jax.make_jaxpr(jax.grad(dw, (0, 1)))(img, k))
  assert got["flops"] == 3 * fwd, got                      # input and kernel gradient as forward
  f = jax.jit(lambda a: jax.lax.fori_loop(0, 5, lambda i, b: b @ a, a))
  got = matmul_conv_flops(f.trace(jnp.ones((4, 4))).jaxpr)
  assert got["flops"] == 5 * 2 * 4**3, got                 # a fixed-length loop is a scan
  print("bench/flops.py: self-check passed")


if __name__ == "__main__":
  _self_check()
