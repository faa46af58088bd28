"""heads.add_class: a new class from support pixels, no retraining (issue 11, part 5)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protoseg_jax import heads, train
from protoseg_jax.heads import ProtoSegHead, add_class, cluster_support
from protoseg_jax.models.segmentor import build_model
from protoseg_jax.ops import l2_normalize

from conftest import random_variables

C, M, D, DIN = 4, 3, 8, 12


def _head_variables(seed=0):
  head = ProtoSegHead(num_classes=C, num_prototypes=M, embed_dim=D)
  v = head.init(jax.random.key(seed), jnp.zeros((1, 2, 2, DIN)))
  v = jax.tree.map(np.asarray, v)
  # A "trained" mask_norm: distinct per-class scale/bias.
  mn = v["params"]["mask_norm"]
  mn["scale"] = np.linspace(0.8, 1.4, C).astype(np.float32)
  mn["bias"] = np.linspace(-0.2, 0.3, C).astype(np.float32)
  return v


def _scores(v, emb):
  """The head's retrieval (PROTOSEG.md): cosine, max over M, mask_norm LayerNorm."""
  p = np.asarray(l2_normalize(v["prototypes"]["prototypes"]))
  s = np.einsum("nd,cmd->ncm", np.asarray(emb), p).max(-1)
  mu, var = s.mean(-1, keepdims=True), s.var(-1, keepdims=True)
  mn = v["params"]["mask_norm"]
  return (s - mu) / np.sqrt(var + 1e-5) * np.asarray(mn["scale"]) + np.asarray(mn["bias"])


def _far_direction(protos, seed=0):
  """A unit direction whose best cosine to every existing prototype is low."""
  p = np.asarray(protos).reshape(-1, protos.shape[-1])
  cands = np.asarray(l2_normalize(jax.random.normal(jax.random.key(seed), (512, p.shape[-1]))))
  return cands[np.argmin((cands @ p.T).max(-1))]


def _support(direction, n=60, noise=0.15, seed=1):
  e = direction + noise * np.random.RandomState(seed).randn(n, direction.shape[0])
  return np.asarray(l2_normalize(jnp.asarray(e, jnp.float32)))


def _assert_same_except(old, new, changed):
  """Every leaf of `old` equal in bits to `new`'s, except paths in `changed`
  (compared on their old part)."""
  flat_new = dict(jax.tree_util.tree_flatten_with_path(new)[0])
  flat_old = jax.tree_util.tree_flatten_with_path(old)[0]
  assert len(flat_new) == len(flat_old)
  for path, a in flat_old:
    b = np.asarray(flat_new[path])
    a = np.asarray(a)
    key = jax.tree_util.keystr(path)
    if any(c in key for c in changed):
      # The class axis: first for prototypes, last for mask_norm / aux_head.
      axis = 0 if "'prototypes'" in key else -1
      assert b.shape[axis] == a.shape[axis] + 1, key
      np.testing.assert_array_equal(np.take(b, np.arange(a.shape[axis]), axis=axis), a,
                                    err_msg=key)
    else:
      assert a.shape == b.shape and a.dtype == b.dtype, key
      np.testing.assert_array_equal(b, a, err_msg=key)


def test_add_class_appends_and_keeps_everything_else():
  v = _head_variables()
  sup = _support(_far_direction(v["prototypes"]["prototypes"]))
  new = add_class(v, sup, num_prototypes=M)
  protos = np.asarray(new["prototypes"]["prototypes"])
  assert protos.shape == (C + 1, M, D)
  np.testing.assert_allclose(np.linalg.norm(protos[C], axis=-1), 1.0, atol=1e-6)
  _assert_same_except(v, new, changed=("'prototypes'", "'mask_norm'"))
  mn = new["params"]["mask_norm"]
  assert mn["scale"].shape == mn["bias"].shape == (C + 1,)
  # The documented default: the mean of the existing classes' entries.
  np.testing.assert_allclose(mn["scale"][C], v["params"]["mask_norm"]["scale"].mean(), rtol=1e-6)
  np.testing.assert_allclose(mn["bias"][C], v["params"]["mask_norm"]["bias"].mean(), rtol=1e-6)
  explicit = add_class(v, sup, num_prototypes=M, mask_norm_scale=2.0, mask_norm_bias=-1.0)
  assert float(explicit["params"]["mask_norm"]["scale"][C]) == 2.0
  assert float(explicit["params"]["mask_norm"]["bias"][C]) == -1.0
  # The input is not modified.
  assert v["prototypes"]["prototypes"].shape == (C, M, D)


def test_new_class_predicted_on_its_support_and_old_classes_kept_elsewhere():
  v = _head_variables()
  protos = np.asarray(l2_normalize(v["prototypes"]["prototypes"]))
  far = _far_direction(protos)
  sup = _support(far)
  # Before: the support pixels are closer to the far direction than to any
  # existing prototype, but some old class still wins them.
  assert (_scores(v, sup).argmax(-1) < C).all()
  new = add_class(v, sup, num_prototypes=M)
  assert (_scores(new, sup).argmax(-1) == C).all()
  # Pixels sitting on an old prototype still go to their old class.
  on_old = protos[:, 0, :]
  assert (_scores(new, on_old).argmax(-1) == np.arange(C)).all()
  # The numpy retrieval above is the head's: check it against ProtoSegHead.
  head = ProtoSegHead(num_classes=C + 1, num_prototypes=M, embed_dim=D)
  x = jax.random.normal(jax.random.key(3), (1, 2, 3, DIN))
  out = head.apply(new, x)
  np.testing.assert_allclose(np.asarray(out.logits).reshape(-1, C + 1),
                             _scores(new, out.embeddings.reshape(-1, D)), atol=2e-5)


def test_cluster_support_finds_separated_modes():
  dirs = np.eye(D, dtype=np.float32)[:M]
  sup = np.concatenate([_support(d, n=40, noise=0.05, seed=i) for i, d in enumerate(dirs)])
  p = np.asarray(cluster_support(sup, M))
  assert p.shape == (M, D)
  # Each mode gets exactly one prototype.
  match = (p @ dirs.T).argmax(-1)
  assert sorted(match.tolist()) == list(range(M))
  assert (p @ dirs.T).max(-1).min() > 0.95
  # Fewer support pixels than prototypes: still M unit prototypes.
  few = np.asarray(cluster_support(sup[:2], M))
  np.testing.assert_allclose(np.linalg.norm(few, axis=-1), 1.0, atol=1e-6)


def test_add_class_checks_shapes():
  v = _head_variables()
  with pytest.raises(ValueError, match="num_prototypes"):
    add_class(v, np.ones((5, D), np.float32), num_prototypes=M + 1)
  with pytest.raises(ValueError, match="support_embeddings"):
    add_class(v, np.ones((5, D + 1), np.float32), num_prototypes=M)


@pytest.mark.parametrize("aux_head", [False, True])
def test_add_class_to_tiny_segmentor(tmp_path, tiny_config, aux_head):
  config = tiny_config(tmp_path, **{"model.aux_head": aux_head})
  m = config.protoseg.num_prototypes
  model = build_model(config, C)
  v = random_variables(train.abstract_variables(config, model))
  images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  labels = np.zeros((2, 64, 64), np.int32)
  labels[0, 16:48, 8:40] = C            # the new class: a square of image 0

  # head_embeddings reads the head's embeddings without changing the outputs.
  emb = heads.head_embeddings(model, v, images)
  assert emb.shape[-1] == config.protoseg.embed_dim
  np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=-1), 1.0, atol=1e-5)
  sup = heads.support_embeddings(model, v, images, labels, C)
  h, w = emb.shape[1:3]
  y = np.asarray(heads.labels_to_feature_size(jnp.asarray(labels), (h, w)))
  assert sup.shape == ((y == C).sum(), emb.shape[-1]) and sup.shape[0] > 0

  new = add_class(v, sup, num_prototypes=m, sinkhorn_iters=config.protoseg.sinkhorn_iters,
                  sinkhorn_epsilon=config.protoseg.sinkhorn_epsilon)
  assert new["prototypes"]["head"]["prototypes"].shape == (C + 1, m, config.protoseg.embed_dim)
  changed = ("'prototypes'", "'mask_norm'", "'aux_head'")
  _assert_same_except(v, new, changed)
  if aux_head:
    k = np.asarray(new["params"]["aux_head"]["classifier"]["kernel"])
    assert k.shape[-1] == C + 1 and not k[..., C].any()

  model1 = build_model(config, C + 1)
  out = model1.apply(new, images, train=False)
  assert out.logits.shape[-1] == C + 1
  pred = np.asarray(out.logits.argmax(-1))
  # An untrained network's embeddings are all alike, so other pixels may be
  # taken too; the support pixels must be.
  assert (pred[y == C] == C).mean() >= 0.95
  # The embeddings do not depend on the class count.
  np.testing.assert_array_equal(np.asarray(heads.head_embeddings(model1, new, images)),
                                np.asarray(emb))


def test_add_class_from_support_dir(tmp_path, tiny_config):
  """The CLI's pieces (protoseg_jax/add_class.py) on a fresh tiny model."""
  from PIL import Image
  from protoseg_jax import add_class as cli
  from protoseg_jax.trainer.cli import ArgumentError
  config = tiny_config(tmp_path)
  model = build_model(config, C)
  v = random_variables(train.abstract_variables(config, model))
  sup = tmp_path / "support"
  sup.mkdir()
  rs = np.random.RandomState(0)
  for i, value in enumerate((1, 255)):   # a 0/1 and a 0/255 mask: any value > 0 is the class
    Image.fromarray(rs.randint(0, 255, (48, 64, 3), np.uint8)).save(sup / f"s{i}.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[8:40, 16:48] = value
    Image.fromarray(mask).save(sup / f"s{i}_mask.png")
    np.testing.assert_array_equal(cli.read_mask(str(sup / f"s{i}_mask.png")), mask > 0)
  pairs = cli.list_support(str(sup))
  assert [os.path.basename(p) for p, _ in pairs] == ["s0.png", "s1.png"]
  new, n = cli.add_class_from_support(config, model, v, pairs)
  assert n > 0
  assert new["prototypes"]["head"]["prototypes"].shape[0] == C + 1
  _assert_same_except(v, new, ("'prototypes'", "'mask_norm'"))
  (sup / "s1.png").unlink()
  with pytest.raises(ArgumentError, match="s1"):
    cli.list_support(str(sup))
