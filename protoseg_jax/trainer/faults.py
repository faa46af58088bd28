"""Faults while training: non-finite steps, stop signals, a workdir in use.

  SkippedSteps   the log's account of steps skipped for a non-finite loss or gradient
  nan_images     config.debug.nan_steps: a batch of all-NaN images (a testing switch)
  StopSignals    SIGTERM / SIGINT: stop after the current step, with a checkpoint
  WorkdirLock    one trainer per workdir; a killed one never leaves it locked
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import threading
import time
from typing import Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np


class SkippedSteps:
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


def nan_images(batch: dict) -> dict:
  """The batch with all-NaN images: config.debug.nan_steps, a testing switch.

  The fault enters like bad data: the loss, every gradient, the BatchNorm
  statistics and the prototype update of that step are non-finite. Done
  here, not in the jitted step, so the switch leaves the compiled step as
  it is (empty or not). A uint8 batch (config.dataset.finish_on_device)
  becomes float32: the loop gives every step of such a run float32 images
  (`float_images`), so that one program serves both.
  """
  return {**batch, "image": batch["image"] * jnp.nan}


def float_images(batch: dict) -> dict:
  """The batch with its images as float32 (the same values): every step of a
  run with config.debug.nan_steps, so that its NaN steps (`nan_images`)
  use the same compiled step as the others."""
  return {**batch, "image": batch["image"].astype(jnp.float32)}


class StopSignals:
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


class WorkdirInUse(RuntimeError):
  """Another live trainer holds the workdir (`WorkdirLock`)."""


class WorkdirLock:
  """One trainer per workdir: an exclusive `flock` on DIR/trainer.lock.

  Taken by process 0 before training starts and held until it ends. The
  kernel drops a flock when its process dies, however it dies (kill -9
  included), so a killed trainer never leaves the workdir locked; the file
  itself stays (it only says who holds or last held the lock). A second
  trainer on the same workdir raises WorkdirInUse naming the holder's
  host, pid and start time. (flock is per host on some network file
  systems: two hosts sharing an NFS workdir are not kept apart by it.)
  """

  FILE = "trainer.lock"

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, self.FILE)
    self._file = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc_info):
    self.release()

  def acquire(self):
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    f = open(self.path, "a+")
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip()
      f.close()
      try:
        info = json.loads(holder)
        who = (f"process {info['pid']} on host {info['host']} (started "
               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))})")
      except (ValueError, KeyError, TypeError):
        who = "another process"
      raise WorkdirInUse(f"the workdir {os.path.dirname(self.path)} is in use by a running "
                         f"trainer: {who}. Stop it first, or train in another --workdir "
                         "(evaluating or predicting with this workdir while it trains is "
                         "fine)") from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "started": time.time()}) + "\n")
    f.flush()
    self._file = f

  def release(self):
    if self._file is not None:
      fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
      self._file.close()
      self._file = None
