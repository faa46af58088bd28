"""Optimisers and learning-rate schedules of the official recipes (optax).

- SGD (HRNet/ResNet): momentum 0.9, L2 weight decay added to the gradient
  before momentum (PyTorch SGD semantics), poly decay.
- AdamW (Swin/MiT): decoupled weight decay, linear warm-up then poly decay,
  optionally no decay on norms, biases and position tables, and a learning
  rate multiplier for the decoder and heads.
"""

from __future__ import annotations

import re

import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

# Parameter paths ('/'-joined) that never get weight decay when
# no_decay_norms_biases is on: biases, norm scales (in Flax only norms have a
# 'scale'), relative position bias tables and absolute position embeddings.
NO_DECAY_PATTERN = r"(/bias$|/scale$|relative_position_bias_table|pos_embed|absolute_pos)"
# Top-level parameter collections trained with head_lr_mult.
HEAD_MODULES = ("decoder", "head", "aux_decoder", "aux_head")
OPTIMIZERS = ("sgd", "adamw")       # config.optim.name


def learning_rate_schedule(config_optim, num_train_steps: int) -> optax.Schedule:
  """Linear warm-up (from warmup_ratio * lr) then poly decay to min_lr (mmseg semantics)."""
  o = config_optim
  base, warm = float(o.learning_rate), int(o.warmup_steps)
  total = max(int(num_train_steps), 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    frac = jnp.clip(step / total, 0.0, 1.0)
    lr = (base - o.min_lr) * (1.0 - frac) ** o.poly_power + o.min_lr
    if warm > 0:
      k = (1.0 - step / warm) * (1.0 - o.warmup_ratio)
      lr = jnp.where(step < warm, lr * (1.0 - k), lr)
    return lr

  return schedule


def _path_mask(params, pattern: str, match_value: bool):
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  rx = re.compile(pattern)
  return flax.traverse_util.unflatten_dict(
      {k: (bool(rx.search(k)) == match_value) for k in flat}, sep="/")


def decay_mask(params, no_decay_norms_biases: bool):
  if not no_decay_norms_biases:
    return jax.tree.map(lambda _: True, params)
  return _path_mask(params, NO_DECAY_PATTERN, match_value=False)


def _scale_by_tree(factors) -> optax.GradientTransformation:
  """Multiply each update leaf by a fixed per-leaf factor."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, f: u * jnp.asarray(f, u.dtype), updates, factors), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def create_optimizer(config, params) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, schedule) for config.optim over `params`."""
  o = config.optim
  schedule = learning_rate_schedule(o, config.num_train_steps)
  mask = decay_mask(params, o.no_decay_norms_biases)

  def make(lr):
    if o.name == "sgd":
      parts = []
      if o.weight_decay:
        parts.append(optax.add_decayed_weights(o.weight_decay, mask))
      parts.append(optax.sgd(lr, momentum=o.momentum, nesterov=o.nesterov))
      return optax.chain(*parts)
    if o.name == "adamw":
      return optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=mask)
    raise ValueError(f"config.optim.name must be {' or '.join(map(repr, OPTIMIZERS))}, got "
                     f"{o.name!r}")

  tx = make(schedule)
  if o.head_lr_mult != 1.0:
    # Scaling the final update equals scaling the learning rate for both SGD
    # (decay added to the gradient) and AdamW (decay multiplied by lr).
    factors = {k: jax.tree.map(lambda _: o.head_lr_mult if k in HEAD_MODULES else 1.0, v)
               for k, v in params.items()}
    tx = optax.chain(tx, _scale_by_tree(factors))
  if o.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
  return tx, schedule
