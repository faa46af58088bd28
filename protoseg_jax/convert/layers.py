"""State_dict key maps of the shared layers in `protoseg_jax.models.layers`.

  conv_bn        layers.ConvBN (`conv`, `bn`) from a bias-free conv and a BatchNorm
  conv_module    layers.ConvBN from mmcv's ConvModule (`{name}.conv`, `{name}.bn`)
  convert_block  layers.BasicBlock / Bottleneck from a timm / torchvision / mmseg block
"""

from __future__ import annotations

from protoseg_jax.convert.state_dict import VariableBuilder


def conv_bn(vb: VariableBuilder, path: tuple[str, ...], torch_conv: str, torch_bn: str):
  """`layers.ConvBN` at `path` from the torch conv `torch_conv` and BatchNorm `torch_bn`."""
  vb.conv(path + ("conv",), torch_conv)
  vb.bn(path + ("bn",), torch_bn)


def conv_module(vb: VariableBuilder, path: tuple[str, ...], torch_name: str):
  """`layers.ConvBN` at `path` from mmcv's ConvModule `torch_name` (FCN, UPerNet)."""
  conv_bn(vb, path, f"{torch_name}.conv", f"{torch_name}.bn")


def convert_block(vb: VariableBuilder, path: tuple[str, ...], torch_prefix: str, *,
                  bottleneck: bool, downsample: str | None):
  """One timm/torchvision/mmseg BasicBlock or Bottleneck (ResNet stages, HRNet branches).

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
