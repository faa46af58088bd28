"""Faults while training: non-finite steps, stop signals, a workdir in use.

  SkippedSteps   the log's account of steps skipped for a non-finite loss or gradient
  with_nan_steps config.debug.nan_steps: all-NaN images at those steps (a testing switch)
  StopSignals    SIGTERM / SIGINT: stop after the current step, with a checkpoint
  LostProcessWatchdog  a multi-process run stops, naming the lost process, when one dies
  WorkdirLock    one trainer per workdir; a killed one never leaves it locked
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import signal
import socket
import sys
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
  it is (empty or not). A uint8 batch (the input pipeline's, which the
  step finishes) becomes float32: the loop gives every step of such a run float32 images
  (`float_images`), so that one program serves both.
  """
  return {**batch, "image": batch["image"] * jnp.nan}


def float_images(batch: dict) -> dict:
  """The batch with its images as float32 (the same values): every step of a
  run with config.debug.nan_steps, so that its NaN steps (`nan_images`)
  use the same compiled step as the others."""
  return {**batch, "image": batch["image"].astype(jnp.float32)}


def with_nan_steps(batches, nan_steps, start_step: int):
  """The train batches of steps start_step + 1, ... with config.debug.nan_steps
  applied: all-NaN images at those steps (`nan_images`), every batch's images
  float32 (`float_images`) so that one program serves every step. No
  nan_steps: `batches` itself."""
  nan_steps = frozenset(int(s) for s in nan_steps)
  if not nan_steps:
    return batches

  def injected():
    for step, batch in enumerate(batches, start_step + 1):
      batch = float_images(batch)
      yield nan_images(batch) if step in nan_steps else batch
  return injected()


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


class LostProcessWatchdog:
  """Every process of a multi-process run stops, with one line naming the lost
  ones, when a process dies (a host gone, kill -9).

  JAX's distributed service marks a process lost after `heartbeat_timeout_s`
  without a heartbeat; by default it then aborts every other process from
  C++ (a stack dump, exit -6), and a collective waiting for the lost process
  may wait until then. `start` (after jax.distributed.initialize, which must
  run with jax_enable_recoverability so that the service reports the loss
  instead of aborting: `before_initialize`) polls the service's live
  processes from a thread every `poll_s` and, when one is missing, logs
  which, flushes the logs and exits the process with EXIT_CODE: the time to
  stop is the heartbeat timeout plus at most `poll_s`. The last complete
  checkpoint stays as it is (a save in flight is never taken for a complete
  one), so starting every process again resumes from it. When the
  coordinator (process 0) itself dies, JAX's client ends the others at once,
  naming the leader task.

  Reads JAX's distributed client (`jax._src.distributed.global_state`: no
  public API gives the live processes without a barrier); where that is
  missing, nothing is started and JAX's own abort applies.
  """

  EXIT_CODE = 75

  def __init__(self, heartbeat_timeout_s: int, poll_s: float = 1.0):
    self.heartbeat_timeout_s, self.poll_s = int(heartbeat_timeout_s), float(poll_s)
    self._done = threading.Event()

  @staticmethod
  def before_initialize():
    jax.config.update("jax_enable_recoverability", True)

  def start(self) -> bool:
    try:
      from jax._src import distributed as jax_distributed
      client = jax_distributed.global_state.client
      everyone = list(range(jax.process_count()))
      client.get_live_nodes(everyone)
    except Exception:  # pylint: disable=broad-except (another JAX: its own abort applies)
      logging.warning("lost-process watchdog not started: this JAX version's distributed "
                      "client has no live-process query")
      return False
    self._client, self._everyone = client, everyone
    atexit.register(self.stop)
    threading.Thread(target=self._watch, args=(client, everyone), daemon=True,
                     name="protoseg-lost-process-watchdog").start()
    return True

  def _watch(self, client, everyone):
    while not self._done.wait(self.poll_s):
      try:
        live = client.get_live_nodes(everyone)
      except Exception as e:  # pylint: disable=broad-except (the coordinator is gone)
        if self._done.is_set():
          return
        self._stop(f"JAX's distributed service (process 0) cannot be reached ("
                   f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else e})")
      lost = [i for i in everyone if i not in live]
      if lost and not self._done.is_set():
        self._stop(f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of "
                   f"{len(everyone)} lost (no heartbeat for {self.heartbeat_timeout_s} s: "
                   "--heartbeat_timeout_s)")

  def stop(self):
    """The work is done (every process past its last barrier): a process that
    leaves from now on is not lost."""
    self._done.set()

  def finish(self):
    """After the last barrier: `stop`, then the processes leave in order. With
    recoverability JAX's shutdown has no barrier, and a process whose
    coordinator (process 0's service) is gone aborts in its own shutdown; so
    the others shut down first and process 0 waits until they have left (at
    most the heartbeat timeout and 10 s)."""
    self.stop()
    if jax.process_index() != 0:
      jax.distributed.shutdown()
      return
    deadline = time.monotonic() + self.heartbeat_timeout_s + 10
    while time.monotonic() < deadline:
      try:
        if set(self._client.get_live_nodes(self._everyone)) <= {0}:
          return
      except Exception:  # pylint: disable=broad-except (the service is gone: nothing to wait for)
        return
      time.sleep(0.05)
    logging.warning("not every process left within %d s of the end",
                    self.heartbeat_timeout_s + 10)

  def wait(self, error: BaseException):
    """After `error` (a collective that failed when a peer died): say so, and
    wait for the watchdog to name the lost process and stop this one; raise
    `error` if it has not within the heartbeat timeout (another failure)."""
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else repr(error)
    logging.error("a collective failed (%s): waiting up to %d s for JAX's distributed service "
                  "to name a lost process", first, self.heartbeat_timeout_s + 5)
    time.sleep(self.heartbeat_timeout_s + 5 + 2 * self.poll_s)
    raise error

  def _stop(self, why: str):
    logging.error("%s: process %d stops. The last complete checkpoint in the workdir is left "
                  "as it is: start every process again (the same command) to resume from it.",
                  why, jax.process_index())
    for lock in list(WorkdirLock.held):   # a bucket lease would bar the restart until it expires
      try:
        lock.release()
      except Exception as e:  # pylint: disable=broad-except (the store unreachable: it expires)
        logging.warning("could not release %s (%s)", lock.path, e)
    logging.flush()
    sys.stderr.flush()
    os._exit(self.EXIT_CODE)


class WorkdirInUse(RuntimeError):
  """Another live trainer holds the workdir (`WorkdirLock`)."""


class WorkdirLock:
  """One trainer per workdir: DIR/trainer.lock, held by process 0 while it trains.

  A local workdir: an exclusive `flock` on the file. The kernel drops a
  flock when its process dies, however it dies (kill -9 included), so a
  killed trainer never leaves the workdir locked; the file itself stays (it
  only says who holds or last held the lock). (flock is per host on some
  network file systems: two hosts sharing an NFS workdir are not kept apart
  by it.)

  A workdir in a bucket (gs://): the object is created only if absent (a
  generation precondition, so two trainers cannot both create it) and holds
  the holder and the end of its lease (`lease_s`, config.workdir_lock_lease_s),
  which a thread renews every third of it. A trainer killed without
  releasing it leaves the lease to run out: the next trainer takes the
  workdir over once it has expired, and is told so until then. A holder
  whose lease was taken over (it could not renew it in time, e.g. a long
  store outage) learns it at `check()` (the train loop's log steps) and
  stops. A second trainer raises WorkdirInUse naming the holder's host, pid
  and start time.
  """

  FILE = "trainer.lock"

  def __init__(self, workdir: str, lease_s: float = 60.0):
    from protoseg_jax.trainer import paths
    self.workdir = paths.text(workdir)
    self.path = f"{self.workdir}/{self.FILE}" if paths.is_url(workdir) else os.path.join(
        self.workdir, self.FILE)
    self._impl = _BucketLease(self.path, float(lease_s)) if paths.is_url(workdir) else \
        _FileLock(self.path)

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc_info):
    self.release()

  held: set = set()   # the locks this process holds (released by a deliberate stop too)

  def acquire(self):
    self._impl.acquire(self.workdir)
    WorkdirLock.held.add(self)

  def check(self):
    """WorkdirInUse when the lock was lost (a bucket lease taken over)."""
    self._impl.check(self.workdir)

  def release(self):
    WorkdirLock.held.discard(self)
    self._impl.release()


def _holder(info) -> str:
  try:
    return (f"process {info['pid']} on host {info['host']} (started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))})")
  except (KeyError, TypeError, ValueError):
    return "another process"


def _in_use(workdir: str, who: str, more: str = "") -> WorkdirInUse:
  return WorkdirInUse(f"the workdir {workdir} is in use by a running trainer: {who}{more}. "
                      "Stop it first, or train in another --workdir (evaluating or predicting "
                      "with this workdir while it trains is fine)")


def _lock_record(lease_s: float) -> dict:
  now = time.time()
  return {"pid": os.getpid(), "host": socket.gethostname(), "started": now,
          "expires": now + lease_s}


class _FileLock:
  """The local workdir's flock."""

  def __init__(self, path: str):
    self.path, self._file = path, None

  def acquire(self, workdir: str):
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    f = open(self.path, "a+")
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip()
      f.close()
      try:
        who = _holder(json.loads(holder))
      except ValueError:
        who = "another process"
      raise _in_use(workdir, who) from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "started": time.time()}) + "\n")
    f.flush()
    self._file = f

  def check(self, workdir: str):
    del workdir

  def release(self):
    if self._file is not None:
      fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
      self._file.close()
      self._file = None


class _BucketLease:
  """The bucket workdir's lease object (google-cloud-storage: generation
  preconditions; what orbax lists a bucket's checkpoints with too)."""

  def __init__(self, url: str, lease_s: float):
    self.url, self.lease_s = url, lease_s
    self.generation, self.lost, self._expires = None, None, 0.0
    self._stop = threading.Event()
    self._thread, self._client = None, None

  def _blob(self):
    from google.cloud import storage
    if self._client is None:
      self._client = storage.Client()
    bucket, name = self.url[len("gs://"):].split("/", 1)
    return self._client.bucket(bucket).blob(name)

  def acquire(self, workdir: str):
    from google.api_core import exceptions
    blob = self._blob()
    record = _lock_record(self.lease_s)
    try:
      blob.upload_from_string(json.dumps(record), if_generation_match=0)
    except exceptions.PreconditionFailed:
      blob.reload()
      generation = blob.generation
      try:
        held = json.loads(blob.download_as_bytes(if_generation_match=generation))
      except (ValueError, exceptions.PreconditionFailed):
        held = {}
      expires = float(held.get("expires", 0))
      if expires > time.time():
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(expires))
        raise _in_use(workdir, _holder(held),
                      f"; its lease on {self.url} runs until {until} (a trainer killed without "
                      "releasing it leaves the workdir to the next one then)") from None
      try:
        blob.upload_from_string(json.dumps(record), if_generation_match=generation)
      except exceptions.PreconditionFailed:
        raise _in_use(workdir, "another trainer that took it over just now") from None
      logging.warning("took over %s: the lease of %s ended at %s without a release (a killed "
                      "trainer)", self.url, _holder(held),
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(expires)))
    self.generation = blob.generation
    self._expires = record["expires"]
    self._thread = threading.Thread(target=self._renew, name="protoseg-workdir-lease",
                                    daemon=True)
    self._thread.start()

  def _renew(self):
    while not self._stop.wait(self.lease_s / 3) and self.renew():
      pass

  def renew(self) -> bool:
    """Extends the lease by `lease_s` from now; False once it is lost (`lost` says why)."""
    from google.api_core import exceptions
    record = _lock_record(self.lease_s)
    blob = self._blob()
    try:
      blob.upload_from_string(json.dumps(record), if_generation_match=self.generation)
      self.generation, self._expires = blob.generation, record["expires"]
    except exceptions.PreconditionFailed:
      self.lost = f"its lease on {self.url} was taken over by another trainer"
    except Exception as e:  # pylint: disable=broad-except (a store outage: try again)
      logging.warning("could not renew the workdir lease %s (%s); trying again", self.url,
                      str(e).splitlines()[0] if str(e) else type(e).__name__)
      if time.time() > self._expires:
        self.lost = (f"its lease on {self.url} ran out while the store could not be "
                     "reached: another trainer may have taken the workdir over")
    return not self.lost

  def check(self, workdir: str):
    if self.lost:
      raise WorkdirInUse(f"this trainer lost the workdir {workdir}: {self.lost}; it stops "
                         "(its checkpoints so far stay)")

  def release(self):
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join(timeout=30)
    self._thread = None
    if self.lost:
      return
    from google.api_core import exceptions
    from google.cloud.storage import retry
    try:   # a store down: a few seconds of retries, then the lease runs out by itself
      self._blob().delete(if_generation_match=self.generation, timeout=10,
                          retry=retry.DEFAULT_RETRY.with_deadline(15))
    except exceptions.GoogleAPIError as e:   # left to expire
      logging.warning("could not release %s (%s): it expires by itself", self.url, e)
