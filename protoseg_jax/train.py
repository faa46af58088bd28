"""The library's train step: TrainState, create_train_state, train_step, its loss.

One jitted, donated train step over a data-parallel mesh updates params,
batch_stats, optimizer state and the ProtoSeg prototypes (a mutable variable
collection, never touched by host code). `train_loss` is the step's loss as a
function of the parameters (what `jax.grad` differentiates); `train_step`
adds the optimizer updates, the prototype update and the non-finite skip.

Library code: jax, flax, optax and numpy only, for use with your own data
loader. The trainer's loop (tf.data input, clu metric writers, orbax
checkpoints) is `protoseg_jax.trainer.loop`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax
import flax.struct
import jax
import jax.numpy as jnp
import optax

from protoseg_jax import inference, losses, ops, optim, sharding
from protoseg_jax.models.segmentor import Segmentor
from protoseg_jax.ops import l2_normalize

TRAIN_KEYS = ("train/loss", "train/loss_ce", "train/loss_ppc", "train/loss_ppd", "train/lr")


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray          # int32 scalar: number of updates applied
  params: Any
  batch_stats: Any
  prototypes: Any            # {} for the linear head
  opt_state: Any
  rng: jnp.ndarray           # uint32 [2] base key; per-step keys are fold_in(rng, step)
  # Optimizer state of the prototypes while they are trained by gradient
  # during warm-up (config.protoseg.pretrain_prototype); {} otherwise.
  proto_opt_state: Any = flax.struct.field(default_factory=dict)

  def variables(self) -> dict:
    v = {"params": self.params}
    if self.batch_stats:
      v["batch_stats"] = self.batch_stats
    if self.prototypes:
      v["prototypes"] = self.prototypes
    return v


# ----------------------------------------------------------------------------
# State creation.


def model_input_shape(config) -> tuple[int, int, int, int]:
  """The image shape models are initialised with: (1, crop h, crop w, 3)."""
  crop = tuple(int(v) for v in config.dataset.crop_size)
  return (1, crop[0], crop[1], 3)


def _init_fn(config, model: Segmentor, image_shape):
  shape = tuple(image_shape) if image_shape is not None else model_input_shape(config)

  def init(seed):
    # The 'rbg' generator: XLA compiles threefry bit generation separately
    # for every parameter shape, which made init take minutes on CPU. Init is
    # replicated, so rbg's sharding-dependent bits cannot matter here; the
    # train step keeps threefry (identical bits under any sharding).
    key = jax.random.key(seed, impl="rbg")
    k1, k2 = jax.random.split(key)
    return model.init({"params": k1, "dropout": k2}, jnp.zeros(shape, jnp.float32),
                      train=False)

  return init


def abstract_variables(config, model: Segmentor, image_shape=None) -> dict:
  """The model's variables as jax.ShapeDtypeStructs (nothing computed): the
  template a checkpoint's params / batch_stats / prototypes restore into."""
  return flax.core.unfreeze(jax.eval_shape(_init_fn(config, model, image_shape), 0))


def variable_shardings(config, abstract: dict, mesh) -> dict:
  """Shardings of a model's variables: params as config.sharding.rules say
  (FSDP or replicated), every other collection (batch_stats, prototypes)
  replicated."""
  rep = sharding.replicated(mesh)
  return {k: (param_sharding(config, v, mesh) if k == "params" else jax.tree.map(lambda _: rep, v))
          for k, v in abstract.items()}


def init_variables(config, model: Segmentor, mesh, image_shape=None) -> tuple[dict, dict]:
  """(the model's initial variables from config.seed, their shardings), laid
  out over `mesh` as `variable_shardings` says (what `create_train_state`
  starts from)."""
  init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  init = _init_fn(config, model, image_shape)
  seed = jax.random.randint(init_rng, (), 0, 2**31 - 1)
  shardings = variable_shardings(config, jax.eval_shape(init, seed), mesh)
  return flax.core.unfreeze(jax.jit(init, out_shardings=shardings)(seed)), shardings


def create_train_state(config, model: Segmentor, mesh, image_shape=None, *,
                       load_weights: Optional[Callable[[dict], dict]] = None
                       ) -> tuple[TrainState, optax.GradientTransformation, Any]:
  """Initial TrainState (replicated, or FSDP params as config.sharding says),
  optimizer and lr schedule.

  image_shape: the init input (default `model_input_shape(config)`).
  load_weights: variables -> variables with pretrained weights loaded in
  (the trainer passes `trainer.checkpoints.init_from` for config.init_from;
  a config with init_from set needs it).
  """
  if config.init_from and load_weights is None:
    raise ValueError(f"config.init_from={config.init_from!r}: pass load_weights= (e.g. "
                     "functools.partial(protoseg_jax.trainer.checkpoints.init_from, config))")
  _, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  rep = sharding.replicated(mesh)
  variables, var_shardings = init_variables(config, model, mesh, image_shape)
  if config.init_from:
    variables = jax.device_put(load_weights(variables), var_shardings)
  params = variables["params"]
  tx, schedule = optim.create_optimizer(config, params)
  opt_abstract = jax.eval_shape(tx.init, params)
  opt_state = jax.jit(tx.init, out_shardings=sharding.like_params(
      opt_abstract, params, var_shardings["params"], mesh))(params)
  prototypes = variables.get("prototypes", {})
  proto_opt_state = {}
  if _pretrains_prototypes(config, prototypes):
    proto_opt_state = jax.jit(prototype_optimizer(config, prototypes).init,
                              out_shardings=rep)(prototypes)
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), rep), params=params,
                     batch_stats=variables.get("batch_stats", {}),
                     prototypes=prototypes, opt_state=opt_state,
                     rng=jax.device_put(state_rng, rep), proto_opt_state=proto_opt_state)
  return state, tx, schedule


def param_sharding(config, params, mesh):
  """NamedShardings of the params from config.sharding (sharding.param_shardings)."""
  rules = tuple(tuple(r) for r in config.sharding.rules)
  return sharding.param_shardings(params, mesh, rules, int(config.sharding.fsdp_min_size))


def state_sharding(state):
  """The shardings of a TrainState's arrays (for make_train_step)."""
  return jax.tree.map(lambda x: x.sharding, state)


def _pretrains_prototypes(config, prototypes) -> bool:
  """Whether prototypes are trained by gradient during warm-up (static)."""
  p = config.protoseg
  return bool(p.pretrain_prototype) and int(p.warmup_iters) > 0 and bool(prototypes)


def prototype_optimizer(config, prototypes) -> optax.GradientTransformation:
  """The optimizer of the warm-up prototype training (pretrain_prototype).

  The official code puts the prototypes (an nn.Parameter) in the optimizer's
  non-backbone group: same optimizer, schedule, weight decay and lr
  multiplier as the head. Here: `optim.create_optimizer` over the prototypes
  tree {"head": {"prototypes": ...}}, so the head's lr multiplier and the
  decay mask apply as to the head's params. Its own optax step count equals
  the global step because it only steps during warm-up, from step 0.
  (Differences: a config.optim.grad_clip_norm clips the prototypes' gradient
  by its own norm, not jointly with the params.)
  """
  return optim.create_optimizer(config, prototypes)[0]


# ----------------------------------------------------------------------------
# Steps.


def train_loss(params, prototypes, state: TrainState, batch: dict, *, model: Segmentor, config,
               ignore_index: int = 255, learn=True, pretrain: bool = False, rngs: dict):
  """The train step's loss as a function of (params, prototypes) -> (total, (parts, updates)).

  parts: {"loss_ce", "loss_ppc", "loss_ppd"} (+ "loss_aux"); updates: the
  mutable collections after the forward pass ("batch_stats", "prototypes":
  the prototype-learning step when `learn`). `learn` (bool or traced bool):
  prototype learning and PPC/PPD on (off during protoseg.warmup_iters);
  `pretrain`: the prototypes get the gradient while not `learn` (official
  pretrain_prototype); rngs: {"dropout", "prototypes"} keys.
  """
  p, m = config.protoseg, config.model
  class_weights = config.loss.class_weights
  variables = {**state.variables(), "params": params}
  if prototypes:
    variables["prototypes"] = prototypes
  extra = {"train_prototypes": jnp.logical_not(learn)} if pretrain else {}
  out, updates = model.apply(variables, batch["image"], batch["label"], train=True,
                             update=learn, mutable=["batch_stats", "prototypes"],
                             rngs=rngs, **extra)
  scale = jnp.asarray(learn).astype(jnp.float32)
  label_rows = int(config.loss.label_rows)
  total, parts = losses.protoseg_loss(
      out.logits, batch["label"], proto_targets=out.proto_targets, proto_lse=out.proto_lse,
      proto_target_logits=out.proto_target_logits,
      lambda_ppc=p.lambda_ppc * scale, lambda_ppd=p.lambda_ppd * scale,
      ppc_temperature=float(p.ppc_temperature), ignore_index=ignore_index,
      class_weights=class_weights, align_corners=m.align_corners, label_rows=label_rows)
  if out.aux_logits is not None:
    aux = losses.segmentation_loss(out.aux_logits, batch["label"], ignore_index=ignore_index,
                                   class_weights=class_weights, align_corners=m.align_corners,
                                   label_rows=label_rows)
    total = total + m.aux_weight * aux
    parts["loss_aux"] = aux
  return total, (parts, updates)


def finish_batch(batch: dict, config) -> dict:
  """The batch with the network's 'image': as it is, unless it carries
  'image_box' (the input pipeline's train batches, `augment.raw_transform`'s),
  which `ops.finish_crops` finishes with config.dataset's normalisation."""
  if "image_box" not in batch:
    return batch
  d = config.dataset
  return ops.finish_crops(batch, mean=d.mean, std=d.std, input_order=d.input_order)


def train_step(state: TrainState, batch: dict, *, model: Segmentor, tx, schedule, config,
               ignore_index: int = 255) -> tuple[TrainState, dict]:
  """One optimisation step on a global batch {'image' [B,H,W,3], 'label' [B,H,W]}
  (or one the input pipeline left for the device to finish: `finish_batch`)."""
  batch = finish_batch(batch, config)
  p = config.protoseg
  step_rng = jax.random.fold_in(state.rng, state.step)
  k_dropout, k_proto = jax.random.split(step_rng)
  learn = state.step >= p.warmup_iters          # prototype learning after warm-up
  # Official `pretrain_prototype`: during warm-up the prototypes are trained
  # by gradient through the CE loss (no clustering, no PPC/PPD); after it the
  # gradient is stopped and only the momentum update moves them.
  pretrain = _pretrains_prototypes(config, state.prototypes)
  prototypes = state.prototypes
  if pretrain:
    # The official forward first L2-normalises prototypes.data in place.
    prototypes = jax.tree.map(l2_normalize, prototypes)
  loss_fn = functools.partial(train_loss, state=state, batch=batch, model=model, config=config,
                              ignore_index=ignore_index, learn=learn, pretrain=pretrain,
                              rngs={"dropout": k_dropout, "prototypes": k_proto})
  if pretrain:
    (total, (parts, updates)), (grads, pgrads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(state.params, prototypes)
  else:
    (total, (parts, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, prototypes)
  upd, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, upd)
  new_protos = updates.get("prototypes", state.prototypes)
  proto_opt_state = state.proto_opt_state
  if pretrain:
    ptx = prototype_optimizer(config, prototypes)
    pupd, popt = ptx.update(pgrads, state.proto_opt_state, prototypes)
    trained = optax.apply_updates(prototypes, pupd)
    warm = jnp.logical_not(learn)
    new_protos = jax.tree.map(lambda a, b: jnp.where(warm, a, b), trained, new_protos)
    proto_opt_state = jax.tree.map(lambda a, b: jnp.where(warm, a, b), popt, proto_opt_state)
  # A non-finite loss or gradient: the update is skipped (every tree keeps its
  # value bit for bit, the prototypes' momentum / warm-up update included);
  # only `step` advances, so that data order and per-step rng stay those of a
  # run without the fault.
  finite = _all_finite(total, grads, pgrads if pretrain else {})
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  new_state = state.replace(
      step=state.step + 1, params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      batch_stats=keep(updates.get("batch_stats", state.batch_stats), state.batch_stats),
      prototypes=keep(new_protos, state.prototypes),
      proto_opt_state=keep(proto_opt_state, state.proto_opt_state))
  metrics = {"train/loss": total, "train/lr": schedule(state.step),
             "train/nonfinite": jnp.logical_not(finite).astype(jnp.float32)}
  metrics.update({f"train/{k}": v for k, v in parts.items()})
  return new_state, metrics


def _all_finite(*trees) -> jnp.ndarray:
  """bool scalar: every element of every array in `trees` is finite."""
  leaves = jax.tree.leaves(trees)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_train_step(model, tx, schedule, config, mesh, ignore_index: int = 255,
                    state_shardings=None):
  """The jitted, donated train step over `mesh`: `step(state, batch) -> (state,
  metrics)`, with `.lower` / `.trace` for ahead-of-time compilation and
  `.jitted`, the `jax.jit` object (the step itself, or the one a
  per_device_mean step calls under the mesh).

  Args:
    state_shardings: the TrainState's shardings (`state_sharding(state)`),
      kept from step to step; None: everything replicated.
  """
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  fn = functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config,
                         ignore_index=ignore_index)
  state_sh = rep if state_shardings is None else state_shardings
  step = jax.jit(fn, in_shardings=(state_sh, data), out_shardings=(state_sh, rep),
                 donate_argnums=0)
  if config.protoseg.prototype_update != "per_device_mean":
    step.jitted = step
    return step

  def under_mesh(method):
    # The per-device prototype update (a shard_map in the head) runs over this
    # step's mesh, also when it is a subset of the devices.
    def call(*args, **kwargs):
      with jax.set_mesh(mesh):
        return method(*args, **kwargs)
    return call

  # The step, and AOT .trace / .lower (e.g. `.lower(state, batch).compile()`),
  # under the mesh, as with the plain jitted step.
  step_under_mesh = under_mesh(step)
  step_under_mesh.jitted = step
  step_under_mesh.trace = under_mesh(step.trace)
  step_under_mesh.lower = under_mesh(step.lower)
  return step_under_mesh


def make_eval_step(model, config, mesh, num_classes: int, ignore_index: int = 255,
                   class_ids=None):
  """The jitted eval step: batch -> [C, C] confusion over the dataset's num_classes;
  class_ids: the dataset id of each model output (held_out.model_class_ids)."""
  step = inference.make_predict_step(
      lambda v, x: model.apply(v, x, train=False).logits, inference.inference_options(config),
      num_classes=num_classes, ignore_index=ignore_index, class_ids=class_ids)
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  # Variables keep the shardings they come with (replicated, or FSDP params).
  return jax.jit(step, in_shardings=(None, data), out_shardings=rep)
