"""ade20k_full_swin_proto.py with the parametric softmax head (the baseline);
identical except config.model.head."""

from configs import default
from configs import ade20k_full_swin_proto as proto

VARIANTS = proto.VARIANTS
get_config = default.linear_twin(proto.get_config)
