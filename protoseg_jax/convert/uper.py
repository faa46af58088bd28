"""mmseg UPerHead (`protoseg_jax.models.uper.UPerHead`) from `decode_head.*` keys."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from protoseg_jax.convert.layers import conv_module
from protoseg_jax.convert.state_dict import (StateDictReader, VariableBuilder, finalize,
                                             sub_state_dict)


def convert_state_dict(state_dict: Mapping[str, Any], *, prefix: str = "decode_head.", num_levels: int = 4,
                       pool_scales: Sequence[int] = (1, 2, 3, 6)) -> dict:
  """{"params", "batch_stats"} of `UPerHead` from an mmseg UPerHead state_dict.

  Only keys under `prefix` are read (pass the whole segmentor state_dict; the
  backbone and auxiliary head are other converters' business). Under the
  prefix, the classifier `conv_seg.*` is skipped on purpose (the caller
  converts it); any other unused or missing key raises.
  """
  sd, prefix = sub_state_dict(state_dict, prefix)
  r = StateDictReader(sd, prefix=prefix)
  r.drop(prefixes=("conv_seg.",))
  vb = VariableBuilder(r)
  names = [(f"psp_modules_{i}", f"psp_modules.{i}.1") for i in range(len(pool_scales))]
  names += [("bottleneck", "bottleneck"), ("fpn_bottleneck", "fpn_bottleneck")]
  names += [(f"lateral_convs_{i}", f"lateral_convs.{i}") for i in range(num_levels - 1)]
  names += [(f"fpn_convs_{i}", f"fpn_convs.{i}") for i in range(num_levels - 1)]
  for flax_name, torch_name in names:
    conv_module(vb, (flax_name,), torch_name)
  return finalize(r, vb.variables())
