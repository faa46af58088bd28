"""protoseg_jax.nnx_bridge: the ProtoSeg head and a whole segmentor inside Flax NNX.

docs/export.md's NNX example (a model with the head, trained a few optax
steps) runs and trains exactly as the same model written in Linen
(losses, parameters and prototypes <= 1e-6); a Linen Segmentor bridged
into NNX keeps its variables (params -> nnx.Param, batch_stats ->
nnx.BatchStat, prototypes -> nnx_bridge.Prototypes) and computes what the
Linen model computes in a learning pass, writing the same updates back.
"""

import functools
import pathlib
import re

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from protoseg_jax import losses, nnx_bridge
from protoseg_jax.models.segmentor import Segmentor

ROOT = pathlib.Path(__file__).resolve().parent.parent
C, M, D = 3, 2, 8                # the segmentor test: classes, prototypes per class, embedding
HEAD = dict(num_prototypes=M, embed_dim=D, gamma=0.9)
TOL = 1e-6
PARAM_TOL = 1e-5
# Compile fast (these tiny programs run in microseconds): what the tests time is XLA.
FAST = {"xla_backend_optimization_level": 0}


def nnx_example() -> str:
  """The NNX example of docs/export.md (the ```python block after '## NNX')."""
  text = (ROOT / "docs" / "export.md").read_text()
  section = text[text.index("## NNX"):]
  return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def _np(tree):
  return jax.tree.map(np.asarray, tree)


def _batch(seed=0, size=16):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
  y = rng.integers(0, C, size=(2, size, size)).astype(np.int32)
  y[:, :2] = 255                                                 # some ignored pixels
  return x, y


def test_the_documented_nnx_model_trains_as_the_same_model_in_linen():
  """docs/export.md's example: an NNX model (a conv and nnx_bridge.ProtoSegHead)
  trained 3 adamw steps; the same model in Linen (the conv, then the Linen
  head applied with the keys the NNX head draws) from the same initial
  variables gives the same losses, parameters and prototypes."""
  ns = {}
  exec(compile(nnx_example(), "docs/export.md (NNX)", "exec"), ns)  # noqa: S102
  model, images, labels = ns["model"], ns["images"], ns["labels"]
  assert ns["moved"] > 1e-3 and ns["logits"].shape == (2, 8, 8, 3)   # learnt; inference
  # The prototypes are their own variable type, never parameters.
  protos = nnx.to_pure_dict(nnx.state(model, nnx_bridge.Prototypes))
  assert jax.tree.map(np.shape, protos) == {"head": {"prototypes": (3, 4, 16)}}
  assert "prototypes" not in nnx.to_pure_dict(nnx.state(model, nnx.Param))["head"]["params"]

  fresh = ns["Segmenter"](num_classes=3, rngs=nnx.Rngs(params=0, prototypes=1))  # the start
  head = fresh.head.linen_variables()
  params = _np({"stem": {"kernel": fresh.stem.kernel.get_value(),
                         "bias": fresh.stem.bias.get_value()}, "head": head["params"]})
  prototypes = np.asarray(head["prototypes"]["prototypes"])
  stem = nn.Conv(32, (3, 3), strides=4)
  linen_head = fresh.head.linen          # heads.ProtoSegHead(3, num_prototypes=4, embed_dim=16)
  tx = optax.adamw(1e-3)

  @functools.partial(jax.jit, compiler_options=FAST)
  def linen_step(params, prototypes, opt_state, key):
    def loss_fn(p):
      f = nn.gelu(stem.apply({"params": p["stem"]}, images))
      out, upd = linen_head.apply({"params": p["head"], "prototypes": {"prototypes": prototypes}},
                                  f, labels, train=True, mutable=["prototypes"],
                                  rngs={"prototypes": key})
      loss, _ = losses.protoseg_loss(out.logits, labels, proto_targets=out.proto_targets,
                                     proto_lse=out.proto_lse,
                                     proto_target_logits=out.proto_target_logits)
      return loss, upd["prototypes"]["prototypes"]
    (loss, prototypes), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), prototypes, opt_state, loss

  keys = nnx.Rngs(params=0, prototypes=1)     # the NNX head draws one key per learning call
  opt_state = jax.jit(tx.init)(params)
  linen_losses = []
  for _ in ns["losses"]:
    params, prototypes, opt_state, loss = linen_step(params, prototypes, opt_state,
                                                     keys.prototypes())
    linen_losses.append(float(loss))
  print("NNX vs Linen: losses %.2e, prototypes %.2e" % (
      np.abs(np.asarray(ns["losses"]) - linen_losses).max(),
      np.abs(np.asarray(model.head.prototypes.get_value()) - prototypes).max()))
  np.testing.assert_allclose(ns["losses"], linen_losses, atol=TOL, rtol=0)
  np.testing.assert_allclose(model.head.prototypes.get_value(), prototypes, atol=TOL, rtol=0)
  # Parameters: Adam divides by the gradient's RMS, so the two programs'
  # rounding of tiny gradients (nnx.jit's default optimisation level, this
  # one's level 0) moves a weight by up to ~1e-6 of the 1e-3 step.
  nnx_params = {"stem": {"kernel": model.stem.kernel.get_value(),
                         "bias": model.stem.bias.get_value()},
                "head": model.head.linen_variables()["params"]}
  for a, b in zip(jax.tree.leaves(nnx_params), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, atol=PARAM_TOL, rtol=0)


def _tiny_segmentor():
  """ResNet (BatchNorm) + FCN + ProtoSeg head, tiny, with random variables."""
  model = Segmentor(num_classes=C, backbone="resnet50_v1c", decoder="fcn", head="proto",
                    backbone_kwargs=(("base_width", 4), ("layers", (1, 1, 1, 1)),
                                     ("output_stride", 8), ("stem_width", 4)),
                    decoder_kwargs=(("channels", 8), ("concat_input", False),
                                    ("dropout", 0.0), ("in_index", 3), ("num_convs", 1)),
                    head_kwargs=tuple(sorted(HEAD.items())))
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda a: (rng.uniform(0.5, 1.5, a.shape) if a.ndim == 1 else
                                      rng.normal(0, 0.3, a.shape)).astype(a.dtype), abstract)
  return model, variables


def test_a_whole_segmentor_inside_nnx_keeps_its_variables_and_results():
  model, variables = _tiny_segmentor()
  seg = nnx_bridge.segmentor(model, variables)
  assert jax.tree.leaves(nnx.state(seg, nnx.BatchStat))
  assert (nnx.to_pure_dict(nnx.state(seg, nnx_bridge.Prototypes))["head"]["prototypes"].shape
          == (C, M, D))
  back = nnx_bridge.linen_variables(seg)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  jax.tree.map(np.testing.assert_array_equal, back, variables)

  # A learning pass: the bridged model computes the Linen model's logits and
  # writes its BatchNorm statistics and prototypes back.
  x, y = _batch(3, 32)
  keys = nnx.Rngs(dropout=5, prototypes=6)            # the keys ToNNX draws from them
  linen_keys = {"dropout": keys.dropout(), "prototypes": keys.prototypes()}
  want, want_upd = jax.jit(lambda v, x, y: model.apply(
      v, x, y, train=True, mutable=["batch_stats", "prototypes"], rngs=linen_keys),
      compiler_options=FAST)(variables, x, y)
  graphdef, state = nnx.split(seg)

  @functools.partial(jax.jit, compiler_options=FAST)
  def learn(state, x, y):
    seg = nnx.merge(graphdef, state)
    out = seg(x, y, train=True, mutable=["batch_stats", "prototypes"],
              rngs=nnx.Rngs(dropout=5, prototypes=6))
    return out.logits, nnx.state(seg)

  got, state = learn(state, x, y)
  nnx.update(seg, state)
  np.testing.assert_allclose(got, want.logits, atol=TOL, rtol=0)
  back = nnx_bridge.linen_variables(seg)
  for col in ("batch_stats", "prototypes"):
    for a, b in zip(jax.tree.leaves(back[col]), jax.tree.leaves(want_upd[col])):
      np.testing.assert_allclose(a, b, atol=TOL, rtol=0)
  assert not np.allclose(back["prototypes"]["head"]["prototypes"],
                         variables["prototypes"]["head"]["prototypes"])
  jax.tree.map(np.testing.assert_array_equal, back["params"], variables["params"])


def test_prototypes_map_to_their_own_variable_type_both_ways():
  assert nnx.variable_type_from_name("prototypes") is nnx_bridge.Prototypes
  assert nnx.variable_name_from_type(nnx_bridge.Prototypes) == "prototypes"
  assert not issubclass(nnx_bridge.Prototypes, nnx.Param)
  with pytest.raises(ValueError, match="variables= .* or sample_images="):
    nnx_bridge.segmentor(_tiny_segmentor()[0])
