"""The demo with the parametric softmax head (the baseline)."""

from configs import default, demo

get_config = default.linear_twin(demo.get_config)
