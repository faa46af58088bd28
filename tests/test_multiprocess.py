"""The trainer as it runs on a pod: two real JAX processes (jax.distributed
over 127.0.0.1, gloo CPU collectives), 2 CPU devices each, one workdir.

Checks what only a multi-process run exercises: process 0 prepares the demo
dataset while process 1 waits, per-process input shards assembled into
global batches, the sharded train step with cross-process collectives,
orbax checkpoints written by both processes, metrics written once, and an
evaluation that counts every validation image exactly once (padded last
batches, masks): its metrics equal a single-process evaluation of the same
checkpoint.
"""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from protoseg_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_EVAL = 10  # validation scenes of the demo's "tiny" builder config


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _flags(data_dir, workdir):
  return [
      "--config=configs/demo.py:runlocal", f"--workdir={workdir}",
      f"--config.dataset.data_dir={data_dir}", "--config.eval_batch_size=4",
  ]


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_evaluate_every_image_once(tmp_path, tiny_config):
  data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "run")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  port = _free_port()
  procs, logs = [], []
  for i in range(2):
    log = open(tmp_path / f"process{i}.log", "w+")
    cmd = [sys.executable, "main.py", *_flags(data_dir, workdir),
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    logs.append(log)
  try:
    codes = [p.wait(timeout=900) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  texts = []
  for log in logs:
    log.seek(0)
    texts.append(log.read())
    log.close()
  assert codes == [0, 0], "\n\n".join(t[-4000:] for t in texts)

  for text in texts:
    assert "JAX process" in text and "4 devices, 2 processes" in text
    # 10 images, 2 per process per batch: 3 batches, the last one padded.
    assert re.search(rf"eval: done, 3 batches, {NUM_EVAL} images", text), text[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records if "train/loss" in r] == [1, 2]   # written once
  val = [r for r in records if "val/mIoU" in r]
  assert len(val) == 1 and val[0]["step"] == 2
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]

  # The same checkpoint evaluated by this single process (8 devices, other
  # batch and padding) gives the same metrics: no image lost or doubled.
  config = tiny_config(data_dir, eval_batch_size=8)
  metrics = train.evaluate_checkpoint(config, workdir)
  for key in ("mIoU", "mAcc", "aAcc"):
    np.testing.assert_allclose(metrics[key], val[0][f"val/{key}"], rtol=1e-9, err_msg=key)
  assert int(metrics["confusion"].sum()) > 0
