"""The trainer's loops: train with periodic evaluation, evaluate a checkpoint.

  train_and_evaluate(config, workdir)      train config.num_train_steps steps, resuming
                                           from DIR's newest intact checkpoint
  evaluate_checkpoint(config, workdir)     evaluate a run (`run.load_run`), append to
                                           DIR/metrics.jsonl

Outputs in the workdir: metrics.jsonl (process 0), TensorBoard event files
(clu metric writers), checkpoints/<step>/ (orbax), config.json and run.json
(`run.describe`: the workdir describes itself), trainer.lock (one trainer at
a time, `faults.WorkdirLock`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Optional

from absl import logging
from clu import metric_writers
import jax
import numpy as np

from protoseg_jax import evaluate as evaluation
from protoseg_jax import prototype_stats, sharding, train, validate
from protoseg_jax.classes import ClassMap
from protoseg_jax.models.segmentor import build_model
from protoseg_jax.trainer import (checkpoints, compile_cache, datasets, faults, input_pipeline,
                                  paths, run as runs)

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
  """Appends one JSON object per write to DIR/metrics.jsonl (process 0 only;
  in a bucket the object is written again with the new line:
  `paths.append_text`)."""

  def __init__(self, workdir: str):
    self.path = paths.resolve(workdir) / METRICS_FILE
    self.enabled = jax.process_index() == 0

  def write(self, step: int, scalars: dict):
    if not self.enabled:
      return
    record = {"step": int(step)}
    for k, v in scalars.items():
      record[k] = v if isinstance(v, (dict, list, str)) else float(v)
    paths.append_text(self.path, json.dumps(record) + "\n")


def eval_scalars(metrics: dict, class_names) -> tuple[dict, dict]:
  """(jsonl record, tensorboard scalars) from evaluate.Evaluator metrics."""
  record = {"val/mIoU": metrics["mIoU"], "val/mAcc": metrics["mAcc"], "val/aAcc": metrics["aAcc"]}
  per_class = {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, metrics["IoU"])}
  tb = dict(record)
  tb.update({f"val/IoU/{k}": v for k, v in per_class.items() if v is not None})
  return {**record, "val/IoU": per_class}, tb


def validate_run_config(config, recorded: Optional[ClassMap] = None, **counts):
  """`validate.validate_config` with the datasets the trainer knows of (and
  the workdir's run.json `recorded`)."""
  validate.validate_config(config, datasets=datasets.catalog(recorded), **counts)


class Evaluation:
  """One evaluation of a model over config's eval split: the confusion matrix
  metrics (`evaluate.Evaluator`) and the val/proto_* usage pass, each step
  jitted once, for as many evaluations as the run makes."""

  def __init__(self, config, model, classes: ClassMap, mesh):
    self.config, self.model, self.classes = config, model, classes
    self.data_sharding = sharding.batch_sharding(mesh)
    self.evaluator = evaluation.Evaluator(
        train.make_eval_step(model, config, mesh, classes.num_ids, classes.ignore_index,
                             class_ids=classes.class_ids),
        num_classes=classes.num_ids, class_names=classes.names,
        log_every=config.eval.log_every_batches)
    # val/proto_*: jitted once here with the run's label map, not at every evaluation.
    self.usage_step = (prototype_stats.jit_usage_step(model, classes.label_lut(), mesh)
                       if config.model.head == "proto" else None)

  def batches(self):
    return input_pipeline.create_eval_iterator(self.config, self.data_sharding, run=self.classes)

  def evaluate(self, variables) -> dict:
    n = self.config.max_eval_batches
    metrics = self.evaluator.evaluate(variables, self.batches(),
                                      num_batches=None if n is None or n < 0 else int(n))
    if (self.usage_step is not None and variables.get("prototypes")
        and self.config.eval.proto_usage_batches != 0):
      # val/proto_*: which prototypes the eval pixels retrieve (a pass of its own).
      metrics["proto_logs"] = prototype_stats.eval_summaries(
          self.config, self.usage_step, variables, self.batches(), self.classes.output_names)
    return metrics


class _Writers:
  """metrics.jsonl and TensorBoard of a workdir."""

  def __init__(self, workdir: str):
    if jax.process_index() == 0:
      paths.resolve(workdir).mkdir(parents=True, exist_ok=True)
    self.writer = metric_writers.create_default_writer(
        paths.text(workdir), just_logging=jax.process_index() > 0, asynchronous=False)
    self.log = MetricsLog(workdir)

  def write_train(self, step: int, summary: dict):
    self.writer.write_scalars(step, summary)
    self.log.write(step, summary)

  def write_eval(self, step: int, metrics: dict, class_names):
    record, tb = eval_scalars(metrics, class_names)
    proto_record, proto_tb = metrics.get("proto_logs", ({}, {}))
    record, tb = {**record, **proto_record}, {**tb, **proto_tb}
    self.writer.write_scalars(step, tb)
    self.log.write(step, record)
    self.writer.flush()

  def close(self):
    self.writer.close()


def _model_line(config, model, params) -> str:
  m, p = config.model, config.protoseg
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  head = (f"ProtoSeg head (M={p.num_prototypes}, D={p.embed_dim or 'decoder'})"
          if m.head == "proto" else "linear head")
  return (f"model: {m.backbone} + {m.decoder} decoder + {head}, {model.num_classes} classes, "
          f"{n / 1e6:.2f} M parameters, {m.dtype}")


def start_summary(mode: str, config, workdir: str, info, model=None, params=None) -> str:
  """The few lines a run starts its console with (the config is in DIR/config.json)."""
  lines = [f"{mode}: workdir {paths.text(workdir)} (its config: "
           f"{paths.resolve(workdir) / runs.CONFIG_FILE})",
           f"dataset {config.dataset.name}: {info.num_classes} classes, "
           f"{info.examples(config.dataset.train_split)} train / "
           f"{info.examples(config.dataset.eval_split)} eval examples "
           f"({config.dataset.train_split} / {config.dataset.eval_split})"]
  if model is not None:
    lines.append(_model_line(config, model, params))
  this = f" (this is process {jax.process_index()})" if jax.process_count() > 1 else ""
  lines.append(f"devices: {jax.device_count()} x {jax.devices()[0].platform} in "
               f"{jax.process_count()} process(es){this}; batch {config.batch_size}, "
               f"{config.num_train_steps} steps")
  return "\n  ".join(lines)


def prepare(config, workdir: str, recorded: Optional[ClassMap] = None):
  """What every run of a config does first, before data or compilation: every
  invalid config value at once (`validate_run_config`), then the persistent
  compilation cache of its workdir."""
  validate_run_config(config, recorded)
  compile_cache.enable_compilation_cache(config, workdir)


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """What training builds from its config before the first step (`set_up_training`)."""
  mesh: Any
  classes: ClassMap              # its meta with the sizes of the train and eval splits
  model: Any
  state: train.TrainState
  tx: Any
  schedule: Any
  evaluation: Evaluation


def set_up_training(config, workdir: str) -> TrainSetup:
  """`prepare`, then the dataset (the demo generates itself), the model, its
  initial train state (config.init_from loaded) and the evaluation; writes
  nothing in the workdir."""
  prepare(config, workdir)
  mesh = sharding.create_mesh()
  classes = runs.classes_of_config(config, meta=datasets.get_dataset_info(config))
  model = build_model(config, classes.num_outputs, classes.ignore_index)
  state, tx, schedule = train.create_train_state(
      config, model, mesh, load_weights=lambda v: checkpoints.init_from(config, v))
  return TrainSetup(mesh=mesh, classes=classes, model=model, state=state, tx=tx,
                    schedule=schedule, evaluation=Evaluation(config, model, classes, mesh))


# Keys of the train records that are timings, not results (they differ between
# two otherwise identical runs).
TIMING_KEYS = ("train/input_wait_frac",)


class InputWait:
  """How much of the train loop's time goes to waiting for the next batch.

  `with waits:` around `next(batches)`; `summary()` at a log step gives
  train/input_wait_frac = time in next() / wall time since the last
  summary (or `restart()`, called after the first step's compilation and
  after each evaluation), and logs a warning the first time it is over
  WARN_FRAC. The host dispatches steps asynchronously, so a device that
  keeps up with its input shows a small fraction; a device that waits for
  input shows the host waiting in next().
  """
  WARN_FRAC = 0.1

  def __init__(self):
    self.warned = False
    self.restart()

  def restart(self):
    self.waited, self.since = 0.0, time.perf_counter()

  def __enter__(self):
    self._t = time.perf_counter()

  def __exit__(self, *exc):
    self.waited += time.perf_counter() - self._t

  def summary(self) -> dict:
    wall = time.perf_counter() - self.since
    frac = min(self.waited / wall, 1.0) if wall > 0 else 0.0
    if frac > self.WARN_FRAC and not self.warned:
      self.warned = True
      logging.warning(
          "The train step waited for input %.0f%% of the time since the last log step "
          "(train/input_wait_frac): the input pipeline is the bottleneck. Raise "
          "config.dataset.num_parallel_calls (-1 = tf.data AUTOTUNE), give the job more CPU "
          "cores, or prepare the dataset in a faster storage format.", 100 * frac)
    self.restart()
    return {"train/input_wait_frac": frac}


def _duration(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


class Progress:
  """The console's progress line at each log step, with an ETA that counts
  the evaluations still to come.

  The train speed is measured on train time alone (from the first step's
  end, evaluations excluded), each evaluation's time separately; the ETA is
  the remaining steps at that speed plus the remaining evaluations at their
  mean time, leaving out the first evaluation once there are later ones (it
  compiles the eval step); before the first one, said as a count. Also writes
  `steps_per_sec` (TensorBoard) as clu's ReportProgress did.
  """

  def __init__(self, total: int, eval_every: int, writer=None, clock=time.perf_counter):
    self.total, self.eval_every, self.writer, self.clock = total, eval_every, writer, clock
    self.first, self.since, self.train_s, self.eval_s = None, None, 0.0, []

  def started(self, step: int):
    """After the first step (its compilation is neither train nor eval time)."""
    self.first, self.since = step, self.clock()

  def evaluated(self, seconds: float):
    """An evaluation took `seconds`; train time counts again from now."""
    self.eval_s.append(seconds)
    self.since = self.clock()

  def _evals_left(self, step: int) -> int:
    """Evaluations at steps >= `step` (the line is written before a step's
    evaluation): every multiple of eval_every, and the last step."""
    e = self.eval_every
    due = set(range(-(-step // e) * e, self.total + 1, e)) if e > 0 else set()
    return len(due | {self.total})

  def line(self, step: int) -> Optional[str]:
    """The progress line at `step` (None before the first step's end)."""
    if self.first is None:
      return None
    now = self.clock()
    self.train_s += now - self.since
    self.since = now
    steps = step - self.first
    rate = steps / self.train_s if steps > 0 and self.train_s > 0 else None
    if self.writer is not None and rate is not None:
      self.writer.write_scalars(step, {"steps_per_sec": rate})
    text = f"step {step}/{self.total} ({100 * step / self.total:.0f}%)"
    if rate is None:
      return text
    evals = self._evals_left(step)
    eta = (self.total - step) / rate
    if self.eval_s:
      timed = self.eval_s[1:] or self.eval_s
      eta += evals * sum(timed) / len(timed)
      more = f" ({evals} evaluation{'s' * (evals != 1)} included)" if evals else ""
    else:
      more = f" + {evals} evaluation{'s' * (evals != 1)}" if evals else ""
    return f"{text}: {rate:.1f} steps/s, ETA {_duration(eta)}{more}"


def train_and_evaluate(config, workdir: str) -> train.TrainState:
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
    SIGTERM / SIGINT (preemption; `faults.StopSignals`), once the train loop
    has begun: the run stops after the first step it dispatches after the
    signal (a signal during an evaluation waits for its end; several
    processes stop at one step, see `StopSignals`), writes that step's
    metrics (a partial log window), saves its checkpoint (an evaluation due
    at that step is skipped), waits for the save, closes the writers and
    returns that state; running again resumes from it exactly. A signal at
    the last step just lets the run finish. A second signal raises
    KeyboardInterrupt at once. The previous handlers are back when this
    returns (or raises).
    An unreadable latest checkpoint (a truncated or missing file): the run
    resumes from the newest intact one, with a warning naming the bad step,
    which is moved to DIR/checkpoints_unreadable/ (kept) so that the run
    can save that step again; none intact: NoIntactCheckpoint.
    Another trainer alive on the same workdir: `faults.WorkdirInUse` before
    anything is built (process 0 holds DIR/trainer.lock while it trains).
  """
  lock = (faults.WorkdirLock(workdir, float(config.workdir_lock_lease_s))
          if jax.process_index() == 0 else None)
  if lock is not None:
    lock.acquire()
  try:
    with faults.StopSignals() as stop:
      return _train_and_evaluate(config, workdir, stop, lock)
  finally:
    if lock is not None:
      lock.release()


def _resume(config, workdir: str, state):
  """(state, manager): the newest intact checkpoint of DIR (unreadable newer
  ones set aside), or `state` when DIR has none."""
  mngr = checkpoints.checkpoint_manager(workdir, config)
  if mngr.latest_step() is None:
    return state, mngr
  state, step, bad = checkpoints.restore_state_and_step(mngr, state)
  if bad:
    mngr.close()
    if jax.process_index() == 0:
      checkpoints.set_aside(workdir, bad)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("protoseg_jax: unreadable checkpoints set aside")
    mngr = checkpoints.checkpoint_manager(workdir, config)
  logging.info("Resumed from step %d (%s)", step, mngr.directory)
  return state, mngr


def itstime(step: int, every: int, total: int) -> bool:
  """A periodic action's step: every `every` steps (a multiple of it), and the
  last step `total` (big_vision's `u.itstime` with last=True)."""
  return (every > 0 and step % every == 0) or step == total


def _train_and_evaluate(config, workdir: str, stop: faults.StopSignals,
                        lock: Optional[faults.WorkdirLock] = None) -> train.TrainState:
  t_start = time.time()
  run = set_up_training(config, workdir)
  logging.info("%s", start_summary("train", config, workdir, run.classes.meta, run.model,
                                   run.state.params))
  state, mngr = _resume(config, workdir, run.state)
  writers = _Writers(workdir)
  # From here on, saves in flight are waited for and the writers closed
  # however the run ends, except when the store itself failed or a second
  # signal asked to stop at once: waiting would only hang (the command line
  # exits then).
  wait_for_saves = True
  try:
    start = int(jax.device_get(state.step))
    total = int(config.num_train_steps)
    step_fn = train.make_train_step(run.model, run.tx, run.schedule, config, run.mesh,
                                    run.classes.ignore_index,
                                    state_shardings=train.state_sharding(state))
    batches = faults.with_nan_steps(
        input_pipeline.create_train_iterator(config, run.evaluation.data_sharding,
                                             start_step=start),
        config.debug.nan_steps, start)
    # Written once the input pipeline took the config (it refuses a new run
    # that asks for the removed host path): a refused run leaves no config.json.
    runs.describe(workdir, config, run.classes)
    progress = Progress(total, int(config.eval_every_steps),
                        writers.writer if jax.process_index() == 0 else None)
    pending = []
    skipped, stopping, step = faults.SkippedSteps(config.max_consecutive_nonfinite), False, start
    waits = InputWait()
    t0 = time.time()
    stop.install()
    for step in range(start + 1, total + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        with waits:
          batch = next(batches)
        state, metrics = step_fn(state, batch)
        pending.append(metrics)
      if step == start + 1:
        jax.block_until_ready(metrics)
        logging.info("First step done %.1fs after the start (compilation included)",
                     time.time() - t_start)
        waits.restart()               # compilation is not input time
        progress.started(step)
      stopping = step < total and stop.reached(step, step % config.log_every_steps == 0)
      if itstime(step, config.log_every_steps, total) or stopping:
        summary = skipped.summary(jax.device_get(pending), step)
        pending = []
        summary.update(waits.summary())
        if state.prototypes:  # did the prototypes collapse? ({} for the linear head)
          protos = jax.device_get(state.prototypes)
          summary.update({k: float(v) for k, v in prototype_stats.scalars(protos, "train").items()})
        writers.write_train(step, summary)
        line = progress.line(step)
        if line and jax.process_index() == 0:
          logging.info("%s", line)
        if lock is not None:
          lock.check()                 # a bucket lease taken over: stop here
        if skipped.tripped:
          break                        # nothing saved or evaluated at this step
      if itstime(step, config.checkpoint_every_steps, total) or stopping:
        checkpoints.save_state(mngr, step, state)
      if stopping:
        break
      if itstime(step, config.eval_every_steps, total):
        t_eval = time.perf_counter()
        writers.write_eval(step, run.evaluation.evaluate(state.variables()), run.classes.names)
        progress.evaluated(time.perf_counter() - t_eval)
        waits.restart()               # evaluation is not train time
  except (paths.StoreError, KeyboardInterrupt):
    wait_for_saves = False
    raise
  finally:
    if wait_for_saves:
      checkpoints.finish(mngr)
      writers.close()
  if skipped.tripped:   # the checkpoints begun before are whole now, and named
    raise FloatingPointError(skipped.message(step, str(mngr.directory), mngr.latest_step()))
  if stopping:
    logging.warning("Stopped at step %d of %d on %s, after %.1fs: checkpoint saved in %s. Run the "
                    "same command again to resume from step %d.", step, total, stop.reason,
                    time.time() - t0, mngr.directory, step)
  else:
    logging.info("Finished %d steps in %.1fs", total - start, time.time() - t0)
  return state


def evaluate_checkpoint(config, workdir: str, step: Optional[int] = None) -> dict:
  """Evaluate a run (`run.load_run`: the newest intact checkpoint of DIR, or
  `step`; DIR/variables; or config.init_from) on config's eval split;
  appends the results to DIR/metrics.jsonl (at the checkpoint's step, 0 for
  weights without one). config None: the workdir's config.json. The same
  first steps (`prepare`), `Evaluation` and writers as training."""
  recorded = runs.read_classes(workdir)
  config = runs.load_config(workdir, config)
  prepare(config, workdir, recorded)
  loaded = runs.load_run(workdir, config, checkpoint_step=step)
  metrics = Evaluation(config, loaded.model, loaded.classes, loaded.mesh).evaluate(
      loaded.variables)
  writers = _Writers(workdir)
  try:
    writers.write_eval(loaded.step or 0, metrics, loaded.classes.names)
  finally:
    writers.close()
  return metrics
