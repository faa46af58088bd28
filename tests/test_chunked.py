"""Large vocabularies: the class-chunked ProtoSeg head and the row-blocked CE
equal the all-at-once forms (losses, every gradient leaf, updated prototypes,
targets), and with chunks no [N, C*M] similarity / [B, H, W, C] upsampled
logits is formed."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protoseg_jax import heads, losses, prototypes, sharding, train
from protoseg_jax.heads import ProtoSegHead
from protoseg_jax.models.segmentor import build_model

C, M, D = 7, 3, 8
TOL = 1e-5


def _data(seed=0, b=2, h=6, w=5, c=C):
  rng = np.random.default_rng(seed)
  feats = jnp.asarray(rng.normal(size=(b, h, w, 12)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, c, size=(b, 2 * h, 2 * w)), jnp.int32)
  return feats, labels.at[0, :2].set(255)          # some ignored pixels


def _head_step(chunk, feats, labels, *, variables=None, rng=None, train_prototypes=False,
               dtype=jnp.float32, **kw):
  """(loss, parts, prototypes after the update, proto_targets, grads of params, grads
  of prototypes) of one train-mode call of a ProtoSegHead with `class_chunk=chunk`."""
  head = ProtoSegHead(C, num_prototypes=M, embed_dim=D, class_chunk=chunk, dtype=dtype, **kw)
  v = variables if variables is not None else head.init(jax.random.key(0), feats)
  temperature = kw.get("ppc_temperature", 1.0)

  def loss(params, protos):
    out, upd = head.apply({"params": params, "prototypes": protos}, feats, labels, train=True,
                          mutable=["prototypes"], rngs={"prototypes": rng or jax.random.key(5)},
                          train_prototypes=train_prototypes)
    total, parts = losses.protoseg_loss(
        out.logits, labels, proto_targets=out.proto_targets, proto_lse=out.proto_lse,
        proto_target_logits=out.proto_target_logits, ppc_temperature=temperature)
    return total, (parts, upd["prototypes"], out.proto_targets, out)

  (total, (parts, protos, targets, out)), (gp, gq) = jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True)(v["params"], v["prototypes"])
  return total, parts, protos, targets, gp, gq, out


def _assert_same(ref, got, tol=TOL):
  total, parts, protos, targets, gp, gq, _ = ref
  total2, parts2, protos2, targets2, gp2, gq2, _ = got
  np.testing.assert_allclose(total2, total, rtol=tol, atol=tol)
  for k in parts:
    np.testing.assert_allclose(parts2[k], parts[k], rtol=tol, atol=tol, err_msg=k)
  np.testing.assert_array_equal(targets2, targets)
  for a, b in zip(jax.tree.leaves((protos, gp, gq)), jax.tree.leaves((protos2, gp2, gq2))):
    np.testing.assert_allclose(b, a, rtol=tol, atol=tol)


@pytest.mark.parametrize("assignment", ["argmax", "gumbel"])
@pytest.mark.parametrize("chunk", [1, 2, 3])           # 3 does not divide C = 7: padded classes
def test_chunked_head_equals_all_at_once(chunk, assignment):
  feats, labels = _data()
  ref = _head_step(C, feats, labels, assignment=assignment)
  got = _head_step(chunk, feats, labels, assignment=assignment)
  assert ref[6].proto_lse.shape == ref[6].proto_target_logits.shape == (2 * 6 * 5,)
  assert got[6].proto_lse.shape == got[6].proto_target_logits.shape == (2 * 6 * 5,)
  _assert_same(ref, got)
  np.testing.assert_allclose(got[6].logits, ref[6].logits, atol=TOL)


def test_chunked_head_with_a_ppc_temperature_warm_up_gradient_and_frozen_prototypes():
  feats, labels = _data(1)
  for kw in ({"ppc_temperature": 0.1}, {"update_prototype": False}):
    _assert_same(_head_step(C, feats, labels, **kw), _head_step(3, feats, labels, **kw))
  # pretrain_prototype: the class scores' gradient reaches the prototypes.
  ref = _head_step(C, feats, labels, train_prototypes=True)
  got = _head_step(2, feats, labels, train_prototypes=True)
  assert float(jnp.max(jnp.abs(ref[5]["prototypes"]))) > 0
  _assert_same(ref, got)


def test_chunked_head_in_bfloat16():
  feats, labels = _data(2)
  ref = _head_step(C, feats, labels, dtype=jnp.bfloat16)
  got = _head_step(3, feats, labels, dtype=jnp.bfloat16)
  _assert_same(ref, got, tol=2e-5)


def test_chunked_per_device_mean_update_equals_all_at_once():
  """prototype_update='per_device_mean' (a shard_map over the data axis) with chunks."""
  mesh = sharding.create_mesh(jax.devices()[:4])
  feats, labels = _data(3, b=4)
  with jax.set_mesh(mesh):
    step = lambda chunk: jax.jit(functools.partial(
        _head_step, chunk, prototype_update="per_device_mean"))(feats, labels)
    ref, got = step(C), step(3)
    # The shard_map takes each device's own-class similarities, not the whole one.
    n = 4 * 6 * 5
    per_device = lambda chunk: _shapes(jax.make_jaxpr(lambda f: _head_step(
        chunk, f, labels, prototype_update="per_device_mean")[:6])(feats).jaxpr)
    assert (n, C * M) in per_device(C) and (n, C * M) not in per_device(3)
  _assert_same(ref, got)


def test_resolve_class_chunk_rule():
  r = prototypes.resolve_class_chunk
  assert r(0, 65536, 150, 10) == 150                 # 393 MB: all at once, today's program
  assert r(0, 262144, 171, 10) == 171                # COCO-Stuff at 16 x 512x512: 1.8 GB
  k = r(0, 65536, 10000, 10)                         # 26 GB: chunks of ~256 MiB
  assert 90 <= k <= 103 and -(-10000 // k) * k - 10000 < k
  assert r(5, 100, 7, 3) == 5 and r(50, 100, 7, 3) == 7
  with pytest.raises(ValueError):
    r(-1, 100, 7, 3)


def _shapes(jaxpr) -> set:
  """Every intermediate shape of a (closed) jaxpr, sub-jaxprs included."""
  out = set()
  for eqn in jaxpr.eqns:
    out |= {tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")}
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (list, tuple)) else [p]):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          out |= _shapes(inner)
  return out


def test_with_chunks_no_similarity_of_all_classes_is_formed():
  feats, labels = _data(4)
  n = 2 * 6 * 5
  for chunk, present in ((C, True), (2, False)):
    jaxpr = jax.make_jaxpr(lambda f: _head_step(chunk, f, labels)[:6])(feats)
    shapes = _shapes(jaxpr.jaxpr)
    assert ((n, C * M) in shapes) == present, chunk
    if not present:
      assert (n, 2 * M) in shapes                    # one chunk's similarity


# ---------------------------------------------------------------------------
# The CE at label resolution, a block of rows at a time (both heads).


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_blockwise_cross_entropy_equals_segmentation_loss(align_corners, weighted):
  rng = np.random.default_rng(5)
  logits = jnp.asarray(rng.normal(size=(2, 5, 7, 6)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 6, size=(2, 19, 26)), jnp.int32).at[:, :3].set(255)
  weights = tuple(rng.uniform(0.5, 2, 6)) if weighted else None
  f = lambda x, rows: losses.segmentation_loss(x, labels, class_weights=weights,
                                               align_corners=align_corners, label_rows=rows)
  ref, g_ref = jax.value_and_grad(f)(logits, 0)                  # small: all at once
  for rows in (1, 4, 7):                                         # 4, 7 do not divide 19
    got, g = jax.value_and_grad(f)(logits, rows)
    np.testing.assert_allclose(got, ref, rtol=TOL)
    np.testing.assert_allclose(g, g_ref, atol=1e-8)
  jaxpr = jax.make_jaxpr(lambda x: jax.grad(f)(x, 4))(logits)
  assert (2, 19, 26, 6) not in _shapes(jaxpr.jaxpr)
  assert losses.resolve_label_rows(0, 16, 512, 512, 150) == 512    # ADE20K: 2.3 GiB, all at once
  assert losses.resolve_label_rows(0, 16, 512, 512, 847) < 512      # ADE20K-Full: 14 GiB, blocks
  assert losses.resolve_label_rows(0, 16, 256, 256, 10000) < 256


# ---------------------------------------------------------------------------
# The whole train step (the tests' plumbing segmentor): chunked == all at once.


@pytest.mark.parametrize("head", ["proto", "linear"])
def test_train_step_with_chunks_equals_all_at_once(tiny_config, tmp_path, head):
  results = []
  for chunk, rows in ((0, 0), (4, 5)):                # 4 of 6 classes, 5 of 64 label rows
    config = tiny_config(str(tmp_path), plumbing=True, **{
        "protoseg.class_chunk": chunk, "loss.label_rows": rows, "model.head": head,
        "dataset.held_out_class": 3})
    model = build_model(config, 5)                    # held out: 5 of the 6 classes
    mesh = sharding.create_mesh(jax.devices()[:1])
    state, tx, schedule = train.create_train_state(config, model, mesh, (1, 64, 64, 3))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(2, 64, 64, 3)), jnp.float32),
             "label": jnp.asarray(rng.choice([0, 1, 2, 3, 4, 255], (2, 64, 64)), jnp.int32)}
    step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, schedule=schedule,
                                     config=config))
    results.append(jax.device_get(step(state, batch)))
  (s0, m0), (s1, m1) = results
  for k in m0:
    np.testing.assert_allclose(m1[k], m0[k], rtol=TOL, atol=TOL, err_msg=k)
  for a, b in zip(jax.tree.leaves((s0.params, s0.prototypes, s0.batch_stats)),
                  jax.tree.leaves((s1.params, s1.prototypes, s1.batch_stats))):
    np.testing.assert_allclose(b, a, rtol=TOL, atol=TOL)


def test_an_added_class_scores_the_same_chunked():
  """heads.add_class appends a class; the bigger model's chunked scores equal its
  all-at-once ones."""
  feats, labels = _data(6)
  head = ProtoSegHead(C, num_prototypes=M, embed_dim=D)
  v = head.init(jax.random.key(0), feats)
  emb = heads.head_embeddings(head, v, feats).reshape(-1, D)
  added = heads.add_class(v, emb[:20], num_prototypes=M)
  outs = [ProtoSegHead(C + 1, num_prototypes=M, embed_dim=D, class_chunk=k).apply(added, feats)
          for k in (C + 1, 3)]
  np.testing.assert_allclose(outs[1].logits, outs[0].logits, atol=TOL)


def test_16bit_labels_train_pipeline_pieces():
  """Datasets of more than 255 classes store 16-bit labels (ADE20K-Full: 847,
  ignore 65535): the crop retries count ids above 255 and the held-out map
  keeps them."""
  import tensorflow as tf
  from protoseg_jax import held_out
  from protoseg_jax.trainer import augment
  crop = np.full((4, 4), 300, np.uint16)
  crop[0, 0] = 846
  # One class (300) fills 15 of 16 labelled pixels: not acceptable at 0.75; with
  # the old 256-bin count ids 300 and 846 counted nowhere.
  assert not bool(augment.crop_is_acceptable(tf.constant(crop), 0.75, 65535, num_classes=847))
  crop[:2] = 65535                                  # ignored: 7 of 8 labelled are still 300
  assert not bool(augment.crop_is_acceptable(tf.constant(crop), 0.75, 65535, num_classes=847))
  crop[2:, :2] = 5
  assert bool(augment.crop_is_acceptable(tf.constant(crop), 0.75, 65535, num_classes=847))
  lut = held_out.label_lut(held_out.model_class_ids(847, 300), 65535, 65536)
  assert lut[299] == 299 and lut[300] == 65535 and lut[846] == 845 and lut[65535] == 65535
