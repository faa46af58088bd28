"""`convert_state_dict(arch, ...)`: a backbone arch -> its family's converter."""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from protoseg_jax import models


def convert_state_dict(arch: str, state_dict: Mapping[str, Any], **kwargs) -> dict:
  """Flax variables ({"params", "batch_stats"?}) for backbone `arch`.

  Calls `protoseg_jax.convert.<family>.convert_state_dict(arch, state_dict, **kwargs)`
  for the family `models.backbone_family_name(arch)` (which raises for an unknown arch).
  """
  family = models.backbone_family_name(arch)
  converter = importlib.import_module(f"protoseg_jax.convert.{family}")
  return converter.convert_state_dict(arch, state_dict, **kwargs)
