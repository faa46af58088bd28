"""mmsegmentation's FCNHead before its classifier, NHWC, Flax Linen.

  x = features[in_index]                           [B, h, w, C_in]
  y = ConvModule x num_convs (C_in -> channels -> channels), k x k, dilation
  y = ConvModule(concat([x, y])) if concat_input    (k x k, no dilation)
  y = Dropout2d(dropout)(y)                         [B, h, w, channels]

ConvModule = conv (no bias) + BN + ReLU (`layers.ConvBN`). The 1x1 classifier (`conv_seg`) is
not part of this module; the integrator adds it (or the ProtoSeg head) on the
output. Decode head of mmseg's `fcn_r101-d8`: FCNHead(in_index=3, channels=512,
num_convs=2, concat_input=True); its auxiliary head: FCNHead(in_index=2,
channels=256, num_convs=1, concat_input=False).

Flax names: `convs_{i}` and `conv_cat`, each with `conv` and `bn`
(mmseg: `convs.{i}.conv/.bn`, `conv_cat.conv/.bn`; see
`protoseg_jax.convert.fcn.convert_fcn_head`).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from protoseg_jax.models.layers import ConvBN


class FCNHead(nn.Module):
  """`__call__(features: tuple of NHWC, *, train)` -> [B, h, w, channels] (pre-classifier)."""
  in_index: int = 3
  channels: int = 512
  num_convs: int = 2
  kernel_size: int = 3
  concat_input: bool = True
  dilation: int = 1
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray], *, train: bool) -> jnp.ndarray:
    if not -len(features) <= self.in_index < len(features):
      raise ValueError(f"FCNHead in_index={self.in_index} but got {len(features)} features")
    if self.num_convs < 0:
      raise ValueError(f"FCNHead num_convs={self.num_convs}; expected >= 0")
    x = features[self.in_index].astype(self.dtype)
    if self.num_convs == 0 and x.shape[-1] != self.channels:
      raise ValueError(f"FCNHead with num_convs=0 needs {self.channels} input channels, "
                       f"got {x.shape[-1]}")
    y = x
    for i in range(self.num_convs):
      y = ConvBN(self.channels, self.kernel_size, dilation=self.dilation, dtype=self.dtype,
                 name=f"convs_{i}")(y, train)
    if self.concat_input:
      y = ConvBN(self.channels, self.kernel_size, dtype=self.dtype, name="conv_cat")(
          jnp.concatenate([x, y], axis=-1), train)
    return nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(y)
