"""A training process stopped from outside.

SIGKILL (no warning, e.g. a VM gone): its last complete checkpoint stays
restorable and the next run resumes from it. SIGTERM (a preemption notice)
or SIGINT: the run saves the step it reached, closes its writers and exits 0;
the restart ends with the same params, prototypes and metrics as a run never
interrupted.
"""

import json
import os
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from protoseg_jax import train
from protoseg_jax.trainer import faults, loop

import tool_runner


def _steps(ckpt_dir):
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


N = 12   # train steps of every run here: one compiled program, shared through the cache


def _train_records(workdir, skip=0):
  """{step: last train record} of DIR/metrics.jsonl (after its first `skip` lines)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {r["step"]: r for r in map(json.loads, f.readlines()[skip:]) if "train/lr" in r}


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _wait_for(proc, condition, what):
  deadline = time.time() + 600
  while not condition() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, f"the training process ended before {what}"


def _output(proc):
  """What a finished command printed (stdout, then stderr)."""
  return "".join(proc.output())


def _final(workdir, step):
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.join(workdir, "checkpoints", str(step), "default"))


@pytest.mark.slow
def test_killed_and_preempted_runs_resume_to_the_uninterrupted_result(tmp_path, demo_dir):
  # The tests' plumbing model (tests/tiny_runs.py) on the session's demo data;
  # main.py as a user runs it (tests/tool_runner.py: its own process, signalled
  # by its pid; one device).

  def cmd(workdir, checkpoint_every):
    return ["main.py", "--config=tests/tiny_runs.py:plumbing", f"--workdir={workdir}",
            f"--config.dataset.data_dir={demo_dir}", f"--config.num_train_steps={N}",
            f"--config.eval_every_steps={N}", f"--config.checkpoint_every_steps={checkpoint_every}",
            "--config.keep_checkpoints=3"]

  # The run never interrupted (also compiles for the others).
  straight = str(tmp_path / "straight")
  done = tool_runner.run(cmd(straight, 1000), timeout=900)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

  # 1. SIGKILL while it saves every step: no handler runs.
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  proc = tool_runner.start(cmd(workdir, 1))
  try:
    _wait_for(proc, lambda: len(_steps(ckpt_dir)) >= 2, "it was killed")
    time.sleep(0.2)   # into the next step: often lands while a save is in flight
    assert proc.poll() is None, "the training process ended before it was killed"
  finally:
    proc.kill()
    proc.wait()
    text = _output(proc)
  killed_at = max(_steps(ckpt_dir), default=None)
  assert killed_at is not None and killed_at >= 2, text[-3000:]

  # 2. The next run resumes from the last complete checkpoint; SIGTERM once
  # it trained a step. Only the signal saves (checkpoint_every_steps > N).
  before = len(_records(workdir))
  proc = tool_runner.start(cmd(workdir, 1000))
  try:
    _wait_for(proc, lambda: _train_records(workdir, before), "SIGTERM")
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=600)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    text = _output(proc)
  assert code == 0, text[-4000:]
  assert f"Resumed from step {killed_at}" in text, text[-3000:]
  stopped_at = max(_train_records(workdir, before))
  assert killed_at < stopped_at < N
  assert f"Stopped at step {stopped_at} of {N} on SIGTERM" in text, text[-3000:]
  assert _steps(ckpt_dir)[-1] == stopped_at
  assert not [n for n in os.listdir(ckpt_dir) if not n.isdigit() and "tmp" in n]
  assert not [r for r in _records(workdir)[before:] if "val/mIoU" in r]   # no evaluation

  # 3. The restart trains the rest: the uninterrupted run's result.
  done = tool_runner.run(cmd(workdir, 1000), timeout=900)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  assert f"Resumed from step {stopped_at}" in done.stderr
  assert _steps(ckpt_dir)[-1] == N
  a, b = _train_records(straight), _train_records(workdir)
  assert sorted(a) == sorted(b) == list(range(1, N + 1))
  for step in a:
    assert set(a[step]) == set(b[step]), step
    for key in set(a[step]) - set(loop.TIMING_KEYS):   # timings differ between runs
      np.testing.assert_allclose(b[step][key], a[step][key], rtol=1e-6, atol=1e-6,
                                 err_msg=f"{key} at step {step}")
  val = [[r for r in _records(d) if "val/mIoU" in r] for d in (straight, workdir)]
  assert len(val[0]) == len(val[1]) == 1 and val[0][0]["step"] == val[1][0]["step"] == N
  np.testing.assert_allclose(val[1][0]["val/mIoU"], val[0][0]["val/mIoU"], atol=1e-6)
  x, y = _final(straight, N), _final(workdir, N)
  for tree in ("params", "prototypes", "batch_stats"):
    for u, v in zip(jax.tree.leaves(x[tree]), jax.tree.leaves(y[tree])):
      np.testing.assert_allclose(np.asarray(v), np.asarray(u), atol=1e-6, err_msg=tree)


def test_stop_signals_flag_the_stop_and_restore_the_handlers():
  previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  with faults.StopSignals() as stop:
    stop.install()
    assert not stop.reached(1, at_log_step=True)
    os.kill(os.getpid(), signal.SIGINT)   # the handler runs before the next bytecode
    assert stop.reason == "SIGINT" and stop.reached(2, at_log_step=False)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM while stopping"):
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(1)
  assert {sig: signal.getsignal(sig) for sig in previous} == previous
