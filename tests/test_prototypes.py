import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from protoseg_jax.ops import l2_normalize
from protoseg_jax.prototypes import (contrast_terms, learn_prototypes, max_over_prototypes,
                                     prototype_similarity)
from reference import l2n, learn_prototypes_reference

C, M, D, N = 6, 4, 16, 400


def _inputs(seed, n=N, c=C, m=M, d=D):
  rng = np.random.RandomState(seed)
  protos = l2n(rng.randn(c, m, d)).astype(np.float32)
  emb = l2n(rng.randn(n, d)).astype(np.float32)
  labels = rng.randint(0, c, n)
  labels[labels == 2] = 1                  # class 2 absent
  labels[rng.rand(n) < 0.15] = 255         # ignored pixels
  labels[labels == 4] = 3
  labels[7] = 4                            # class 4: a single pixel
  logits = rng.randn(n, c).astype(np.float32)
  # Make most pixels correctly classified, but not all.
  good = rng.rand(n) < 0.7
  valid = labels != 255
  logits[np.nonzero(good & valid)[0], labels[good & valid]] += 10.0
  logits[7, 4] += 10.0
  return protos, emb, logits, labels


def _run(protos, emb, logits, labels, **kw):
  kw.setdefault("assignment", "argmax")
  return learn_prototypes(jnp.asarray(protos), jnp.asarray(emb), jnp.asarray(logits),
                          jnp.asarray(labels), **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_argmax_mode_matches_per_class_reference(seed):
  protos, emb, logits, labels = _inputs(seed)
  # gamma far from 1 so that an update error would show at 1e-5.
  res = _run(protos, emb, logits, labels, gamma=0.5)
  ref_p, ref_sim, ref_t = learn_prototypes_reference(protos, emb, logits, labels, gamma=0.5)
  np.testing.assert_allclose(np.asarray(res.prototypes), ref_p, atol=1e-5)
  np.testing.assert_allclose(np.asarray(prototype_similarity(jnp.asarray(emb), jnp.asarray(protos))),
                             ref_sim, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(res.proto_targets), ref_t)
  # Something did move, and the absent class did not.
  assert np.abs(np.asarray(res.prototypes) - protos).max() > 1e-2
  np.testing.assert_allclose(np.asarray(res.prototypes)[2], protos[2], atol=1e-6)


def test_no_correct_prediction_changes_nothing_but_targets():
  protos, emb, logits, labels = _inputs(3)
  wrong = np.where(labels == 255, 0, (labels + 1) % C)
  logits = np.eye(C, dtype=np.float32)[wrong] * 10
  res = _run(protos, emb, logits, labels, gamma=0.5)
  ref_p, _, ref_t = learn_prototypes_reference(protos, emb, logits, labels, gamma=0.5)
  np.testing.assert_allclose(np.asarray(res.prototypes), protos, atol=1e-6)
  np.testing.assert_allclose(ref_p, protos, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(res.proto_targets), ref_t)
  assert int(res.counts.sum()) == 0


def test_given_similarity_is_used_as_is():
  protos, emb, logits, labels = _inputs(4)
  sim = prototype_similarity(jnp.asarray(emb), jnp.asarray(protos))
  a = _run(protos, emb, logits, labels)
  b = _run(protos, emb, logits, labels, similarity=sim)
  np.testing.assert_allclose(np.asarray(a.prototypes), np.asarray(b.prototypes), atol=1e-7)
  with pytest.raises(ValueError, match="similarity"):
    _run(protos, emb, logits, labels, similarity=sim[:, :-1])


def test_gumbel_is_deterministic_per_rng_and_targets_use_argmax():
  protos, emb, logits, labels = _inputs(5)
  k1, k2 = jax.random.key(1), jax.random.key(2)
  a = _run(protos, emb, logits, labels, assignment="gumbel", rng=k1, gamma=0.5)
  a2 = _run(protos, emb, logits, labels, assignment="gumbel", rng=k1, gamma=0.5)
  b = _run(protos, emb, logits, labels, assignment="gumbel", rng=k2, gamma=0.5)
  det = _run(protos, emb, logits, labels, gamma=0.5)
  np.testing.assert_array_equal(np.asarray(a.prototypes), np.asarray(a2.prototypes))
  assert not np.array_equal(np.asarray(a.assignments), np.asarray(b.assignments))
  assert np.abs(np.asarray(a.prototypes) - np.asarray(b.prototypes)).max() > 1e-3
  # Targets always come from the Sinkhorn argmax, whatever the update used.
  for r in (a, b):
    np.testing.assert_array_equal(np.asarray(r.proto_targets), np.asarray(det.proto_targets))
  # With M = 10 and Q in [0, 1], Gumbel noise overrides the argmax most of the time.
  valid = labels != 255
  agree = np.mean(np.asarray(a.assignments)[valid] == np.asarray(det.assignments)[valid])
  assert agree < 0.9
  with pytest.raises(ValueError, match="rng"):
    _run(protos, emb, logits, labels, assignment="gumbel")


def test_gumbel_assignment_has_the_distribution_of_argmax_q_plus_gumbel_noise():
  from protoseg_jax.prototypes import sample_gumbel_argmax
  row = np.array([0.0, 0.1, 0.5, 0.9, 0.2, 0.0], np.float32)
  n = 60000
  idx = np.asarray(sample_gumbel_argmax(jax.random.key(3), jnp.tile(jnp.asarray(row), (n, 1))))
  assert idx.min() >= 0 and idx.max() < row.size
  freq = np.bincount(idx, minlength=row.size) / n
  # The official draw, written out: argmax over q + explicit Gumbel(0, 1) noise.
  g = np.random.RandomState(0).gumbel(size=(n, row.size))
  official = np.bincount(np.argmax(row + g, 1), minlength=row.size) / n
  softmax = np.exp(row) / np.exp(row).sum()
  tol = 5 * np.sqrt(softmax * (1 - softmax) / n)   # 5 standard errors
  assert np.all(np.abs(freq - softmax) < tol), (freq, softmax)
  assert np.all(np.abs(official - softmax) < tol), (official, softmax)
  # Rows with different q are sampled from their own distribution.
  q = jnp.asarray(np.stack([np.eye(4)[i % 4] * 30 for i in range(4000)]).astype(np.float32))
  np.testing.assert_array_equal(np.asarray(sample_gumbel_argmax(jax.random.key(0), q)),
                                np.arange(4000) % 4)


def test_gradients_reach_embeddings_not_prototypes():
  protos, emb, logits, labels = _inputs(6)

  def loss(p, e):
    sim = prototype_similarity(e, p)
    res = learn_prototypes(p, e, jnp.asarray(logits), jnp.asarray(labels), assignment="argmax",
                           similarity=sim)
    lse, target = contrast_terms(sim, res.proto_targets)
    return jnp.sum(lse) + jnp.sum(target) + jnp.sum(res.prototypes)

  gp, ge = jax.grad(loss, argnums=(0, 1))(jnp.asarray(protos), jnp.asarray(emb))
  assert np.all(np.asarray(gp) == 0)
  assert np.abs(np.asarray(ge)).max() > 0.1


def test_unit_norm_and_all_ignored_batch():
  protos, emb, logits, labels = _inputs(7)
  res = _run(protos, emb, logits, labels, gamma=0.0)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(res.prototypes), axis=-1), 1.0, atol=1e-6)
  ignored = np.full_like(labels, 255)
  for mode in ("argmax", "gumbel"):
    res = _run(protos, emb, logits, ignored, assignment=mode, rng=jax.random.key(0))
    p = np.asarray(res.prototypes)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, protos, atol=1e-6)
    assert np.all(np.asarray(res.proto_targets) == -1)


def _jaxpr_size(c):
  protos, emb, logits, labels = _inputs(0, n=64, c=c, m=M)
  labels = np.where(labels >= c, 255, labels)

  def f(p, e, lg, y):
    return learn_prototypes(p, e, lg, y, assignment="gumbel", rng=jax.random.key(0))

  jaxpr = jax.make_jaxpr(f)(protos, emb, logits, labels)
  n_eqns = 0
  stack = [jaxpr.jaxpr]
  while stack:  # count equations including those inside loops
    j = stack.pop()
    n_eqns += len(j.eqns)
    for eqn in j.eqns:
      for v in eqn.params.values():
        if hasattr(v, "jaxpr"):
          stack.append(v.jaxpr if hasattr(v.jaxpr, "eqns") else v.jaxpr.jaxpr)
  return n_eqns


def test_traced_program_does_not_grow_with_classes():
  assert _jaxpr_size(19) == _jaxpr_size(150)
  assert _jaxpr_size(19) < 200


def test_bad_arguments_are_named():
  protos, emb, logits, labels = _inputs(0)
  with pytest.raises(ValueError, match="assignment"):
    _run(protos, emb, logits, labels, assignment="softmax")
  with pytest.raises(ValueError, match="logits"):
    _run(protos, emb, logits[:, :-1], labels)
  with pytest.raises(ValueError, match="embeddings"):
    _run(protos, emb[:, :-1], logits, labels)


def test_correctness_check_breaks_ties_like_torch_max():
  from protoseg_jax.prototypes import _argmax_equals
  rng = np.random.RandomState(0)
  logits = rng.randint(0, 3, (500, 6)).astype(np.float32)   # many ties
  idx = rng.randint(0, 6, 500)
  got = np.asarray(_argmax_equals(jnp.asarray(logits), jnp.asarray(idx)))
  np.testing.assert_array_equal(got, np.argmax(logits, 1) == idx)


def test_targets_of_a_large_vocabulary_reach_255_and_ignored_are_minus_one():
  # C*M = 300 > 255: "class 25, prototype 5" is target 255, a real prototype.
  c, m, d = 30, 10, 8
  protos, emb, logits, labels = _inputs(11, n=2000, c=c, m=m, d=d)
  labels = np.random.RandomState(11).randint(0, c, 2000)
  labels[::7] = 255
  res = _run(protos, emb, logits, labels)
  _, _, ref_t = learn_prototypes_reference(protos, emb, logits, labels)
  t = np.asarray(res.proto_targets)
  np.testing.assert_array_equal(t, ref_t)
  np.testing.assert_array_equal(t == -1, labels == 255)
  assert np.any(t == 255)
  np.testing.assert_array_equal(t[labels != 255] // m, labels[labels != 255])


def test_max_over_prototypes_value_and_gradient():
  # Value: jnp.max exactly. Gradient: one-hot at the maximum (NumPy), split
  # evenly among tied maxima as torch.amax does; equal to jnp.max's.
  rng = np.random.RandomState(3)
  sim = rng.uniform(-1, 1, size=(50, C, M)).astype(np.float32)
  sim[0, 0] = [0.5, 0.9, 0.9, 0.1]                         # a tie at m = 1, 2
  g = rng.randn(50, C).astype(np.float32)
  got = max_over_prototypes(jnp.asarray(sim))
  np.testing.assert_array_equal(np.asarray(got), sim.max(-1))
  grad = np.asarray(jax.grad(lambda x: jnp.sum(max_over_prototypes(x) * g))(jnp.asarray(sim)))
  hit = sim == sim.max(-1, keepdims=True)
  want = np.where(hit, (g / hit.sum(-1))[..., None], 0.0).astype(np.float32)
  np.testing.assert_allclose(grad, want, rtol=1e-6, atol=0)
  assert grad[0, 0, 1] == grad[0, 0, 2] == np.float32(g[0, 0] / 2)
  ref = np.asarray(jax.grad(lambda x: jnp.sum(jnp.max(x, -1) * g))(jnp.asarray(sim)))
  np.testing.assert_allclose(grad, ref, rtol=1e-6, atol=0)
  # The official op.
  ts = torch.tensor(sim, requires_grad=True)
  (torch.amax(ts, dim=-1) * torch.tensor(g)).sum().backward()
  np.testing.assert_allclose(grad, ts.grad.numpy(), rtol=1e-6, atol=0)
