"""protoseg_jax.optim: schedules against the official formulas, the no-decay
mask, head_lr_mult, and SGD / AdamW steps against torch.optim."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs import default
from protoseg_jax import optim


def _optim_config(**values):
  config = default.get_config()
  config.num_train_steps = 1000
  for k, v in values.items():
    setattr(config.optim, k, v)
  return config


# The schedule is computed in float32 (inside the jitted step): 1 - step/total
# near the end and 1 - k near the start of a warm-up carry float32 rounding, so
# values are compared to a relative 1e-4 and an absolute float32 eps * lr.
F32_RTOL = 1e-4


def _official_poly(step, base, total, power, min_lr=0.0):
  # openseg `lambda_poly` / mmseg PolyLrUpdaterHook:
  # (base - min) * (1 - iter / max_iter) ** power + min
  return (base - min_lr) * (1.0 - step / total) ** power + min_lr


def _mmseg_linear_warmup(regular_lr, step, warmup_iters, warmup_ratio):
  # mmcv LrUpdaterHook, warmup='linear': k = (1 - cur / warmup) * (1 - ratio)
  k = (1.0 - step / warmup_iters) * (1.0 - warmup_ratio)
  return regular_lr * (1.0 - k)


@pytest.mark.parametrize("step", [0, 1, 250, 500, 999, 1000, 1200])
def test_poly_schedule_equals_the_official_formula(step):
  config = _optim_config(learning_rate=0.01, poly_power=0.9, warmup_steps=0, min_lr=0.0)
  got = float(optim.learning_rate_schedule(config.optim, config.num_train_steps)(step))
  want = _official_poly(min(step, 1000), 0.01, 1000, 0.9)
  np.testing.assert_allclose(got, want, rtol=F32_RTOL, atol=0.01 * 1.2e-7)


def test_poly_schedule_with_min_lr_ends_at_min_lr():
  config = _optim_config(learning_rate=0.02, poly_power=0.9, min_lr=1e-4)
  sched = optim.learning_rate_schedule(config.optim, 1000)
  for step in (0, 300, 999, 1000):
    np.testing.assert_allclose(float(sched(step)), _official_poly(step, 0.02, 1000, 0.9, 1e-4),
                               rtol=F32_RTOL)
  assert float(sched(1000)) == pytest.approx(1e-4)


@pytest.mark.parametrize("step", [0, 1, 750, 1499, 1500, 1501, 80_000, 160_000])
def test_linear_warmup_then_poly_as_mmseg(step):
  # The Swin/MiT recipe: warm-up 1500 iterations from 1e-6 * lr, then poly 1.0.
  config = _optim_config(learning_rate=6e-5, poly_power=1.0, warmup_steps=1500, warmup_ratio=1e-6)
  sched = optim.learning_rate_schedule(config.optim, 160_000)
  regular = _official_poly(step, 6e-5, 160_000, 1.0)
  want = _mmseg_linear_warmup(regular, step, 1500, 1e-6) if step < 1500 else regular
  np.testing.assert_allclose(float(sched(step)), want, rtol=F32_RTOL, atol=6e-5 * 1.2e-7)
  if step == 0:  # starts at warmup_ratio * lr (to float32 precision of 1 - k)
    assert float(sched(0)) == pytest.approx(6e-5 * 1e-6, rel=0.02)


PARAMS = {
    "backbone": {"conv1": {"kernel": jnp.ones((3, 3, 3, 4))},
                 "bn1": {"scale": jnp.ones((4,)), "bias": jnp.zeros((4,))},
                 "relative_position_bias_table": jnp.ones((9, 2)),
                 "pos_embed": jnp.ones((1, 4, 8))},
    "decoder": {"conv": {"kernel": jnp.ones((1, 1, 4, 4)), "bias": jnp.zeros((4,))}},
    "head": {"feat_norm": {"scale": jnp.ones((4,)), "bias": jnp.zeros((4,))},
             "proj": {"kernel": jnp.ones((4, 4))}},
}


def test_no_decay_mask_leaves():
  mask = optim.decay_mask(PARAMS, no_decay_norms_biases=True)
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
  decayed = sorted(k for k, v in flat.items() if v)
  assert decayed == ["['backbone']['conv1']['kernel']", "['decoder']['conv']['kernel']",
                     "['head']['proj']['kernel']"]
  assert all(jax.tree.leaves(optim.decay_mask(PARAMS, no_decay_norms_biases=False)))


def _one_update(config, params, grads):
  tx, _ = optim.create_optimizer(config, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_head_lr_mult_scales_decoder_and_head_updates_only():
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), PARAMS)
  base = _optim_config(name="sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.0)
  mult = _optim_config(name="sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.0,
                       head_lr_mult=10.0)
  u1, u10 = _one_update(base, PARAMS, grads), _one_update(mult, PARAMS, grads)
  for top in PARAMS:
    factor = 10.0 if top in optim.HEAD_MODULES else 1.0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, factor * a, rtol=1e-6), u1[top], u10[top])
  np.testing.assert_allclose(u1["backbone"]["conv1"]["kernel"], -0.1 * 0.5, rtol=1e-6)


def _torch_steps(make_opt, w0, grads):
  w = torch.nn.Parameter(torch.tensor(w0))
  opt = make_opt([w])
  for g in grads:
    w.grad = torch.tensor(g)
    opt.step()
  return w.detach().numpy()


def _optax_steps(config, w0, grads):
  params = {"backbone": {"w": {"kernel": jnp.asarray(w0)}}}
  tx, _ = optim.create_optimizer(config, params)
  state = tx.init(params)
  for g in grads:
    upd, state = tx.update({"backbone": {"w": {"kernel": jnp.asarray(g)}}}, state, params)
    params = optax.apply_updates(params, upd)
  return np.asarray(params["backbone"]["w"]["kernel"])


def _data(seed=0, steps=5):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(6,)).astype(np.float32), [rng.normal(size=(6,)).astype(np.float32)
                                                    for _ in range(steps)]


def test_sgd_momentum_weight_decay_equals_torch_sgd():
  # Constant lr (poly power 0) so that torch.optim.SGD sees the same rate.
  w0, grads = _data()
  config = _optim_config(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4,
                         poly_power=0.0)
  got = _optax_steps(config, w0, grads)
  want = _torch_steps(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
                      w0, grads)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_adamw_equals_torch_adamw():
  w0, grads = _data(seed=1)
  config = _optim_config(name="adamw", learning_rate=1e-2, weight_decay=0.01, poly_power=0.0,
                         b1=0.9, b2=0.999)
  got = _optax_steps(config, w0, grads)
  want = _torch_steps(lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
                                                  weight_decay=0.01), w0, grads)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unknown_optimizer_name_is_rejected():
  with pytest.raises(ValueError, match="'sgd' or 'adamw', got 'adam'"):
    optim.create_optimizer(_optim_config(name="adam"), PARAMS)
