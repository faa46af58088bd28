import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protoseg_jax import losses
from protoseg_jax.prototypes import contrast_terms


def _seg_inputs(seed):
  rng = np.random.RandomState(seed)
  logits = rng.randn(2, 5, 6, 4).astype(np.float32)      # [B, h, w, C]
  labels = rng.randint(0, 4, (2, 17, 21))
  labels[rng.rand(*labels.shape) < 0.2] = 255
  return logits, labels


def test_cross_entropy_matches_torch_with_ignore_and_weights():
  rng = np.random.RandomState(0)
  logits = rng.randn(50, 7).astype(np.float32)
  labels = rng.randint(0, 7, 50)
  labels[::5] = 255
  w = rng.uniform(0.5, 2.0, 7).astype(np.float32)
  for weights in (None, w):
    ref = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                          weight=None if weights is None else torch.from_numpy(weights),
                          ignore_index=255)
    got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), class_weights=weights)
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)


def test_segmentation_loss_upsamples_like_official():
  logits, labels = _seg_inputs(1)
  t = torch.from_numpy(logits).permute(0, 3, 1, 2)
  up = F.interpolate(t, size=labels.shape[1:], mode="bilinear", align_corners=True)
  ref = F.cross_entropy(up, torch.from_numpy(labels), ignore_index=255)
  got = losses.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)


def _ppc_ppd(proto_logits, targets, temperature=1.0):
  """(PPC, PPD) of [N, K] similarities the way the head and the loss compute
  them: the per-pixel terms, then `ppc_ppd_from_target`."""
  pl, pt = jnp.asarray(proto_logits, jnp.float32), jnp.asarray(targets)
  return losses.ppc_ppd_from_target(*contrast_terms(pl, pt, temperature), pt, temperature)


def _terms(proto_logits, targets):
  """protoseg_loss's keyword arguments for [N, K] similarities."""
  pl, pt = jnp.asarray(proto_logits, jnp.float32), jnp.asarray(targets)
  lse, target = contrast_terms(pl, pt)
  return dict(proto_targets=pt, proto_lse=lse, proto_target_logits=target)


def test_ppc_ppd_match_official_formulas():
  rng = np.random.RandomState(2)
  proto_logits = np.tanh(rng.randn(40, 12)).astype(np.float32)
  targets = rng.randint(0, 12, 40)
  targets[::3] = -1
  tl, tt = torch.from_numpy(proto_logits), torch.from_numpy(targets)
  ref_ppc = F.cross_entropy(tl, tt, ignore_index=-1)
  keep = tt != -1
  ref_ppd = (1 - torch.gather(tl[keep], 1, tt[keep][:, None])).pow(2).mean()
  ppc, ppd = _ppc_ppd(proto_logits, targets)
  np.testing.assert_allclose(float(ppc), float(ref_ppc), rtol=1e-5)
  np.testing.assert_allclose(float(ppd), float(ref_ppd), rtol=1e-5)
  # The paper's temperature: CE of similarity / 0.1; PPD unchanged.
  ppc, ppd = _ppc_ppd(proto_logits, targets, 0.1)
  np.testing.assert_allclose(float(ppc), float(F.cross_entropy(tl / 0.1, tt, ignore_index=-1)),
                             rtol=1e-5)
  np.testing.assert_allclose(float(ppd), float(ref_ppd), rtol=1e-5)


def test_protoseg_loss_combines_with_lambdas_and_handles_empty_batches():
  logits, labels = _seg_inputs(3)
  rng = np.random.RandomState(3)
  pl = jnp.asarray(np.tanh(rng.randn(60, 8)).astype(np.float32))
  pt = jnp.asarray(rng.randint(0, 8, 60))
  total, parts = losses.protoseg_loss(jnp.asarray(logits), jnp.asarray(labels),
                                      **_terms(pl, pt), lambda_ppc=0.01, lambda_ppd=0.001)
  expect = parts["loss_ce"] + 0.01 * parts["loss_ppc"] + 0.001 * parts["loss_ppd"]
  np.testing.assert_allclose(float(total), float(expect), rtol=1e-6)
  assert float(parts["loss_ppc"]) > 0 and float(parts["loss_ppd"]) > 0
  ce_only, parts = losses.protoseg_loss(jnp.asarray(logits), jnp.asarray(labels))
  assert float(parts["loss_ppc"]) == 0.0 and float(ce_only) == float(parts["loss_ce"])
  empty = jnp.full(labels.shape, 255)
  total, parts = losses.protoseg_loss(jnp.asarray(logits), empty,
                                      **_terms(pl, jnp.full((60,), -1)))
  assert float(total) == 0.0
  with pytest.raises(ValueError, match="proto_lse, proto_target_logits"):
    losses.protoseg_loss(jnp.asarray(logits), jnp.asarray(labels), proto_targets=pt)


def test_ppc_ppd_count_target_255_of_a_large_vocabulary():
  # C=30, M=10: C*M = 300 > 255, so target 255 (class 25, prototype 5) is real.
  k = 300
  rng = np.random.RandomState(4)
  proto_logits = np.tanh(rng.randn(64, k)).astype(np.float64)
  targets = rng.randint(0, k, 64)
  targets[:10] = 255
  targets[10:16] = -1                     # ignored pixels
  targets[16] = k - 1
  keep = targets >= 0
  z = proto_logits[keep]
  t = targets[keep]
  logp = z - z.max(1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
  ce = -logp[np.arange(len(t)), t]
  sq = (1.0 - z[np.arange(len(t)), t]) ** 2
  ppc, ppd = _ppc_ppd(proto_logits, targets)
  np.testing.assert_allclose(float(ppc), ce.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(ppd), sq.mean(), rtol=1e-5)
  # Pixels with target 255 contribute exactly their CE and squared distance;
  # ignored pixels (-1) contribute nothing, whatever their logits.
  only255 = np.where(targets == 255, 255, -1)
  ppc, ppd = _ppc_ppd(proto_logits, only255)
  np.testing.assert_allclose(float(ppc), ce[t == 255].mean(), rtol=1e-5)
  np.testing.assert_allclose(float(ppd), sq[t == 255].mean(), rtol=1e-5)
  noisy = proto_logits.copy()
  noisy[10:16] = rng.randn(6, k) * 5
  np.testing.assert_allclose(_ppc_ppd(noisy, targets), _ppc_ppd(proto_logits, targets),
                             rtol=1e-6)
  # Through the total as well: labels' ignore_index 255 does not apply to targets.
  seg = jnp.zeros((1, 2, 2, 30))
  lab = jnp.zeros((1, 2, 2), jnp.int32)
  _, parts = losses.protoseg_loss(seg, lab, **_terms(proto_logits, targets))
  np.testing.assert_allclose(float(parts["loss_ppc"]), ce.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(parts["loss_ppd"]), sq.mean(), rtol=1e-5)
