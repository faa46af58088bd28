"""Mix Transformer (MiT-B0..B5), the SegFormer encoder (Flax Linen, NHWC).

Per stage i: overlapping patch embedding (conv 7x7 stride 4 pad 3 for i = 0,
conv 3x3 stride 2 pad 1 after; LayerNorm), `depths[i]` blocks of
  x + DropPath(EfficientAttention(LN(x)))   keys/values from a spatially
                                            reduced map (conv k=s=sr_ratio + LN)
                                            when sr_ratio > 1
  x + DropPath(MixFFN(LN(x)))               dense -> 3x3 depthwise conv -> GELU -> dense
                                            (`layers.Mlp(dwconv=True)`)
and a final per-stage LayerNorm. Returns the 4 stage outputs
[B, H/4, W/4, C0], [B, H/8, W/8, C1], ... (conv arithmetic: floor((H+2p-k)/s)+1).

LayerNorm epsilons: the NVlabs/SegFormer training code used 1e-6 for the block
and stage norms (1e-5 for the patch-embedding and reduction norms);
HF transformers uses 1e-5 everywhere. `norm_eps` selects the former (default
1e-6, as the published weights were trained); `norm_eps=1e-5` reproduces HF
exactly. The difference is far below bf16 resolution in practice.

`protoseg_jax.convert.mit` reads HF transformers `SegformerModel` /
`SegformerForSemanticSegmentation` state_dicts (hub layout `encoder.block...`
and the transformers>=5 in-memory layout `stages...`, with or without the
`segformer.` prefix) and the original NVlabs MiT layout (`patch_embed1.proj`,
`block1.0.attn.q/kv`, ...).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from protoseg_jax.models.layers import DropPath, Mlp, attention, maybe_remat, remat_plan

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
    out = attention(q, k, v).reshape(b, h, w, self.dim)
    return nn.Dense(self.dim, dtype=self.dtype, name="proj")(out)


class MiTBlock(nn.Module):
  dim: int
  num_heads: int
  sr_ratio: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    drop = DropPath(self.drop_path)
    y = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm1")(x)
    y = EfficientAttention(self.dim, self.num_heads, self.sr_ratio, dtype=self.dtype, name="attn")(y)
    x = x + drop(y, deterministic=not train)
    y = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(self.dim * self.mlp_ratio), dwconv=True, dtype=self.dtype, name="mlp")(y)
    return x + drop(y, deterministic=not train)


class MixVisionTransformer(nn.Module):
  """MiT encoder: `images [B, H, W, 3]` -> 4 NHWC features at 1/4, 1/8, 1/16, 1/32.

  remat (`layers.remat_plan`): stage i + 1 is patch_embed{i}, its MiTBlocks
  block{i}_* (the blocks) and norm{i}.
  """
  embed_dims: Sequence[int] = (32, 64, 160, 256)
  num_heads: Sequence[int] = (1, 2, 5, 8)
  depths: Sequence[int] = (2, 2, 2, 2)
  sr_ratios: Sequence[int] = (8, 4, 2, 1)
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.1  # SegFormer's training configs
  norm_eps: float = 1e-6
  remat: str = "none"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, ...]:
    if images.ndim != 4:
      raise ValueError(f"MixVisionTransformer expects images [B, H, W, C], got shape {images.shape}")
    x = images.astype(self.dtype)
    dpr = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
    outs, start = [], 0
    modes = remat_plan(self.remat, len(self.depths))
    for i, depth in enumerate(self.depths):
      stage = maybe_remat(type(self)._stage, modes[i] == "stage", static_argnums=(1, 2, 4, 5))
      x = stage(self, i, tuple(float(r) for r in dpr[start:start + depth]), x, train,
                modes[i] == "block")
      start += depth
      outs.append(x)
    return tuple(outs)

  def _stage(self, i: int, drop_path: tuple[float, ...], x: jnp.ndarray, train: bool,
             remat_blocks: bool) -> jnp.ndarray:
    """Stage i (0-based): patch embedding, blocks (drop_path rates), norm."""
    k, s = (7, 4) if i == 0 else (3, 2)
    x = nn.Conv(self.embed_dims[i], (k, k), strides=(s, s), padding=((k // 2, k // 2),) * 2,
                dtype=self.dtype, name=f"patch_embed{i}_proj")(x)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=f"patch_embed{i}_norm")(x)
    block_cls = maybe_remat(MiTBlock, remat_blocks)
    for j, rate in enumerate(drop_path):
      x = block_cls(self.embed_dims[i], self.num_heads[i], self.sr_ratios[i], self.mlp_ratio,
                    drop_path=rate, norm_eps=self.norm_eps, dtype=self.dtype,
                    name=f"block{i}_{j}")(x, train)
    return nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name=f"norm{i}")(x)


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
