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
    return r.prototypes, r.proto_targets, r.assignments

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
  np.testing.assert_array_equal(np.asarray(sharded[2]), np.asarray(single[2]))
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


def _per_device_reference(protos, emb, logits, labels, n_dev, gamma):
  """Plain NumPy: learn_prototypes_reference on each device's rows, then the mean."""
  from reference import learn_prototypes_reference
  ps, ts = [], []
  for e, lg, y in zip(np.split(emb, n_dev), np.split(logits, n_dev), np.split(labels, n_dev)):
    p, _, t = learn_prototypes_reference(protos, e, lg, y, gamma=gamma)
    ps.append(p)
    ts.append(t)
  return np.mean(ps, axis=0), np.concatenate(ts)


def test_per_device_mean_update_equals_numpy_per_device_loop():
  from protoseg_jax.prototypes import learn_prototypes_per_device
  rng = np.random.RandomState(1)
  c, m, d, n = 5, 4, 16, 8 * 96
  protos = l2n(rng.randn(c, m, d)).astype(np.float32)
  emb = l2n(rng.randn(n, d)).astype(np.float32)
  labels = rng.randint(0, c + 1, n)
  labels[labels == c] = 255
  labels[: 2 * 96][labels[: 2 * 96] == 3] = 1      # class 3 absent on devices 0 and 1
  logits = rng.randn(n, c).astype(np.float32)
  logits[np.arange(n)[labels != 255], labels[labels != 255]] += 1.0
  mesh = _mesh()
  row, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

  @jax.jit
  def step(p, e, lg, y):
    return learn_prototypes_per_device(mesh, "data", p, e, lg, y, gamma=0.5, assignment="argmax")

  res = step(jax.device_put(protos, rep), jax.device_put(emb, row), jax.device_put(logits, row),
             jax.device_put(labels, row))
  ref_p, ref_t = _per_device_reference(protos, emb, logits, labels, 8, 0.5)
  np.testing.assert_allclose(np.asarray(res.prototypes), ref_p, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(res.proto_targets), ref_t)
  # Not the global update (which pools the pixels of all devices).
  glob = learn_prototypes(protos, emb, logits, labels, gamma=0.5, assignment="argmax")
  assert np.abs(np.asarray(glob.prototypes) - ref_p).max() > 1e-3
  shards = [np.asarray(s.data) for s in res.prototypes.addressable_shards]
  for s in shards[1:]:
    np.testing.assert_array_equal(s, shards[0])
  # The gumbel form runs and differs per device (fold_in of the device index).
  g = jax.jit(lambda *a: learn_prototypes_per_device(mesh, "data", *a, assignment="gumbel",
                                                     rng=jax.random.key(0)))(
      protos, emb, logits, labels)
  assert np.all(np.isfinite(np.asarray(g.prototypes)))


def test_head_per_device_mean_matches_numpy_per_device_loop():
  from protoseg_jax.heads import labels_to_feature_size
  kw = dict(num_classes=4, num_prototypes=3, embed_dim=8, gamma=0.5, assignment="argmax")
  head = ProtoSegHead(**kw, prototype_update="per_device_mean")
  x = jax.random.normal(jax.random.key(0), (8, 4, 5, 12))
  y = jax.random.randint(jax.random.key(1), (8, 16, 20), 0, 5)
  y = jnp.where(y == 4, 255, y)
  v = head.init(jax.random.key(2), x)
  mesh = _mesh()
  rep, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  def step(v, x, y):
    out, mut = head.apply(v, x, y, train=True, mutable=["prototypes"])
    return out, mut["prototypes"]["prototypes"]

  args = (jax.device_put(v, rep), jax.device_put(x, batch), jax.device_put(y, batch))
  with jax.set_mesh(mesh):
    out, protos = jax.jit(step)(*args)
  out2, protos2 = jax.jit(step)(*args)   # no context mesh: all devices (8 here)
  np.testing.assert_array_equal(np.asarray(protos2), np.asarray(protos))
  # Reference from the head's own embeddings and class scores (train-mode logits).
  emb = np.asarray(out.embeddings).reshape(-1, 8)
  logits = np.asarray(out.logits).reshape(-1, 4)
  labels = np.asarray(labels_to_feature_size(y, (4, 5))).reshape(-1)
  ref_p, ref_t = _per_device_reference(np.asarray(v["prototypes"]["prototypes"]), emb, logits,
                                       labels, 8, 0.5)
  np.testing.assert_allclose(np.asarray(protos), ref_p, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out.proto_targets), ref_t)
  glob = ProtoSegHead(**kw)
  _, mut = jax.jit(lambda v, x, y: glob.apply(v, x, y, train=True, mutable=["prototypes"]))(*args)
  assert np.abs(np.asarray(mut["prototypes"]["prototypes"]) - ref_p).max() > 1e-3
