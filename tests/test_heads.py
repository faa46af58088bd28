import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protoseg_jax.heads import HeadOutput, LinearHead, ProtoSegHead

B, H, W, DIN, C, M, D = 2, 5, 7, 12, 4, 3, 8


def _x(seed=0):
  return jax.random.normal(jax.random.key(seed), (B, H, W, DIN))


def _labels(seed=1):
  y = np.random.RandomState(seed).randint(0, C + 1, (B, 4 * H, 4 * W))
  return jnp.asarray(np.where(y == C, 255, y))


def _official_head_forward(variables, x_nhwc, width_quirk, feat_norm=True):
  """The official HRNet_W48_Proto head (after cls_head) in PyTorch, NCHW
  (feat_norm=False: without its feat_norm LayerNorm)."""
  p = jax.tree.map(lambda a: torch.from_numpy(np.asarray(a)), variables["params"])
  protos = torch.from_numpy(np.asarray(variables["prototypes"]["prototypes"]))
  x = torch.from_numpy(np.asarray(x_nhwc)).permute(0, 3, 1, 2)
  conv = lambda t, q: F.conv2d(t, q["kernel"].permute(3, 2, 0, 1), q["bias"])
  c = conv(F.relu(conv(x, p["proj_conv1"])), p["proj_conv2"])
  c = F.normalize(c, p=2, dim=-1 if width_quirk else 1)
  b, d, h, w = c.shape
  _c = c.permute(0, 2, 3, 1).reshape(-1, d)
  if feat_norm:
    _c = F.layer_norm(_c, (d,), p["feat_norm"]["scale"], p["feat_norm"]["bias"], 1e-5)
  _c = F.normalize(_c, p=2, dim=-1)
  protos = F.normalize(protos, p=2, dim=-1)
  masks = torch.einsum("nd,kmd->nmk", _c, protos)
  out = torch.amax(masks, dim=1)
  out = F.layer_norm(out, (protos.shape[0],), p["mask_norm"]["scale"], p["mask_norm"]["bias"], 1e-5)
  return out.reshape(b, h, w, -1).numpy()


@pytest.mark.parametrize("axis", ["channel", "width"])
def test_forward_matches_official_head(axis):
  head = ProtoSegHead(num_classes=C, num_prototypes=M, embed_dim=D, proj_norm_axis=axis)
  x = _x()
  v = head.init(jax.random.key(0), x)
  # Non-trivial norm parameters so that the check covers them.
  v = jax.tree_util.tree_map_with_path(
      lambda path, a: a + 0.3 * jax.random.normal(jax.random.key(len(str(path))), a.shape)
      if "norm" in str(path) else a, v)
  out = head.apply(v, x)
  assert out.logits.shape == (B, H, W, C) and out.proto_lse is None
  np.testing.assert_allclose(np.asarray(out.logits), _official_head_forward(v, x, axis == "width"),
                             atol=2e-5)


def test_without_feat_norm_is_the_official_head_minus_that_layer():
  """protoseg.use_feat_norm=False (issue 20's switch): no feat_norm params, and
  the logits are the official head's with its feat_norm LayerNorm removed."""
  head = ProtoSegHead(num_classes=C, num_prototypes=M, embed_dim=D, use_feat_norm=False)
  x = _x(3)
  v = head.init(jax.random.key(0), x)
  assert "feat_norm" not in v["params"] and "mask_norm" in v["params"]
  v = jax.tree.map(lambda a: a + 0.2, v)
  np.testing.assert_allclose(np.asarray(head.apply(v, x).logits),
                             _official_head_forward(v, x, False, feat_norm=False),
                             atol=5e-4)   # mask_norm divides by the small spread of 4 cosines


def test_width_quirk_changes_logits():
  x = _x()
  a = ProtoSegHead(num_classes=C, num_prototypes=M, embed_dim=D)
  b = ProtoSegHead(num_classes=C, num_prototypes=M, embed_dim=D, proj_norm_axis="width")
  v = a.init(jax.random.key(0), x)
  assert np.abs(np.asarray(a.apply(v, x).logits - b.apply(v, x).logits)).max() > 1e-4


def test_prototypes_variable_and_init():
  head = ProtoSegHead(num_classes=C, num_prototypes=M, embed_dim=D)
  v = head.init(jax.random.key(0), _x())
  p = np.asarray(v["prototypes"]["prototypes"])
  assert p.shape == (C, M, D)
  np.testing.assert_allclose(np.linalg.norm(p, axis=-1), 1.0, atol=1e-6)
  assert "prototypes" not in v["params"]
  assert set(v["params"]) == {"proj_conv1", "proj_conv2", "feat_norm", "mask_norm"}
  no_mask_norm = ProtoSegHead(num_classes=C, num_prototypes=M, use_mask_norm=False)
  assert "mask_norm" not in no_mask_norm.init(jax.random.key(0), _x())["params"]


def test_learning_only_with_labels_and_mutable_collection():
  head = ProtoSegHead(num_classes=C, num_prototypes=M, embed_dim=D, gamma=0.5, assignment="argmax")
  x, y = _x(), _labels()
  v = head.init(jax.random.key(0), x)
  # Immutable prototypes or no labels: pure inference.
  out = head.apply(v, x, y, train=True)
  assert out.proto_targets is None and out.proto_lse is None and out.proto_target_logits is None
  out, mut = head.apply(v, x, train=True, mutable=["prototypes"])
  np.testing.assert_array_equal(np.asarray(mut["prototypes"]["prototypes"]),
                                np.asarray(v["prototypes"]["prototypes"]))
  # Labels + mutable: one learning step.
  out, mut = head.apply(v, x, y, train=True, mutable=["prototypes"])
  assert out.proto_targets.shape == out.proto_lse.shape == (B * H * W,)
  # PPC / PPD's terms against the cosines to the OLD prototypes, in float64.
  old = np.asarray(v["prototypes"]["prototypes"], np.float64).reshape(C * M, -1)
  old /= np.linalg.norm(old, axis=-1, keepdims=True)
  sim = np.asarray(out.embeddings, np.float64).reshape(B * H * W, -1) @ old.T
  top = sim.max(axis=1)
  np.testing.assert_allclose(out.proto_lse, top + np.log(np.exp(sim - top[:, None]).sum(1)),
                             rtol=1e-5)
  t = np.asarray(out.proto_targets)
  want = np.where(t >= 0, sim[np.arange(len(t)), np.maximum(t, 0)], 0.0)
  np.testing.assert_allclose(out.proto_target_logits, want, atol=1e-5)
  assert (t >= 0).any() and (t < 0).any()
  new = np.asarray(mut["prototypes"]["prototypes"])
  assert np.abs(new - np.asarray(v["prototypes"]["prototypes"])).max() > 1e-3
  np.testing.assert_allclose(np.linalg.norm(new, axis=-1), 1.0, atol=1e-6)
  # update=False (warm-up) leaves them alone even inside jit.
  f = jax.jit(lambda v, upd: head.apply(v, x, y, train=True, update=upd, mutable=["prototypes"]))
  _, mut = f(v, jnp.asarray(False))
  np.testing.assert_array_equal(np.asarray(mut["prototypes"]["prototypes"]),
                                np.asarray(v["prototypes"]["prototypes"]))


def test_gumbel_needs_rng_stream():
  head = ProtoSegHead(num_classes=C, num_prototypes=M)
  x, y = _x(), _labels()
  v = head.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="rngs"):
    head.apply(v, x, y, train=True, mutable=["prototypes"])
  _, m1 = head.apply(v, x, y, train=True, mutable=["prototypes"], rngs={"prototypes": jax.random.key(1)})
  _, m2 = head.apply(v, x, y, train=True, mutable=["prototypes"], rngs={"prototypes": jax.random.key(1)})
  np.testing.assert_array_equal(np.asarray(m1["prototypes"]["prototypes"]),
                                np.asarray(m2["prototypes"]["prototypes"]))


def test_targets_follow_feature_resolution_labels():
  head = ProtoSegHead(num_classes=C, num_prototypes=M, assignment="argmax")
  x, y = _x(), _labels()
  v = head.init(jax.random.key(0), x)
  out, _ = head.apply(v, x, y, train=True, mutable=["prototypes"])
  small = np.asarray(y)[:, ::4, ::4].reshape(-1)   # PyTorch nearest for an exact 4x
  t = np.asarray(out.proto_targets)
  np.testing.assert_array_equal(t == -1, small == 255)
  np.testing.assert_array_equal(t[small != 255] // M, small[small != 255])


def test_no_gradient_to_prototypes_and_gradient_to_params():
  head = ProtoSegHead(num_classes=C, num_prototypes=M, assignment="argmax")
  x, y = _x(), _labels()
  v = head.init(jax.random.key(0), x)

  def loss(params, protos):
    out, _ = head.apply({"params": params, "prototypes": protos}, x, y, train=True,
                        mutable=["prototypes"])
    return (jnp.sum(out.logits) * 0 + jnp.sum(out.proto_target_logits)
            + jnp.sum(out.proto_lse))

  gp, gproto = jax.grad(loss, argnums=(0, 1))(v["params"], v["prototypes"])
  assert np.all(np.asarray(gproto["prototypes"]) == 0)
  assert np.abs(np.asarray(gp["proj_conv2"]["kernel"])).max() > 0


def test_linear_head_same_interface():
  head = LinearHead(num_classes=C)
  x = _x()
  v = head.init(jax.random.key(0), x)
  out = head.apply(v, x, _labels(), train=True)
  assert isinstance(out, HeadOutput) and out.logits.shape == (B, H, W, C)
  assert out.proto_targets is None and out.proto_lse is None


def test_prototype_init_modes():
  from protoseg_jax.heads import init_prototypes
  shape = (50, 100, 200)   # 1e6 draws
  std = 0.02
  # Before L2 normalisation: the same draws as init_prototypes, unnormalised.
  k = jax.random.key(0)
  official = np.asarray(std * jax.random.truncated_normal(k, -2.0 / std, 2.0 / std, shape))
  cut = np.asarray(std * jax.random.truncated_normal(k, -2.0, 2.0, shape))
  # Untruncated in effect: sample std 0.02, extremes beyond 4 std (~63 of 1e6 expected).
  assert abs(official.std() - std) < 2e-4
  assert np.abs(official).max() > 4 * std
  assert np.abs(official).max() < 2.0
  # Cut at 2 std: range +-0.04 and std 0.02 * 0.8796 (truncated-normal variance).
  assert np.abs(cut).max() <= 2 * std + 1e-7
  assert abs(cut.std() - 0.8796 * std) < 2e-4
  # init_prototypes = those draws, L2-normalised along D.
  for mode, raw in (("timm_trunc_normal", official), ("trunc_normal_2std", cut)):
    got = np.asarray(init_prototypes(k, shape, std, mode))
    np.testing.assert_allclose(got, raw / np.linalg.norm(raw, axis=-1, keepdims=True), atol=1e-6)
  with pytest.raises(ValueError, match="proto_init"):
    init_prototypes(k, shape, std, "normal")
  # The head's default is unchanged (bit-identical to the previous init).
  head = ProtoSegHead(num_classes=C, num_prototypes=M)
  v = head.init(jax.random.key(0), _x())
  p_default = np.asarray(v["prototypes"]["prototypes"])
  v2 = ProtoSegHead(num_classes=C, num_prototypes=M, proto_init="trunc_normal_2std").init(
      jax.random.key(0), _x())
  np.testing.assert_array_equal(p_default, np.asarray(v2["prototypes"]["prototypes"]))
  v3 = ProtoSegHead(num_classes=C, num_prototypes=M, proto_init="timm_trunc_normal").init(
      jax.random.key(0), _x())
  assert not np.array_equal(p_default, np.asarray(v3["prototypes"]["prototypes"]))


def test_train_prototypes_gradient_is_the_official_one():
  # Official pretrain_prototype: prototypes.data is normalised in place, then
  # used as a leaf: d loss / d P with no normalisation Jacobian.
  head = ProtoSegHead(num_classes=C, num_prototypes=M, assignment="argmax")
  x = _x()
  v = head.init(jax.random.key(0), x)
  protos = v["prototypes"]["prototypes"]          # unit norm after init
  w = jax.random.normal(jax.random.key(5), (B, H, W, C))

  def loss(pr, trainable):
    out = head.apply({"params": v["params"], "prototypes": {"prototypes": pr}}, x,
                     train_prototypes=trainable)
    return jnp.sum(out.logits * w), out

  g, out = jax.grad(loss, has_aux=True)(protos, True)
  _, out0 = loss(protos, False)
  np.testing.assert_array_equal(np.asarray(out.logits), np.asarray(out0.logits))  # same values

  # Reference: the same forward with the prototypes as a raw leaf.
  emb = out.embeddings.reshape(-1, D if head.embed_dim else DIN)

  def ref(pr):
    sim = emb @ pr.reshape(C * M, -1).T
    s = jnp.max(sim.reshape(-1, C, M), axis=-1)
    mu, var = s.mean(-1, keepdims=True), s.var(-1, keepdims=True)
    p = v["params"]["mask_norm"]
    s = (s - mu) / jnp.sqrt(var + 1e-5) * p["scale"] + p["bias"]
    return jnp.sum(s.reshape(B, H, W, C) * w)

  g_ref = jax.grad(ref)(protos)
  assert np.abs(np.asarray(g_ref)).max() > 1e-3
  np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-3, rtol=1e-3)
  # ... and not the gradient through the normalisation (tangent projection).
  pu = np.asarray(protos)
  g_proj = np.asarray(g_ref) - np.sum(np.asarray(g_ref) * pu, -1, keepdims=True) * pu
  assert np.abs(g_proj - np.asarray(g)).max() > 100 * np.abs(np.asarray(g) - np.asarray(g_ref)).max()
  # Off (also as a traced False): no gradient.
  g_off = jax.grad(lambda pr: loss(pr, False)[0])(protos)
  assert np.all(np.asarray(g_off) == 0)
  g_traced = jax.jit(jax.grad(lambda pr, t: loss(pr, t)[0]))(protos, jnp.asarray(False))
  assert np.all(np.asarray(g_traced) == 0)


def test_update_prototype_false_keeps_prototypes_but_gives_targets():
  x, y = _x(), _labels()
  on = ProtoSegHead(num_classes=C, num_prototypes=M, assignment="argmax")
  off = ProtoSegHead(num_classes=C, num_prototypes=M, assignment="argmax", update_prototype=False)
  v = on.init(jax.random.key(0), x)
  out_on, m_on = on.apply(v, x, y, train=True, mutable=["prototypes"])
  out_off, m_off = off.apply(v, x, y, train=True, mutable=["prototypes"])
  np.testing.assert_array_equal(np.asarray(m_off["prototypes"]["prototypes"]),
                                np.asarray(v["prototypes"]["prototypes"]))
  assert not np.allclose(np.asarray(m_on["prototypes"]["prototypes"]),
                         np.asarray(v["prototypes"]["prototypes"]))
  np.testing.assert_array_equal(np.asarray(out_off.proto_targets), np.asarray(out_on.proto_targets))
  assert np.any(np.asarray(out_off.proto_targets) >= 0)


def test_l2_normalize_is_f_normalize_with_its_gradient_at_an_all_zero_vector():
  torch = pytest.importorskip("torch")
  from protoseg_jax.ops import l2_normalize
  x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
  x[2] = 0.0                                        # e.g. a padded or dead feature
  x[3] *= 1e-20                                     # below eps: divided by eps, as F.normalize
  np.testing.assert_allclose(l2_normalize(jnp.asarray(x)),
                             torch.nn.functional.normalize(torch.from_numpy(x), dim=-1).numpy(),
                             rtol=1e-6, atol=1e-7)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(5, 7)), jnp.float32)
  grad = jax.grad(lambda v: jnp.sum(l2_normalize(v) * w))(jnp.asarray(x))
  xt = torch.from_numpy(x).requires_grad_()
  (torch.nn.functional.normalize(xt, dim=-1) * torch.from_numpy(np.asarray(w))).sum().backward()
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad[2], w[2] / 1e-12, rtol=1e-6)   # x / eps there
  np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
