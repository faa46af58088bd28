"""Backbones and decoders (Flax modules only; no weight conversion here).

Every backbone family lives in its own module (BACKBONE_FAMILIES) and exposes
  ARCHS: dict[str, Callable[..., nn.Module]]   arch name -> constructor
so that `get_backbone` can dispatch by name; `backbone_family_name(arch)` says
which family an arch belongs to (the PyTorch state_dict converter of family F
is `protoseg_jax.convert.F`). Building blocks that several model modules use
are in `layers`; model modules import them from there, never from each other.
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


def _family_modules():
  """(family name, module) of every importable backbone family, in search order."""
  for family in BACKBONE_FAMILIES:
    try:
      mod = importlib.import_module(f"protoseg_jax.models.{family}")
    except ModuleNotFoundError as e:
      if e.name == f"protoseg_jax.models.{family}":
        continue
      raise
    yield family, mod


def backbone_family_name(arch: str) -> str:
  """The family (one of BACKBONE_FAMILIES, e.g. "hrnet") that defines `arch`."""
  for family, mod in _family_modules():
    if arch in mod.ARCHS:
      return family
  raise ValueError(f"Unknown backbone arch {arch!r}; known: {sorted(list_backbones())}")


def list_backbones() -> list[str]:
  return [name for _, mod in _family_modules() for name in mod.ARCHS]


def get_backbone(arch: str, **kwargs):
  """Linen module for `arch`; `apply(variables, x_nhwc, train=False)` -> 4 features."""
  family = importlib.import_module(f"protoseg_jax.models.{backbone_family_name(arch)}")
  return family.ARCHS[arch](**kwargs)
