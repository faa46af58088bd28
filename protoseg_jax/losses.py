"""Losses: cross-entropy with ignore and class weights, PPC, PPD, ProtoSeg total.

All losses return float32 scalars. When a batch has no labelled pixel, PyTorch
returns NaN; here the losses are 0 so that one empty crop cannot poison a run.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from protoseg_jax.ops import resize_bilinear


def _pick(x: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
  """x[..., index[...]] as a masked sum over the last axis. Its gradient is an
  elementwise select that fuses into its neighbours; `take_along_axis`'s is a
  scatter-add into a zero buffer the size of x."""
  hit = jnp.arange(x.shape[-1], dtype=jnp.int32) == index[..., None]
  return jnp.sum(jnp.where(hit, x, 0.0), axis=-1)


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, *, ignore_index: int = 255,
                  class_weights: Optional[Sequence[float] | jnp.ndarray] = None) -> jnp.ndarray:
  """Mean cross-entropy over labelled pixels, like `F.cross_entropy(weight=w, ignore_index=i)`.

  Args:
    logits: [..., K] (any leading shape, e.g. [B, H, W, C] or [N, C*M]).
    labels: [...] int; `ignore_index` and ids outside [0, K) are ignored.
    class_weights: optional [K]; the mean is then sum(w_y * ce) / sum(w_y).
  """
  k = logits.shape[-1]
  if labels.shape != logits.shape[:-1]:
    raise ValueError(f"labels shape {labels.shape} does not match logits {logits.shape[:-1]} + [K]")
  labels = labels.astype(jnp.int32)
  valid = (labels != ignore_index) & (labels >= 0) & (labels < k)
  safe = jnp.where(valid, labels, 0)
  # logsumexp(x) - x[label]: no [..., K] log-softmax is stored, and the
  # gradient is one fused softmax(x) - onehot (bench/bench_vocab.py).
  x = logits.astype(jnp.float32)
  nll = jax.nn.logsumexp(x, axis=-1) - _pick(x, safe)
  if class_weights is None:
    w = valid.astype(jnp.float32)
  else:
    cw = jnp.asarray(class_weights, jnp.float32)
    if cw.shape != (k,):
      raise ValueError(f"class_weights must have {k} entries, got shape {cw.shape}")
    w = jnp.where(valid, cw[safe], 0.0)
  return jnp.sum(w * nll) / jnp.maximum(jnp.sum(w), 1e-12)


def ppc_loss(proto_logits: jnp.ndarray, proto_targets: jnp.ndarray) -> jnp.ndarray:
  """Pixel-prototype contrast: CE of [N, C*M] proto_logits against [N] targets.

  Every target in [0, C*M) counts (255 too: a real prototype when C*M > 255);
  negative targets (-1, prototypes.PROTO_IGNORE) are ignored pixels.
  """
  return cross_entropy(proto_logits, proto_targets, ignore_index=-1)


def ppd_loss(proto_logits: jnp.ndarray, proto_targets: jnp.ndarray) -> jnp.ndarray:
  """Pixel-prototype distance: mean over labelled pixels of (1 - s[n, target_n])^2.

  Targets as in `ppc_loss`: [0, C*M) count, negative ones are ignored.
  """
  k = proto_logits.shape[-1]
  t = proto_targets.astype(jnp.int32)
  valid = (t >= 0) & (t < k)
  s = _pick(proto_logits.astype(jnp.float32), jnp.where(valid, t, 0))
  sq = jnp.where(valid, jnp.square(1.0 - s), 0.0)
  return jnp.sum(sq) / jnp.maximum(jnp.sum(valid), 1)


def segmentation_loss(seg_logits: jnp.ndarray, labels: jnp.ndarray, *, ignore_index: int = 255,
                      class_weights=None, align_corners: bool = True) -> jnp.ndarray:
  """CE after bilinear upsampling of [B, h, w, C] logits to the [B, H, W] labels."""
  up = resize_bilinear(seg_logits.astype(jnp.float32), labels.shape[1:3], align_corners=align_corners)
  return cross_entropy(up, labels, ignore_index=ignore_index, class_weights=class_weights)


def protoseg_loss(seg_logits: jnp.ndarray, labels: jnp.ndarray,
                  proto_logits: Optional[jnp.ndarray] = None,
                  proto_targets: Optional[jnp.ndarray] = None, *,
                  lambda_ppc: float = 0.01, lambda_ppd: float = 0.001,
                  ignore_index: int = 255, class_weights=None,
                  align_corners: bool = True) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """ProtoSeg loss: CE(upsample(seg_logits), labels) + lambda_ppc PPC + lambda_ppd PPD.

  Args:
    seg_logits: [B, h, w, C] class logits at feature resolution.
    labels: [B, H, W] int at label resolution.
    proto_logits, proto_targets: [N, C*M] and [N] from the prototype head
      (feature resolution; targets in [0, C*M), -1 for ignored pixels; the
      label `ignore_index` does not apply to them); when None (linear head)
      the loss is CE only.

  Returns:
    (total, {"loss_ce", "loss_ppc", "loss_ppd"}).
  """
  ce = segmentation_loss(seg_logits, labels, ignore_index=ignore_index,
                         class_weights=class_weights, align_corners=align_corners)
  if proto_logits is None:
    zero = jnp.zeros((), jnp.float32)
    return ce, {"loss_ce": ce, "loss_ppc": zero, "loss_ppd": zero}
  ppc = ppc_loss(proto_logits, proto_targets)
  ppd = ppd_loss(proto_logits, proto_targets)
  total = ce + lambda_ppc * ppc + lambda_ppd * ppd
  return total, {"loss_ce": ce, "loss_ppc": ppc, "loss_ppd": ppd}
