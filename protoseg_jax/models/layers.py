"""Flax building blocks shared by the backbones and decoders (NHWC, Linen).

  conv_init, conv2d, batch_norm    PyTorch's Conv2d padding / init and BatchNorm2d defaults
  ConvBN                           conv (no bias) -> BN [-> ReLU] (mmcv ConvModule, HRNet pairs)
  avg_pool_ceil, avg_pool_same_2x2 the average pools of ResNet-D shortcuts
  BasicBlock, Bottleneck           ResNet blocks (ResNet, HRNet branches)
  DropPath                         stochastic depth (Swin, MiT)
  attention, Mlp                   the attention core and the MLP of Swin and MiT blocks
  remat_plan, maybe_remat          activation checkpointing of backbone stages / blocks
                                   (config.model.remat)

Model modules import their shared layers from here (and resizing from
`protoseg_jax.ops`), never from each other; the state_dict key maps of these
layers are in `protoseg_jax.convert.layers`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# config.model.remat: what a backbone recomputes in the backward pass instead of
# storing (activation checkpointing, `nn.remat`).
REMAT_MODES = ("none", "stage", "block")
NUM_STAGES = 4

# PyTorch's ResNet/HRNet init (kaiming normal, fan_out, relu gain).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv2d(features: int, kernel: int, *, stride: int = 1, dilation: int = 1,
           padding: int | None = None, use_bias: bool = False, dtype: Any = jnp.float32,
           name: str | None = None) -> nn.Conv:
  """`nn.Conv2d(.., kernel, stride, padding=dilation*(kernel//2), dilation)` in NHWC.

  Explicit symmetric padding, so strided convs sample the same pixels as
  PyTorch (Flax's "SAME" pads asymmetrically).
  """
  p = dilation * (kernel // 2) if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((p, p), (p, p)), kernel_dilation=(dilation, dilation),
                 use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=conv_init, name=name)


def batch_norm(train: bool, *, dtype: Any = jnp.float32, name: str | None = None) -> nn.BatchNorm:
  """PyTorch `BatchNorm2d` defaults (momentum 0.1, eps 1e-5); stats in `batch_stats`.

  Under a jit over a sharded batch the statistics are global (SyncBN).
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, param_dtype=jnp.float32, name=name)


class ConvBN(nn.Module):
  """conv (no bias, `conv2d` padding) -> BN [-> ReLU]; submodules `conv` and `bn`.

  mmcv's ConvModule with BN and ReLU (FCN, UperNet) and the conv-BN pairs of
  HRNet (relu=False where the official block has none).
  """
  features: int
  kernel: int = 3
  stride: int = 1
  dilation: int = 1
  relu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = conv2d(self.features, self.kernel, stride=self.stride, dilation=self.dilation,
               dtype=self.dtype, name="conv")(x)
    x = batch_norm(train, dtype=self.dtype, name="bn")(x)
    return nn.relu(x) if self.relu else x


def avg_pool_ceil(x: jnp.ndarray, stride: int) -> jnp.ndarray:
  """`nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)` on NHWC."""
  if stride == 1:
    return x
  ph = (-x.shape[1]) % stride
  pw = (-x.shape[2]) % stride
  if ph == 0 and pw == 0:   # keywords and a string padding: what converters' rewrites take
    return nn.avg_pool(x, window_shape=(stride, stride), strides=(stride, stride),
                       padding="VALID")
  return nn.avg_pool(x, (stride, stride), (stride, stride), ((0, ph), (0, pw)),
                     count_include_pad=False)


def avg_pool_same_2x2(x: jnp.ndarray) -> jnp.ndarray:
  """timm `AvgPool2dSame(2, stride=1)`: zero-pad bottom/right by 1, 2x2 mean counting the pad
  (padded explicitly, then a VALID pool: the same values, in the form converters take)."""
  x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
  return nn.avg_pool(x, window_shape=(2, 2), strides=(1, 1), padding="VALID")


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN (ResNet-18/34 and HRNet branches). [B,H,W,Cin] -> [B,H/s,W/s,planes]."""
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: str | None = None  # "conv": 1x1 conv (stride) + BN shortcut
  dtype: Any = jnp.float32

  expansion = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    d = self.dtype
    y = conv2d(self.planes, 3, stride=self.stride, dilation=self.dilation, dtype=d, name="conv1")(x)
    y = nn.relu(batch_norm(train, dtype=d, name="bn1")(y))
    y = conv2d(self.planes, 3, dilation=self.dilation, dtype=d, name="conv2")(y)
    y = batch_norm(train, dtype=d, name="bn2")(y)
    if self.downsample not in (None, "conv"):
      raise ValueError(f"BasicBlock.downsample={self.downsample!r}; expected None or 'conv'")
    if self.downsample == "conv":
      x = conv2d(self.planes, 1, stride=self.stride, dtype=d, name="downsample_conv")(x)
      x = batch_norm(train, dtype=d, name="downsample_bn")(x)
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride, dilation) -> 1x1 (x4) bottleneck. [B,H,W,Cin] -> [B,H/s,W/s,4*planes].

  downsample: None (identity shortcut), "conv" (1x1 conv with the stride + BN),
  "avg" (avg-pool 2x2/stride ceil_mode, then 1x1 conv + BN; timm avg_down) or
  "avg_same" (timm's AvgPool2dSame(2, 1) of a dilated stage, then 1x1 conv + BN).
  """
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: str | None = None
  dtype: Any = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    d = self.dtype
    out = self.planes * self.expansion
    y = conv2d(self.planes, 1, dtype=d, name="conv1")(x)
    y = nn.relu(batch_norm(train, dtype=d, name="bn1")(y))
    y = conv2d(self.planes, 3, stride=self.stride, dilation=self.dilation, dtype=d, name="conv2")(y)
    y = nn.relu(batch_norm(train, dtype=d, name="bn2")(y))
    y = conv2d(out, 1, dtype=d, name="conv3")(y)
    y = batch_norm(train, dtype=d, name="bn3")(y)
    if self.downsample is not None:
      if self.downsample == "conv":
        x = conv2d(out, 1, stride=self.stride, dtype=d, name="downsample_conv")(x)
      elif self.downsample in ("avg", "avg_same"):
        x = avg_pool_same_2x2(x) if self.downsample == "avg_same" else avg_pool_ceil(x, self.stride)
        x = conv2d(out, 1, dtype=d, name="downsample_conv")(x)
      else:
        raise ValueError(f"Bottleneck.downsample={self.downsample!r}; expected None, 'conv', "
                         "'avg' or 'avg_same'")
      x = batch_norm(train, dtype=d, name="downsample_bn")(x)
    return nn.relu(y + x)


class DropPath(nn.Module):
  """Stochastic depth: drop the whole residual branch per sample.

  `x [B, ...]`; kept samples are scaled by 1/(1-rate) (as timm/mmseg).
  Uses the 'dropout' rng when not deterministic.
  """
  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, deterministic: bool) -> jnp.ndarray:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, *biases) -> jnp.ndarray:
  """Multi-head softmax attention: q [..., Nq, H, D], k and v [..., Nk, H, D] -> [..., Nq, H, D].

  Logits (q / sqrt(D)) . k in float32, plus each additive term of `biases`
  (broadcastable to [..., H, Nq, Nk]; added in the order given), softmax over
  the keys, weights cast back to v's dtype.
  """
  q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  logits = jnp.einsum("...qhd,...khd->...hqk", q, k).astype(jnp.float32)
  for b in biases:
    logits = logits + b
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("...hqk,...khd->...qhd", weights, v)


class Mlp(nn.Module):
  """Transformer MLP on `[B, H, W, C]`: dense (fc1) -> GELU (exact) -> dense (fc2) back to C.

  dwconv=True: MiT's MixFFN, a 3x3 depthwise conv (with bias, `dwconv`) before the GELU.
  """
  hidden: int
  dwconv: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    x = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
    if self.dwconv:
      x = nn.Conv(self.hidden, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=self.hidden,
                  dtype=self.dtype, name="dwconv")(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(c, dtype=self.dtype, name="fc2")(x)


def remat_plan(spec: str, num_stages: int = NUM_STAGES) -> tuple[str, ...]:
  """The checkpointing mode of each backbone stage from `config.model.remat`.

  spec: "none" (store every activation), "stage" (one `nn.remat` per stage:
  only the stage's input is kept, the whole stage is recomputed in the
  backward pass), "block" (one per block of the stage: residual block,
  HRNet HighResolutionModule, Swin / MiT transformer block). A mode may be
  restricted to some stages by 1-based numbers after a colon ("block:3,4":
  stages 1 and 2 store everything), and clauses for disjoint stages joined
  by ";" ("stage:1,2;block:3,4").

  Returns one of REMAT_MODES per stage, e.g. ("none", "none", "block", "block").
  Raises ValueError on anything else.
  """
  plan = ["none"] * num_stages
  error = (f"config.model.remat={spec!r}; expected 'none', 'stage' or 'block', optionally "
           f"for some of the stages 1..{num_stages} ('block:3,4'), clauses joined by ';' "
           "('stage:1,2;block:3,4'), each stage named at most once")
  clauses = [c.strip() for c in str(spec).split(";")]
  seen = set()
  for clause in clauses:
    mode, colon, which = clause.partition(":")
    mode = mode.strip()
    if mode not in REMAT_MODES or (len(clauses) > 1 and not colon):
      raise ValueError(error)
    stages = set(range(1, num_stages + 1))
    if colon:
      try:
        stages = {int(t) for t in which.split(",")}
      except ValueError:
        raise ValueError(error) from None
      if not stages <= set(range(1, num_stages + 1)):
        raise ValueError(error)
    if stages & seen:
      raise ValueError(error)
    seen |= stages
    for i in stages:
      plan[i - 1] = mode
  return tuple(plan)


def maybe_remat(target, on: bool = True, static_argnums: tuple[int, ...] = (2,)):
  """`target` (a Module class, or a function whose first argument is a Module)
  under `nn.remat` when `on`, else unchanged.

  `static_argnums` (the module counted as 0) are the positions of the
  wrapped call that hold Python values; by default 2, the `train` flag of
  a block called as `Block(...)(x, train)`. They must be passed
  POSITIONALLY: keyword arguments would be traced, and `train` must stay a
  Python bool (`use_running_average=not train`, `deterministic=not train`).
  Variables of every collection are lifted: BatchNorm's `batch_stats`
  update comes out of the forward pass as without remat (the recomputation
  in the backward pass discards its own), and the `dropout` rng is lifted,
  so the recomputed DropPath masks equal the forward's. Parameter names are
  those of the unwrapped target. `prevent_cse` stays on (needed under jit:
  without it XLA may merge the recomputation with the forward pass).
  """
  if not on:
    return target
  return nn.remat(target, static_argnums=tuple(static_argnums))
