"""Swin Transformer backbone for segmentation (Flax Linen, NHWC).

Follows the segmentation variant of Swin (the official
Swin-Transformer-Semantic-Segmentation code and mmsegmentation), which takes
ANY input size:

- the image is zero-padded on the bottom/right to a multiple of the patch size;
- inside every block the (LayerNorm'ed) tokens are zero-padded on the
  bottom/right to a multiple of the window size FIRST, then cyclically shifted
  (shifted blocks), and the shifted-window attention mask is computed for the
  padded size. Padded tokens are not masked out (as in the reference);
- every stage keeps window_size and shift = window_size // 2 (odd blocks),
  even when the feature map is smaller than one window (the ImageNet
  classification code would shrink the window there; the segmentation code
  does not);
- patch merging zero-pads odd sizes to even;
- each of the 4 stage outputs (before patch merging) goes through its own
  LayerNorm `norm{i}` (mmseg `norm0..norm3`). ImageNet checkpoints lack these:
  `protoseg_jax.convert.swin` then initialises them fresh (scale 1, bias 0, as
  PyTorch/mmseg do); checkpoints that have them (segmentation checkpoints)
  are converted. `out_norms=False` drops them (returns the raw stage outputs,
  which is what timm's `features_only` model returns).

Note: timm's own forward rolls BEFORE padding and shrinks windows for small
feature maps; on inputs where every stage is a multiple of the window size and
with `always_partition=True` the two agree exactly (tested).

Parameter names mirror timm (`layers_{i}.downsample` at the START of stage i,
i >= 1). `protoseg_jax.convert.swin` reads timm state_dicts and the official
Microsoft checkpoints (downsample stored at the END of the previous stage).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from protoseg_jax.models.layers import DropPath, Mlp, attention, maybe_remat, remat_plan

Dtype = Any

_LN_EPS = 1e-5  # torch.nn.LayerNorm default, used everywhere in Swin


def relative_position_index(ws: int) -> np.ndarray:
  """[ws*ws, ws*ws] index into the (2ws-1)^2 relative-position bias table."""
  coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :]  # [2, N, N]
  rel = rel.transpose(1, 2, 0) + (ws - 1)
  return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shifted_window_mask(hp: int, wp: int, ws: int, shift: int) -> np.ndarray:
  """[nW, N, N] additive mask (0 / -100) for shifted windows on a padded
  [hp, wp] map (hp, wp multiples of ws), windows in row-major order."""
  img = np.zeros((hp, wp), np.float32)
  cnt = 0
  for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
    for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
      img[hs, wsl] = cnt
      cnt += 1
  win = img.reshape(hp // ws, ws, wp // ws, ws).transpose(0, 2, 1, 3).reshape(-1, ws * ws)
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


def window_partition(x: jnp.ndarray, ws: int) -> jnp.ndarray:
  """[B, H, W, C] -> [B, nW, ws*ws, C] (windows row-major, H, W multiples of ws)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // ws, ws, w // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // ws) * (w // ws), ws * ws, c)


def window_reverse(x: jnp.ndarray, ws: int, h: int, w: int) -> jnp.ndarray:
  """[B, nW, ws*ws, C] -> [B, H, W, C]."""
  b, _, _, c = x.shape
  x = x.reshape(b, h // ws, w // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


class WindowAttention(nn.Module):
  """Multi-head self-attention inside windows with relative position bias.

  `x [B, nW, N, C]`, optional additive `mask [nW, N, N]` -> [B, nW, N, C].
  """
  dim: int
  num_heads: int
  window_size: int
  qkv_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: np.ndarray | None = None) -> jnp.ndarray:
    ws, nh = self.window_size, self.num_heads
    hd = self.dim // nh
    b, nw, n, _ = x.shape
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * ws - 1) ** 2, nh), jnp.float32)
    idx = relative_position_index(ws).reshape(-1)
    bias = jnp.take(table, jnp.asarray(idx), axis=0).reshape(n, n, nh).transpose(2, 0, 1)
    qkv = nn.Dense(3 * self.dim, use_bias=self.qkv_bias, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(b, nw, n, 3, nh, hd)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    biases = [bias[None, None]] + ([] if mask is None else [jnp.asarray(mask)[None, :, None]])
    out = attention(q, k, v, *biases).reshape(b, nw, n, self.dim)
    return nn.Dense(self.dim, dtype=self.dtype, name="proj")(out)


class SwinBlock(nn.Module):
  """(S)W-MSA + MLP block on `x [B, H, W, C]` (any H, W)."""
  dim: int
  num_heads: int
  window_size: int
  shift: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    ws, s = self.window_size, self.shift
    _, h, w, _ = x.shape
    y = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="norm1")(x)
    pad_b, pad_r = (-h) % ws, (-w) % ws
    y = jnp.pad(y, ((0, 0), (0, pad_b), (0, pad_r), (0, 0)))
    hp, wp = h + pad_b, w + pad_r
    mask = None
    if s > 0:
      y = jnp.roll(y, (-s, -s), axis=(1, 2))
      mask = shifted_window_mask(hp, wp, ws, s)
    y = WindowAttention(self.dim, self.num_heads, ws, self.qkv_bias, dtype=self.dtype,
                        name="attn")(window_partition(y, ws), mask)
    y = window_reverse(y, ws, hp, wp)
    if s > 0:
      y = jnp.roll(y, (s, s), axis=(1, 2))
    y = y[:, :h, :w]
    drop = DropPath(self.drop_path)
    x = x + drop(y, deterministic=not train)
    y = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(self.dim * self.mlp_ratio), dtype=self.dtype, name="mlp")(y)
    return x + drop(y, deterministic=not train)


class PatchMerging(nn.Module):
  """[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), out_dim] (zero-pads odd sizes).

  Channel order of the 2x2 neighbourhood: (0,0), (1,0), (0,1), (1,1) as
  (row, col) offsets, i.e. the official/timm order.
  """
  out_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    # [B, h2, 2(row), w2, 2(col), C] -> [B, h2, w2, col, row, C]
    x = x.reshape(b, h2, 2, w2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, h2, w2, 4 * c)
    x = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="norm")(x)
    return nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype, name="reduction")(x)


class SwinStage(nn.Module):
  """[patch merging ->] `depth` SwinBlocks; `remat_blocks`: each block under nn.remat."""
  dim: int
  depth: int
  num_heads: int
  window_size: int
  downsample: bool
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_path: Sequence[float] = ()
  remat_blocks: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if self.downsample:
      x = PatchMerging(self.dim, dtype=self.dtype, name="downsample")(x)
    block_cls = maybe_remat(SwinBlock, self.remat_blocks)
    for j in range(self.depth):
      x = block_cls(self.dim, self.num_heads, self.window_size,
                    shift=0 if j % 2 == 0 else self.window_size // 2,
                    mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                    drop_path=float(self.drop_path[j]) if self.drop_path else 0.0,
                    dtype=self.dtype, name=f"blocks_{j}")(x, train)
    return x


class SwinTransformer(nn.Module):
  """Swin backbone: `images [B, H, W, 3]` -> 4 features `[B, H/4*2^-i, W/4*2^-i, C*2^i]`
  (sizes rounded up: H/4 is ceil(H/4), each stage halves with ceil).

  remat (`layers.remat_plan`): stage i + 1 is `layers_{i}` (patch merging and
  its SwinBlocks, the blocks); patch embedding and the output norms
  `norm{i}` are never recomputed.
  """
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int = 7
  patch_size: int = 4
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  # mmseg's UperNet-Swin configs use 0.3 (T/S/B); ImageNet training used 0.2-0.5.
  drop_path_rate: float = 0.3
  out_norms: bool = True
  remat: str = "none"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, ...]:
    if images.ndim != 4:
      raise ValueError(f"SwinTransformer expects images [B, H, W, C], got shape {images.shape}")
    p = self.patch_size
    _, h, w, _ = images.shape
    x = jnp.pad(images.astype(self.dtype), ((0, 0), (0, (-h) % p), (0, (-w) % p), (0, 0)))
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                name="patch_embed_proj")(x)
    x = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="patch_embed_norm")(x)
    dpr = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
    outs = []
    start = 0
    modes = remat_plan(self.remat, len(self.depths))
    for i, depth in enumerate(self.depths):
      stage_cls = maybe_remat(SwinStage, modes[i] == "stage")
      x = stage_cls(self.embed_dim * 2 ** i, depth, self.num_heads[i], self.window_size,
                    downsample=i > 0, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                    drop_path=tuple(float(r) for r in dpr[start:start + depth]),
                    remat_blocks=modes[i] == "block", dtype=self.dtype,
                    name=f"layers_{i}")(x, train)
      start += depth
      out = x
      if self.out_norms:
        out = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name=f"norm{i}")(out)
      outs.append(out)
    return tuple(outs)


_CFGS = {
    "swin_tiny_patch4_window7_224": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "swin_small_patch4_window7_224": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "swin_base_patch4_window7_224": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7),
    "swin_base_patch4_window12_384": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    "swin_large_patch4_window7_224": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=7),
    "swin_large_patch4_window12_384": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12),
    # Tiny variant for tests and demos (not a published model).
    "swin_test_tiny": dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7),
}

ARCHS = {name: functools.partial(SwinTransformer, **cfg) for name, cfg in _CFGS.items()}
