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
import signal
import threading
import time
from typing import Any, Optional

from absl import logging
import flax
import flax.struct
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from protoseg_jax import evaluate as evaluation
from protoseg_jax import diagnostics, held_out, inference, losses, optim, sharding
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

  def init(seed):
    # The 'rbg' generator: XLA compiles threefry bit generation separately
    # for every parameter shape, which made init take minutes on CPU. Init is
    # replicated, so rbg's sharding-dependent bits cannot matter here; the
    # train step keeps threefry (identical bits under any sharding).
    key = jax.random.key(seed, impl="rbg")
    k1, k2 = jax.random.split(key)
    return model.init({"params": k1, "dropout": k2}, jnp.zeros(image_shape, jnp.float32),
                      train=False)

  seed = jax.random.randint(init_rng, (), 0, 2**31 - 1)
  abstract = jax.eval_shape(init, seed)
  # Params as config.sharding.rules say (FSDP or replicated); every other
  # collection (batch_stats, prototypes) replicated.
  var_shardings = {k: (param_sharding(config, v, mesh) if k == "params"
                       else jax.tree.map(lambda _: rep, v)) for k, v in abstract.items()}
  variables = flax.core.unfreeze(jax.jit(init, out_shardings=var_shardings)(seed))
  if config.init_from:
    from protoseg_jax import checkpoints  # orbax: only when weights are loaded
    variables = jax.device_put(checkpoints.init_from(config, variables), var_shardings)
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
  e = config.eval
  step = inference.make_predict_step(
      lambda v, x: model.apply(v, x, train=False).logits, num_classes=num_classes,
      ignore_index=ignore_index, mode=e.mode, slide_crop=e.slide_crop, stride=e.stride,
      scales=tuple(e.scales), flip=e.flip, align_corners=config.model.align_corners,
      resize=e.resize, merge=e.merge, class_ids=class_ids)
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  # Variables keep the shardings they come with (replicated, or FSDP params).
  return jax.jit(step, in_shardings=(None, data), out_shardings=rep)


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
# Faults: skipped (non-finite) steps, stop signals.


class _SkippedSteps:
  """The log's account of train steps skipped for a non-finite loss or gradient.

  `summary` turns one log window of per-step metrics into its record: means
  over the window's finite steps only (a window without any has no loss
  keys), `train/lr` of its last step, `train/nonfinite_steps` (skipped steps
  in the window) and `train/nonfinite_steps_total` (since this process
  started). `tripped` becomes (first, last) step of the first run of `limit`
  consecutive skipped steps (limit 0: never).
  """

  def __init__(self, limit: int):
    self.limit = int(limit)
    self.total = 0
    self.streak = 0
    self.streak_start = None
    self.tripped = None

  def summary(self, host: list, last_step: int) -> dict:
    first_step = last_step - len(host) + 1
    skipped = [bool(m["train/nonfinite"]) for m in host]
    for i, bad in enumerate(skipped):
      if not bad:
        self.streak = 0
        continue
      if self.streak == 0:
        self.streak_start = first_step + i
      self.streak += 1
      if self.limit > 0 and self.streak >= self.limit and self.tripped is None:
        self.tripped = (self.streak_start, first_step + i)
    self.total += sum(skipped)
    finite = [m for m, bad in zip(host, skipped) if not bad]
    means = [k for k in host[0] if k not in ("train/lr", "train/nonfinite")]
    summary = {k: float(np.mean([m[k] for m in finite])) for k in means} if finite else {}
    summary["train/lr"] = float(host[-1]["train/lr"])
    summary["train/nonfinite_steps"] = sum(skipped)
    summary["train/nonfinite_steps_total"] = self.total
    return summary

  def message(self, step: int, ckpt_dir: str, latest: Optional[int]) -> str:
    first, last = self.tripped
    where = (f"the latest checkpoint (step {latest} in {ckpt_dir})" if latest is not None
             else f"(no checkpoint in {ckpt_dir} yet)")
    return (f"{self.limit} consecutive train steps ({first}..{last}) had a non-finite loss or "
            f"gradient and were skipped (config.max_consecutive_nonfinite={self.limit}); stopped at "
            f"step {step} without saving it. A skipped step changes nothing but the step count, "
            f"so {where} holds the last finite update. Lower config.optim.learning_rate or set "
            "config.optim.grad_clip_norm (or check the input data of those steps), then run again "
            "to resume from that checkpoint.")


def _nan_images(batch: dict) -> dict:
  """The batch with all-NaN images: config.debug.nan_steps, a testing switch.

  The fault enters like bad data: the loss, every gradient, the BatchNorm
  statistics and the prototype update of that step are non-finite. Done
  here, not in the jitted step, so the switch leaves the compiled step as
  it is (empty or not).
  """
  return {**batch, "image": batch["image"] * jnp.nan}


class _StopSignals:
  """SIGTERM / SIGINT (preemption) while training: save the step, return normally.

  `install()`, just before the train loop, takes over SIGTERM and SIGINT
  (from the main thread only; elsewhere the handlers stay as they are);
  leaving the `with` block restores the previous handlers. A second signal
  while stopping raises KeyboardInterrupt (stop now, without the checkpoint).
  `reached(step, at_log_step)`, called after each step is dispatched, says
  whether to stop after that step; all processes answer the same at the same
  step:

  - one process: True at the first step dispatched after the signal.
  - jax.distributed with JAX's preemption service (jax_enable_preemption_
    service, the default): SIGTERM is the service's own preemption notice
    (its handler is left in place), spread to every process by the
    coordination service; each stops at the step
    multihost_utils.reached_preemption_sync_point names (the largest step
    any process had reached, plus one). A SIGINT is passed on as a SIGTERM.
  - jax.distributed without the service: the processes' flags are
    all-gathered at log steps; all stop at the first log step after a signal.
  """

  def __init__(self):
    self.reason = None          # what asked to stop, for the log
    self._previous = {}
    self._service = False

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def install(self):
    self._service = (jax.distributed.is_initialized()
                     and bool(jax.config.jax_enable_preemption_service))
    if threading.current_thread() is not threading.main_thread():
      logging.warning("Training outside the main thread: SIGTERM/SIGINT keep their handlers "
                      "(no checkpoint is saved on a signal)")
      return
    for sig in (signal.SIGTERM, signal.SIGINT):
      if not (sig == signal.SIGTERM and self._service):
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.reason is not None:
      raise KeyboardInterrupt(f"{name} while stopping for {self.reason}: stopped without a checkpoint")
    self.reason = name
    logging.warning("%s received: stopping after the current step, with a checkpoint (send it "
                    "again to stop at once, without one)", name)
    if self._service:
      os.kill(os.getpid(), signal.SIGTERM)   # the preemption service's notice: all processes stop

  def reached(self, step: int, at_log_step: bool) -> bool:
    if self._service:
      if not multihost_utils.reached_preemption_sync_point(step):
        return False
      self.reason = self.reason or "a preemption notice (SIGTERM)"
      return True
    if jax.process_count() == 1:
      return self.reason is not None
    if not at_log_step:
      return False
    if not np.any(multihost_utils.process_allgather(np.int32(self.reason is not None))):
      return False
    self.reason = self.reason or "a signal to another process"
    return True


# ----------------------------------------------------------------------------
# Loops.


COMPILATION_CACHE_DIR = "compilation_cache"   # under the workdir


def enable_compilation_cache(config, workdir: str) -> Optional[str]:
  """Turns on JAX's persistent compilation cache; returns its directory.

  config.compilation_cache_dir: "" (default) = DIR/compilation_cache, unless
  the user set one already (JAX_COMPILATION_CACHE_DIR, jax.config); "off";
  or a directory (e.g. one shared by runs of the same model). A
  restart then loads the train and eval steps instead of compiling them
  (programs that compile in under a second are not cached, JAX's default).
  """
  from jax.experimental.compilation_cache import compilation_cache
  setting = str(config.compilation_cache_dir)
  if setting == "off":
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    return None
  if not setting and jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  path = os.path.abspath(os.path.expanduser(setting or os.path.join(workdir,
                                                                    COMPILATION_CACHE_DIR)))
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  compilation_cache.reset_cache()   # also when this process compiled before (picks up the dir)
  logging.info("Persistent compilation cache: %s", path)
  return path


class _Run:
  """Everything train and eval need, built once from the config."""

  def __init__(self, config, workdir: str):
    from protoseg_jax import validate
    validate.validate_config(config)  # every invalid value at once, before data or compilation
    enable_compilation_cache(config, workdir)
    from clu import metric_writers
    from protoseg_jax import datasets
    self.config, self.workdir = config, workdir
    self.mesh = sharding.create_mesh()
    sharding.check_batch_size(config.batch_size, self.mesh)
    # Evaluation pads short batches to the device count (input_pipeline).
    self.info = datasets.get_dataset_info(config)
    # config.dataset.held_out_class: the model's classes are the dataset's minus that one.
    self.class_ids = held_out.model_class_ids(
        self.info.num_classes, held_out.held_out_class(config, self.info.num_classes))
    self.model = build_model(config, len(self.class_ids), self.info.ignore_index)
    crop = tuple(config.dataset.crop_size)
    self.state, self.tx, self.schedule = create_train_state(
        config, self.model, self.mesh, (1, crop[0], crop[1], 3))
    self.data_sharding = sharding.batch_sharding(self.mesh)
    self.evaluator = evaluation.Evaluator(
        make_eval_step(self.model, config, self.mesh, self.info.num_classes, self.info.ignore_index,
                       class_ids=self.class_ids),
        num_classes=self.info.num_classes, class_names=self.info.class_names,
        log_every=config.eval.log_every_batches)
    # val/proto_*: jitted once here, not at every evaluation.
    self.usage_step = jax.jit(
        diagnostics.make_usage_step(
            self.model, held_out.label_lut(self.class_ids, self.info.ignore_index)),
        out_shardings=sharding.replicated(self.mesh))
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
    if state.prototypes and self.config.eval.proto_usage_batches != 0:
      # val/proto_*: which prototypes the eval pixels retrieve (a pass of its own).
      metrics["proto_logs"] = diagnostics.eval_summaries(
          self.config, self.model, state.variables(),
          input_pipeline.create_eval_iterator(self.config, self.data_sharding),
          held_out.class_names(self.info.class_names, self.class_ids),
          step=self.usage_step)
    return metrics

  def write_eval(self, step: int, metrics: dict):
    record, tb = _eval_scalars(metrics, self.info.class_names)
    proto_record, proto_tb = metrics.get("proto_logs", ({}, {}))
    record, tb = {**record, **proto_record}, {**tb, **proto_tb}
    self.writer.write_scalars(step, tb)
    self.log.write(step, record)
    self.writer.flush()


def train_and_evaluate(config, workdir: str) -> TrainState:
  """Train config.num_train_steps steps with periodic evaluation; resumes from DIR.

  Faults:
    A step whose loss or gradient is not finite is skipped inside the jitted
    step (params, optimizer state, batch_stats, prototypes and the warm-up
    prototype optimizer keep their values; `state.step` still advances, so
    data order and per-step rng stay those of a run without the fault; the
    optimizer's own count, i.e. its schedule and Adam's bias correction,
    does not) and counted in `train/nonfinite_steps`; log means are over the
    finite steps. Flags are read at log steps only (no per-step host sync):
    at the first log step (step % config.log_every_steps == 0, the last
    step, or a stop step) by which config.max_consecutive_nonfinite
    consecutive steps were skipped, the run writes that step's metrics,
    waits for the checkpoints already begun, and raises FloatingPointError
    without saving or evaluating that step. Every checkpoint holds finite
    values (a skipped step changes only the step count).
    SIGTERM / SIGINT (preemption; `_StopSignals`), once the train loop has
    begun: the run stops after the first step it dispatches after the
    signal (a signal during an evaluation waits for its end; several
    processes stop at one step, see `_StopSignals`), writes that step's
    metrics (a partial log window), saves its checkpoint (an evaluation due
    at that step is skipped), waits for the save, closes the writers and
    returns that state; running again resumes from it exactly. A signal at
    the last step just lets the run finish. A second signal raises
    KeyboardInterrupt at once. The previous handlers are back when this
    returns (or raises).
  """
  with _StopSignals() as stop:
    return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(config, workdir: str, stop: _StopSignals) -> TrainState:
  from clu import periodic_actions
  from protoseg_jax import checkpoints, input_pipeline
  t_start = time.time()
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
  step_fn = make_train_step(run.model, run.tx, run.schedule, config, run.mesh, run.info.ignore_index,
                            state_shardings=state_sharding(state))
  batches = input_pipeline.create_train_iterator(config, run.data_sharding, start_step=start)
  hooks = []
  if jax.process_index() == 0:
    hooks.append(periodic_actions.ReportProgress(num_train_steps=total, writer=run.writer,
                                                 every_steps=config.log_every_steps))
  pending = []
  skipped, stopping = _SkippedSteps(config.max_consecutive_nonfinite), False
  nan_steps = frozenset(int(s) for s in config.debug.nan_steps)
  t0 = time.time()
  stop.install()
  for step in range(start + 1, total + 1):
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      batch = next(batches)
      if step in nan_steps:
        batch = _nan_images(batch)
      state, metrics = step_fn(state, batch)
      pending.append(metrics)
    if step == start + 1:
      jax.block_until_ready(metrics)
      logging.info("First step done %.1fs after the start (compilation included)",
                   time.time() - t_start)
    for h in hooks:
      h(step)
    stopping = step < total and stop.reached(step, step % config.log_every_steps == 0)
    if step % config.log_every_steps == 0 or step == total or stopping:
      host = jax.device_get(pending)
      pending = []
      summary = skipped.summary(host, step)
      if state.prototypes:  # did the prototypes collapse? ({} for the linear head)
        protos = jax.device_get(state.prototypes)
        summary.update({k: float(v) for k, v in diagnostics.scalars(protos, "train").items()})
      run.writer.write_scalars(step, summary)
      run.log.write(step, summary)
      if skipped.tripped:
        mngr.wait_until_finished()   # the checkpoints begun before stay whole
        mngr.close()
        run.writer.close()
        raise FloatingPointError(skipped.message(step, str(mngr.directory), mngr.latest_step()))
    if step % config.checkpoint_every_steps == 0 or step == total or stopping:
      checkpoints.save_state(mngr, step, state)
    if stopping:
      break
    if step % config.eval_every_steps == 0 or step == total:
      run.write_eval(step, run.evaluate(state))
  mngr.wait_until_finished()
  mngr.close()
  if stopping:
    logging.warning("Stopped at step %d of %d on %s, after %.1fs: checkpoint saved in %s. Run the "
                    "same command again to resume from step %d.", step, total, stop.reason,
                    time.time() - t0, mngr.directory, step)
  else:
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
