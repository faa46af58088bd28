"""Mix Transformer (MiT-B0..B5), the SegFormer encoder (Flax Linen, NHWC).

Per stage i: overlapping patch embedding (conv 7x7 stride 4 pad 3 for i = 0,
conv 3x3 stride 2 pad 1 after; LayerNorm), `depths[i]` blocks of
  x + DropPath(EfficientAttention(LN(x)))   keys/values from a spatially
                                            reduced map (conv k=s=sr_ratio + LN)
                                            when sr_ratio > 1
  x + DropPath(MixFFN(LN(x)))               dense -> 3x3 depthwise conv -> GELU -> dense
and a final per-stage LayerNorm. Returns the 4 stage outputs
[B, H/4, W/4, C0], [B, H/8, W/8, C1], ... (conv arithmetic: floor((H+2p-k)/s)+1).

LayerNorm epsilons: the NVlabs/SegFormer training code used 1e-6 for the block
and stage norms (1e-5 for the patch-embedding and reduction norms);
HF transformers uses 1e-5 everywhere. `norm_eps` selects the former (default
1e-6, as the published weights were trained); `norm_eps=1e-5` reproduces HF
exactly. The difference is far below bf16 resolution in practice.

`convert_state_dict` reads HF transformers `SegformerModel` /
`SegformerForSemanticSegmentation` state_dicts (hub layout `encoder.block...`
and the transformers>=5 in-memory layout `stages...`, with or without the
`segformer.` prefix) and the original NVlabs MiT layout (`patch_embed1.proj`,
`block1.0.attn.q/kv`, ...).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from protoseg_jax import convert as cv
from protoseg_jax.models.swin import DropPath, conv, dense

Dtype = Any


class EfficientAttention(nn.Module):
  """`x [B, H, W, C]` -> [B, H, W, C]; keys/values from the map reduced by sr_ratio."""
  dim: int
  num_heads: int
  sr_ratio: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    b, h, w, c = x.shape
    nh, hd = self.num_heads, self.dim // self.num_heads
    q = nn.Dense(self.dim, dtype=self.dtype, name="query")(x).reshape(b, h * w, nh, hd)
    kv = x
    if self.sr_ratio > 1:
      s = self.sr_ratio
      kv = nn.Conv(self.dim, (s, s), strides=(s, s), padding="VALID", dtype=self.dtype, name="sr")(kv)
      kv = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="sr_norm")(kv)
    kv = kv.reshape(b, -1, c)
    k = nn.Dense(self.dim, dtype=self.dtype, name="key")(kv).reshape(b, -1, nh, hd)
    v = nn.Dense(self.dim, dtype=self.dtype, name="value")(kv).reshape(b, -1, nh, hd)
    attn = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(hd ** -0.5, q.dtype), k)
    attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, h, w, self.dim)
    return nn.Dense(self.dim, dtype=self.dtype, name="proj")(out)


class MixFFN(nn.Module):
  """dense -> 3x3 depthwise conv (bias) -> GELU (exact) -> dense on `[B, H, W, C]`."""
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    x = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
    x = nn.Conv(self.hidden, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=self.hidden,
                dtype=self.dtype, name="dwconv")(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(c, dtype=self.dtype, name="fc2")(x)


class MiTBlock(nn.Module):
  dim: int
  num_heads: int
  sr_ratio: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    drop = DropPath(self.drop_path)
    y = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm1")(x)
    y = EfficientAttention(self.dim, self.num_heads, self.sr_ratio, dtype=self.dtype, name="attn")(y)
    x = x + drop(y, deterministic=not train)
    y = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm2")(x)
    y = MixFFN(int(self.dim * self.mlp_ratio), dtype=self.dtype, name="mlp")(y)
    return x + drop(y, deterministic=not train)


class MixVisionTransformer(nn.Module):
  """MiT encoder: `images [B, H, W, 3]` -> 4 NHWC features at 1/4, 1/8, 1/16, 1/32."""
  embed_dims: Sequence[int] = (32, 64, 160, 256)
  num_heads: Sequence[int] = (1, 2, 5, 8)
  depths: Sequence[int] = (2, 2, 2, 2)
  sr_ratios: Sequence[int] = (8, 4, 2, 1)
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.1  # SegFormer's training configs
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, ...]:
    if images.ndim != 4:
      raise ValueError(f"MixVisionTransformer expects images [B, H, W, C], got shape {images.shape}")
    x = images.astype(self.dtype)
    dpr = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
    outs, start = [], 0
    for i, depth in enumerate(self.depths):
      k, s = (7, 4) if i == 0 else (3, 2)
      x = nn.Conv(self.embed_dims[i], (k, k), strides=(s, s), padding=((k // 2, k // 2),) * 2,
                  dtype=self.dtype, name=f"patch_embed{i}_proj")(x)
      x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=f"patch_embed{i}_norm")(x)
      for j in range(depth):
        x = MiTBlock(self.embed_dims[i], self.num_heads[i], self.sr_ratios[i], self.mlp_ratio,
                     drop_path=float(dpr[start + j]), norm_eps=self.norm_eps, dtype=self.dtype,
                     name=f"block{i}_{j}")(x, train=train)
      start += depth
      x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name=f"norm{i}")(x)
      outs.append(x)
    return tuple(outs)


_WIDE = (64, 128, 320, 512)
_CFGS = {
    "mit_b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "mit_b1": dict(embed_dims=_WIDE, depths=(2, 2, 2, 2)),
    "mit_b2": dict(embed_dims=_WIDE, depths=(3, 4, 6, 3)),
    "mit_b3": dict(embed_dims=_WIDE, depths=(3, 4, 18, 3)),
    "mit_b4": dict(embed_dims=_WIDE, depths=(3, 8, 27, 3)),
    "mit_b5": dict(embed_dims=_WIDE, depths=(3, 6, 40, 3)),
}

ARCHS = {name: functools.partial(MixVisionTransformer, **cfg) for name, cfg in _CFGS.items()}

# SegFormer all-MLP decoder width per encoder (mmseg/NVlabs configs).
DECODER_CHANNELS = {"mit_b0": 256, "mit_b1": 256, "mit_b2": 768, "mit_b3": 768, "mit_b4": 768, "mit_b5": 768}


# --- PyTorch conversion -------------------------------------------------------

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


def _expected_shapes(arch: str) -> dict:
  model = ARCHS[arch]()
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))
  return jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes)


def convert_state_dict(arch: str, state_dict: Mapping[str, Any], *, prefix: str | None = None) -> dict:
  """Flax variables {"params": ...} for MiT `arch` from a PyTorch state_dict.

  Layouts: HF hub (`[segformer.]encoder.patch_embeddings.N.proj`,
  `encoder.block.N.M.attention.self.query/key/value/sr/layer_norm`,
  `attention.output.dense`, `mlp.dense1/dwconv.dwconv/dense2`,
  `encoder.layer_norm.N`), transformers >= 5 (`[segformer.]stages.N...`), and
  NVlabs (`patch_embed1.proj`, `block1.0.attn.q/kv/sr/norm`, `norm1`, ...,
  also under `backbone.` in mmseg-style segmentor checkpoints). Dropped on
  purpose: `decode_head.*` (convert with `protoseg_jax.models.segformer`),
  `auxiliary_head.*`, and the ImageNet classifier (`head.*`, `classifier.*`).
  Anything else unused, or missing, raises.
  """
  if arch not in ARCHS:
    raise ValueError(f"unknown MiT arch {arch!r}; known: {sorted(ARCHS)}")
  depths = _CFGS[arch]["depths"]
  sd = cv.strip_prefix(state_dict)
  drop = ("decode_head.", "auxiliary_head.", "head.", "classifier.")
  if prefix is None:
    prefix = next((p for p in ("segformer.", "backbone.") if any(k.startswith(p) for k in sd)), "")
  body = {}
  for k, v in sd.items():
    if k.startswith(drop):
      continue  # heads: not part of the backbone
    if prefix:
      if not k.startswith(prefix):
        raise ValueError(f"state_dict key {k!r} is neither under {prefix!r} nor a head key {drop}")
      k = k[len(prefix):]
      if k.startswith(drop):
        continue
    body[k] = v
  if any(k.startswith("patch_embed1.") for k in body):
    body = _nvlabs_to_v5(body, depths)
  elif any(k.startswith("encoder.") for k in body):
    body = hf_v4_to_v5(body)
  r = cv.StateDictReader(body)
  params: dict = {}
  for i, depth in enumerate(depths):
    st = f"stages.{i}"
    params[f"patch_embed{i}_proj"] = conv(r, f"{st}.patch_embeddings.proj")
    params[f"patch_embed{i}_norm"] = cv.layer_norm(r, f"{st}.patch_embeddings.layer_norm")
    for j in range(depth):
      t = f"{st}.blocks.{j}"
      attn = {"query": dense(r, f"{t}.attention.q_proj"),
              "key": dense(r, f"{t}.attention.k_proj"),
              "value": dense(r, f"{t}.attention.v_proj"),
              "proj": dense(r, f"{t}.attention.o_proj")}
      if ARCHS[arch].keywords.get("sr_ratios", MixVisionTransformer.sr_ratios)[i] > 1:
        attn["sr"] = conv(r, f"{t}.attention.sequence_reduction.sequence_reduction")
        attn["sr_norm"] = cv.layer_norm(r, f"{t}.attention.sequence_reduction.layer_norm")
      params[f"block{i}_{j}"] = {
          "norm1": cv.layer_norm(r, f"{t}.layernorm_before"),
          "attn": attn,
          "norm2": cv.layer_norm(r, f"{t}.layernorm_after"),
          "mlp": {"fc1": dense(r, f"{t}.mlp.fc1"),
                  "dwconv": conv(r, f"{t}.mlp.dwconv.dwconv"),
                  "fc2": dense(r, f"{t}.mlp.fc2")},
      }
    params[f"norm{i}"] = cv.layer_norm(r, f"{st}.layer_norm")
  r.finish()
  variables = {"params": params}
  cv.check_tree_shapes(variables, _expected_shapes(arch),
                       f"converted MiT state_dict for {arch!r} does not match the model")
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), variables)
