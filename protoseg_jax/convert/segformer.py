"""SegFormer all-MLP decoder (`protoseg_jax.models.segformer.SegFormerHead`) and its
classifier from HF transformers or NVlabs `decode_head.*` keys."""

from __future__ import annotations

from typing import Any, Mapping

from protoseg_jax.convert.state_dict import (StateDictReader, batch_norm, conv, dense,
                                             dense_kernel, finalize, sub_state_dict)

_CLASSIFIER_KEYS = ("classifier.", "linear_pred.", "conv_seg.")


def convert_state_dict(state_dict: Mapping[str, Any], *, prefix: str = "decode_head.",
                       num_levels: int = 4) -> dict:
  """{"params", "batch_stats"} of `SegFormerHead` from HF or NVlabs keys.

  Only keys under `prefix` are read (pass a whole segmentor state_dict; the
  backbone is converted by `protoseg_jax.convert.mit`). The classifier keys are
  skipped on purpose; any other unused or missing key raises.
  """
  sd, prefix = sub_state_dict(state_dict, prefix)
  r = StateDictReader(sd, prefix=prefix)
  r.drop(prefixes=_CLASSIFIER_KEYS)
  params = {}
  if r.has("linear_c1.proj.weight"):  # NVlabs: linear_c1..linear_c4, ConvModule fuse
    for i in range(num_levels):
      params[f"linear_c{i}"] = dense(r, f"linear_c{i + 1}.proj")
    params["linear_fuse"] = conv(r, "linear_fuse.conv", bias=False)
    params["bn"], stats = batch_norm(r, "linear_fuse.bn")
  else:  # HF: hub `linear_c.N`, transformers >= 5 `linear_projections.N`
    lin = "linear_projections" if r.has("linear_projections.0.proj.weight") else "linear_c"
    for i in range(num_levels):
      params[f"linear_c{i}"] = dense(r, f"{lin}.{i}.proj")
    params["linear_fuse"] = conv(r, "linear_fuse", bias=False)
    params["bn"], stats = batch_norm(r, "batch_norm")
  return finalize(r, {"params": params, "batch_stats": {"bn": stats}})


def convert_classifier(state_dict: Mapping[str, Any], *, prefix: str = "decode_head.") -> dict:
  """The 1x1 classifier as Flax Dense params {"kernel": [C, K], "bias": [K]}
  (HF `classifier` Linear, NVlabs `linear_pred` 1x1 Conv2d)."""
  sd, prefix = sub_state_dict(state_dict, prefix)
  for name in ("classifier", "linear_pred"):
    if f"{name}.weight" in sd:
      r = StateDictReader({k: v for k, v in sd.items() if k.startswith(f"{name}.")}, prefix=prefix)
      w = r.get(f"{name}.weight")
      return finalize(r, {"kernel": dense_kernel(w.reshape(w.shape[0], -1)),
                          "bias": r.get(f"{name}.bias")})
  raise ValueError(f"no classifier under {prefix!r}: expected {prefix}classifier.weight or "
                   f"{prefix}linear_pred.weight")
