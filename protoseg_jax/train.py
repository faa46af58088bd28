"""Training and evaluation loop: TrainState, train_step, train_and_evaluate.

One jitted, donated train step over a data-parallel mesh updates params,
batch_stats, optimizer state and the ProtoSeg prototypes (a mutable variable
collection, never touched by host code). Orbax checkpoints the whole state;
resuming restores it and restarts the input pipeline at the same batch.

The library part (TrainState, create_train_state, train_step, make_train_step,
make_eval_step) needs only jax, flax, optax and numpy: use it with your own
data loader. The loops (train_and_evaluate, evaluate_checkpoint) bring in the
trainer's edges where they use them: tf.data (input_pipeline), clu metric
writers and orbax (checkpoints); those imports sit inside the functions so
that `import protoseg_jax.train` works on an image without TensorFlow.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Optional

from absl import logging
import flax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from protoseg_jax import evaluate as evaluation
from protoseg_jax import diagnostics, inference, losses, optim, sharding
from protoseg_jax.models.segmentor import Segmentor, build_model
from protoseg_jax.ops import l2_normalize

TRAIN_KEYS = ("train/loss", "train/loss_ce", "train/loss_ppc", "train/loss_ppd", "train/lr")
METRICS_FILE = "metrics.jsonl"


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


def create_train_state(config, model: Segmentor, mesh, image_shape) -> tuple[TrainState, optax.GradientTransformation, Any]:
  """Initial (replicated) TrainState, optimizer and lr schedule."""
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  rep = sharding.replicated(mesh)

  @functools.partial(jax.jit, out_shardings=rep)
  def init(seed):
    # The 'rbg' generator: XLA compiles threefry bit generation separately
    # for every parameter shape, which made init take minutes on CPU. Init is
    # replicated, so rbg's sharding-dependent bits cannot matter here; the
    # train step keeps threefry (identical bits under any sharding).
    key = jax.random.key(seed, impl="rbg")
    k1, k2 = jax.random.split(key)
    return model.init({"params": k1, "dropout": k2}, jnp.zeros(image_shape, jnp.float32),
                      train=False)

  variables = flax.core.unfreeze(init(jax.random.randint(init_rng, (), 0, 2**31 - 1)))
  if config.init_from:
    from protoseg_jax import checkpoints  # orbax: only when weights are loaded
    variables = jax.device_put(checkpoints.init_from(config, variables), rep)
  params = variables["params"]
  tx, schedule = optim.create_optimizer(config, params)
  opt_state = jax.jit(tx.init, out_shardings=rep)(params)
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


def train_step(state: TrainState, batch: dict, *, model: Segmentor, tx, schedule, config,
               ignore_index: int = 255) -> tuple[TrainState, dict]:
  """One optimisation step on a global batch {'image' [B,H,W,3], 'label' [B,H,W]}."""
  p, m = config.protoseg, config.model
  step_rng = jax.random.fold_in(state.rng, state.step)
  k_dropout, k_proto = jax.random.split(step_rng)
  learn = state.step >= p.warmup_iters          # prototype learning after warm-up
  class_weights = config.loss.class_weights
  # Official `pretrain_prototype`: during warm-up the prototypes are trained
  # by gradient through the CE loss (no clustering, no PPC/PPD); after it the
  # gradient is stopped and only the momentum update moves them.
  pretrain = _pretrains_prototypes(config, state.prototypes)
  prototypes = state.prototypes
  if pretrain:
    # The official forward first L2-normalises prototypes.data in place.
    prototypes = jax.tree.map(l2_normalize, prototypes)

  def loss_fn(params, protos):
    variables = {**state.variables(), "params": params}
    if protos:
      variables["prototypes"] = protos
    extra = {"train_prototypes": jnp.logical_not(learn)} if pretrain else {}
    out, updates = model.apply(variables, batch["image"], batch["label"], train=True,
                               update=learn, mutable=["batch_stats", "prototypes"],
                               rngs={"dropout": k_dropout, "prototypes": k_proto}, **extra)
    scale = learn.astype(jnp.float32)
    total, parts = losses.protoseg_loss(
        out.logits, batch["label"], out.proto_logits, out.proto_targets,
        lambda_ppc=p.lambda_ppc * scale, lambda_ppd=p.lambda_ppd * scale,
        ignore_index=ignore_index, class_weights=class_weights, align_corners=m.align_corners)
    if out.aux_logits is not None:
      aux = losses.segmentation_loss(out.aux_logits, batch["label"], ignore_index=ignore_index,
                                     class_weights=class_weights, align_corners=m.align_corners)
      total = total + m.aux_weight * aux
      parts["loss_aux"] = aux
    return total, (parts, updates)

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
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            batch_stats=updates.get("batch_stats", state.batch_stats),
                            prototypes=new_protos, proto_opt_state=proto_opt_state)
  metrics = {"train/loss": total, "train/lr": schedule(state.step)}
  metrics.update({f"train/{k}": v for k, v in parts.items()})
  return new_state, metrics


def make_train_step(model, tx, schedule, config, mesh, ignore_index: int = 255):
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  fn = functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config,
                         ignore_index=ignore_index)
  step = jax.jit(fn, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)
  if config.protoseg.prototype_update != "per_device_mean":
    return step

  def step_under_mesh(state, batch):
    # The per-device prototype update (a shard_map in the head) runs over this
    # step's mesh, also when it is a subset of the devices.
    with jax.set_mesh(mesh):
      return step(state, batch)

  return step_under_mesh


def make_eval_step(model, config, mesh, num_classes: int, ignore_index: int = 255):
  e = config.eval
  step = inference.make_predict_step(
      lambda v, x: model.apply(v, x, train=False).logits, num_classes=num_classes,
      ignore_index=ignore_index, mode=e.mode, slide_crop=e.slide_crop, stride=e.stride,
      scales=tuple(e.scales), flip=e.flip, align_corners=config.model.align_corners,
      resize=e.resize, merge=e.merge)
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(rep, data), out_shardings=rep)


# ----------------------------------------------------------------------------
# Metrics output.


class MetricsLog:
  """Appends one JSON object per write to DIR/metrics.jsonl (process 0 only)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.enabled = jax.process_index() == 0

  def write(self, step: int, scalars: dict):
    if not self.enabled:
      return
    record = {"step": int(step)}
    for k, v in scalars.items():
      record[k] = v if isinstance(v, (dict, list, str)) else float(v)
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()


def _eval_scalars(metrics: dict, class_names) -> tuple[dict, dict]:
  """(jsonl record, tensorboard scalars) from evaluate.Evaluator metrics."""
  record = {"val/mIoU": metrics["mIoU"], "val/mAcc": metrics["mAcc"], "val/aAcc": metrics["aAcc"]}
  per_class = {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, metrics["IoU"])}
  tb = dict(record)
  tb.update({f"val/IoU/{k}": v for k, v in per_class.items() if v is not None})
  return {**record, "val/IoU": per_class}, tb


# ----------------------------------------------------------------------------
# Loops.


class _Run:
  """Everything train and eval need, built once from the config."""

  def __init__(self, config, workdir: str):
    from clu import metric_writers
    from protoseg_jax import datasets
    self.config, self.workdir = config, workdir
    self.mesh = sharding.create_mesh()
    sharding.check_batch_size(config.batch_size, self.mesh)
    sharding.check_batch_size(config.eval_batch_size, self.mesh, "config.eval_batch_size")
    self.info = datasets.get_dataset_info(config)
    self.model = build_model(config, self.info.num_classes, self.info.ignore_index)
    crop = tuple(config.dataset.crop_size)
    self.state, self.tx, self.schedule = create_train_state(
        config, self.model, self.mesh, (1, crop[0], crop[1], 3))
    self.data_sharding = sharding.batch_sharding(self.mesh)
    self.evaluator = evaluation.Evaluator(
        make_eval_step(self.model, config, self.mesh, self.info.num_classes, self.info.ignore_index),
        num_classes=self.info.num_classes, class_names=self.info.class_names,
        log_every=config.eval.log_every_batches)
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False)
    self.log = MetricsLog(workdir)

  def evaluate(self, state: TrainState) -> dict:
    from protoseg_jax import input_pipeline
    n = self.config.max_eval_batches
    batches = input_pipeline.create_eval_iterator(self.config, self.data_sharding)
    metrics = self.evaluator.evaluate(state.variables(), batches,
                                      num_batches=None if n is None or n < 0 else int(n))
    return metrics

  def write_eval(self, step: int, metrics: dict):
    record, tb = _eval_scalars(metrics, self.info.class_names)
    self.writer.write_scalars(step, tb)
    self.log.write(step, record)
    self.writer.flush()


def train_and_evaluate(config, workdir: str) -> TrainState:
  """Train config.num_train_steps steps with periodic evaluation; resumes from DIR."""
  from clu import periodic_actions
  from protoseg_jax import checkpoints, input_pipeline
  run = _Run(config, workdir)
  logging.info("dataset %s: %d classes, %d train / %d eval examples; %d devices, %d processes",
               run.info.name, run.info.num_classes, run.info.num_train_examples,
               run.info.num_eval_examples, jax.device_count(), jax.process_count())
  mngr = checkpoints.checkpoint_manager(workdir, config)
  state = run.state
  if mngr.latest_step() is not None:
    state = checkpoints.restore_state(mngr, state)
    logging.info("Resumed from step %d (%s)", int(state.step), mngr.directory)
  start = int(jax.device_get(state.step))
  total = int(config.num_train_steps)
  step_fn = make_train_step(run.model, run.tx, run.schedule, config, run.mesh, run.info.ignore_index)
  batches = input_pipeline.create_train_iterator(config, run.data_sharding, start_step=start)
  hooks = []
  if jax.process_index() == 0:
    hooks.append(periodic_actions.ReportProgress(num_train_steps=total, writer=run.writer,
                                                 every_steps=config.log_every_steps))
  pending = []
  t0 = time.time()
  for step in range(start + 1, total + 1):
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      batch = next(batches)
      state, metrics = step_fn(state, batch)
      pending.append(metrics)
    for h in hooks:
      h(step)
    if step % config.log_every_steps == 0 or step == total:
      host = jax.device_get(pending)
      pending = []
      summary = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
      summary["train/lr"] = float(host[-1]["train/lr"])
      if state.prototypes:  # did the prototypes collapse? ({} for the linear head)
        protos = jax.device_get(state.prototypes)
        summary.update({k: float(v) for k, v in diagnostics.scalars(protos, "train").items()})
      if not np.isfinite(summary["train/loss"]):
        raise FloatingPointError(f"train/loss is {summary['train/loss']} at step {step}")
      run.writer.write_scalars(step, summary)
      run.log.write(step, summary)
    if step % config.checkpoint_every_steps == 0 or step == total:
      checkpoints.save_state(mngr, step, state)
    if step % config.eval_every_steps == 0 or step == total:
      run.write_eval(step, run.evaluate(state))
  mngr.wait_until_finished()
  mngr.close()
  logging.info("Finished %d steps in %.1fs", total - start, time.time() - t0)
  run.writer.close()
  return state


def restore_checkpoint(config, workdir: str, state: TrainState,
                       step: Optional[int] = None) -> TrainState:
  """`state` restored from the latest (or `step`) checkpoint in DIR.

  With no checkpoint at all and config.init_from set, `state` itself: the
  weights init_from gave the model (evaluate or predict converted weights).
  """
  from protoseg_jax import checkpoints
  mngr = checkpoints.checkpoint_manager(workdir, config, read_only=True)
  try:
    if step is None and mngr.latest_step() is None and config.init_from:
      logging.info("No checkpoint in %s: using config.init_from=%s", workdir, config.init_from)
      return state
    state = checkpoints.restore_state(mngr, state, step)
    logging.info("Restored step %d from %s", int(jax.device_get(state.step)), mngr.directory)
    return state
  finally:
    mngr.close()


def evaluate_checkpoint(config, workdir: str, step: Optional[int] = None) -> dict:
  """Evaluate the latest (or `step`) checkpoint in DIR; appends to DIR/metrics.jsonl."""
  run = _Run(config, workdir)
  state = restore_checkpoint(config, workdir, run.state, step)
  metrics = run.evaluate(state)
  run.write_eval(int(jax.device_get(state.step)), metrics)
  run.writer.close()
  return metrics
