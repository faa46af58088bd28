"""ResNet (`protoseg_jax.models.resnet`) from timm / torchvision / mmseg state_dicts."""

from __future__ import annotations

from typing import Any, Mapping

from protoseg_jax.convert.layers import convert_block
from protoseg_jax.convert.state_dict import (StateDictReader, VariableBuilder, finalize,
                                             sub_state_dict)
from protoseg_jax.models import resnet


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
  if arch not in resnet.ARCHS:
    raise ValueError(f"unknown ResNet arch {arch!r}; known: {sorted(resnet.ARCHS)}")
  model = resnet.ARCHS[arch](output_stride=output_stride)
  sd, prefix = sub_state_dict(state_dict, prefix)
  r = StateDictReader(sd, prefix=prefix)
  r.drop(prefixes=("fc.",))
  vb = VariableBuilder(r)
  if model.deep_stem:
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
  for s, n in enumerate(model.layers):
    for b in range(n):
      ds = ("avg" if model.avg_down else "conv") if b == 0 else None
      convert_block(vb, (f"layer{s + 1}_{b}",), f"layer{s + 1}.{b}.", bottleneck=True,
                    downsample=ds)
  return finalize(r, vb.variables(), model if check else None)
