"""The demo with the parametric softmax head (the baseline)."""

from configs import demo


def get_config(arg=None):
  config = demo.get_config(arg)
  config.model.head = "linear"
  return config
