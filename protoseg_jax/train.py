"""Training and evaluation loop: TrainState, train_step, train_and_evaluate.

One jitted, donated train step over a data-parallel mesh updates params,
batch_stats, optimizer state and the ProtoSeg prototypes (a mutable variable
collection, never touched by host code). Orbax checkpoints the whole state;
resuming restores it and restarts the input pipeline at the same batch.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Optional

from absl import logging
from clu import metric_writers, periodic_actions
import flax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from protoseg_jax import evaluate as evaluation
from protoseg_jax import convert, input_pipeline, losses, optim, sharding, trees
from protoseg_jax.models.segmentor import Segmentor, build_model

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

  def variables(self) -> dict:
    v = {"params": self.params}
    if self.batch_stats:
      v["batch_stats"] = self.batch_stats
    if self.prototypes:
      v["prototypes"] = self.prototypes
    return v


# ----------------------------------------------------------------------------
# State creation.


def _fitted(want_tree, got_tree, what: str):
  """`got_tree` cast to the dtypes of `want_tree`, after checking paths and shapes agree."""
  trees.check_tree_shapes(got_tree, want_tree, f"{what} does not fit")
  return jax.tree.map(lambda x, y: jnp.asarray(y, x.dtype), want_tree, got_tree)


def _load_init_from(config, variables: dict) -> dict:
  """Replace the backbone's params/batch_stats with converted weights."""
  loaded = convert.load_variables(config.init_from)
  out = flax.core.unfreeze(variables)
  scope = config.get("init_from_scope", "backbone")
  if scope == "all":
    return _load_whole_model(config, out, loaded)
  if scope != "backbone":
    raise ValueError(f"config.init_from_scope must be 'backbone' or 'all', got {scope!r}")
  for col in ("params", "batch_stats"):
    if col not in loaded:
      continue
    if "backbone" not in out.get(col, {}):
      raise ValueError(f"init_from={config.init_from!r} has {col} but the model has no backbone {col}")
    src = loaded[col].get("backbone", loaded[col])
    out[col]["backbone"] = _fitted(
        out[col]["backbone"], src,
        f"init_from={config.init_from!r} ({col}) vs backbone {config.model.backbone!r}")
  logging.info("Initialised the backbone from %s", config.init_from)
  return out


def _load_whole_model(config, out: dict, loaded: dict) -> dict:
  """Every collection of the model from a whole converted model (init_from_scope='all')."""
  if set(loaded) != set(out):
    raise ValueError(f"init_from={config.init_from!r} holds collections {sorted(loaded)}, the "
                     f"model has {sorted(out)} (init_from_scope='all' needs a whole model, e.g. "
                     "from `python -m protoseg_jax.convert --arch protoseg_hrnet_w48`)")
  for col in out:
    out[col] = _fitted(out[col], loaded[col], f"init_from={config.init_from!r} ({col}) vs the model")
  logging.info("Initialised the whole model from %s", config.init_from)
  return out


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
    variables = jax.device_put(_load_init_from(config, variables), rep)
  params = variables["params"]
  tx, schedule = optim.create_optimizer(config, params)
  opt_state = jax.jit(tx.init, out_shardings=rep)(params)
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), rep), params=params,
                     batch_stats=variables.get("batch_stats", {}),
                     prototypes=variables.get("prototypes", {}), opt_state=opt_state,
                     rng=jax.device_put(state_rng, rep))
  return state, tx, schedule


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

  def loss_fn(params):
    variables = {**state.variables(), "params": params}
    out, updates = model.apply(variables, batch["image"], batch["label"], train=True,
                               update=learn, mutable=["batch_stats", "prototypes"],
                               rngs={"dropout": k_dropout, "prototypes": k_proto})
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

  (total, (parts, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  upd, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, upd)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            batch_stats=updates.get("batch_stats", state.batch_stats),
                            prototypes=updates.get("prototypes", state.prototypes))
  metrics = {"train/loss": total, "train/lr": schedule(state.step)}
  metrics.update({f"train/{k}": v for k, v in parts.items()})
  return new_state, metrics


def make_train_step(model, tx, schedule, config, mesh, ignore_index: int = 255):
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  fn = functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config,
                         ignore_index=ignore_index)
  return jax.jit(fn, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)


def make_eval_step(model, config, mesh, num_classes: int, ignore_index: int = 255):
  e = config.eval
  step = evaluation.make_predict_step(
      lambda v, x: model.apply(v, x, train=False).logits, num_classes=num_classes,
      ignore_index=ignore_index, mode=e.mode, crop_size=e.crop_size, stride=e.stride,
      scales=tuple(e.scales), flip=e.flip, align_corners=config.model.align_corners)
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
# Checkpoints.


def checkpoint_manager(workdir: str, config, *, read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=int(config.keep_checkpoints), create=not read_only,
      enable_async_checkpointing=not read_only)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def restore_state(mngr: ocp.CheckpointManager, state: TrainState, step: Optional[int] = None) -> TrainState:
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
  if step not in mngr.all_steps():
    raise FileNotFoundError(f"no checkpoint for step {step} in {mngr.directory}; "
                            f"available: {sorted(mngr.all_steps())}")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


# ----------------------------------------------------------------------------
# Loops.


class _Run:
  """Everything train and eval need, built once from the config."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.mesh = sharding.create_mesh()
    sharding.check_batch_size(config.batch_size, self.mesh)
    sharding.check_batch_size(config.eval_batch_size, self.mesh, "config.eval_batch_size")
    self.info = input_pipeline.get_dataset_info(config)
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
    n = self.config.max_eval_batches
    batches = input_pipeline.create_eval_iterator(self.config, self.data_sharding)
    metrics = self.evaluator.evaluate(state.variables(), batches,
                                      num_batches=None if n is None or n < 0 else int(n))
    logging.info("\n%s", evaluation.format_table(metrics, self.info.class_names))
    return metrics

  def write_eval(self, step: int, metrics: dict):
    record, tb = _eval_scalars(metrics, self.info.class_names)
    self.writer.write_scalars(step, tb)
    self.log.write(step, record)
    self.writer.flush()


def train_and_evaluate(config, workdir: str) -> TrainState:
  """Train config.num_train_steps steps with periodic evaluation; resumes from DIR."""
  run = _Run(config, workdir)
  logging.info("dataset %s: %d classes, %d train / %d eval examples; %d devices, %d processes",
               run.info.name, run.info.num_classes, run.info.num_train_examples,
               run.info.num_eval_examples, jax.device_count(), jax.process_count())
  mngr = checkpoint_manager(workdir, config)
  state = run.state
  if mngr.latest_step() is not None:
    state = restore_state(mngr, state)
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
      if not np.isfinite(summary["train/loss"]):
        raise FloatingPointError(f"train/loss is {summary['train/loss']} at step {step}")
      run.writer.write_scalars(step, summary)
      run.log.write(step, summary)
    if step % config.checkpoint_every_steps == 0 or step == total:
      mngr.save(step, args=ocp.args.StandardSave(state))
    if step % config.eval_every_steps == 0 or step == total:
      run.write_eval(step, run.evaluate(state))
  mngr.wait_until_finished()
  mngr.close()
  logging.info("Finished %d steps in %.1fs", total - start, time.time() - t0)
  run.writer.close()
  return state


def evaluate_checkpoint(config, workdir: str, step: Optional[int] = None) -> dict:
  """Evaluate the latest (or `step`) checkpoint in DIR; appends to DIR/metrics.jsonl."""
  run = _Run(config, workdir)
  mngr = checkpoint_manager(workdir, config, read_only=True)
  if step is None and mngr.latest_step() is None and config.init_from:
    state = run.state  # no checkpoint yet: the weights config.init_from gave the model
  else:
    state = restore_state(mngr, run.state, step)
  step = int(jax.device_get(state.step))
  metrics = run.evaluate(state)
  run.write_eval(step, metrics)
  mngr.close()
  run.writer.close()
  return metrics
