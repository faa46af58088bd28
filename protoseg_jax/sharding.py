"""Mesh and shardings: data parallelism over every device of every process.

The batch is split over the mesh axis "data"; the train state (params,
batch_stats, prototypes, optimizer state) is replicated. Because jit sees
global arrays, BatchNorm statistics and all prototype-learning sums are over
the global batch (SyncBN semantics, SwAV-style distributed Sinkhorn).
"""

from __future__ import annotations

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


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "config.batch_size"):
  n = mesh.devices.size
  if batch_size % n or batch_size % jax.process_count():
    raise ValueError(f"{what}={batch_size} must be divisible by the number of devices ({n}) "
                     f"and of processes ({jax.process_count()})")
