"""UPerNet decoder (mmsegmentation `UPerHead`) up to, not including, its classifier.

    features (4 NHWC maps, fine to coarse)
      PPM on the last map: for s in pool_scales: AdaptiveAvgPool2d(s) -> 1x1
        ConvModule -> bilinear upsample back (align_corners=False); concat
        [x, ppm_1, ppm_2, ...] -> 3x3 ConvModule `bottleneck`  = lateral 3
      lateral 1x1 ConvModules on maps 0..2
      top-down: lateral[i-1] += upsample(lateral[i])       (i = 3, 2, 1)
      3x3 ConvModules `fpn_convs` on laterals 0..2 (lateral 3 as is)
      upsample all to map 0's size, concat, 3x3 ConvModule `fpn_bottleneck`
      Dropout2d(0.1)
    -> [B, H0, W0, channels]

ConvModule = conv (no bias) + BatchNorm + ReLU (`layers.ConvBN`). Adaptive average pooling uses
PyTorch's bins exactly: bin i of n over a size L covers
[floor(i*L/n), ceil((i+1)*L/n)). `protoseg_jax.convert.uper` reads mmseg's
`decode_head.*` keys (psp_modules.{i}.1, bottleneck, lateral_convs.{i},
fpn_convs.{i}, fpn_bottleneck); the classifier `conv_seg` is left to the caller.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from protoseg_jax.models.layers import ConvBN
from protoseg_jax.ops import resize_bilinear

Dtype = Any


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] averaging weights of torch AdaptiveAvgPool (1-D)."""
  w = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil((i+1)*in/out)
    w[i, start:end] = 1.0 / (end - start)
  return w


def adaptive_avg_pool(x: jnp.ndarray, size: int | tuple[int, int]) -> jnp.ndarray:
  """`nn.AdaptiveAvgPool2d(size)` on `x [B, H, W, C]` -> [B, s_h, s_w, C]."""
  sh, sw = (size, size) if isinstance(size, int) else size
  ph = jnp.asarray(adaptive_pool_matrix(x.shape[1], sh), x.dtype)
  pw = jnp.asarray(adaptive_pool_matrix(x.shape[2], sw), x.dtype)
  return jnp.einsum("ph,bhwc,qw->bpqc", ph, x, pw)


class UPerHead(nn.Module):
  """`features` (tuple of NHWC maps, finest first) -> [B, H0, W0, channels]."""
  channels: int = 512
  pool_scales: Sequence[int] = (1, 2, 3, 6)
  dropout_rate: float = 0.1
  align_corners: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray], *, train: bool) -> jnp.ndarray:
    features = [f.astype(self.dtype) for f in features]
    n = len(features)
    if n < 2:
      raise ValueError(f"UPerHead needs at least 2 feature maps, got {n}")
    up = lambda y, like: resize_bilinear(y, like.shape[1:3], align_corners=self.align_corners)
    top = features[-1]
    psp = [top]
    for i, s in enumerate(self.pool_scales):
      y = ConvBN(self.channels, 1, dtype=self.dtype, name=f"psp_modules_{i}")(
          adaptive_avg_pool(top, s), train=train)
      psp.append(up(y, top))
    laterals = [ConvBN(self.channels, 1, dtype=self.dtype, name=f"lateral_convs_{i}")(f, train=train)
                for i, f in enumerate(features[:-1])]
    laterals.append(ConvBN(self.channels, 3, dtype=self.dtype, name="bottleneck")(
        jnp.concatenate(psp, axis=-1), train=train))
    for i in range(n - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + up(laterals[i], laterals[i - 1])
    outs = [ConvBN(self.channels, 3, dtype=self.dtype, name=f"fpn_convs_{i}")(laterals[i], train=train)
            for i in range(n - 1)]
    outs.append(laterals[-1])
    outs = [outs[0]] + [up(o, outs[0]) for o in outs[1:]]
    x = ConvBN(self.channels, 3, dtype=self.dtype, name="fpn_bottleneck")(
        jnp.concatenate(outs, axis=-1), train=train)
    return nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2))(x, deterministic=not train)
