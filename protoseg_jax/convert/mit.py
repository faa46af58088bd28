"""MiT / SegFormer encoder (`protoseg_jax.models.mit`) from HF transformers and NVlabs
state_dicts."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from protoseg_jax.convert.state_dict import (StateDictReader, conv, dense, finalize,
                                             layer_norm, sub_state_dict)
from protoseg_jax.models import mit

# Other parts of a segmentor / classifier checkpoint, dropped by the backbone converter.
_HEADS = ("decode_head.", "auxiliary_head.", "head.", "classifier.")

# HF hub layout (transformers < 5 module names, still how nvidia/mit-b* are
# stored) -> the transformers >= 5 module names, which this converter reads.
_HF_V4_TO_V5 = (
    (r"encoder\.patch_embeddings\.(\d+)\.", r"stages.\1.patch_embeddings."),
    (r"encoder\.block\.(\d+)\.", r"stages.\1.blocks."),
    (r"encoder\.layer_norm\.(\d+)\.", r"stages.\1.layer_norm."),
    (r"attention\.self\.query\.", "attention.q_proj."),
    (r"attention\.self\.key\.", "attention.k_proj."),
    (r"attention\.self\.value\.", "attention.v_proj."),
    (r"attention\.self\.sr\.", "attention.sequence_reduction.sequence_reduction."),
    (r"attention\.self\.layer_norm\.", "attention.sequence_reduction.layer_norm."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"mlp\.dense1\.", "mlp.fc1."),
    (r"mlp\.dense2\.", "mlp.fc2."),
    (r"\.layer_norm_1\.", ".layernorm_before."),
    (r"\.layer_norm_2\.", ".layernorm_after."),
)


def hf_v4_to_v5(state_dict: Mapping[str, Any]) -> dict:
  """Rename HF hub (transformers 4 layout) MiT keys to the transformers 5 names."""
  out = {}
  for k, v in state_dict.items():
    for pat, rep in _HF_V4_TO_V5:
      k = re.sub(pat, rep, k)
    out[k] = v
  return out


def _nvlabs_to_v5(state_dict: Mapping[str, Any], depths: Sequence[int]) -> dict:
  """Original NVlabs MiT layout -> transformers 5 names; `kv` is split into
  key (first half of the output rows) and value (second half)."""
  out = {}
  for k, v in state_dict.items():
    m = re.match(r"^patch_embed(\d)\.(proj|norm)\.(.*)$", k)
    if m:
      sub = "proj" if m.group(2) == "proj" else "layer_norm"
      out[f"stages.{int(m.group(1)) - 1}.patch_embeddings.{sub}.{m.group(3)}"] = v
      continue
    m = re.match(r"^norm(\d)\.(.*)$", k)
    if m:
      out[f"stages.{int(m.group(1)) - 1}.layer_norm.{m.group(2)}"] = v
      continue
    m = re.match(r"^block(\d)\.(\d+)\.(.*)$", k)
    if m:
      pre = f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."
      rest = m.group(3)
      if rest.startswith("attn.kv."):
        n = v.shape[0] // 2
        out[pre + "attention.k_proj." + rest[8:]] = v[:n]
        out[pre + "attention.v_proj." + rest[8:]] = v[n:]
        continue
      for a, b in (("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."),
                   ("attn.q.", "attention.q_proj."), ("attn.proj.", "attention.o_proj."),
                   ("attn.sr.", "attention.sequence_reduction.sequence_reduction."),
                   ("attn.norm.", "attention.sequence_reduction.layer_norm."),
                   ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."),
                   ("mlp.dwconv.dwconv.", "mlp.dwconv.dwconv.")):
        if rest.startswith(a):
          rest = b + rest[len(a):]
          break
      out[pre + rest] = v
      continue
    out[k] = v  # head.*, or unknown: reported by the reader
  return out


def convert_state_dict(arch: str, state_dict: Mapping[str, Any], *, prefix: str | None = None) -> dict:
  """Flax variables {"params": ...} for MiT `arch` from a PyTorch state_dict.

  Layouts: HF hub (`[segformer.]encoder.patch_embeddings.N.proj`,
  `encoder.block.N.M.attention.self.query/key/value/sr/layer_norm`,
  `attention.output.dense`, `mlp.dense1/dwconv.dwconv/dense2`,
  `encoder.layer_norm.N`), transformers >= 5 (`[segformer.]stages.N...`), and
  NVlabs (`patch_embed1.proj`, `block1.0.attn.q/kv/sr/norm`, `norm1`, ...,
  also under `backbone.` in mmseg-style segmentor checkpoints). Dropped on
  purpose: `decode_head.*` (convert with `protoseg_jax.convert.segformer`),
  `auxiliary_head.*`, and the ImageNet classifier (`head.*`, `classifier.*`).
  Anything else unused, or missing, raises (also keys outside the prefix).
  """
  if arch not in mit.ARCHS:
    raise ValueError(f"unknown MiT arch {arch!r}; known: {sorted(mit.ARCHS)}")
  model = mit.ARCHS[arch]()
  sd, prefix = sub_state_dict(state_dict, prefix, detect=("segformer.", "backbone."),
                              outside=_HEADS)
  body = {k: v for k, v in sd.items() if not k.startswith(_HEADS)}  # heads: not the backbone
  if any(k.startswith("patch_embed1.") for k in body):
    body = _nvlabs_to_v5(body, model.depths)
  elif any(k.startswith("encoder.") for k in body):
    body = hf_v4_to_v5(body)
  r = StateDictReader(body, prefix=prefix)
  params: dict = {}
  for i, depth in enumerate(model.depths):
    st = f"stages.{i}"
    params[f"patch_embed{i}_proj"] = conv(r, f"{st}.patch_embeddings.proj")
    params[f"patch_embed{i}_norm"] = layer_norm(r, f"{st}.patch_embeddings.layer_norm")
    for j in range(depth):
      t = f"{st}.blocks.{j}"
      attn = {"query": dense(r, f"{t}.attention.q_proj"),
              "key": dense(r, f"{t}.attention.k_proj"),
              "value": dense(r, f"{t}.attention.v_proj"),
              "proj": dense(r, f"{t}.attention.o_proj")}
      if model.sr_ratios[i] > 1:
        attn["sr"] = conv(r, f"{t}.attention.sequence_reduction.sequence_reduction")
        attn["sr_norm"] = layer_norm(r, f"{t}.attention.sequence_reduction.layer_norm")
      params[f"block{i}_{j}"] = {
          "norm1": layer_norm(r, f"{t}.layernorm_before"),
          "attn": attn,
          "norm2": layer_norm(r, f"{t}.layernorm_after"),
          "mlp": {"fc1": dense(r, f"{t}.mlp.fc1"),
                  "dwconv": conv(r, f"{t}.mlp.dwconv.dwconv"),
                  "fc2": dense(r, f"{t}.mlp.fc2")},
      }
    params[f"norm{i}"] = layer_norm(r, f"{st}.layer_norm")
  return finalize(r, {"params": params}, model,
                  what=f"converted MiT state_dict for {arch!r} does not match the model")
