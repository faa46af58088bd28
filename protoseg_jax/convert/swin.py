"""Swin (`protoseg_jax.models.swin`) from timm and official Microsoft state_dicts."""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from protoseg_jax.convert.state_dict import (StateDictReader, conv, dense, finalize,
                                             layer_norm, sub_state_dict)
from protoseg_jax.models import swin


def convert_state_dict(arch: str, state_dict: Mapping[str, Any], *, out_norms: bool = True,
                       prefix: str | None = None) -> dict:
  """Flax variables {"params": ...} for `arch` from a PyTorch Swin state_dict.

  Accepts the timm layout (timm >= 0.9: `layers.{i}.downsample` at the start
  of stage i >= 1, classifier `head.fc.*`) and the official Microsoft layout
  (`layers.{i}.downsample` at the end of stage i < 3, classifier `head.*`,
  persistent `relative_position_index` / `attn_mask` buffers), with or
  without a `backbone.` prefix (Swin segmentation checkpoints; then other
  keys are left to the decoder converters). Derived buffers
  (`relative_position_index`, `attn_mask`) and the classification `norm.*`
  and `head.*` are consumed and dropped. mmseg-style `norm0..norm3` are
  converted when present and freshly initialised (scale 1, bias 0) when
  absent (ImageNet checkpoints). Any other unused or missing key raises.
  """
  if arch not in swin.ARCHS:
    raise ValueError(f"unknown Swin arch {arch!r}; known: {sorted(swin.ARCHS)}")
  model = swin.ARCHS[arch](out_norms=out_norms)
  sd, prefix = sub_state_dict(state_dict, prefix, detect=("backbone.",))
  official = "layers.0.downsample.reduction.weight" in sd
  if official:  # move downsample to the start of the next stage (timm layout)
    sd = {re.sub(r"^layers\.(\d+)\.downsample\.",
                 lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", k): v for k, v in sd.items()}
  r = StateDictReader(sd, prefix=prefix)
  # derived buffers, recomputed for the actual input size
  r.drop(suffixes=("relative_position_index", "attn_mask"))
  # ImageNet classifier and its final norm: not used for segmentation
  r.drop(prefixes=("head.", "norm."))

  # Out norms: all four from the checkpoint (segmentation) or all four fresh (ImageNet).
  has_out_norms = any(r.has(f"norm{i}.weight") for i in range(len(model.depths)))
  params: dict = {
      "patch_embed_proj": conv(r, "patch_embed.proj"),
      "patch_embed_norm": layer_norm(r, "patch_embed.norm"),
  }
  for i, depth in enumerate(model.depths):
    layer: dict = {}
    if i > 0:
      layer["downsample"] = {"norm": layer_norm(r, f"layers.{i}.downsample.norm"),
                             "reduction": dense(r, f"layers.{i}.downsample.reduction", bias=False)}
    for j in range(depth):
      t = f"layers.{i}.blocks.{j}"
      layer[f"blocks_{j}"] = {
          "norm1": layer_norm(r, f"{t}.norm1"),
          "attn": {"relative_position_bias_table": r.get(f"{t}.attn.relative_position_bias_table"),
                   "qkv": dense(r, f"{t}.attn.qkv"),
                   "proj": dense(r, f"{t}.attn.proj")},
          "norm2": layer_norm(r, f"{t}.norm2"),
          "mlp": {"fc1": dense(r, f"{t}.mlp.fc1"), "fc2": dense(r, f"{t}.mlp.fc2")},
      }
    params[f"layers_{i}"] = layer
    if out_norms:
      dim = model.embed_dim * 2 ** i
      if has_out_norms:
        params[f"norm{i}"] = layer_norm(r, f"norm{i}")
      else:  # ImageNet checkpoint: fresh LayerNorm, as mmseg initialises it
        params[f"norm{i}"] = {"scale": np.ones((dim,), np.float32), "bias": np.zeros((dim,), np.float32)}
  return finalize(r, {"params": params}, model,
                  what=f"converted Swin state_dict for {arch!r} does not match the model")
