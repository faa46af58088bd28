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

`convert_state_dict` reads HF (`decode_head.linear_c.N.proj` in hub
checkpoints, `decode_head.linear_projections.N.proj` in transformers >= 5,
`decode_head.linear_fuse`, `decode_head.batch_norm`) and NVlabs
(`decode_head.linear_c{N+1}.proj`, `decode_head.linear_fuse.conv/bn`) keys.
The classifier (`classifier.*` HF, `linear_pred.*`/`conv_seg.*` NVlabs) is
skipped: `convert_classifier` returns it for the integrator.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from protoseg_jax import convert as cv
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
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                     name="bn")(x)
    x = nn.relu(x)
    dims = (1, 2) if self.channel_dropout else ()
    return nn.Dropout(self.dropout_rate, broadcast_dims=dims)(x, deterministic=not train)


_CLASSIFIER_KEYS = ("classifier.", "linear_pred.", "conv_seg.")


def _head_dict(state_dict: Mapping[str, Any], prefix: str) -> dict:
  return {k[len(prefix):]: v for k, v in cv.strip_prefix(state_dict).items() if k.startswith(prefix)}


def convert_state_dict(state_dict: Mapping[str, Any], *, prefix: str = "decode_head.",
                       num_levels: int = 4) -> dict:
  """{"params", "batch_stats"} of `SegFormerHead` from HF or NVlabs keys.

  Only keys under `prefix` are read (pass a whole segmentor state_dict; the
  backbone is converted by `protoseg_jax.models.mit`). The classifier keys are
  skipped on purpose; any other unused or missing key raises.
  """
  from protoseg_jax.models.swin import conv, dense
  sd = _head_dict(state_dict, prefix)
  r = cv.StateDictReader(sd)
  for k in r.keys():
    if k.startswith(_CLASSIFIER_KEYS):
      r.mark_used(k)
  params = {}
  if r.has("linear_c1.proj.weight"):  # NVlabs: linear_c1..linear_c4, ConvModule fuse
    for i in range(num_levels):
      params[f"linear_c{i}"] = dense(r, f"linear_c{i + 1}.proj")
    params["linear_fuse"] = conv(r, "linear_fuse.conv", bias=False)
    params["bn"], stats = cv.batch_norm(r, "linear_fuse.bn")
  else:  # HF: hub `linear_c.N`, transformers >= 5 `linear_projections.N`
    lin = "linear_projections" if r.has("linear_projections.0.proj.weight") else "linear_c"
    for i in range(num_levels):
      params[f"linear_c{i}"] = dense(r, f"{lin}.{i}.proj")
    params["linear_fuse"] = conv(r, "linear_fuse", bias=False)
    params["bn"], stats = cv.batch_norm(r, "batch_norm")
  r.finish()
  return {"params": params, "batch_stats": {"bn": stats}}


def convert_classifier(state_dict: Mapping[str, Any], *, prefix: str = "decode_head.") -> dict:
  """The 1x1 classifier as Flax Dense params {"kernel": [C, K], "bias": [K]}
  (HF `classifier`, NVlabs `linear_pred`)."""
  sd = _head_dict(state_dict, prefix)
  for name in ("classifier", "linear_pred"):
    if f"{name}.weight" in sd:
      w = cv.to_numpy(sd[f"{name}.weight"])
      return {"kernel": w.reshape(w.shape[0], -1).T, "bias": cv.to_numpy(sd[f"{name}.bias"])}
  raise ValueError(f"no classifier under {prefix!r}: expected {prefix}classifier.weight or "
                   f"{prefix}linear_pred.weight")
