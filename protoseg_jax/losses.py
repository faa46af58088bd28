"""Losses: cross-entropy with ignore and class weights, PPC, PPD, ProtoSeg total.

All losses return float32 scalars. When a batch has no labelled pixel, PyTorch
returns NaN; here the losses are 0 so that one empty crop cannot poison a run.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from protoseg_jax.chunking import auto_chunk_size
from protoseg_jax.ops import interp_matrix, pick, resize_bilinear


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
  nll = jax.nn.logsumexp(x, axis=-1) - pick(x, safe)
  if class_weights is None:
    w = valid.astype(jnp.float32)
  else:
    cw = jnp.asarray(class_weights, jnp.float32)
    if cw.shape != (k,):
      raise ValueError(f"class_weights must have {k} entries, got shape {cw.shape}")
    w = jnp.where(valid, cw[safe], 0.0)
  return jnp.sum(w * nll) / jnp.maximum(jnp.sum(w), 1e-12)


def ppc_ppd_from_target(proto_lse: jnp.ndarray, proto_target_logits: jnp.ndarray,
                        proto_targets: jnp.ndarray, ppc_temperature: float = 1.0
                        ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(PPC, PPD) from what the ProtoSeg head gives per pixel, whether it
  computed its similarity at once or a chunk of classes at a time:

    proto_lse [N]            log-sum-exp over all C*M of similarity / ppc_temperature
    proto_target_logits [N]  the cosine to the target prototype
    proto_targets [N]        targets in [0, C*M) (255 too: a real prototype
                             when C*M > 255); negative (-1): ignored pixels

  PPC (pixel-prototype contrast) is the mean over counted pixels of the CE
  lse - s_target / t, i.e. `F.cross_entropy(proto_logits / t, targets)`;
  PPD (pixel-prototype distance) the mean of (1 - s_target)^2 (PROTOSEG.md).
  ppc_temperature must be the one the head computed proto_lse with."""
  valid = proto_targets.astype(jnp.int32) >= 0
  count = jnp.maximum(jnp.sum(valid), 1)
  s = proto_target_logits.astype(jnp.float32)
  nll = proto_lse.astype(jnp.float32) - s / float(ppc_temperature)
  ppc = jnp.sum(jnp.where(valid, nll, 0.0)) / count
  ppd = jnp.sum(jnp.where(valid, jnp.square(1.0 - s), 0.0)) / count
  return ppc, ppd


def resolve_label_rows(label_rows: int, batch: int, height: int, width: int,
                       num_classes: int) -> int:
  """Label rows per block of `segmentation_loss` (>= height: all at once).

  label_rows > 0: that many; 0 (automatic): `chunking.auto_chunk_size` of
  the upsampled logits B*H*W*C (float32), a row being B*W*C of them: all at
  once up to 4 GiB (ADE20K's 150 and COCO-Stuff's 171 classes at 16 crops of
  512x512: 2.3 / 2.7 GiB keep today's program), else balanced blocks of about
  256 MiB.
  """
  if label_rows < 0:
    raise ValueError(f"label_rows must be >= 0 (0: automatic), got {label_rows}")
  if label_rows > 0:
    return min(int(label_rows), int(height))
  return auto_chunk_size(height, 4 * int(batch) * int(width) * int(num_classes))


def segmentation_loss(seg_logits: jnp.ndarray, labels: jnp.ndarray, *, ignore_index: int = 255,
                      class_weights=None, align_corners: bool = True,
                      label_rows: int = 0) -> jnp.ndarray:
  """CE after bilinear upsampling of [B, h, w, C] logits to the [B, H, W] labels.

  label_rows: label rows per block (`resolve_label_rows`; 0 = automatic,
  >= H = all at once, today's program). With blocks, the upsampling and the
  cross-entropy are computed together a block of rows at a time
  (`lax.scan`, the body checkpointed: the backward pass recomputes a block)
  and no [B, H, W, C] tensor is formed; equal up to float rounding.
  """
  b, h, w, c = seg_logits.shape
  rows = resolve_label_rows(label_rows, b, labels.shape[1], labels.shape[2], c)
  if rows >= labels.shape[1]:
    up = resize_bilinear(seg_logits.astype(jnp.float32), labels.shape[1:3],
                         align_corners=align_corners)
    return cross_entropy(up, labels, ignore_index=ignore_index, class_weights=class_weights)
  return _blockwise_cross_entropy(seg_logits.astype(jnp.float32), labels, rows,
                                  ignore_index=ignore_index, class_weights=class_weights,
                                  align_corners=align_corners)


def _blockwise_cross_entropy(logits, labels, rows: int, *, ignore_index, class_weights,
                             align_corners):
  """`segmentation_loss` a block of `rows` label rows at a time."""
  b, h, w, c = logits.shape
  hl, wl = labels.shape[1:3]
  blocks = -(-hl // rows)
  pad = blocks * rows - hl
  wh = np.zeros((blocks * rows, h), np.float32)          # padded rows: no weight, ignored labels
  wh[:hl] = interp_matrix(h, hl, align_corners)
  ww = jnp.asarray(interp_matrix(w, wl, align_corners), jnp.float32)
  y = jnp.pad(labels.astype(jnp.int32), ((0, 0), (0, pad), (0, 0)), constant_values=-1)
  y = jnp.moveaxis(y.reshape(b, blocks, rows, wl), 1, 0)               # [blocks, B, rows, W]
  wh = jnp.asarray(wh.reshape(blocks, rows, h))
  cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
  if cw is not None and cw.shape != (c,):
    raise ValueError(f"class_weights must have {c} entries, got shape {cw.shape}")

  @jax.checkpoint
  def body(carry, xs):
    wh_r, y_r = xs
    x = jnp.einsum("oh,bhwc->bowc", wh_r, logits)
    x = jnp.einsum("pw,bowc->bopc", ww, x)                             # [B, rows, W, C]
    valid = (y_r != ignore_index) & (y_r >= 0) & (y_r < c)
    safe = jnp.where(valid, y_r, 0)
    nll = jax.nn.logsumexp(x, axis=-1) - pick(x, safe)
    wts = valid.astype(jnp.float32) if cw is None else jnp.where(valid, cw[safe], 0.0)
    total, weight = carry
    return (total + jnp.sum(wts * nll), weight + jnp.sum(wts)), None

  zero = jnp.zeros((), jnp.float32)
  (total, weight), _ = jax.lax.scan(body, (zero, zero), (wh, y))
  return total / jnp.maximum(weight, 1e-12)


def protoseg_loss(seg_logits: jnp.ndarray, labels: jnp.ndarray, *,
                  proto_targets: Optional[jnp.ndarray] = None,
                  proto_lse: Optional[jnp.ndarray] = None,
                  proto_target_logits: Optional[jnp.ndarray] = None,
                  lambda_ppc: float = 0.01, lambda_ppd: float = 0.001,
                  ppc_temperature: float = 1.0,
                  ignore_index: int = 255, class_weights=None,
                  align_corners: bool = True,
                  label_rows: int = 0) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """ProtoSeg loss: CE(upsample(seg_logits), labels) + lambda_ppc PPC + lambda_ppd PPD.

  Args:
    seg_logits: [B, h, w, C] class logits at feature resolution.
    labels: [B, H, W] int at label resolution.
    proto_targets, proto_lse, proto_target_logits: [N] each, the ProtoSeg
      head's output when it learned prototypes (`heads.HeadOutput`; feature
      resolution; `ppc_ppd_from_target`); None (a linear head, or a head
      called without labels): the loss is the CE alone.
    ppc_temperature: the head's (`ProtoSegHead.ppc_temperature`: proto_lse
      was computed with it). 1.0: the official code; 0.1: the paper.
    label_rows: the CE's label rows per block (`segmentation_loss`).

  Returns:
    (total, {"loss_ce", "loss_ppc", "loss_ppd"}).
  """
  ce = segmentation_loss(seg_logits, labels, ignore_index=ignore_index,
                         class_weights=class_weights, align_corners=align_corners,
                         label_rows=label_rows)
  terms = {"proto_targets": proto_targets, "proto_lse": proto_lse,
           "proto_target_logits": proto_target_logits}
  missing = [name for name, value in terms.items() if value is None]
  if len(missing) == len(terms):
    zero = jnp.zeros((), jnp.float32)
    return ce, {"loss_ce": ce, "loss_ppc": zero, "loss_ppd": zero}
  if missing:
    raise ValueError("protoseg_loss needs proto_targets, proto_lse and proto_target_logits "
                     f"together (the ProtoSeg head's output), got None for {', '.join(missing)}")
  ppc, ppd = ppc_ppd_from_target(proto_lse, proto_target_logits, proto_targets,
                                 ppc_temperature)
  total = ce + lambda_ppc * ppc + lambda_ppd * ppd
  return total, {"loss_ce": ce, "loss_ppc": ppc, "loss_ppd": ppd}
