"""The demo with the parametric softmax head (the baseline); variants as demo.py."""

from configs import default, demo

VARIANTS = demo.VARIANTS
get_config = default.linear_twin(demo.get_config)
