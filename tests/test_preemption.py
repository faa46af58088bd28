"""A training process killed without warning (SIGKILL, e.g. a preempted VM)
leaves its last complete checkpoint restorable, and the next run resumes
from it."""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _steps(ckpt_dir):
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


@pytest.mark.slow
def test_sigkill_mid_run_resumes_from_the_last_complete_checkpoint(tmp_path):
  data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  cmd = [sys.executable, "main.py", "--config=configs/demo.py:runlocal", f"--workdir={workdir}",
         f"--config.dataset.data_dir={data_dir}", "--config.num_train_steps=1000",
         "--config.eval_every_steps=100000", "--config.checkpoint_every_steps=1",
         "--config.keep_checkpoints=3"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  log = open(tmp_path / "killed.log", "w+")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 600
    while len(_steps(ckpt_dir)) < 2 and proc.poll() is None and time.time() < deadline:
      time.sleep(0.1)
    time.sleep(0.2)   # into the next step: often lands while a save is in flight
    assert proc.poll() is None, "the training process ended before it was killed"
  finally:
    proc.kill()   # SIGKILL: no handler runs
    proc.wait()
    log.seek(0)
    text = log.read()
    log.close()
  latest = max(_steps(ckpt_dir), default=None)
  assert latest is not None and latest >= 2, text[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    before = len(f.readlines())

  # The next run (a new process, as after a preemption) resumes.
  cmd = [a.replace("num_train_steps=1000", f"num_train_steps={latest + 2}") for a in cmd]
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  assert f"Resumed from step {latest}" in done.stderr
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f][before:]
  # Resumed: only the two new steps were trained (and the final evaluation).
  assert [r["step"] for r in records if "train/loss" in r] == [latest + 1, latest + 2]
  assert _steps(ckpt_dir)[-1] == latest + 2
  assert not [n for n in os.listdir(ckpt_dir) if not n.isdigit() and "tmp" in n]
