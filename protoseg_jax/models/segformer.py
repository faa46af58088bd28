"""SegFormer all-MLP decoder up to, not including, its classifier.

As in the original SegFormer (NVlabs `SegFormerHead`) and HF
`SegformerDecodeHead`:

    for each level i: linear projection C_i -> channels (with bias), bilinear
      upsample (align_corners=False) to level 0's size
    concat in REVERSE level order [c3, c2, c1, c0]
    1x1 conv (no bias) -> BatchNorm -> ReLU        ("linear_fuse")
    dropout 0.1
    -> [B, H0, W0, channels]   (channels 256 for MiT-B0/B1, 768 for B2-B5:
                                `protoseg_jax.models.mit.DECODER_CHANNELS`)

Dropout: the original code (an mmseg decode head) uses Dropout2d (whole
channels), HF uses element-wise dropout; `channel_dropout` picks (default:
channels, as the original). Only matters in training.

mmseg >= 0.20's own `SegformerHead` is a different head (a ConvModule with BN
per level, concat in forward order); it is not this one.

`protoseg_jax.convert.segformer` reads HF (`decode_head.linear_c.N.proj` in hub
checkpoints, `decode_head.linear_projections.N.proj` in transformers >= 5,
`decode_head.linear_fuse`, `decode_head.batch_norm`) and NVlabs
(`decode_head.linear_c{N+1}.proj`, `decode_head.linear_fuse.conv/bn`) keys.
The classifier (`classifier.*` HF, `linear_pred.*`/`conv_seg.*` NVlabs) is
skipped: its `convert_classifier` returns it for the integrator.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from protoseg_jax.models.layers import batch_norm
from protoseg_jax.ops import resize_bilinear

Dtype = Any


class SegFormerHead(nn.Module):
  """`features` (4 NHWC maps, finest first) -> [B, H0, W0, channels]."""
  channels: int = 256
  dropout_rate: float = 0.1
  channel_dropout: bool = True
  align_corners: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray], *, train: bool) -> jnp.ndarray:
    size = features[0].shape[1:3]
    outs = []
    for i, f in enumerate(features):
      y = nn.Dense(self.channels, dtype=self.dtype, name=f"linear_c{i}")(f.astype(self.dtype))
      outs.append(resize_bilinear(y, size, align_corners=self.align_corners))
    x = jnp.concatenate(outs[::-1], axis=-1)
    x = nn.Conv(self.channels, (1, 1), use_bias=False, dtype=self.dtype, name="linear_fuse")(x)
    x = batch_norm(train, dtype=self.dtype, name="bn")(x)
    x = nn.relu(x)
    dims = (1, 2) if self.channel_dropout else ()
    return nn.Dropout(self.dropout_rate, broadcast_dims=dims)(x, deterministic=not train)
