"""Cityscapes, HRNetV2-W48 + the parametric softmax head (the baseline of
cityscapes_hrnet48_proto.py; identical except config.model.head)."""

from configs import default
from configs import cityscapes_hrnet48_proto as proto

VARIANTS = proto.VARIANTS
get_config = default.linear_twin(proto.get_config)
