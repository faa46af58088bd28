"""ResNet-50/101 backbones (dilated, output stride 8 by default), NHWC, Flax Linen.

Three flavours, chosen by arch name (timm naming where timm has the model):

  resnet50, resnet101           torchvision / timm `resnet*`: 7x7 stem,
                                strided 1x1-conv shortcut ("ResNet-v1.5").
  resnet50_v1c, resnet101_v1c   mmsegmentation ResNetV1c (= timm resnet*c):
                                deep stem (three 3x3 convs, 32-32-64),
                                strided 1x1-conv shortcut. The backbone of
                                mmseg's FCN/UperNet `r50-d8` / `r101-d8`.
  resnet50d, resnet101d         timm `resnet*d`: deep stem and an average-pool
                                shortcut (avg-pool, then 1x1 conv stride 1).

All use Bottleneck blocks with the stride on the 3x3 conv. `output_stride`
(8, 16 or 32) replaces the stride of the last stages by dilation exactly like
timm's `output_stride` and mmseg's `contract_dilation=True`: with output
stride 8, stages 3 and 4 have stride 1 and dilation 2 and 4, and the FIRST
block of a dilated stage uses the previous stage's dilation (1 and 2).

In a dilated stage the `resnet*d` shortcut uses timm's `AvgPool2dSame(2, 1)`:
zero padding of one row/column at the bottom/right, then a 2x2 mean that
counts the padding (so the last row/column is damped). This is what timm
computes and what `resnet*d` weights trained with output_stride < 32 saw; it is
reproduced here (mmseg's ResNetV1d differs: no pooling at stride 1).

`ResNet.apply(variables, x [B, H, W, 3], train=False)` returns the 4 stage
outputs (layer1..layer4), NHWC, with 256/512/1024/2048 channels at strides
4/8/8/8 for output_stride=8 (4/8/16/32 for 32). Any H, W: PyTorch's padding
and `ceil_mode` rules are reproduced.

Flax parameter names (`protoseg_jax.convert.resnet` writes exactly these):
  stem      plain: conv1, bn1; deep: stem_conv1..3, stem_bn1..3
  stages    layer{1..4}_{block}: conv1 bn1 conv2 bn2 conv3 bn3
            [downsample_conv downsample_bn]

The blocks (`Bottleneck`, `BasicBlock`) are in `protoseg_jax.models.layers`.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from protoseg_jax.models.layers import Bottleneck, batch_norm, conv2d, maybe_remat, remat_plan


def stage_plan(output_stride: int, num_stages: int = 4) -> list[tuple[int, int, int]]:
  """[(stride, first_block_dilation, dilation)] per stage, timm/mmseg semantics."""
  if output_stride not in (8, 16, 32):
    raise ValueError(f"output_stride={output_stride!r}; expected 8, 16 or 32")
  plan = []
  net_stride, dilation = 4, 1
  for i in range(num_stages):
    stride = 1 if i == 0 else 2
    prev = dilation
    if net_stride >= output_stride:
      dilation *= stride
      stride = 1
    else:
      net_stride *= stride
    plan.append((stride, prev, dilation))
  return plan


class ResNet(nn.Module):
  """Bottleneck ResNet trunk. `__call__(x [B,H,W,3], train)` -> tuple of 4 NHWC stage outputs.

  remat (`layers.remat_plan`): stage s is layer{s} (its Bottlenecks are the
  blocks); the stem and its max-pool are never recomputed.
  """
  layers: tuple[int, ...] = (3, 4, 6, 3)
  deep_stem: bool = False
  stem_width: int = 32  # deep stem only: 3 -> w -> w -> 2w
  base_width: int = 64  # stage s has base_width * 2**s planes (x4 out); 64: every published ResNet
  avg_down: bool = False
  output_stride: int = 8
  remat: str = "none"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, ...]:
    if x.ndim != 4:
      raise ValueError(f"ResNet expects images [B, H, W, C], got shape {x.shape}")
    d = self.dtype
    x = x.astype(d)
    if self.deep_stem:
      widths = (self.stem_width, self.stem_width, 2 * self.stem_width)
      for i, w in enumerate(widths):
        x = conv2d(w, 3, stride=2 if i == 0 else 1, dtype=d, name=f"stem_conv{i + 1}")(x)
        x = nn.relu(batch_norm(train, dtype=d, name=f"stem_bn{i + 1}")(x))
    else:
      x = conv2d(self.base_width, 7, stride=2, dtype=d, name="conv1")(x)
      x = nn.relu(batch_norm(train, dtype=d, name="bn1")(x))
    # The 3x3/2 max-pool padded by 1 with -inf, as a VALID pool of the padded map (the
    # same values): converters that rewrite Linen's pools (jax2onnx) take string paddings.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="VALID")

    feats = []
    modes = remat_plan(self.remat, len(self.layers))
    for s, plan in enumerate(stage_plan(self.output_stride, len(self.layers))):
      stage = maybe_remat(type(self)._stage, modes[s] == "stage", static_argnums=(1, 2, 4, 5))
      x = stage(self, s, plan, x, train, modes[s] == "block")
      feats.append(x)
    return tuple(feats)

  def _stage(self, s: int, plan: tuple[int, int, int], x: jnp.ndarray, train: bool,
             remat_blocks: bool) -> jnp.ndarray:
    """Stage s (0-based: layer{s + 1}) with its (stride, first_dilation, dilation)."""
    stride, first_dil, dil = plan
    planes = self.base_width * 2 ** s
    if s > 0:
      inplanes = self.base_width * 2 ** (s - 1) * Bottleneck.expansion
    else:
      inplanes = 2 * self.stem_width if self.deep_stem else self.base_width
    block_cls = maybe_remat(Bottleneck, remat_blocks)
    for b in range(self.layers[s]):
      downsample = None
      if b == 0 and (stride != 1 or inplanes != planes * Bottleneck.expansion):
        if not self.avg_down:
          downsample = "conv"
        else:
          downsample = "avg_same" if dil > 1 else "avg"
      x = block_cls(planes, stride=stride if b == 0 else 1,
                    dilation=first_dil if b == 0 else dil, downsample=downsample,
                    dtype=self.dtype, name=f"layer{s + 1}_{b}")(x, train)
    return x


# arch -> (layers, deep_stem, avg_down)
_SPECS = {
    "resnet50": ((3, 4, 6, 3), False, False),
    "resnet101": ((3, 4, 23, 3), False, False),
    "resnet50_v1c": ((3, 4, 6, 3), True, False),
    "resnet101_v1c": ((3, 4, 23, 3), True, False),
    "resnet50c": ((3, 4, 6, 3), True, False),  # timm's name for the same net
    "resnet101c": ((3, 4, 23, 3), True, False),
    "resnet50d": ((3, 4, 6, 3), True, True),
    "resnet101d": ((3, 4, 23, 3), True, True),
}


def _make(arch: str, *, output_stride: int = 8, remat: str = "none",
          dtype: Any = jnp.float32, layers: Optional[Sequence[int]] = None,
          base_width: int = 64, stem_width: int = 32) -> ResNet:
  """The arch's ResNet; `layers` / `base_width` / `stem_width` shrink it (tests,
  config.model.backbone_kwargs), which no published weights fit."""
  spec, deep, avg = _SPECS[arch]
  return ResNet(layers=tuple(layers) if layers is not None else spec, deep_stem=deep,
                avg_down=avg, output_stride=output_stride, base_width=int(base_width),
                stem_width=int(stem_width), remat=remat, dtype=dtype)


ARCHS = {name: functools.partial(_make, name) for name in _SPECS}
