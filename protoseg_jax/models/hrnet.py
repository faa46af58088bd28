"""HRNetV2 backbones and the official HRNet segmentation head, NHWC, Flax Linen.

Structure (Wang et al., "Deep High-Resolution Representation Learning"):
stem (two stride-2 3x3 conv-BN-ReLU, to 1/4), stage 1 (Bottleneck blocks on
one branch), then stages 2-4 with 2, 3, 4 parallel branches at 1/4, 1/8,
1/16, 1/32. Each stage is `num_modules` HighResolutionModules: every branch
runs its BasicBlocks, then every output branch i sums all branches j:
  j == i  identity
  j > i   1x1 conv + BN, then upsampled to branch i's size
  j < i   (i - j) stride-2 3x3 conv-BN (ReLU between, not after the last)
followed by ReLU. Transitions add a new, half-resolution branch from the
lowest-resolution one (3x3 stride-2 conv-BN-ReLU).

`fusion` selects the upsampling in the fuse step (a per-checkpoint fact):
  "nearest"                 timm / ImageNet-classification HRNet
                            (`nn.Upsample(scale_factor=2**(j-i), mode="nearest")`);
  "bilinear_align_corners"  official openseg / ProtoSeg HRNet backbone
                            (`F.interpolate(size=x[i].shape, mode="bilinear",
                            align_corners=True)`).
Nearest upsampling is done to branch i's exact size with PyTorch's `nearest`
rule (src = floor(dst * in / out)). Where timm runs at all (every branch size
exactly twice the next: ceil(H/4) and ceil(W/4) multiples of 8, e.g. H, W
multiples of 32) this equals timm's repeat-by-2**(j-i); at other sizes timm
fails on a shape mismatch while this module still runs.

`HRNet.apply(variables, x [B, H, W, 3], train=False)` returns the 4 branch
outputs of the last stage, highest resolution first: [B, ceil(H/4), ceil(W/4),
C1], ... at 1/4, 1/8, 1/16, 1/32, C = (48, 96, 192, 384) for W48.

Flax parameter names (`protoseg_jax.convert.hrnet` writes exactly these; torch name after ->):
  conv1 bn1 conv2 bn2                        -> same
  layer1_{b}                                 -> layer1.{b} (Bottleneck)
  transition{t}_{i}        (channel change)  -> transition{t}.{i}.0/.1
  transition{t}_{i}_{k}    (new branch)      -> transition{t}.{i}.{k}.0/.1
  stage{s}_{m}/branch{i}_{b}                 -> stage{s}.{m}.branches.{i}.{b}
  stage{s}_{m}/fuse{i}_{j}      (j > i)      -> stage{s}.{m}.fuse_layers.{i}.{j}.0/.1
  stage{s}_{m}/fuse{i}_{j}_{k}  (j < i)      -> stage{s}.{m}.fuse_layers.{i}.{j}.{k}.0/.1
  (each ConvBN holds `conv` and `bn`; blocks from protoseg_jax.models.layers)

`HRNetHead` is the official HRNet_W48(_Proto) `cls_head` without its
classifier; `protoseg_jax.convert.hrnet.convert_hrnet_head` maps its ProtoSeg
checkpoint keys.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from protoseg_jax import ops
from protoseg_jax.models.layers import (BasicBlock, Bottleneck, ConvBN, batch_norm, conv2d,
                                        maybe_remat, remat_plan)

FUSIONS = ("nearest", "bilinear_align_corners")
_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


@dataclasses.dataclass(frozen=True)
class StageConfig:
  num_modules: int
  block: str  # "basic" | "bottleneck"
  num_blocks: tuple[int, ...]  # per branch
  channels: tuple[int, ...]  # per branch, before the block expansion

  @property
  def out_channels(self) -> tuple[int, ...]:
    return tuple(c * _BLOCKS[self.block].expansion for c in self.channels)


@dataclasses.dataclass(frozen=True)
class HRNetConfig:
  stages: tuple[StageConfig, ...]  # stage 1 (one branch) .. stage 4 (four branches)
  stem_width: int = 64  # conv1 output
  stem_out: int = 64  # conv2 output (64 in every published HRNet)


def _std_config(stage1_blocks: int, stage1_ch: int, width: int, modules: tuple[int, int, int],
                blocks: int) -> HRNetConfig:
  w = (width, 2 * width, 4 * width, 8 * width)
  return HRNetConfig(stages=(
      StageConfig(1, "bottleneck", (stage1_blocks,), (stage1_ch,)),
      StageConfig(modules[0], "basic", (blocks,) * 2, w[:2]),
      StageConfig(modules[1], "basic", (blocks,) * 3, w[:3]),
      StageConfig(modules[2], "basic", (blocks,) * 4, w[:4]),
  ))


CONFIGS: dict[str, HRNetConfig] = {
    # timm's hrnet_w18_small: 16-32-64-128 branches (the "W18-small-v1" of the paper).
    "hrnet_w18_small": _std_config(1, 32, 16, (1, 1, 1), 2),
    "hrnet_w18_small_v2": _std_config(2, 64, 18, (1, 3, 2), 2),
    "hrnet_w18": _std_config(4, 64, 18, (1, 4, 3), 4),
    "hrnet_w32": _std_config(4, 64, 32, (1, 4, 3), 4),
    "hrnet_w48": _std_config(4, 64, 48, (1, 4, 3), 4),
    # Own tiny design for CPU tests and the demo: 8-16-32-64 branches, one block each.
    "hrnet_tiny": HRNetConfig(stem_width=16, stem_out=16, stages=(
        StageConfig(1, "bottleneck", (1,), (8,)),
        StageConfig(1, "basic", (1, 1), (8, 16)),
        StageConfig(1, "basic", (1, 1, 1), (8, 16, 32)),
        StageConfig(1, "basic", (1, 1, 1, 1), (8, 16, 32, 64)),
    )),
}


def upsample_to(x: jnp.ndarray, size: tuple[int, int], fusion: str) -> jnp.ndarray:
  """Resize a lower-resolution branch to `size` (h, w) with the fuse-step convention."""
  if fusion == "nearest":
    return ops.resize_nearest(x, size)
  if fusion == "bilinear_align_corners":
    return ops.resize_bilinear(x, size, align_corners=True)
  raise ValueError(f"fusion={fusion!r}; expected one of {FUSIONS}")


class HRModule(nn.Module):
  """One HighResolutionModule: parallel branches, then multi-resolution fusion."""
  in_channels: tuple[int, ...]
  config: StageConfig
  fusion: str = "nearest"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: Sequence[jnp.ndarray], train: bool = False) -> list[jnp.ndarray]:
    cfg, d = self.config, self.dtype
    block_cls = _BLOCKS[cfg.block]
    out_ch = cfg.out_channels
    ys = []
    for i, x in enumerate(xs):
      for b in range(cfg.num_blocks[i]):
        cin = self.in_channels[i] if b == 0 else out_ch[i]
        ds = "conv" if (b == 0 and cin != out_ch[i]) else None
        x = block_cls(cfg.channels[i], downsample=ds, dtype=d, name=f"branch{i}_{b}")(x, train)
      ys.append(x)
    n = len(ys)
    if n == 1:
      return ys
    fused = []
    for i in range(n):
      size = ys[i].shape[1:3]
      total = None
      for j in range(n):
        if j == i:
          t = ys[j]
        elif j > i:
          t = ConvBN(out_ch[i], 1, relu=False, dtype=d, name=f"fuse{i}_{j}")(ys[j], train)
          t = upsample_to(t, size, self.fusion)
        else:
          t = ys[j]
          for k in range(i - j):
            last = k == i - j - 1
            t = ConvBN(out_ch[i] if last else out_ch[j], 3, stride=2, relu=not last, dtype=d,
                       name=f"fuse{i}_{j}_{k}")(t, train)
        total = t if total is None else total + t
      fused.append(nn.relu(total))
    return fused


class HRNet(nn.Module):
  """HRNetV2 trunk. `__call__(x [B,H,W,3], train)` -> 4 NHWC branch outputs (1/4 .. 1/32).

  remat (`layers.remat_plan`): stage 1 is layer1 (its Bottlenecks are the
  blocks), stage s >= 2 is transition{s-1} + the HRModules stage{s}_* (the
  blocks); the stem is never recomputed.
  """
  config: HRNetConfig
  fusion: str = "nearest"
  remat: str = "none"
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.fusion not in FUSIONS:   # at construction: get_backbone(..., fusion=...) fails early
      raise ValueError(f"HRNet fusion={self.fusion!r}; expected one of {FUSIONS}")
    remat_plan(self.remat)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, ...]:
    if x.ndim != 4:
      raise ValueError(f"HRNet expects images [B, H, W, C], got shape {x.shape}")
    cfg, d = self.config, self.dtype
    if len(cfg.stages[0].channels) != 1:
      raise ValueError(f"HRNet stage 1 must have one branch, got channels {cfg.stages[0].channels}")
    x = x.astype(d)
    x = conv2d(cfg.stem_width, 3, stride=2, dtype=d, name="conv1")(x)
    x = nn.relu(batch_norm(train, dtype=d, name="bn1")(x))
    x = conv2d(cfg.stem_out, 3, stride=2, dtype=d, name="conv2")(x)
    x = nn.relu(batch_norm(train, dtype=d, name="bn2")(x))
    ys = (x,)
    for s, mode in enumerate(remat_plan(self.remat, len(cfg.stages)), start=1):
      stage = maybe_remat(type(self)._stage, mode == "stage", static_argnums=(1, 3, 4))
      ys = stage(self, s, ys, train, mode == "block")
    return tuple(ys)

  def _stage(self, s: int, ys: tuple, train: bool, remat_blocks: bool) -> tuple:
    """Stage s (1-based) on the branch outputs `ys` of stage s - 1 (stem: one)."""
    cfg, d = self.config, self.dtype
    scfg = cfg.stages[s - 1]
    if s == 1:
      block_cls = maybe_remat(_BLOCKS[scfg.block], remat_blocks)
      x, cin = ys[0], cfg.stem_out
      for b in range(scfg.num_blocks[0]):
        ds = "conv" if (b == 0 and cin != scfg.out_channels[0]) else None
        x = block_cls(scfg.channels[0], downsample=ds, dtype=d, name=f"layer1_{b}")(x, train)
        cin = scfg.out_channels[0]
      return (x,)
    pre, cur = cfg.stages[s - 2].out_channels, scfg.out_channels
    xs = []
    for i, c in enumerate(cur):
      if i < len(pre):
        t = ys[i]
        if c != pre[i]:
          t = ConvBN(c, 3, dtype=d, name=f"transition{s - 1}_{i}")(t, train)
      else:
        t = ys[-1]
        for k in range(i + 1 - len(pre)):
          last = k == i - len(pre)
          t = ConvBN(c if last else pre[-1], 3, stride=2, dtype=d,
                     name=f"transition{s - 1}_{i}_{k}")(t, train)
      xs.append(t)
    module_cls = maybe_remat(HRModule, remat_blocks)
    in_ch = tuple(cur)
    for m in range(scfg.num_modules):
      xs = module_cls(in_ch, scfg, fusion=self.fusion, dtype=d, name=f"stage{s}_{m}")(xs, train)
    return tuple(xs)


def _make(arch: str, *, fusion: str = "nearest", remat: str = "none",
          dtype: Any = jnp.float32) -> HRNet:
  return HRNet(CONFIGS[arch], fusion=fusion, remat=remat, dtype=dtype)


ARCHS = {name: functools.partial(_make, name) for name in CONFIGS}


def branch_channels(arch: str) -> tuple[int, ...]:
  """Channels of the 4 outputs, e.g. (48, 96, 192, 384) for hrnet_w48."""
  return CONFIGS[arch].stages[-1].out_channels


# --- head ----------------------------------------------------------------------

def concat_branches(features: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """Resize branches 2.. to branch 1's size (bilinear, align_corners=True) and concatenate.

  features: 4 x [B, h_i, w_i, C_i] -> [B, h_1, w_1, sum C_i] (720 channels for W48).
  """
  h, w = features[0].shape[1:3]
  xs = [features[0]] + [ops.resize_bilinear(f, (h, w), align_corners=True)
                        for f in features[1:]]
  return jnp.concatenate(xs, axis=-1)


class HRNetHead(nn.Module):
  """Official HRNet segmentation head before its classifier.

  concat_branches -> 3x3 conv (D_in -> D_in, with bias) -> BN -> ReLU ->
  Dropout2d(dropout) (whole channels dropped, `dropout` rng; off when not train).
  `__call__(features: 4 x NHWC, *, train)` -> [B, h_1, w_1, D_in].
  Submodules: `conv` (nn.Conv, torch `cls_head.0`) and `bn` (torch `cls_head.1`,
  the BN of openseg's BNReLU); see `protoseg_jax.convert.hrnet.convert_hrnet_head`.
  """
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray], *, train: bool) -> jnp.ndarray:
    if len(features) != 4:
      raise ValueError(f"HRNetHead expects 4 branch features, got {len(features)}")
    x = concat_branches([f.astype(self.dtype) for f in features])
    d_in = x.shape[-1]
    x = conv2d(d_in, 3, use_bias=True, dtype=self.dtype, name="conv")(x)
    x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn")(x))
    return nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
