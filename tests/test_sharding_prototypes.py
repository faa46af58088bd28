"""learn_prototypes and ProtoSegHead under a batch-sharded jit (8 CPU devices)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from protoseg_jax.heads import ProtoSegHead
from protoseg_jax.prototypes import learn_prototypes
from reference import l2n


def _mesh():
  assert jax.device_count() >= 8, "conftest sets 8 simulated CPU devices"
  return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:8])


def test_sharded_learn_prototypes_equals_single_device():
  rng = np.random.RandomState(0)
  c, m, d, n = 5, 4, 16, 8 * 96
  protos = l2n(rng.randn(c, m, d)).astype(np.float32)
  emb = l2n(rng.randn(n, d)).astype(np.float32)
  labels = rng.randint(0, c + 1, n)
  labels[labels == c] = 255
  logits = rng.randn(n, c).astype(np.float32)
  logits[np.arange(n)[labels != 255], labels[labels != 255]] += 1.0

  def step(p, e, lg, y, key):
    r = learn_prototypes(p, e, lg, y, gamma=0.5, assignment="gumbel", rng=key)
    return r.prototypes, r.proto_targets, r.proto_logits

  key = jax.random.key(3)
  single = jax.jit(step)(protos, emb, logits, labels, key)
  mesh = _mesh()
  row = NamedSharding(mesh, P("data"))
  rep = NamedSharding(mesh, P())
  args = (jax.device_put(protos, rep), jax.device_put(emb, row), jax.device_put(logits, row),
          jax.device_put(labels, row), key)
  sharded = jax.jit(step, out_shardings=(rep, row, row))(*args)
  assert len(args[1].sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(sharded[0]), np.asarray(single[0]), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(sharded[1]), np.asarray(single[1]))
  np.testing.assert_allclose(np.asarray(sharded[2]), np.asarray(single[2]), atol=1e-5)
  # Every device holds the same (replicated) prototypes.
  shards = [np.asarray(s.data) for s in sharded[0].addressable_shards]
  assert len(shards) == 8
  for s in shards[1:]:
    np.testing.assert_array_equal(s, shards[0])
  assert np.abs(np.asarray(single[0]) - protos).max() > 1e-3


def test_sharded_head_step_equals_single_device():
  head = ProtoSegHead(num_classes=4, num_prototypes=3, embed_dim=8, gamma=0.5)
  x = jax.random.normal(jax.random.key(0), (8, 4, 5, 12))
  y = jax.random.randint(jax.random.key(1), (8, 16, 20), 0, 5)
  y = jnp.where(y == 4, 255, y)
  v = head.init(jax.random.key(2), x)

  def step(v, x, y):
    out, mut = head.apply(v, x, y, train=True, mutable=["prototypes"],
                          rngs={"prototypes": jax.random.key(7)})
    return out.logits, mut["prototypes"]["prototypes"]

  single = jax.jit(step)(v, x, y)
  mesh = _mesh()
  rep = NamedSharding(mesh, P())
  batch = NamedSharding(mesh, P("data"))
  sharded = jax.jit(step, out_shardings=(batch, rep))(
      jax.device_put(v, rep), jax.device_put(x, batch), jax.device_put(y, batch))
  np.testing.assert_allclose(np.asarray(sharded[0]), np.asarray(single[0]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(sharded[1]), np.asarray(single[1]), atol=1e-5)
