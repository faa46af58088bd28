"""A run that lives in a bucket: every path gs://, against a real GCS server.

The server is fake-gcs-server (tests/gcs_emulator.py), one for this module,
in a network namespace of its own with loopback only: the commands run in
there (a tool driver entered with `nsenter`), so nothing can leave the
machine, and every client the trainer uses talks to it as it would to Google
(TensorFlow's own gs:// file system for tf.data, TFDS, TensorBoard and
etils.epath; tensorstore and google-cloud-storage for orbax and the workdir
lock). The test process itself stays outside and reads the bucket through
the emulator's Unix socket.
"""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

import gcs_emulator
import tool_runner
from conftest import ROOT, xla_flags

pytestmark = pytest.mark.xdist_group("buckets")   # one server, one driver

BUCKET = "protoseg"
N = 12   # train steps: test_preemption's program (the session's compile cache)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The module's GCS server with the bucket BUCKET."""
  with gcs_emulator.GcsEmulator(tmp_path_factory.mktemp("gcs")) as emulator:
    emulator.make_bucket(BUCKET)
    yield emulator


RETRIES = 2   # a request the store fails is retried twice (1 s, 2 s) before the run stops


def bucket_env(gcs, **more):
  """The environment of a command that talks to the emulator: its addresses
  and RETRIES, TensorFlow's retry count (read when TensorFlow is imported;
  the default, 10, rides out ~3 minutes of outage)."""
  return dict(tool_runner.ENV, **gcs.env(), GCS_RETRY_CONFIG_MAX_RETRIES=str(RETRIES), **more)


@pytest.fixture(scope="module")
def driver(gcs):
  """A tool driver (tests/tool_runner.py) inside the emulator's namespace."""
  d = tool_runner.Driver(env=bucket_env(gcs), prefix=gcs.prefix())
  yield d
  d.close()


def files(gcs, prefix: str) -> list:
  """The objects under `prefix`, without the folder markers (`dir/`, empty
  objects TensorFlow's mkdir writes)."""
  return sorted(n for n in gcs.list_objects(BUCKET, prefix) if not n.endswith("/"))


def read_object(gcs, name: str) -> bytes:
  status, body = gcs.request("GET", f"/storage/v1/b/{BUCKET}/o/{quote(name, safe='')}?alt=media")
  assert status == 200, (name, status, body[:300])
  return body


def put_object(gcs, name: str, data: bytes):
  status, body = gcs.request(
      "POST", f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={quote(name, safe='')}",
      body=data, headers={"Content-Type": "application/octet-stream"})
  assert status == 200, (name, status, body[:300])


def records(gcs, name: str) -> list:
  return [json.loads(line) for line in read_object(gcs, name).decode().splitlines()]


def train_records(gcs, name: str) -> dict:
  """{step: last train record} of a metrics.jsonl object (None: not there yet)."""
  if name not in gcs.list_objects(BUCKET, name):
    return {}
  return {r["step"]: r for r in records(gcs, name) if "train/lr" in r}


def text_of(result) -> str:
  return result.stdout + result.stderr


def no_local_gs_folder(*roots):
  """No folder named `gs:` under any of `roots` (what os.path.abspath of a URL made)."""
  for root in roots:
    for path, dirs, _ in os.walk(root):
      assert "gs:" not in dirs, os.path.join(path, "gs:")


@pytest.fixture(scope="module")
def bucket_data(gcs, driver):
  """gs://BUCKET/tfds: the demo's tiny scenes prepared straight into the bucket."""
  url = f"gs://{BUCKET}/tfds"
  done = driver.run(["-m", "data.prepare", "demo", "--config=tiny", f"--data_dir={url}"],
                    timeout=600)
  assert done.returncode == 0, text_of(done)[-3000:]
  return url


def run_flags(data_dir, workdir, steps=N, **overrides):
  return ["main.py", "--config=tests/tiny_runs.py:plumbing", f"--workdir={workdir}",
          f"--config.dataset.data_dir={data_dir}", f"--config.num_train_steps={steps}",
          f"--config.eval_every_steps={steps}",
          *(f"--config.{k}={v}" for k, v in overrides.items())]


@pytest.mark.slow
def test_a_run_that_lives_in_a_bucket(gcs, driver, bucket_data, demo_dir, tmp_path):
  """Prepare (the fixture), train, SIGTERM and resume, evaluate, predict and
  export, every path in the bucket; the run equals the same run on local disk."""
  from protoseg_jax.trainer import loop
  run = f"gs://{BUCKET}/e2e/run"
  metrics = "e2e/run/metrics.jsonl"

  # The same run on local disk and local data, never interrupted.
  straight = str(tmp_path / "straight")
  done = driver.run(run_flags(demo_dir, straight), timeout=900)
  assert done.returncode == 0, text_of(done)[-3000:]

  # Train on the bucket; SIGTERM once it trained a step: it saves and exits 0.
  proc = driver.start(run_flags(bucket_data, run))
  try:
    deadline = time.time() + 600
    while not train_records(gcs, metrics) and proc.poll() is None and time.time() < deadline:
      time.sleep(0.1)
    assert proc.poll() is None, "the run ended before SIGTERM: " + "".join(proc.output())[-3000:]
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=600)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  text = "".join(proc.output())
  assert code == 0, text[-4000:]
  stopped_at = max(train_records(gcs, metrics))
  assert stopped_at < N and f"Stopped at step {stopped_at} of {N} on SIGTERM" in text, text[-3000:]
  assert f"train: workdir {run} " in text, text[-3000:]

  # The restart resumes from the bucket's checkpoint and trains the rest.
  done = driver.run(run_flags(bucket_data, run), timeout=900)
  assert done.returncode == 0, text_of(done)[-4000:]
  assert f"Resumed from step {stopped_at}" in done.stderr, done.stderr[-3000:]
  with open(os.path.join(straight, "metrics.jsonl")) as f:
    local = [json.loads(line) for line in f]
  want = {r["step"]: r for r in local if "train/lr" in r}
  got = train_records(gcs, metrics)
  assert sorted(got) == sorted(want) == list(range(1, N + 1))
  for step in want:
    for key in set(want[step]) - set(loop.TIMING_KEYS):
      np.testing.assert_allclose(got[step][key], want[step][key], rtol=1e-6, atol=1e-6,
                                 err_msg=f"{key} at step {step}")
  local_val = [r for r in local if "val/mIoU" in r]
  val = [r for r in records(gcs, metrics) if "val/mIoU" in r]
  assert [r["step"] for r in val] == [N]
  np.testing.assert_allclose(val[0]["val/mIoU"], local_val[0]["val/mIoU"], atol=1e-6)

  # Evaluate the bucket's checkpoint: one more record, the same metrics.
  done = driver.run(["main.py", "--mode=eval", f"--workdir={run}"], timeout=900)
  assert done.returncode == 0, text_of(done)[-3000:]
  val = [r for r in records(gcs, metrics) if "val/mIoU" in r]
  assert [r["step"] for r in val] == [N, N]
  np.testing.assert_allclose(val[1]["val/mIoU"], val[0]["val/mIoU"], atol=1e-6)

  # Predict from the bucket (a folder with a subfolder) into the bucket, and
  # the same images from local disk: the same label maps.
  rng = np.random.default_rng(0)
  images = {"photos/a.png": (40, 50), "photos/more/b.png": (64, 48)}
  local_in = tmp_path / "in"
  for name, hw in images.items():
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(buf, format="PNG")
    put_object(gcs, f"e2e/{name}", buf.getvalue())
    (local_in / name).parent.mkdir(parents=True, exist_ok=True)
    (local_in / name).write_bytes(buf.getvalue())
  done = driver.run(["main.py", "--mode=predict", f"--workdir={run}",
                     f"--input=gs://{BUCKET}/e2e/photos", f"--output=gs://{BUCKET}/e2e/pred"],
                    timeout=900)
  assert done.returncode == 0, text_of(done)[-3000:]
  done = driver.run(["main.py", "--mode=predict", f"--workdir={run}",
                     f"--input={local_in / 'photos'}", f"--output={tmp_path / 'pred'}"],
                    timeout=900)
  assert done.returncode == 0, text_of(done)[-3000:]
  for stem, hw in (("a", (40, 50)), ("more/b", (64, 48))):
    labels = np.asarray(Image.open(io.BytesIO(read_object(gcs, f"e2e/pred/{stem}.png"))))
    assert labels.shape == hw
    np.testing.assert_array_equal(labels, np.asarray(Image.open(tmp_path / "pred" / f"{stem}.png")))
  assert files(gcs, "e2e/pred/") == sorted(
      f"e2e/pred/{stem}{suffix}.png" for stem in ("a", "more/b")
      for suffix in ("", "_color", "_overlay"))

  # Export into the bucket.
  done = driver.run(["main.py", "--mode=export", f"--workdir={run}",
                     f"--export_dir=gs://{BUCKET}/e2e/export", "--export_format=jax"], timeout=900)
  assert done.returncode == 0, text_of(done)[-3000:]
  assert {"e2e/export/model.jax", "e2e/export/export.json"} <= set(
      files(gcs, "e2e/export/"))

  # What the bucket holds: the run's files, its checkpoint, its event files;
  # the lock released; nothing written on local disk under a `gs:` folder.
  held = {n[len("e2e/run/"):] for n in files(gcs, "e2e/run/")}
  assert {"config.json", "run.json", "metrics.jsonl"} <= held, sorted(held)
  assert any(f.startswith(f"checkpoints/{N}/") for f in held), sorted(held)
  assert any("events.out.tfevents" in f for f in held), sorted(held)
  assert "trainer.lock" not in held and not any("unreadable" in f for f in held), sorted(held)
  assert json.loads(read_object(gcs, "e2e/run/config.json"))["num_train_steps"] == N

  no_local_gs_folder(ROOT, str(tmp_path))


HEARTBEAT_S = 5   # --heartbeat_timeout_s of the pod test: how long a lost process goes unseen


def _free_port() -> int:
  import socket
  with socket.socket() as s:   # in this namespace; the namespace's loopback has the same ports free
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_a_pod_on_a_bucket_loses_a_host_and_resumes(gcs, driver, bucket_data, demo_dir, tmp_path):
  """Two processes x 2 devices on one gs:// workdir: process 1 killed (SIGKILL)
  once a checkpoint is in the bucket; process 0 stops within the heartbeat
  timeout naming it; both started again resume from the bucket and end where
  one process x 4 devices on local disk ends (tests/test_multiprocess.py's
  comparison and tolerances)."""
  import test_multiprocess as mp
  run = f"gs://{BUCKET}/pod/run"

  def flags(data_dir, workdir):
    return [*mp._flags(data_dir, workdir), "--config.checkpoint_every_steps=1",
            "--config.keep_checkpoints=10", f"--heartbeat_timeout_s={HEARTBEAT_S}"]

  # One process x 4 devices on local disk (test_multiprocess's program).
  single = str(tmp_path / "single")
  done = driver.run(["main.py", *mp._flags(demo_dir, single)], timeout=900,
                    env={"XLA_FLAGS": xla_flags(4)})
  assert done.returncode == 0, text_of(done)[-3000:]

  def start_pod():
    port = _free_port()
    distributed = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
    first = driver.start(["main.py", *flags(bucket_data, run), *distributed, "--process_id=0"],
                         env={"XLA_FLAGS": xla_flags(2)})
    log = open(tmp_path / f"process1.{port}.log", "w+")
    second = subprocess.Popen(
        [*gcs.prefix(), sys.executable, "main.py", *flags(bucket_data, run), *distributed,
         "--process_id=1"], cwd=ROOT, env=bucket_env(gcs, XLA_FLAGS=xla_flags(2)), stdout=log,
        stderr=subprocess.STDOUT)
    return first, second, log

  def committed():
    return _committed(gcs, "pod/run")

  # 1. Process 1 dies (SIGKILL) once checkpoint 2 is committed.
  first, second, log = start_pod()
  try:
    deadline = time.time() + 600
    while (not committed() or committed()[-1] < 2) and first.poll() is None and \
        second.poll() is None and time.time() < deadline:
      time.sleep(0.02)
    assert first.poll() is None and second.poll() is None, "the pod ended before the kill"
    second.kill()
    killed = time.monotonic()
    code = first.wait(timeout=HEARTBEAT_S + 60)
    stopped_after = time.monotonic() - killed
  finally:
    for p in (first, second):
      if p.poll() is None:
        p.kill()
        p.wait()
    log.close()
  text = "".join(first.output())
  assert code == 75, text[-4000:]
  assert "process 1 of 2 lost" in text and "process 0 stops" in text, text[-3000:]
  assert "Traceback" not in text and "Fatal Python error" not in text, text[-3000:]
  print(f"process 0 stopped {stopped_after:.1f} s after process 1 was killed "
        f"(--heartbeat_timeout_s={HEARTBEAT_S})")
  assert stopped_after < HEARTBEAT_S + 10, (stopped_after, text[-3000:])
  last = committed()[-1]
  assert last < mp.STEPS, "the kill came too late to test a resume"

  # 2. Both started again: they resume from the last committed checkpoint.
  codes, texts = mp.wait_both(*start_pod())
  assert codes == [0, 0], "\n\n".join(t[-4000:] for t in texts)
  assert f"Resumed from step {last}" in texts[0], texts[0][-3000:]

  # 3. Where 1 process x 4 devices ends: losses (the last record of each step:
  # the resumed run wrote again the steps after `last`), params, BN statistics,
  # prototypes and the evaluation.
  got = train_records(gcs, "pod/run/metrics.jsonl")
  with open(os.path.join(single, "metrics.jsonl")) as f:
    ref = [json.loads(line) for line in f]
  want = {r["step"]: r for r in ref if "train/lr" in r}
  assert sorted(got) == sorted(want) == list(range(1, mp.STEPS + 1))
  spread = {}
  for key in ("train/loss", "train/loss_ce", "train/loss_ppc", "train/loss_ppd"):
    spread[key] = max(abs(got[s][key] - want[s][key]) / abs(want[s][key]) for s in want)
  # The checkpoints compared in the namespace (this process cannot reach the bucket).
  done = driver.run(["-c", COMPARE_CHECKPOINTS, run, single], timeout=600,
                    env={"XLA_FLAGS": xla_flags(1)})
  assert done.returncode == 0, text_of(done)[-3000:]
  compared = json.loads(done.stdout.splitlines()[-1])
  assert compared["steps"] == [mp.STEPS, mp.STEPS], compared
  spread.update(compared["spread"])
  val = [r for r in records(gcs, "pod/run/metrics.jsonl") if "val/mIoU" in r]
  ref_val = [r for r in ref if "val/mIoU" in r]
  assert [r["step"] for r in val] == [mp.STEPS]
  spread["val/mIoU"] = abs(val[0]["val/mIoU"] - ref_val[0]["val/mIoU"])
  print("2 processes on the bucket vs 1 on local disk:", spread)
  for key, tol in mp.TOLERANCES.items():
    assert spread[key] <= tol, (key, tol, spread)
  no_local_gs_folder(ROOT, str(tmp_path))


# argv: two workdirs; prints {"steps": [...], "spread": {tree: max |a - b|}} of
# their newest checkpoints.
COMPARE_CHECKPOINTS = """
import json, sys
import jax, numpy as np
from protoseg_jax.trainer import run as runs
a, b = (runs.load_run(w) for w in sys.argv[1:3])
va, vb = jax.device_get(a.variables), jax.device_get(b.variables)
spread = {name: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                    for x, y in zip(jax.tree.leaves(va[name]), jax.tree.leaves(vb[name])))
          for name in ("params", "batch_stats", "prototypes")}
print(json.dumps({"steps": [a.step, b.step], "spread": spread}))
"""


LEASE_SCRIPT = """
import json, sys, time
from unittest import mock
from protoseg_jax.trainer import faults
workdir = sys.argv[1]
out = {}
first = faults.WorkdirLock(workdir, lease_s=1.5)
first.acquire()
try:
  faults.WorkdirLock(workdir, lease_s=1.5).acquire()
except faults.WorkdirInUse as e:
  out["second"] = str(e)
time.sleep(2.0)                      # renewed every 0.5 s: still held
try:
  faults.WorkdirLock(workdir, lease_s=1.5).acquire()
except faults.WorkdirInUse as e:
  out["third"] = str(e)
# The holder dies without releasing (its renewals stop); once its lease ran
# out the next trainer takes the workdir over, and the old one learns it.
first._impl._stop.set()
first._impl._thread.join()
time.sleep(1.6)
taker = faults.WorkdirLock(workdir, lease_s=1.5)
with mock.patch.object(faults.logging, "warning") as warned:
  taker.acquire()
out["warning"] = warned.call_args[0][0] % warned.call_args[0][1:]
assert not first._impl.renew()
try:
  first.check()
except faults.WorkdirInUse as e:
  out["lost"] = str(e)
taker.release()
again = faults.WorkdirLock(workdir, lease_s=1.5)   # released: free at once
again.acquire()
again.release()
out["released"] = True
print(json.dumps(out))
"""


def test_the_workdir_lock_is_a_lease_in_the_bucket(gcs, driver):
  workdir = f"gs://{BUCKET}/lease/run"
  done = driver.run(["-c", LEASE_SCRIPT, workdir], timeout=300)
  assert done.returncode == 0, text_of(done)[-3000:]
  out = json.loads(done.stdout.splitlines()[-1])
  for key in ("second", "third"):
    assert f"the workdir {workdir} is in use by a running trainer: process " in out[key], out
    assert f"its lease on {workdir}/trainer.lock runs until" in out[key], out
  assert out["warning"].startswith(f"took over {workdir}/trainer.lock: the lease of process "), out
  assert "without a release (a killed trainer)" in out["warning"], out
  assert out["lost"].startswith(f"this trainer lost the workdir {workdir}: its lease on "), out
  assert "was taken over by another trainer" in out["lost"], out
  assert out["released"] and gcs.list_objects(BUCKET, "lease/") == []


MISSING = "the bucket gs://no-such-bucket cannot be used"


@pytest.mark.parametrize("flag,says", [
    ("--workdir=gs://no-such-bucket/run", MISSING),
    ("--config.dataset.data_dir=gs://no-such-bucket/tfds", MISSING),
    ("--config.init_from=gs://no-such-bucket/weights", MISSING),
    (f"--config.init_from=gs://{BUCKET}/no-such-weights", "no converted weights there")])
def test_a_missing_bucket_or_object_is_one_line_before_anything_compiles(gcs, driver, tmp_path,
                                                                          flag, says):
  args = ["main.py", "--config=tests/tiny_runs.py:plumbing", f"--workdir={tmp_path / 'run'}",
          flag]
  done = driver.run(args, timeout=300, log_compiles=True)
  assert done.returncode == 2, text_of(done)[-3000:]
  lines = [line for line in done.stderr.splitlines() if "error" in line]
  name = flag.split("=")[0].lstrip("-")
  assert len(lines) == 1 and f"{name}={flag.split('=', 1)[1]}" in lines[0], done.stderr[-3000:]
  assert says in lines[0], lines
  assert "Compiling" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert not os.path.exists(tmp_path / "run")


def _committed(gcs, prefix):
  """The checkpoint steps under gs://BUCKET/PREFIX/checkpoints/ that orbax
  finished (their commit_success.txt: GCS has no atomic rename)."""
  names = gcs.list_objects(BUCKET, f"{prefix}/checkpoints/")
  return sorted({int(n.split("/")[-2]) for n in names
                 if n.endswith("/commit_success.txt") and n.count("/") == prefix.count("/") + 3})


@pytest.mark.slow
@pytest.mark.parametrize("what", ["checkpoint", "metrics"])
def test_a_store_outage_stops_the_run_naming_the_url_and_it_resumes(gcs, driver, bucket_data, what):
  """The store fails every write of checkpoint 8 (503) or of metrics.jsonl
  (connections reset): retried, then the run stops with one line naming the
  URL; checkpoint 4 stays whole, 8 is never taken for one; once the store is
  back the same command resumes from 4 and finishes. Then (checkpoint case)
  the last checkpoint damaged: set aside in the bucket, the run resumes."""
  prefix = f"outage/{what}"
  obj = quote(f"{prefix}/checkpoints/8/" if what == "checkpoint" else f"{prefix}/metrics.jsonl",
              safe="")
  mode = "503" if what == "checkpoint" else "reset"
  args = run_flags(bucket_data, f"gs://{BUCKET}/{prefix}", checkpoint_every_steps=4)
  gcs.set_fault(mode, path=obj, methods=("POST", "PUT"))
  try:
    t0 = time.monotonic()
    done = driver.run(args, timeout=600)
    took = time.monotonic() - t0
  finally:
    gcs.set_fault(None)
  assert done.returncode == 1, text_of(done)[-3000:]
  last = done.stderr.strip().splitlines()[-1]
  url = (f"gs://{BUCKET}/{prefix}/checkpoints" if what == "checkpoint" else
         f"gs://{BUCKET}/{prefix}/metrics.jsonl")
  doing = "saving a checkpoint in" if what == "checkpoint" else "appending to"
  assert last.startswith(f"main.py: error: {doing} {url} failed, retries included "
                         "($GCS_RETRY_CONFIG_MAX_RETRIES)"), last
  attempts = [r for r in gcs.requests() if obj in r["target"] and r["outcome"].startswith("fault")]
  assert len(attempts) >= 1 + RETRIES, attempts       # each failed request retried
  assert took < 120, took
  steps = _committed(gcs, prefix)
  assert (steps == [4]) if what == "checkpoint" else (steps in ([], [4])), steps

  done = driver.run(args, timeout=600)
  assert done.returncode == 0, text_of(done)[-3000:]
  if steps:
    assert f"Resumed from step {steps[-1]}" in done.stderr, done.stderr[-3000:]
  assert _committed(gcs, prefix)[-1] == N
  got = train_records(gcs, f"{prefix}/metrics.jsonl")
  assert sorted(got) == list(range(1, N + 1)), sorted(got)   # those before the outage kept
  if what == "checkpoint":
    _damaged_checkpoint_is_set_aside(gcs, driver, args, prefix)


def _damaged_checkpoint_is_set_aside(gcs, driver, args, prefix):
  """A damaged last checkpoint N (its data objects gone): the run started
  again moves it to checkpoints_unreadable/ (copy + delete: GCS has no
  rename), resumes from the one before and saves step N again."""
  run = f"gs://{BUCKET}/{prefix}"
  data = files(gcs, f"{prefix}/checkpoints/{N}/default/d/")
  assert data, files(gcs, f"{prefix}/checkpoints/{N}/")
  for name in data:
    status, _ = gcs.request("DELETE", f"/storage/v1/b/{BUCKET}/o/{quote(name, safe='')}")
    assert status in (200, 204), (name, status)
  done = driver.run(args, timeout=900)
  assert done.returncode == 0, text_of(done)[-3000:]
  assert f"unreadable checkpoint step {N} moved to {run}/checkpoints_unreadable/{N}" in \
      done.stderr, done.stderr[-3000:]
  before = re.search(rf"restored step (\d+) instead of the latest step {N} of {run}/checkpoints "
                     rf"\(unreadable: {N}\)", done.stderr)
  assert before and f"Resumed from step {before[1]}" in done.stderr, done.stderr[-3000:]
  assert files(gcs, f"{prefix}/checkpoints_unreadable/{N}/") and _committed(gcs, prefix)[-1] == N


# argv: two converted-weights folders; prints the largest |a - b| over their leaves.
COMPARE_VARIABLES = """
import sys
import jax, numpy as np
from protoseg_jax.trainer import checkpoints
a, b = (checkpoints.load_variables(p) for p in sys.argv[1:3])
assert jax.tree.structure(a) == jax.tree.structure(b)
print(max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))
"""


def test_the_converter_reads_and_writes_the_bucket(gcs, driver, tmp_path):
  """`python -m protoseg_jax.convert --src gs://... --dst gs://...` gives the
  weights the same conversion writes locally."""
  import timm
  import torch
  from test_convert import ARCH
  torch.manual_seed(0)
  torch.save({"model": timm.create_model(ARCH, pretrained=False).state_dict()},
             tmp_path / "w.pth")
  put_object(gcs, "convert/w.pth", (tmp_path / "w.pth").read_bytes())
  for src, dst in ((f"gs://{BUCKET}/convert/w.pth", f"gs://{BUCKET}/convert/out"),
                   (str(tmp_path / "w.pth"), str(tmp_path / "out"))):
    done = driver.run(["-m", "protoseg_jax.convert", "--arch", ARCH, "--src", src, "--dst", dst],
                      timeout=300)
    assert done.returncode == 0, text_of(done)[-3000:]
    assert f"converted {src} ({ARCH})" in done.stdout, done.stdout
  done = driver.run(["-c", COMPARE_VARIABLES, f"gs://{BUCKET}/convert/out", str(tmp_path / "out")],
                    timeout=300)
  assert done.returncode == 0, text_of(done)[-3000:]
  assert float(done.stdout.split()[-1]) == 0.0
  assert any(n.startswith("convert/out/variables/") for n in files(gcs, "convert/out/"))
  no_local_gs_folder(ROOT, str(tmp_path))
