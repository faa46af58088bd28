"""ade20k_mit_b2_proto.py with the parametric softmax head (the baseline); identical
except config.model.head."""

from configs import ade20k_mit_b2_proto as proto

VARIANTS = proto.VARIANTS


def get_config(arg=None):
  config = proto.get_config(arg)
  config.model.head = "linear"
  return config
