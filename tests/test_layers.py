"""Shared Flax layers (protoseg_jax.models.layers) against their PyTorch counterparts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protoseg_jax.convert.state_dict import conv_kernel
from protoseg_jax.models import layers
from torch_helpers import nhwc


@pytest.mark.parametrize("kernel,stride,dilation", [(3, 2, 1), (3, 1, 2), (7, 2, 1), (1, 2, 1)])
def test_conv2d_padding_matches_torch(kernel, stride, dilation):
  torch.manual_seed(0)
  x = torch.randn(2, 3, 13, 10)  # odd sizes: Flax "SAME" would pad differently
  ref = torch.nn.Conv2d(3, 4, kernel, stride, padding=dilation * (kernel // 2), dilation=dilation,
                        bias=False)
  conv = layers.conv2d(4, kernel, stride=stride, dilation=dilation)
  got = conv.apply({"params": {"kernel": conv_kernel(ref.weight.detach().numpy())}}, nhwc(x))
  with torch.no_grad():
    want = nhwc(ref(x))
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_avg_pools_match_torch():
  x = torch.randn(1, 2, 7, 9, generator=torch.Generator().manual_seed(0))
  want = nhwc(F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False))
  np.testing.assert_allclose(np.asarray(layers.avg_pool_ceil(nhwc(x), 2)), want, rtol=1e-6, atol=1e-6)
  want = nhwc(F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 1))  # timm AvgPool2dSame(2, 1)
  np.testing.assert_allclose(np.asarray(layers.avg_pool_same_2x2(nhwc(x))), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("downsample,stride,want_hw", [
    (None, 1, (9, 11)), ("conv", 2, (5, 6)), ("avg", 2, (5, 6)), ("avg_same", 1, (9, 11))])
def test_bottleneck_shapes_and_names(downsample, stride, want_hw):
  x = jnp.zeros((2, 9, 11, 32 if downsample is None else 16))
  block = layers.Bottleneck(8, stride=stride, downsample=downsample)
  out, variables = block.init_with_output(jax.random.key(0), x)
  assert out.shape == (2, *want_hw, 32)
  names = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3"}
  if downsample is not None:
    names |= {"downsample_conv", "downsample_bn"}
  assert set(variables["params"]) == names
  with pytest.raises(ValueError, match="downsample"):
    layers.Bottleneck(8, downsample="pool").init(jax.random.key(0), x)


def test_attention_matches_torch_sdpa():
  g = torch.Generator().manual_seed(0)
  q, k, v = (torch.randn(2, 3, n, 4, generator=g) for n in (5, 7, 7))  # [B, H, N, D]
  bias = torch.randn(3, 5, 7, generator=g)
  with torch.no_grad():
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, H, Nq, D]
  t = lambda a: jnp.asarray(a.permute(0, 2, 1, 3).numpy())  # -> [B, N, H, D]
  got = layers.attention(t(q), t(k), t(v), jnp.asarray(bias.numpy()))
  np.testing.assert_allclose(np.asarray(got), want.permute(0, 2, 1, 3).numpy(), rtol=1e-5, atol=1e-6)


def test_mlp_dwconv_is_mixffn():
  x = jnp.ones((1, 4, 4, 6))
  plain = layers.Mlp(12).init(jax.random.key(0), x)["params"]
  mix = layers.Mlp(12, dwconv=True).init(jax.random.key(0), x)["params"]
  assert set(plain) == {"fc1", "fc2"} and set(mix) == {"fc1", "dwconv", "fc2"}
  assert mix["dwconv"]["kernel"].shape == (3, 3, 1, 12)  # depthwise
