"""Test setup shared by all test files."""

import importlib.abc
import importlib.machinery
import os
import sys
import types
from unittest import mock

import pytest

# Tests run on the CPU; keep TF from grabbing anything and from logging noise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's LLVM back end without optimisation: the suite is mostly compiling
# train steps on tiny shapes, and -O0 compiles the tiny HRNet train step in
# ~35 s instead of ~60 s on 2 cores; the arithmetic is the same (no fast-math
# either way), only the generated loops are slower.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a subprocess of the tests: `devices` CPU devices, TEST_XLA_FLAGS."""
  return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


# 8 simulated CPU devices so that sharded programs can be compared with
# single-device ones in-process. Must be set before jax is imported.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()


# One persistent compilation cache for the session (the trainer's default is
# <workdir>/compilation_cache): tests, and the main.py subprocesses they
# start, load the programs other tests compiled instead of compiling again.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="protoseg_jax_cache_")


class _InertTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Stand-in for `torchvision` so that timm imports without it.

  timm declares torchvision as a dependency, but the only build of it that
  pip can get here is a CUDA one that breaks `import timm`. timm's model code
  (what the parity tests use) never calls torchvision; it only imports a few
  names at module level (FrozenBatchNorm2d, transforms). Every torchvision.*
  module here is an empty module whose attributes are inert mocks. Only
  installed when the real torchvision is absent.
  """

  def find_spec(self, name, path, target=None):
    if name == "torchvision" or name.startswith("torchvision."):
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    mod = types.ModuleType(spec.name)
    mod.__path__ = []
    mod.__getattr__ = lambda attr: mock.MagicMock(name=f"{spec.name}.{attr}")
    return mod

  def exec_module(self, module):
    pass


try:
  import torchvision  # noqa: F401
except Exception:  # absent (expected) or broken
  sys.modules.pop("torchvision", None)
  sys.meta_path.append(_InertTorchvision())


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_tiny_config(data_dir, *, plumbing: bool = False, **overrides):
  """`configs/demo.py:runlocal` (the shared tiny run: 2 steps, 64x64 crops, M=2,
  D=16; `tests/tiny_runs.py`) reading/writing the demo's "tiny" dataset under
  `data_dir`, with dotted `overrides` ({"optim.name": "sgd", "num_train_steps": 4,
  ...}); plumbing: with the plumbing model instead of hrnet_tiny
  (`tiny_runs.PLUMBING_MODEL`)."""
  import tiny_runs
  from protoseg_jax import convert
  config = tiny_runs.get_config("plumbing" if plumbing else None)
  config.dataset.data_dir = str(data_dir)
  return convert.apply_overrides(config, overrides)


@pytest.fixture
def tiny_config():
  """The factory `make_tiny_config(data_dir, plumbing=False, **overrides)`."""
  return make_tiny_config


def random_variables(abstract, seed: int = 0) -> dict:
  """Variables of the shapes of `abstract` (e.g. `train.abstract_variables(config,
  model)` or `jax.eval_shape` of an init), drawn with NumPy: nothing compiled
  (an init compiles for seconds per model). Kernels He-normal (std
  sqrt(2 / fan_in)); norm scales and BatchNorm variances in [0.5, 1.5];
  biases, BatchNorm means and every other leaf (prototypes, position tables)
  N(0, 0.1^2)."""
  import jax
  import numpy as np
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], "key", str(path[-1]))
    shape = tuple(leaf.shape)
    if name == "kernel":
      return rng.normal(0.0, np.sqrt(2.0 / max(1, int(np.prod(shape[:-1])))),
                        shape).astype(leaf.dtype)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, shape).astype(leaf.dtype)
    return rng.normal(0.0, 0.1, shape).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, dict(abstract))


def save_train_state(workdir, config, variables, step: int):
  """A train-state checkpoint of `variables` at `step` in workdir/checkpoints, as
  the trainer saves one (the optimizer's state fresh)."""
  import jax
  import jax.numpy as jnp
  from protoseg_jax import optim, train
  from protoseg_jax.trainer import checkpoints
  tx, _ = optim.create_optimizer(config, variables["params"])
  state = train.TrainState(step=jnp.asarray(step, jnp.int32), params=variables["params"],
                           batch_stats=variables.get("batch_stats", {}),
                           prototypes=variables.get("prototypes", {}),
                           opt_state=jax.jit(tx.init)(variables["params"]),
                           rng=jax.random.PRNGKey(0))
  mngr = checkpoints.checkpoint_manager(str(workdir), config)
  checkpoints.save_state(mngr, step, state)
  mngr.wait_until_finished()
  mngr.close()


# ---------------------------------------------------------------------------
# What the session builds once for every test worker: the prepared demo data
# and the trained tiny run. `built_once(name, build)` calls build(path) in the
# first process that asks, under a file lock that the others wait on; the
# folder lives in the session's shared directory (removed at its end).

if not os.environ.get("PROTOSEG_TEST_SHARED"):
  import atexit
  import shutil
  import tempfile
  os.environ["PROTOSEG_TEST_SHARED"] = tempfile.mkdtemp(prefix="protoseg_tests_")
  atexit.register(shutil.rmtree, os.environ["PROTOSEG_TEST_SHARED"], True)


def built_once(name: str, build) -> str:
  """The path SHARED/name, built by `build(path)` once per test session."""
  import fcntl
  import shutil
  path = os.path.join(os.environ["PROTOSEG_TEST_SHARED"], name)
  with open(path + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(path + ".done"):
      shutil.rmtree(path, ignore_errors=True)
      build(path)
      with open(path + ".done", "w"):
        pass
  return path


def prepare_demo(data_dir, timeout=600):
  """`python -m data.prepare demo --config=tiny --data_dir=DIR` as a user runs it, its
  output into pipes (not a terminal)."""
  import subprocess
  return subprocess.run([sys.executable, "-m", "data.prepare", "demo", "--config=tiny",
                         f"--data_dir={data_dir}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.fixture(scope="session")
def demo_dir():
  """A data_dir with the demo's "tiny" scenes (24 train / 10 validation) prepared by
  `python -m data.prepare` once for the session: read it, never write into it.
  `demo_prepare_output(demo_dir)`: what that command printed."""
  import json
  import pathlib

  def build(path):
    done = prepare_demo(path)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(path + ".prepare.json", "w") as f:
      json.dump({"stdout": done.stdout, "stderr": done.stderr}, f)

  return pathlib.Path(built_once("demo_tiny", build))


def demo_prepare_output(demo_dir) -> dict:
  """{"stdout", "stderr"} of the command that prepared the session's demo data."""
  import json
  with open(str(demo_dir) + ".prepare.json") as f:
    return json.load(f)


# The held-out run, trained once: `tests/tiny_runs.py:plumbing` (the demo's
# tiny run with the plumbing model) without class 3
# (config.dataset.held_out_class), evaluated after each of its 2 steps with
# the val/proto_* usage pass over every eval batch. test_train checks the run
# itself; predict, eval and diagnostics (test_predict, test_imports) use it.
TRAINED_RUN_OVERRIDES = {"eval.proto_usage_batches": -1, "eval_every_steps": 1,
                         "dataset.held_out_class": 3}


class TrainedRun:
  """The session's trained run: `config`, `workdir` (read-only: `copy_to` a
  folder of the test's own to change it), `step` and `variables` (host
  arrays) of the state `loop.train_and_evaluate` returned, `usage_traces`:
  how often its evaluations traced the usage step."""

  def __init__(self, path, demo_dir):
    import json
    self.config = make_tiny_config(demo_dir, plumbing=True, **TRAINED_RUN_OVERRIDES)
    self.workdir = os.path.join(path, "run")
    with open(os.path.join(path, "result.json")) as f:
      result = json.load(f)
    self.step, self.usage_traces = result["step"], result["usage_traces"]
    self._variables = os.path.join(path, "variables.npz")

  @property
  def variables(self) -> dict:
    import flax
    import numpy as np
    with np.load(self._variables) as z:
      return flax.traverse_util.unflatten_dict({k: z[k] for k in z.files}, sep="/")

  def copy_to(self, dst) -> str:
    import shutil
    shutil.copytree(self.workdir, dst)
    return str(dst)


@pytest.fixture(scope="session")
def trained_run(demo_dir):
  """TrainedRun: the held-out tiny run, trained once for the session (in the
  first test process that asks; the others wait for it)."""
  import json

  def build(path):
    import flax
    import jax
    import numpy as np
    from protoseg_jax import prototype_stats
    from protoseg_jax.trainer import loop
    traces = []
    make = prototype_stats.make_usage_step

    def counting(model, label_lut=None):
      step = make(model, label_lut)

      def traced(variables, batch):
        traces.append(1)              # runs once per trace (compilation) of the jitted step
        return step(variables, batch)
      return traced

    os.makedirs(path)
    config = make_tiny_config(demo_dir, plumbing=True, **TRAINED_RUN_OVERRIDES)
    with mock.patch.object(prototype_stats, "make_usage_step", counting):
      state = loop.train_and_evaluate(config, os.path.join(path, "run"))
    flat = flax.traverse_util.flatten_dict(jax.device_get(state.variables()), sep="/")
    np.savez(os.path.join(path, "variables.npz"), **flat)
    with open(os.path.join(path, "result.json"), "w") as f:
      json.dump({"step": int(state.step), "usage_traces": len(traces)}, f)

  return TrainedRun(built_once("trained_run", build), demo_dir)


# ---------------------------------------------------------------------------
# What each test costs (docs/testing.md): with PROTOSEG_TEST_COMPILES=DIR
# every worker appends one JSON line per test to DIR/<worker>.jsonl: the
# test's id, the CPU seconds of this process and of the subprocesses it
# waited for, and each XLA compilation in this process that took over
# PROTOSEG_TEST_COMPILES_MIN_S (0.5) seconds: the jitted function's name and
# seconds (a persistent-cache hit takes well under that). What the tool
# driver's children (tests/tool_runner.py) spend is not seen.

_COMPILES = []


def _record_compile(event, duration, **kwargs):
  if event == "/jax/core/compile/backend_compile_duration" and duration > float(
      os.environ.get("PROTOSEG_TEST_COMPILES_MIN_S", "0.5")):
    _COMPILES.append((kwargs.get("fun_name", "?"), round(duration, 1)))


if os.environ.get("PROTOSEG_TEST_COMPILES"):
  import jax.monitoring
  jax.monitoring.register_event_duration_secs_listener(_record_compile)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  import resource
  out_dir = os.environ.get("PROTOSEG_TEST_COMPILES")
  del _COMPILES[:]
  before = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
  yield
  if out_dir:
    import json
    after = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = [round(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime, 1)
           for a, b in zip(after, before)]
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{worker}.jsonl"), "a") as f:
      f.write(json.dumps({"test": item.nodeid, "cpu_s": cpu[0], "children_cpu_s": cpu[1],
                          "compiles": _COMPILES}) + "\n")


# ---------------------------------------------------------------------------
# Order and budget (docs/testing.md). The two workers (pytest-xdist,
# `--dist loadgroup --no-loadscope-reorder`) take work units in collection
# order: a test, or every test of one `xdist_group` (a module whose module
# fixture is costly to build twice, or the users of the session's trained
# run). Longest first balances them: the trained run's group, then the slow
# tests, then the rest in file order.

def pytest_collection_modifyitems(config, items):
  def rank(item):
    group = item.get_closest_marker("xdist_group")
    if group is not None and group.args and group.args[0] == "trained_run":
      return 0
    return 1 if item.get_closest_marker("slow") else 2
  items[:] = sorted(items, key=rank)        # stable: file order within a rank


# The budget: the whole suite in 20 minutes on CI's 2 cores; a test not marked
# slow under 30 s, any test under 120 s, unless docs/testing.md names it with
# the reason. Said at the end of every run (never a timed assertion).
FAST_TEST_BUDGET_S, TEST_BUDGET_S = 30.0, 120.0
_durations = {}


def pytest_runtest_logreport(report):
  _durations.setdefault(report.nodeid, [0.0, "slow" in report.keywords])
  _durations[report.nodeid][0] += report.duration


def pytest_terminal_summary(terminalreporter, exitstatus, config):
  if not _durations:
    return
  started = getattr(terminalreporter, "_session_start", None)
  wall = started.elapsed().seconds if started is not None else float("nan")
  try:
    with open(os.path.join(ROOT, "docs", "testing.md")) as f:
      named = f.read()
  except OSError:
    named = ""
  over = [(d, nodeid) for nodeid, (d, slow) in _durations.items()
          if d > TEST_BUDGET_S or (d > FAST_TEST_BUDGET_S and not slow)]
  tr = terminalreporter
  tr.write_sep("=", "test budget (docs/testing.md)")
  tr.write_line(f"{len(_durations)} tests, {wall:.0f} s wall; the budget: "
                f"{FAST_TEST_BUDGET_S:.0f} s a test ({TEST_BUDGET_S:.0f} s marked slow)")
  for d, nodeid in sorted(over, reverse=True):
    name = nodeid.split("::", 1)[-1].split("@", 1)[0]        # without the xdist group
    where = "named in docs/testing.md" if name in named else \
        "NOT named in docs/testing.md: make it faster or say why there"
    tr.write_line(f"{d:7.1f} s  {nodeid}  ({where})")
