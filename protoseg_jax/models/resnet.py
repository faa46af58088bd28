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

Flax parameter names (the state_dict converter writes exactly these):
  stem      plain: conv1, bn1; deep: stem_conv1..3, stem_bn1..3
  stages    layer{1..4}_{block}: conv1 bn1 conv2 bn2 conv3 bn3
            [downsample_conv downsample_bn]

The blocks and conversion helpers here are shared with the HRNet family.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from protoseg_jax import convert

# PyTorch's ResNet/HRNet init (kaiming normal, fan_out, relu gain).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv2d(features: int, kernel: int, *, stride: int = 1, dilation: int = 1,
           padding: int | None = None, use_bias: bool = False, dtype: Any = jnp.float32,
           name: str | None = None) -> nn.Conv:
  """`nn.Conv2d(.., kernel, stride, padding=dilation*(kernel//2), dilation)` in NHWC.

  Explicit symmetric padding, so strided convs sample the same pixels as
  PyTorch (Flax's "SAME" pads asymmetrically).
  """
  p = dilation * (kernel // 2) if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((p, p), (p, p)), kernel_dilation=(dilation, dilation),
                 use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=conv_init, name=name)


def batch_norm(train: bool, *, dtype: Any = jnp.float32, name: str | None = None) -> nn.BatchNorm:
  """PyTorch `BatchNorm2d` defaults (momentum 0.1, eps 1e-5); stats in `batch_stats`.

  Under a jit over a sharded batch the statistics are global (SyncBN).
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, param_dtype=jnp.float32, name=name)


class ConvBN(nn.Module):
  """conv (no bias, `conv2d` padding) -> BN [-> ReLU]; submodules `conv` and `bn`.

  mmcv's ConvModule with BN and ReLU (FCN, UperNet) and the conv-BN pairs of
  HRNet (relu=False where the official block has none).
  """
  features: int
  kernel: int = 3
  stride: int = 1
  dilation: int = 1
  relu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = conv2d(self.features, self.kernel, stride=self.stride, dilation=self.dilation,
               dtype=self.dtype, name="conv")(x)
    x = batch_norm(train, dtype=self.dtype, name="bn")(x)
    return nn.relu(x) if self.relu else x


def avg_pool_ceil(x: jnp.ndarray, stride: int) -> jnp.ndarray:
  """`nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)` on NHWC."""
  if stride == 1:
    return x
  ph = (-x.shape[1]) % stride
  pw = (-x.shape[2]) % stride
  return nn.avg_pool(x, (stride, stride), (stride, stride), ((0, ph), (0, pw)),
                     count_include_pad=False)


def avg_pool_same_2x2(x: jnp.ndarray) -> jnp.ndarray:
  """timm `AvgPool2dSame(2, stride=1)`: zero-pad bottom/right by 1, 2x2 mean counting the pad."""
  return nn.avg_pool(x, (2, 2), (1, 1), ((0, 1), (0, 1)), count_include_pad=True)


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN (ResNet-18/34 and HRNet branches). [B,H,W,Cin] -> [B,H/s,W/s,planes]."""
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: str | None = None  # "conv": 1x1 conv (stride) + BN shortcut
  dtype: Any = jnp.float32

  expansion = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    d = self.dtype
    y = conv2d(self.planes, 3, stride=self.stride, dilation=self.dilation, dtype=d, name="conv1")(x)
    y = nn.relu(batch_norm(train, dtype=d, name="bn1")(y))
    y = conv2d(self.planes, 3, dilation=self.dilation, dtype=d, name="conv2")(y)
    y = batch_norm(train, dtype=d, name="bn2")(y)
    if self.downsample not in (None, "conv"):
      raise ValueError(f"BasicBlock.downsample={self.downsample!r}; expected None or 'conv'")
    if self.downsample == "conv":
      x = conv2d(self.planes, 1, stride=self.stride, dtype=d, name="downsample_conv")(x)
      x = batch_norm(train, dtype=d, name="downsample_bn")(x)
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride, dilation) -> 1x1 (x4) bottleneck. [B,H,W,Cin] -> [B,H/s,W/s,4*planes].

  downsample: None (identity shortcut), "conv" (1x1 conv with the stride + BN),
  "avg" (avg-pool 2x2/stride ceil_mode, then 1x1 conv + BN; timm avg_down) or
  "avg_same" (timm's AvgPool2dSame(2, 1) of a dilated stage, then 1x1 conv + BN).
  """
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: str | None = None
  dtype: Any = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    d = self.dtype
    out = self.planes * self.expansion
    y = conv2d(self.planes, 1, dtype=d, name="conv1")(x)
    y = nn.relu(batch_norm(train, dtype=d, name="bn1")(y))
    y = conv2d(self.planes, 3, stride=self.stride, dilation=self.dilation, dtype=d, name="conv2")(y)
    y = nn.relu(batch_norm(train, dtype=d, name="bn2")(y))
    y = conv2d(out, 1, dtype=d, name="conv3")(y)
    y = batch_norm(train, dtype=d, name="bn3")(y)
    if self.downsample is not None:
      if self.downsample == "conv":
        x = conv2d(out, 1, stride=self.stride, dtype=d, name="downsample_conv")(x)
      elif self.downsample in ("avg", "avg_same"):
        x = avg_pool_same_2x2(x) if self.downsample == "avg_same" else avg_pool_ceil(x, self.stride)
        x = conv2d(out, 1, dtype=d, name="downsample_conv")(x)
      else:
        raise ValueError(f"Bottleneck.downsample={self.downsample!r}; expected None, 'conv', "
                         "'avg' or 'avg_same'")
      x = batch_norm(train, dtype=d, name="downsample_bn")(x)
    return nn.relu(y + x)


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
  """Bottleneck ResNet trunk. `__call__(x [B,H,W,3], train)` -> tuple of 4 NHWC stage outputs."""
  layers: tuple[int, ...] = (3, 4, 6, 3)
  deep_stem: bool = False
  stem_width: int = 32  # deep stem only: 3 -> w -> w -> 2w
  avg_down: bool = False
  output_stride: int = 8
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
      inplanes = 2 * self.stem_width
    else:
      x = conv2d(64, 7, stride=2, dtype=d, name="conv1")(x)
      x = nn.relu(batch_norm(train, dtype=d, name="bn1")(x))
      inplanes = 64
    x = nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))

    feats = []
    for s, (num_blocks, (stride, first_dil, dil)) in enumerate(
        zip(self.layers, stage_plan(self.output_stride, len(self.layers)))):
      planes = 64 * 2 ** s
      for b in range(num_blocks):
        downsample = None
        if b == 0 and (stride != 1 or inplanes != planes * Bottleneck.expansion):
          if not self.avg_down:
            downsample = "conv"
          else:
            downsample = "avg_same" if dil > 1 else "avg"
        x = Bottleneck(planes, stride=stride if b == 0 else 1,
                       dilation=first_dil if b == 0 else dil, downsample=downsample,
                       dtype=d, name=f"layer{s + 1}_{b}")(x, train)
        inplanes = planes * Bottleneck.expansion
      feats.append(x)
    return tuple(feats)


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


def _make(arch: str, *, output_stride: int = 8, dtype: Any = jnp.float32) -> ResNet:
  layers, deep, avg = _SPECS[arch]
  return ResNet(layers=layers, deep_stem=deep, avg_down=avg, output_stride=output_stride,
                dtype=dtype)


ARCHS = {name: functools.partial(_make, name) for name in _SPECS}


# --- PyTorch state_dict conversion ---------------------------------------------

def _put(tree: dict, path: tuple[str, ...], value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


class VariableBuilder:
  """Collects converted `params` / `batch_stats` under Flax module paths."""

  def __init__(self, reader: convert.StateDictReader):
    self.r = reader
    self.params: dict = {}
    self.stats: dict = {}

  def conv(self, path: tuple[str, ...], torch_name: str, *, bias: bool = False):
    w = self.r.get(f"{torch_name}.weight")
    if w is None:  # recorded as missing; finish() reports it
      return
    if w.ndim != 4:
      raise ValueError(f"state_dict[{self.r.prefix + torch_name + '.weight'!r}] has shape "
                       f"{w.shape}, expected a conv weight [O, I, kh, kw]")
    out = {"kernel": convert.conv_kernel(w)}
    if bias:
      out["bias"] = self.r.get(f"{torch_name}.bias")
    _put(self.params, path, out)

  def bn(self, path: tuple[str, ...], torch_name: str):
    p, s = convert.batch_norm(self.r, torch_name)
    _put(self.params, path, p)
    _put(self.stats, path, s)

  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.stats}


def convert_block(vb: VariableBuilder, path: tuple[str, ...], torch_prefix: str, *,
                  bottleneck: bool, downsample: str | None):
  """One timm/torchvision/mmseg BasicBlock or Bottleneck.

  downsample: None; "conv" (torch `downsample.0` conv, `downsample.1` BN) or
  "avg" (`downsample.0` is the pooling, `downsample.1` conv, `downsample.2` BN).
  """
  n = 3 if bottleneck else 2
  for i in range(1, n + 1):
    vb.conv(path + (f"conv{i}",), f"{torch_prefix}conv{i}")
    vb.bn(path + (f"bn{i}",), f"{torch_prefix}bn{i}")
  if downsample == "conv":
    vb.conv(path + ("downsample_conv",), f"{torch_prefix}downsample.0")
    vb.bn(path + ("downsample_bn",), f"{torch_prefix}downsample.1")
  elif downsample == "avg":
    vb.conv(path + ("downsample_conv",), f"{torch_prefix}downsample.1")
    vb.bn(path + ("downsample_bn",), f"{torch_prefix}downsample.2")
  elif downsample is not None:
    raise ValueError(f"downsample={downsample!r}; expected None, 'conv' or 'avg'")


def sub_state_dict(state_dict: Mapping[str, Any], prefix: str) -> dict:
  """The entries under `prefix` (a full-model checkpoint's `backbone.`), prefix kept."""
  if not prefix:
    return dict(state_dict)
  out = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
  if not out:
    some = sorted(state_dict)[:8]
    raise ValueError(f"no state_dict key starts with prefix {prefix!r}; first keys: {some}")
  return out


def convert_state_dict(arch: str, state_dict: Mapping[str, Any], *, prefix: str = "",
                       output_stride: int = 8, check: bool = True) -> dict:
  """Flax variables for ResNet `arch` from a PyTorch state_dict.

  Accepted layouts: timm `resnet*`/`resnet*c`/`resnet*d` and torchvision
  (`conv1`/`bn1` stem or the deep stem `conv1.0/.1/.3/.4/.6` + `bn1`),
  mmseg/mmcv ResNetV1c (`stem.0/.1/.3/.4/.6/.7`), blocks `layerN.M.conv1/bn1...`,
  shortcut `downsample.0/.1` (conv archs) or `downsample.1/.2` (avg-down archs).
  `fc.*` (the classifier) is dropped; any other unused or missing key raises,
  listing the keys. `prefix` selects a sub-model (e.g. "backbone." of an mmseg
  segmentor checkpoint); keys outside it are ignored.
  """
  if arch not in _SPECS:
    raise ValueError(f"unknown ResNet arch {arch!r}; known: {sorted(_SPECS)}")
  layers, deep, avg = _SPECS[arch]
  sd = sub_state_dict(state_dict, prefix)
  r = convert.StateDictReader(sd, prefix=prefix)
  for k in r.keys():
    if k.startswith("fc."):
      r.mark_used(k)
  vb = VariableBuilder(r)
  if deep:
    if r.has("stem.0.weight"):  # mmseg/mmcv ResNetV1c
      names = ("stem.0", "stem.1", "stem.3", "stem.4", "stem.6", "stem.7")
    else:  # timm resnet*c / resnet*d
      names = ("conv1.0", "conv1.1", "conv1.3", "conv1.4", "conv1.6", "bn1")
    for i in range(3):
      vb.conv((f"stem_conv{i + 1}",), names[2 * i])
      vb.bn((f"stem_bn{i + 1}",), names[2 * i + 1])
  else:
    vb.conv(("conv1",), "conv1")
    vb.bn(("bn1",), "bn1")
  for s, n in enumerate(layers):
    for b in range(n):
      ds = ("avg" if avg else "conv") if b == 0 else None
      convert_block(vb, (f"layer{s + 1}_{b}",), f"layer{s + 1}.{b}.", bottleneck=True,
                    downsample=ds)
  r.finish()
  variables = convert.float32_tree(vb.variables())
  if check:
    convert.check_variables(_make(arch, output_stride=output_stride), variables)
  return variables
