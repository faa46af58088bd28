"""Backbones and decoders.

Every backbone family lives in its own module and exposes
  ARCHS: dict[str, Callable[..., nn.Module]]   arch name -> constructor
  convert_state_dict(arch, state_dict, *, strict=True) -> variables
so that `get_backbone` and `protoseg_jax.convert` can dispatch by name.
Backbones take NHWC images and return the tuple of their 4 stage features
(NHWC) from `apply(variables, images, train=False)`.
Arch names follow timm where timm has the model.
"""

from __future__ import annotations

import importlib

# Families in the order they are searched. A module missing from this list is
# invisible to get_backbone and the converter.
BACKBONE_FAMILIES = ("hrnet", "resnet", "swin", "mit")

# The input statistics every ImageNet-pretrained backbone here was trained
# with: RGB channel order, pixel values 0..255 (255 * (0.485, 0.456, 0.406) and
# 255 * (0.229, 0.224, 0.225)). The one place these numbers are written.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _family_module(arch: str):
  for family in BACKBONE_FAMILIES:
    try:
      mod = importlib.import_module(f"protoseg_jax.models.{family}")
    except ModuleNotFoundError as e:
      if e.name == f"protoseg_jax.models.{family}":
        continue
      raise
    if arch in mod.ARCHS:
      return mod
  raise ValueError(f"Unknown backbone arch {arch!r}; known: {sorted(list_backbones())}")


def list_backbones() -> list[str]:
  names = []
  for family in BACKBONE_FAMILIES:
    try:
      mod = importlib.import_module(f"protoseg_jax.models.{family}")
    except ModuleNotFoundError as e:
      if e.name == f"protoseg_jax.models.{family}":
        continue
      raise
    names.extend(mod.ARCHS)
  return names


def get_backbone(arch: str, **kwargs):
  """Linen module for `arch`; `apply(variables, x_nhwc, train=False)` -> 4 features."""
  return _family_module(arch).ARCHS[arch](**kwargs)


def backbone_family(arch: str):
  """The module that defines `arch` (has ARCHS and convert_state_dict)."""
  return _family_module(arch)
