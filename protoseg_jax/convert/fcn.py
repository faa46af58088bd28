"""mmseg FCNHead (`protoseg_jax.models.fcn.FCNHead`) from `decode_head.*` / `auxiliary_head.*` keys."""

from __future__ import annotations

from protoseg_jax.convert.layers import conv_module
from protoseg_jax.convert.state_dict import StateDictReader, VariableBuilder


def convert_fcn_head(reader: StateDictReader, torch_prefix: str, *, num_convs: int = 2,
                     concat_input: bool = True) -> tuple[dict, dict]:
  """(params, batch_stats) of `FCNHead` from mmseg keys under `torch_prefix`.

  E.g. torch_prefix="decode_head." or "auxiliary_head."; reads `convs.{i}.conv.weight`,
  `convs.{i}.bn.*` and `conv_cat.*`. The classifier `conv_seg.*` is not read.
  """
  vb = VariableBuilder(reader)
  for i in range(num_convs):
    conv_module(vb, (f"convs_{i}",), f"{torch_prefix}convs.{i}")
  if concat_input:
    conv_module(vb, ("conv_cat",), f"{torch_prefix}conv_cat")
  return vb.params, vb.stats
