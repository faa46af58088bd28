"""Checks what works against the GCS emulator, and how clients fail.

Runs inside the emulator's namespace, with its environment:

  python tests/gcs_emulator.py --root /tmp/gcs --bucket check &   # prints these
  nsenter -t PID -n -m --wd=. -- env $(...env lines...) python tests/gcs_check.py

or in one go from outside: `python tests/gcs_check.py --outside` (starts an
emulator, runs itself inside it, stops it).

Every case runs in a process of its own (fresh caches, a time cap), as
`python tests/gcs_check.py --case NAME --base gs://BUCKET/check/...`, and
prints `op: seconds result` lines. Then, with the proxy answering 503, then
with it down (connections refused), then failing only the first two
requests: one small write and one read per client, capped at --cap seconds;
each prints the time until it raised (or finished), the exception, whether
the message names the URL/object, and the proxy's log says how many
attempts it made. The gcsfs cases need gcsfs (not a dependency of the
project: `pip install gcsfs`); without it they report the ImportError.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import gcs_emulator  # pylint: disable=wrong-import-position

# --------------------------------------------------------------------------
# Helpers for the cases.


def timed(label, fn, *args, **kwargs):
  """Runs fn, prints `label: seconds result`; returns its result."""
  t0 = time.monotonic()
  try:
    out = fn(*args, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    print(f"  {label}: {time.monotonic() - t0:.2f}s RAISED "
          f"{type(e).__module__}.{type(e).__name__}: {_short(e)}", flush=True)
    return None
  shown = out if not isinstance(out, (bytes, str)) or len(out) < 200 else (
      f"<{len(out)} bytes/chars>")
  print(f"  {label}: {time.monotonic() - t0:.2f}s -> {shown}", flush=True)
  return out


def _short(e, n=400):
  return " ".join(str(e).split())[:n]


def _split(url):
  bucket, _, key = url[len("gs://"):].partition("/")
  return bucket, key


# --------------------------------------------------------------------------
# The cases (each in its own process).


def case_tf_gfile(base):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  g = tf.io.gfile
  timed("makedirs", g.makedirs, f"{base}/d/sub")

  def write(path, data):
    with g.GFile(path, "wb") as f:
      f.write(data)

  def read(path):
    with g.GFile(path, "rb") as f:
      return f.read()

  timed("write small", write, f"{base}/d/a.txt", b"hello")
  big = os.urandom(5 << 20)
  timed("write 5 MB", write, f"{base}/d/sub/big.bin", big)
  timed("read small", read, f"{base}/d/a.txt")
  got = timed("read 5 MB", read, f"{base}/d/sub/big.bin")
  print(f"  5 MB round trip equal: {got == big}")
  timed("exists file", g.exists, f"{base}/d/a.txt")
  timed("exists dir", g.exists, f"{base}/d")
  timed("exists missing", g.exists, f"{base}/nope")
  timed("isdir", g.isdir, f"{base}/d/sub")
  timed("stat size", lambda: g.stat(f"{base}/d/sub/big.bin").length)
  timed("listdir", g.listdir, f"{base}/d")
  timed("glob *.txt", g.glob, f"{base}/d/*.txt")
  timed("glob */*", g.glob, f"{base}/d/*/*")
  timed("glob ** (recursive?)", g.glob, f"{base}/**/big.bin")
  timed("glob **/*", g.glob, f"{base}/**")
  timed("walk", lambda: [(d, sorted(s), sorted(f)) for d, s, f in
                         g.walk(f"{base}/d")])
  timed("rename file", g.rename, f"{base}/d/a.txt", f"{base}/d/b.txt")
  timed("rename overwrite=False onto existing", g.rename, f"{base}/d/b.txt",
        f"{base}/d/sub/big.bin")
  timed("rename dir", g.rename, f"{base}/d/sub", f"{base}/d/sub2")
  timed("listdir after renames", g.listdir, f"{base}/d")
  timed("copy", g.copy, f"{base}/d/b.txt", f"{base}/d/c.txt")
  timed("rmtree", g.rmtree, f"{base}/d")
  timed("exists after rmtree", g.exists, f"{base}/d")


def case_tfds_prepare(base):
  cmd = [sys.executable, "-m", "data.prepare", "demo", "--config=tiny",
         f"--data_dir={base}/tfds"]
  t0 = time.monotonic()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        check=False)
  print(f"  data.prepare: {time.monotonic() - t0:.2f}s rc={proc.returncode} "
        f"{proc.stdout.strip()[-300:]}")
  if proc.returncode:
    print("  stderr:", proc.stderr[-2000:])
    return
  sys.path.insert(0, ROOT)
  import data  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  builder = timed("get_builder", data.get_builder, "demo",
                  data_dir=f"{base}/tfds", config="tiny")
  print(f"  is_prepared: {builder.is_prepared()} data_dir={builder.data_dir}")
  ds = timed("as_dataset(train)", builder.as_dataset, split="train")
  def count():
    n, shapes = 0, set()
    for ex in ds.prefetch(tf.data.AUTOTUNE):
      n += 1
      shapes.add(tuple((k, tuple(v.shape)) for k, v in sorted(ex.items())))
    return n, sorted(shapes)[:2]
  timed("iterate train split", count)
  timed("files", lambda: sorted(tf.io.gfile.listdir(builder.data_dir)))


def case_tf_summary(base):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  writer = timed("create_file_writer", tf.summary.create_file_writer,
                 f"{base}/tb")
  def write():
    with writer.as_default():
      for step in range(5):
        tf.summary.scalar("loss", 1.0 / (step + 1), step=step)
    writer.flush()
  timed("scalars + flush", write)
  timed("close", writer.close)
  files = timed("glob events", tf.io.gfile.glob, f"{base}/tb/events.out.*")
  if files:
    timed("records read back", lambda: sum(
        1 for _ in tf.data.TFRecordDataset(files)))
  try:
    from clu import metric_writers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    print(f"  clu: not importable ({e})")
    return
  w = timed("clu create_default_writer", metric_writers.create_default_writer,
            f"{base}/clu", just_logging=False)
  timed("clu write_scalars + flush", lambda: (
      w.write_scalars(1, {"acc": 0.5}), w.flush()))
  timed("clu close", w.close)
  timed("clu files", tf.io.gfile.listdir, f"{base}/clu")


def case_gcs_client(base):
  from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
  from google.cloud import storage  # pylint: disable=import-outside-toplevel
  bucket_name, prefix = _split(base)
  client = storage.Client()
  bucket = client.bucket(bucket_name)
  blob = bucket.blob(f"{prefix}/x.txt")

  def expect_412(fn):
    try:
      fn()
    except exceptions.PreconditionFailed as e:
      return f"PreconditionFailed as expected: {_short(e, 150)}"
    return "NO ERROR (precondition not enforced!)"

  timed("create-if-absent (if_generation_match=0)", lambda: (
      blob.upload_from_string(b"v1", if_generation_match=0), blob.generation)[1])
  timed("create-if-absent again", expect_412, lambda: bucket.blob(
      f"{prefix}/x.txt").upload_from_string(b"v1b", if_generation_match=0))
  gen = blob.generation
  timed("update with current generation", lambda: (
      blob.upload_from_string(b"v2", if_generation_match=gen),
      blob.generation)[1])
  timed("update with stale generation", expect_412, lambda: bucket.blob(
      f"{prefix}/x.txt").upload_from_string(b"v3", if_generation_match=gen))
  timed("read back", lambda: bucket.blob(f"{prefix}/x.txt").download_as_bytes())
  a, b = bucket.blob(f"{prefix}/a"), bucket.blob(f"{prefix}/b")
  a.upload_from_string(b"first,")
  b.upload_from_string(b"second")
  c = bucket.blob(f"{prefix}/c")
  timed("compose a+b", c.compose, [a, b])
  timed("composed content", lambda: bucket.blob(f"{prefix}/c")
        .download_as_bytes())
  timed("get_blob + reload (metadata)", lambda: bucket.get_blob(
      f"{prefix}/c").size)
  timed("list_blobs", lambda: [x.name for x in client.list_blobs(
      bucket_name, prefix=prefix)])
  big = os.urandom(12 << 20)
  timed("upload 12 MB (resumable, chunked)", lambda: bucket.blob(
      f"{prefix}/big", chunk_size=4 << 20).upload_from_string(big))
  timed("download 12 MB equal", lambda: bucket.blob(f"{prefix}/big")
        .download_as_bytes() == big)
  timed("delete_blobs", bucket.delete_blobs, list(client.list_blobs(
      bucket_name, prefix=prefix)))


def case_orbax(base):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  print(f"  orbax {ocp.__version__ if hasattr(ocp, '__version__') else '?'}, "
        f"jax {jax.__version__}")
  tree = {"w": jnp.arange(64.0).reshape(8, 8), "b": {"c": jnp.ones(3, jnp.int32)},
          "big": jnp.zeros((512, 1024), jnp.float32)}  # 2 MB
  mngr = timed("CheckpointManager", ocp.CheckpointManager, f"{base}/ckpt",
               options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
  for step in (1, 2, 3):
    timed(f"save step {step}", lambda s=step: (
        mngr.save(s, args=ocp.args.StandardSave(tree)),
        mngr.wait_until_finished()))
  timed("all_steps (max_to_keep=2)", mngr.all_steps)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  restored = timed("restore latest", lambda: mngr.restore(
      mngr.latest_step(), args=ocp.args.StandardRestore(abstract)))
  if restored is not None:
    print("  restored equal:", all(np.array_equal(x, y) for x, y in zip(
        jax.tree.leaves(tree), jax.tree.leaves(restored))))
  timed("close", mngr.close)
  mngr2 = timed("reopen (new manager)", ocp.CheckpointManager, f"{base}/ckpt")
  timed("reopened all_steps", mngr2.all_steps)


def case_jax_cache(base):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from etils import epath  # pylint: disable=import-outside-toplevel
  events = collections.Counter()
  jax.monitoring.register_event_listener(
      lambda name, **kw: events.update([name]))
  jax.config.update("jax_compilation_cache_dir", f"{base}/jaxcache")
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  f = jax.jit(lambda x: jnp.tanh(x @ x.T) + 1.0)
  timed("compile + run", lambda: float(f(jnp.ones((16, 16))).sum()))
  timed("cache listing", lambda: sorted(
      p.name for p in epath.Path(f"{base}/jaxcache").iterdir()))
  print("  cache events:", {k: v for k, v in events.items()
                            if "cache" in k})


def case_epath(base):
  from etils import epath  # pylint: disable=import-outside-toplevel
  p = epath.Path(base)
  backend = getattr(p, "_backend", None)
  print(f"  EPATH_USE_TF={os.environ.get('EPATH_USE_TF')} path class "
        f"{type(p).__name__}, backend {type(backend).__name__}")
  timed("mkdir", (p / "d").mkdir, parents=True, exist_ok=True)
  timed("write_text", (p / "d" / "a.txt").write_text, "hello")
  timed("read_text", (p / "d" / "a.txt").read_text)
  timed("write_bytes nested", (p / "d" / "sub" / "x.bin").write_bytes, b"xx")
  timed("exists/is_dir", lambda: ((p / "d" / "a.txt").exists(),
                                  (p / "d" / "sub").is_dir()))
  timed("iterdir", lambda: sorted(x.name for x in (p / "d").iterdir()))
  timed("glob *.txt", lambda: sorted(x.name for x in (p / "d").glob("*.txt")))
  timed("glob **/*.bin", lambda: sorted(
      str(x)[len(base):] for x in p.glob("**/*.bin")))
  timed("rglob *.bin", lambda: sorted(
      str(x)[len(base):] for x in p.rglob("*.bin")))
  timed("rename", lambda: (p / "d" / "a.txt").rename(p / "d" / "b.txt"))
  (p / "d" / "c.txt").write_text("other")
  timed("replace (onto existing)", lambda: (p / "d" / "b.txt").replace(
      p / "d" / "c.txt"))
  timed("after rename/replace", lambda: (
      sorted(x.name for x in (p / "d").iterdir()),
      (p / "d" / "c.txt").read_text()))
  timed("rmtree", (p / "d").rmtree)
  timed("exists after rmtree", (p / "d").exists)


# Fault probes: one small write or read per client of the object `url`.
# `fault_setup` writes what the reads read, before the faults are set.


def case_fault_setup(base):
  from google.cloud import storage  # pylint: disable=import-outside-toplevel
  bucket_name, prefix = _split(base)
  bucket = storage.Client().bucket(bucket_name)
  for _, case, obj, _ in PROBES:
    if case.endswith("_read"):
      bucket.blob(f"{prefix}/{obj}").upload_from_string(b"data")
    elif case.endswith("_restore"):
      case_fault_orbax_save(f"{base}/{obj}")


def _probe(url, fn):
  """Runs the probe, prints one JSON line the orchestrator reads."""
  t0 = time.monotonic()
  try:
    out = fn()
    result = {"ok": True, "result": repr(out)[:100]}
  except BaseException as e:  # pylint: disable=broad-except
    result = {"ok": False, "error": f"{type(e).__module__}.{type(e).__name__}",
              "message": _short(e, 300),
              "names_object": url.rsplit("/", 1)[-1] in str(e)}
  result["seconds"] = round(time.monotonic() - t0, 2)
  print("PROBE " + json.dumps(result), flush=True)


def case_fault_tf_write(url):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  def write():
    with tf.io.gfile.GFile(url, "w") as f:
      f.write("data")
  _probe(url, write)


def case_fault_tf_read(url):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  _probe(url, lambda: tf.io.gfile.GFile(url, "r").read())


def case_fault_summary_write(url):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  def write():
    writer = tf.summary.create_file_writer(url)
    with writer.as_default():
      tf.summary.scalar("loss", 1.0, step=1)
    writer.flush()
    writer.close()
  _probe(url, write)


def case_fault_gcs_write(url):
  from google.cloud import storage  # pylint: disable=import-outside-toplevel
  bucket_name, key = _split(url)
  blob = storage.Client().bucket(bucket_name).blob(key)
  _probe(url, lambda: blob.upload_from_string(b"data"))


def case_fault_gcs_read(url):
  from google.cloud import storage  # pylint: disable=import-outside-toplevel
  bucket_name, key = _split(url)
  blob = storage.Client().bucket(bucket_name).blob(key)
  _probe(url, blob.download_as_bytes)


def case_fault_gcsfs_write(url):
  import gcsfs  # pylint: disable=import-outside-toplevel
  fs = gcsfs.GCSFileSystem()
  _probe(url, lambda: fs.pipe(url, b"data"))


def case_fault_gcsfs_read(url):
  import gcsfs  # pylint: disable=import-outside-toplevel
  fs = gcsfs.GCSFileSystem()
  _probe(url, lambda: fs.cat(url))


def _kvstore(url):
  import tensorstore as ts  # pylint: disable=import-outside-toplevel
  bucket_name, key = _split(url)
  return ts.KvStore.open({"driver": "gcs", "bucket": bucket_name}).result(), key


def case_fault_tensorstore_write(url):
  kv, key = _kvstore(url)
  _probe(url, lambda: kv.write(key, b"data").result())


def case_fault_tensorstore_read(url):
  kv, key = _kvstore(url)
  _probe(url, lambda: kv.read(key).result().value)


def case_fault_epath_write(url):
  from etils import epath  # pylint: disable=import-outside-toplevel
  _probe(url, lambda: epath.Path(url).write_text("data"))


def case_fault_epath_read(url):
  from etils import epath  # pylint: disable=import-outside-toplevel
  _probe(url, lambda: epath.Path(url).read_text())


def case_fault_orbax_save(url):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  def save():
    mngr = ocp.CheckpointManager(url, options=ocp.CheckpointManagerOptions(
        create=True))
    mngr.save(1, args=ocp.args.StandardSave({"w": jnp.ones((4, 4))}))
    mngr.wait_until_finished()
    mngr.close()
  _probe(url, save)


def case_fault_orbax_restore(url):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  abstract = {"w": jax.ShapeDtypeStruct((4, 4), jnp.float32)}
  def restore():
    mngr = ocp.CheckpointManager(url)
    return float(mngr.restore(1, args=ocp.args.StandardRestore(abstract))[
        "w"].sum())
  _probe(url, restore)


# --------------------------------------------------------------------------
# The orchestrator.

CHECKS = [  # (name, case, extra env)
    ("tf.io.gfile", "tf_gfile", {}),
    ("TFDS prepare + read", "tfds_prepare", {}),
    ("tf.summary / clu", "tf_summary", {}),
    ("google-cloud-storage", "gcs_client", {}),
    ("orbax CheckpointManager", "orbax", {}),
    ("JAX compilation cache (1st process)", "jax_cache", {}),
    ("JAX compilation cache (2nd process)", "jax_cache", {}),
    ("etils.epath, default backend", "epath", {}),
    ("etils.epath, EPATH_USE_TF=false", "epath", {"EPATH_USE_TF": "false"}),
]
# TF's own retry settings, shortened (shows they are honoured).
TF_FAST_RETRIES = {"GCS_RETRY_CONFIG_MAX_RETRIES": "2",
                   "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "100000",
                   "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "1000000"}
PROBES = [  # (label, case, object under gs://BUCKET/faults/, extra env)
    ("tf.io.gfile write", "fault_tf_write", "w-tf", {}),
    ("tf.io.gfile read", "fault_tf_read", "r-tf", {}),
    ("tf.io.gfile write, fast retries", "fault_tf_write", "w-tffast",
     TF_FAST_RETRIES),
    ("tf.io.gfile read, fast retries", "fault_tf_read", "r-tffast",
     TF_FAST_RETRIES),
    ("tf.summary write+flush", "fault_summary_write", "w-summary", {}),
    ("google-cloud-storage write", "fault_gcs_write", "w-gcs", {}),
    ("google-cloud-storage read", "fault_gcs_read", "r-gcs", {}),
    ("gcsfs write", "fault_gcsfs_write", "w-gcsfs", {}),
    ("gcsfs read", "fault_gcsfs_read", "r-gcsfs", {}),
    ("tensorstore write", "fault_tensorstore_write", "w-ts", {}),
    ("tensorstore read", "fault_tensorstore_read", "r-ts", {}),
    ("epath (TF) write", "fault_epath_write", "w-epathtf", {}),
    ("epath (TF) read", "fault_epath_read", "r-epathtf", {}),
    ("epath (gcsfs) write", "fault_epath_write", "w-epathfs",
     {"EPATH_USE_TF": "false"}),
    ("epath (gcsfs) read", "fault_epath_read", "r-epathfs",
     {"EPATH_USE_TF": "false"}),
    ("orbax save", "fault_orbax_save", "w-orbax", {}),
    ("orbax restore", "fault_orbax_restore", "r-orbax", {}),
]


def run_case(case, base, extra_env, cap):
  """Runs one case in a new process; returns (rc or 'killed', secs, output)."""
  env = {**os.environ, **extra_env, "TF_CPP_MIN_LOG_LEVEL": "2",
         "JAX_PLATFORMS": "cpu"}
  t0 = time.monotonic()
  try:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__),
                           "--case", case, "--base", base], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=cap,
                          check=False)
    return proc.returncode, time.monotonic() - t0, proc.stdout + proc.stderr
  except subprocess.TimeoutExpired as e:  # run() killed it
    out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (
        e.stdout or "")
    return "killed", time.monotonic() - t0, out


def attempts(root, needle, since):
  """The proxy's log entries since `since` whose target contains needle."""
  counts = collections.Counter()
  try:
    lines = open(os.path.join(root, "requests.log"),
                 encoding="utf-8").read().splitlines()
  except OSError:
    return {}
  for line in lines:
    t, _, method, target, outcome = line.split("\t")
    if float(t) >= since and needle in target:
      counts[f"{method} {outcome}"] += 1
  return dict(counts)


def make_bucket(name):
  url = os.environ["STORAGE_EMULATOR_HOST"] + "/storage/v1/b?project=p"
  req = urllib.request.Request(url, data=json.dumps({"name": name}).encode(),
                               headers={"Content-Type": "application/json"})
  try:
    urllib.request.urlopen(req, timeout=10).read()
  except urllib.error.HTTPError as e:
    if e.code != 409:
      raise


def run_probes(args, root, mode, kwargs=None):
  """The fault probes with fault `mode` set; kwargs for set_fault, where
  path="{object}" means: only the probe's object (probes then one by one)."""
  base = f"gs://{args.bucket}/faults"
  per_object = bool(kwargs) and kwargs.get("path") == "{object}"
  print(f"\n=== fault {mode!r} {kwargs or ''} (cap {args.cap:.0f} s per "
        "probe)", flush=True)

  def one(probe):
    label, case, obj, extra = probe
    if per_object:
      gcs_emulator.set_fault(root, mode, **{**kwargs, "path": obj})
    since = time.time()
    rc, secs, out = run_case(case, f"{base}/{obj}", extra, args.cap)
    probe_line = [l for l in out.splitlines() if l.startswith("PROBE ")]
    if probe_line:
      res = json.loads(probe_line[-1][6:])
      text = (f"ok in {res['seconds']}s" if res["ok"] else
              f"raised after {res['seconds']}s: {res['error']}: "
              f"{res['message'][:260]} [names object: {res['names_object']}]")
    else:
      text = (f"NO RESULT: {rc} after {secs:.0f}s; output tail: "
              f"{' '.join(out.split())[-300:]}")
    return f"- {label}: {text}\n    proxy saw: {attempts(root, obj, since)}"

  if per_object:
    for probe in PROBES:
      print(one(probe), flush=True)
  else:
    gcs_emulator.set_fault(root, mode, **(kwargs or {}))
    with futures.ThreadPoolExecutor(args.jobs) as pool:
      for line in pool.map(one, PROBES):
        print(line, flush=True)
  gcs_emulator.set_fault(root, None)


def orchestrate(args):
  root = os.environ.get("GCS_EMULATOR_ROOT")
  if not root or "STORAGE_EMULATOR_HOST" not in os.environ:
    sys.exit("run inside the emulator's namespace with its env() "
             "(or use --outside)")
  make_bucket(args.bucket)
  only = set(args.only.split(",")) if args.only else None
  if not args.faults_only:
    print("=== what works", flush=True)
    for label, case, extra in CHECKS:
      if only and case not in only:
        continue
      suffix = "-gcsfs" if extra.get("EPATH_USE_TF") == "false" else ""
      base = f"gs://{args.bucket}/check/{case}{suffix}"
      rc, secs, out = run_case(case, base, extra, args.cap * 3)
      print(f"\n--- {label} [{secs:.1f}s incl. imports, rc={rc}] {base}")
      print(out.rstrip() if rc == 0 else out[-6000:], flush=True)
  if args.no_faults:
    return
  rc, _, out = run_case("fault_setup", f"gs://{args.bucket}/faults", {},
                        args.cap)
  if rc:
    print("fault_setup failed:", out[-3000:])
  for mode in args.modes.split(","):
    run_probes(args, root, mode)
  # Transient: only the first two requests for each probe's object fail.
  run_probes(args, root, "503", {"path": "{object}", "count": 2})


def outside(args, argv):
  """Starts an emulator, runs this script inside it, stops it."""
  import tempfile  # pylint: disable=import-outside-toplevel
  root = args.root or tempfile.mkdtemp(prefix="gcs_check_")
  t0 = time.monotonic()
  with gcs_emulator.GcsEmulator(root) as gcs:
    print(f"emulator started in {time.monotonic() - t0:.2f}s at {root}",
          flush=True)
    inner = [a for a in argv if a != "--outside"]
    proc = subprocess.run(gcs.prefix() + [sys.executable,
                                          os.path.abspath(__file__)] + inner,
                          env={**os.environ, **gcs.env()}, cwd=ROOT,
                          check=False)
    t0 = time.monotonic()
  print(f"emulator stopped in {time.monotonic() - t0:.2f}s; processes left "
        f"in its namespace: {gcs.namespace_pids()}")
  return proc.returncode


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--outside", action="store_true",
                      help="start an emulator and run inside it")
  parser.add_argument("--root", help="with --outside: the emulator's root")
  parser.add_argument("--bucket", default="check")
  parser.add_argument("--only", help="comma-separated case names")
  parser.add_argument("--faults-only", action="store_true")
  parser.add_argument("--no-faults", action="store_true")
  parser.add_argument("--cap", type=float, default=120,
                      help="seconds before a fault probe is killed")
  parser.add_argument("--modes", default="503,down",
                      help="faults to probe, comma-separated")
  parser.add_argument("--jobs", type=int, default=6,
                      help="fault probes run at once")
  parser.add_argument("--case", help=argparse.SUPPRESS)
  parser.add_argument("--base", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.case:
    globals()["case_" + args.case](args.base)
  elif args.outside:
    sys.exit(outside(args, argv))
  else:
    orchestrate(args)


if __name__ == "__main__":
  main()
