"""Backbone remat (config.model.remat): the same numbers, fewer stored activations.

For every backbone family a tiny model is differentiated with and without
remat; loss, gradients and the BatchNorm statistics update must agree (the
recomputation may fuse differently, so to float32 rounding, not bit for
bit: loss and the whole gradient to 1e-5 relative).
Each family runs one remat plan that mixes both modes ("stage" on some stages,
"block" on the others), so one compile per setting covers both code paths.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protoseg_jax.models import hrnet, layers, mit, resnet, swin
from protoseg_jax.models.segmentor import build_model

from conftest import random_variables

RTOL = 1e-5
LEAF_RTOL = 1e-3
# Keep jax.checkpoint's optimization barriers: XLA:CPU expands them first by
# default, after which CSE merges the recomputation with the forward pass
# (no recomputation left to test). Backend optimisation 0: half the compile
# time of these tests.
COMPILER_OPTIONS = {"xla_disable_hlo_passes": "cse_barrier_expander",
                    "xla_backend_optimization_level": 0}

# family -> (backbone constructor taking remat=..., remat plan, number of
# checkpointed stages + blocks under that plan)
FAMILIES = {
    "hrnet": (lambda r: hrnet.HRNet(hrnet.CONFIGS["hrnet_tiny"], remat=r),
              "block:1,3;stage:2,4", 4),
    "resnet": (lambda r: resnet.ResNet(layers=(1, 1, 1, 1), deep_stem=True, stem_width=8,
                                       output_stride=16, remat=r),
               "stage:1,3;block:2,4", 4),
    # DropPath on: the recomputed masks must be the forward's (lifted rngs).
    # Two blocks in stage 1: the shifted-window block runs under remat too.
    "swin": (lambda r: swin.SwinTransformer(embed_dim=8, depths=(2, 1, 1, 1), num_heads=(1, 2, 2, 2),
                                            window_size=4, drop_path_rate=0.3, remat=r),
             "block:1,3;stage:2,4", 5),
    "mit": (lambda r: mit.MixVisionTransformer(embed_dims=(8, 16, 16, 16), num_heads=(1, 1, 2, 2),
                                               depths=(1, 1, 1, 1), sr_ratios=(4, 2, 1, 1),
                                               drop_path_rate=0.3, remat=r),
            "stage:1,3;block:2,4", 4),
}


def _loss_grads(model, variables, x):
  """(loss, grads, batch_stats update, number of remat checkpoints in the program)."""
  def loss(params, batch_stats):
    v = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    feats, upd = model.apply(v, x, True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(7)})
    # Every output, weighted differently per channel, so no gradient is trivial.
    total = sum(jnp.mean(jnp.sin(f.astype(jnp.float32) * (1.0 + jnp.arange(f.shape[-1]) / 8)))
                for f in feats)
    return total, upd

  args = (variables["params"], variables.get("batch_stats", {}))
  traced = jax.jit(jax.value_and_grad(loss, has_aux=True)).trace(*args)
  num_remat = str(traced.jaxpr).count("remat2[")
  compiled = traced.lower().compile(COMPILER_OPTIONS)
  if num_remat:   # the recomputation survived compilation
    assert compiled.as_text().count("opt-barrier") >= num_remat
  (value, upd), grads = compiled(*args)
  return jax.device_get((value, grads, upd.get("batch_stats", {}))) + (num_remat,)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_remat_matches_no_remat(family):
  make, plan, num_checkpoints = FAMILIES[family]
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  off, on = make("none"), make(plan)
  # The remat model runs on the plain model's variables: the same names
  # (a missing one would raise), so converted weights and checkpoints load.
  variables = random_variables(jax.eval_shape(off.init, {"params": jax.random.key(0)}, x))
  v0, g0, bs0, n0 = _loss_grads(off, variables, x)
  v1, g1, bs1, n1 = _loss_grads(on, variables, x)
  # remat is really in the program: one checkpoint per stage or block.
  assert (n0, n1) == (0, num_checkpoints)
  np.testing.assert_allclose(v1, v0, rtol=RTOL)
  assert jax.tree.structure(g1) == jax.tree.structure(g0)
  # The whole gradient to RTOL (L2); every leaf to LEAF_RTOL of its largest
  # entry (train-mode BN over the few pixels of the last stages amplifies
  # rounding in single leaves; a wrong or missing gradient is off by ~1),
  # plus RTOL of the largest entry of all (attention's key biases have a
  # gradient that is zero but for rounding).
  leaves0, leaves1 = jax.tree.leaves(g0), jax.tree.leaves(g1)
  norm0 = np.sqrt(sum(np.sum(np.square(b)) for b in leaves0))
  err = np.sqrt(sum(np.sum(np.square(a - b)) for a, b in zip(leaves1, leaves0)))
  assert 0 < norm0 and err <= RTOL * norm0
  top = max(float(np.max(np.abs(b))) for b in leaves0)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), leaves0):
    np.testing.assert_allclose(a, b, rtol=0, atol=LEAF_RTOL * float(np.max(np.abs(b))) + RTOL * top,
                               err_msg=jax.tree_util.keystr(path))
  if family in ("hrnet", "resnet"):
    assert jax.tree.leaves(bs0)
  for a, b in zip(jax.tree.leaves(bs1), jax.tree.leaves(bs0)):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-7)


def test_remat_plan_parses_and_rejects():
  assert layers.remat_plan("none") == ("none",) * 4
  assert layers.remat_plan("stage") == ("stage",) * 4
  assert layers.remat_plan("block:3,4") == ("none", "none", "block", "block")
  assert layers.remat_plan("stage:1;block:2,3") == ("stage", "block", "block", "none")
  for bad in ("all", "stage:1;block:1", "stage;block:3", "block:5", "block:", "block:x", ""):
    with pytest.raises(ValueError, match="config.model.remat"):
      layers.remat_plan(bad)


def test_build_model_passes_remat_to_the_backbone():
  from configs import demo
  config = demo.get_config("runlocal")
  config.model.remat = "block:2,3"
  model = build_model(config, num_classes=3)
  assert model.remat == "block:2,3"
  x = jnp.zeros((1, 32, 32, 3))
  jaxpr = str(jax.make_jaxpr(lambda: model.init({"params": jax.random.key(0)}, x, train=True))())
  assert jaxpr.count("remat2[") == 2   # stage2_0 and stage3_0 of hrnet_tiny
  config.model.remat = "blocks"
  with pytest.raises(ValueError, match="config.model.remat"):
    build_model(config, num_classes=3)
