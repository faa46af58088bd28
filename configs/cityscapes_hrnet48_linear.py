"""Cityscapes, HRNetV2-W48 + the parametric softmax head (the baseline of
cityscapes_hrnet48_proto.py; identical except config.model.head)."""

from configs import cityscapes_hrnet48_proto as proto

VARIANTS = proto.VARIANTS


def get_config(arg=None):
  config = proto.get_config(arg)
  config.model.head = "linear"
  return config
