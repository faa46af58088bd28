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


def make_tiny_config(data_dir, **overrides):
  """`configs/demo.py:runlocal` (the shared tiny run: 2 steps, 64x64 crops, M=2,
  D=16) reading/writing the demo's "tiny" dataset under `data_dir`, with dotted
  `overrides` ({"optim.name": "sgd", "num_train_steps": 4, ...})."""
  from configs import demo
  from protoseg_jax import convert
  config = demo.get_config("runlocal")
  config.dataset.data_dir = str(data_dir)
  return convert.apply_overrides(config, overrides)



@pytest.fixture
def tiny_config():
  """The factory `make_tiny_config(data_dir, **overrides)`."""
  return make_tiny_config
