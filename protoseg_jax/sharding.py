"""Mesh and shardings: data parallelism over every device of every process.

The batch is split over the mesh axis "data"; the train state (params,
batch_stats, prototypes, optimizer state) is replicated, except parameters
that config.sharding.rules shard FSDP-style over the same axis (with their
optimizer state; `param_shardings`). Prototypes and batch statistics always
stay replicated. Because jit sees
global arrays, BatchNorm statistics and all prototype-learning sums are over
the global batch (SyncBN semantics, SwAV-style distributed Sinkhorn).
"""

from __future__ import annotations

import math
import re
from typing import Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def create_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """1-D mesh over `devices` (default: all devices of all processes)."""
  devices = list(devices) if devices is not None else jax.devices()
  # Auto axis types: shardings are propagated by the compiler from the
  # in/out shardings; Explicit (jax.make_mesh's default) would make every
  # unsharded intermediate a type error in library code that knows nothing
  # about meshes.
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over DATA_AXIS."""
  return NamedSharding(mesh, P(DATA_AXIS))


def batch_size_problem(batch_size: int, num_devices: Optional[int], num_processes: int,
                       what: str = "config.batch_size") -> Optional[str]:
  """Why a global batch cannot be split evenly, naming the nearest sizes that can; None if it can.

  Args:
    batch_size: the global batch size.
    num_devices: devices the batch is split over (each gets the same share);
      None: not split over devices (only over the processes).
    num_processes: processes that each load the same share.
    what: the config key, for the message.
  """
  step = math.lcm(num_devices or 1, num_processes)
  if batch_size >= 1 and batch_size % step == 0:
    return None
  below = batch_size // step * step
  near = " or ".join(str(b) for b in (below, below + step) if b >= 1)
  over = [f"the number of devices ({num_devices})"] if num_devices else []
  over.append(f"the number of processes ({num_processes})")
  return (f"{what}={batch_size}: must be a multiple of {' and of '.join(over)}; "
          f"the nearest that are: {near}")


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "config.batch_size"):
  """Raises ValueError (the `batch_size_problem` message) unless `batch_size`
  splits evenly over the mesh's devices and over the processes."""
  problem = batch_size_problem(batch_size, mesh.devices.size, jax.process_count(), what)
  if problem:
    raise ValueError(problem)


# ----------------------------------------------------------------------------
# Parameter sharding rules (FSDP).

STRATEGIES = ("replicate", "fsdp")


def path_name(path) -> str:
  """'backbone/stage2/conv1/kernel' for a jax.tree_util key path."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def fsdp_spec(shape: Sequence[int], num_shards: int, min_size: int) -> P:
  """Shards the largest dimension divisible by `num_shards` over DATA_AXIS;
  replicated when the array has fewer than `min_size` elements or no such
  dimension exists."""
  size = 1
  for d in shape:
    size *= int(d)
  if num_shards <= 1 or size < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: (-shape[d], d)):
    if shape[dim] % num_shards == 0:
      spec = [None] * len(shape)
      spec[dim] = DATA_AXIS
      return P(*spec)
  return P()


def param_shardings(params, mesh: Mesh, rules=((".*", "replicate"),), min_size: int = 2**14):
  """NamedShardings for a params tree (arrays or ShapeDtypeStructs) from rules.

  Args:
    params: the model's "params" collection.
    mesh: the 1-D data mesh.
    rules: (regex, strategy) pairs, big_vision style: the first regex that
      fully matches a parameter's path ('backbone/stage2/conv1/kernel')
      decides its strategy, "replicate" or "fsdp" (the parameter, and its
      optimizer state, split over the data axis along its largest divisible
      dimension, `fsdp_spec`); a path no rule matches is replicated.
    min_size: parameters with fewer elements stay replicated under "fsdp".
  """
  compiled = []
  for regex, strategy in rules:
    if strategy not in STRATEGIES:
      raise ValueError(f"config.sharding.rules: strategy {strategy!r} for {regex!r} must be "
                       f"one of {STRATEGIES}")
    compiled.append((re.compile(regex), strategy))
  n = mesh.devices.size

  def one(path, leaf):
    name = path_name(path)
    strategy = next((s for r, s in compiled if r.fullmatch(name)), "replicate")
    spec = fsdp_spec(leaf.shape, n, min_size) if strategy == "fsdp" else P()
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(one, params)


def like_params(tree, params, shardings, mesh: Mesh):
  """Shardings for a tree holding copies of the params (an optimizer state):
  a leaf whose path ends with a parameter's path and has its shape gets that
  parameter's sharding; every other leaf (step counts, ...) is replicated."""
  by_name = {}
  for (path, leaf), s in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                             jax.tree.leaves(shardings)):
    by_name[path_name(path)] = (tuple(leaf.shape), s)

  def one(path, leaf):
    name = path_name(path)
    parts = name.split("/")
    for i in range(len(parts)):
      hit = by_name.get("/".join(parts[i:]))
      if hit is not None and hit[0] == tuple(getattr(leaf, "shape", ())):
        return hit[1]
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, tree)
