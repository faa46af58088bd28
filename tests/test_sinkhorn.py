import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protoseg_jax.sinkhorn import sinkhorn_knopp
from reference import sinkhorn_per_class


def _cosine_scores(rng, n, m):
  return np.clip(rng.uniform(-1, 1, (n, m)), -1, 1).astype(np.float32)


def test_matches_per_class_reference_with_ignored_absent_and_single_pixel():
  rng = np.random.RandomState(0)
  n, m, c = 300, 10, 7
  scores = _cosine_scores(rng, n, m)
  seg = rng.randint(0, c, n)
  seg[seg == 3] = 2           # class 3 absent
  seg[:20] = 255              # ignored rows
  seg[20:25] = -1             # also ignored
  seg[seg == 5] = 4
  seg[100] = 5                # class 5 has a single pixel
  q = np.asarray(sinkhorn_knopp(jnp.asarray(scores), jnp.asarray(seg), c))
  ref = sinkhorn_per_class(scores, seg, c)
  np.testing.assert_allclose(q, ref, atol=1e-5, rtol=1e-5)
  assert np.all(q[:25] == 0)
  np.testing.assert_allclose(q[25:].sum(1), 1.0, atol=1e-5)
  np.testing.assert_allclose(q[100], np.full(m, 1.0 / m), atol=1e-6)  # a lone pixel is spread evenly


@pytest.mark.parametrize("iters,eps", [(1, 0.05), (3, 0.1), (5, 0.05)])
def test_matches_reference_for_other_settings(iters, eps):
  rng = np.random.RandomState(iters)
  scores = _cosine_scores(rng, 120, 4)
  seg = rng.randint(0, 3, 120)
  q = sinkhorn_knopp(jnp.asarray(scores), jnp.asarray(seg), 3, num_iters=iters, epsilon=eps)
  np.testing.assert_allclose(np.asarray(q), sinkhorn_per_class(scores, seg, 3, iters, eps),
                             atol=1e-5, rtol=1e-5)


def test_column_marginals_are_balanced_within_each_class():
  rng = np.random.RandomState(1)
  scores = _cosine_scores(rng, 200, 5)
  seg = rng.randint(0, 3, 200)
  q = np.asarray(sinkhorn_knopp(jnp.asarray(scores), jnp.asarray(seg), 3, num_iters=200))
  for c in range(3):
    n_c = (seg == c).sum()
    np.testing.assert_allclose(q[seg == c].sum(0), n_c / 5, rtol=1e-3)


def test_stable_for_small_epsilon():
  rng = np.random.RandomState(2)
  scores = _cosine_scores(rng, 64, 10)
  scores[:32, 0] = 1.0
  scores[:32, 1:] = -1.0      # exp(-2/0.01) underflows in the exp domain
  seg = np.zeros(64, np.int32)
  seg[32:] = 1
  for eps in (0.01, 0.001):
    q = np.asarray(sinkhorn_knopp(jnp.asarray(scores), jnp.asarray(seg), 2, epsilon=eps))
    assert np.all(np.isfinite(q)), eps
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-5)
  # Prototypes 1.. are far from every pixel of class 0: their columns start
  # at exp(-200) relative to prototype 0, yet Sinkhorn must still balance
  # them (the exp-domain iterations after the first must not divide by 0).
  q = np.asarray(sinkhorn_knopp(jnp.asarray(scores), jnp.asarray(seg), 2, epsilon=0.01,
                                num_iters=30))
  assert np.all(np.isfinite(q))
  np.testing.assert_allclose(q[:32].sum(0), 32 / 10, rtol=1e-3)


def test_all_ignored_gives_zeros_without_nan():
  q = sinkhorn_knopp(jnp.ones((10, 4)), jnp.full((10,), 255), 3)
  assert np.all(np.asarray(q) == 0)


def test_jit_and_bad_arguments():
  f = jax.jit(sinkhorn_knopp, static_argnums=2, static_argnames=("num_iters", "epsilon"))
  q = f(jnp.zeros((6, 3)), jnp.array([0, 0, 1, 1, 1, 9]), 2)
  np.testing.assert_allclose(np.asarray(q)[:5], 1 / 3, atol=1e-6)
  with pytest.raises(ValueError, match="num_iters"):
    sinkhorn_knopp(jnp.zeros((6, 3)), jnp.zeros(6, jnp.int32), 2, num_iters=0)
  with pytest.raises(ValueError, match="epsilon"):
    sinkhorn_knopp(jnp.zeros((6, 3)), jnp.zeros(6, jnp.int32), 2, epsilon=0.0)
  with pytest.raises(ValueError, match="segment_ids"):
    sinkhorn_knopp(jnp.zeros((6, 3)), jnp.zeros(5, jnp.int32), 2)
