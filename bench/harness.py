"""The benchmarks' shared harness: one definition of every figure they share.

  python -m bench.harness       # self-check of the FLOP counter on programs counted by hand

Every script in bench/ takes these from here (so a figure with the same name
comes from the same code in every script):

  load_config(spec, overrides)   a run config: "configs/<name>.py[:variant]" or
                                 "<name>[:variant]", then dotted overrides
                                 ({"model.dtype": "bfloat16"} or ["batch_size=8"])
  num_classes(config, given)     the dataset's class count (NUM_CLASSES, no TFDS needed)
  count_params(tree)             elements of a tree's arrays (or ShapeDtypeStructs)
  param_counts(params, protos)   {"params", "backbone_params", "prototypes"}
  compiled_memory(compiled)      XLA's memory_analysis() under ONE formula:
                                   memory_total_bytes = argument_bytes + output_bytes
                                                        + temp_bytes - alias_bytes
                                 (alias_bytes: donated arguments whose buffers are
                                 reused as outputs, counted once), with its parts
  time_fn(fn, runs=, warmup=)    warm-up calls, then timed runs blocking on the
                                 outputs: Timing(median_s, min_s, times_s, cpu_s)
  matmul_conv_flops(jaxpr)       matmul + conv FLOPs of a jaxpr ("flops_model")
  xla_cost(compiled, key)        an entry of XLA's cost analysis ("flops", "bytes accessed")
  xla_cpu_flops(traced)          XLA's count on the unoptimised CPU lowering ("flops_xla_cpu")
  flop_counts(traced, compiled)  {"flops_model", "flops_xla_cpu", "flops_xla_device"}
  random_batch(batch, crop, C)   the train-step benchmarks' random images and labels

FLOPs. XLA's cost analysis of a program compiled for GPU misses the
convolutions that become cuDNN custom calls, so a GPU run's own
`compiled.cost_analysis()` undercounts conv nets. Two counts that do not have
that problem:

* `matmul_conv_flops(jaxpr)`: the FLOPs of every `dot_general` and
  `conv_general_dilated` in a jaxpr (forward, backward, remat recomputation,
  loop bodies times their trip count), 2 per multiply-add, every output
  position counted in full (padding included). This is the usual numerator
  of MFU ("model FLOPs" of matmuls and convolutions; elementwise work not
  counted).
* `xla_cpu_flops(traced)`: the same jaxpr lowered for one CPU device, XLA's
  HloCostAnalysis BEFORE optimisation (`Lowered.cost_analysis`; no compile
  needed, seconds even for the largest models; on GPU/TPU backends, which
  jax drives through the PJRT C API, `Lowered.cost_analysis` is not
  available, hence the CPU lowering). It counts every op, elementwise
  included. It is computed on the unoptimised HLO on purpose: after CPU
  optimisation the kernel gradient of a depthwise convolution is rewritten
  into a form the analysis over-counts ~250x (docs/benchmarks_history.md, MiT);
  before it, it is counted right.

Both are checked against each other in docs/benchmarks_history.md (the accelerator suite).

jax is imported inside the functions that need it: the suite's parent
process imports this module without starting jax.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import importlib.util
import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER_STACK = ("tensorflow", "tensorflow_datasets", "clu", "orbax")
# Class counts of the datasets (data.dataset_meta(name).num_classes, which
# imports the TFDS builders; the suite runs without TFDS).
NUM_CLASSES = {"ade20k": 150, "cityscapes": 19, "coco_stuff164k": 171, "coco_stuff10k": 171,
               "demo": 6}
GiB = 2**30


def trainer_stack_imported() -> list[str]:
  """The trainer packages (TensorFlow, TFDS, clu, orbax) this process has imported."""
  return sorted(m for m in TRAINER_STACK if m in sys.modules)


# ----------------------------------------------------------------------------
# Configs.


def _config_module(path: str):
  """The module of a config file or name: configs.<name> when it is one of
  the checkout's configs/, else the file itself."""
  if not path.endswith(".py"):
    return importlib.import_module(f"configs.{path}")
  full = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(full):
    full = os.path.join(ROOT, path)
  if not os.path.isfile(full):
    raise FileNotFoundError(f"config {path!r}: no such file (configs/<name>.py[:variant], or a "
                            "name of configs/)")
  if os.path.dirname(full) == os.path.join(ROOT, "configs"):
    return importlib.import_module(f"configs.{os.path.basename(full)[:-3]}")
  spec = importlib.util.spec_from_file_location(os.path.basename(full)[:-3], full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _parse_value(text: str):
  """A command-line value: a Python literal (3, 1e-3, (512, 1024), True, None), else the string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config, overrides: Union[Mapping[str, Any], Iterable[str], None]):
  """Sets dotted keys of `config` in place and returns it.

  overrides: {"model.dtype": "bfloat16", "dataset.crop_size": (64, 64)}, or
  strings "key=value" (the value a Python literal, else a string:
  "batch_size=8", "dataset.crop_size=64,64", "model.dtype=bfloat16"). None
  values in a mapping are skipped (an unset command-line flag). A key the
  config lacks is an error naming it; lists become tuples where the config
  holds a tuple.
  """
  if not overrides:
    return config
  if isinstance(overrides, Mapping):
    items = [(k, v) for k, v in overrides.items() if v is not None]
  else:
    items = []
    for text in overrides:
      key, sep, value = text.partition("=")
      if not sep:
        raise ValueError(f"override {text!r}: expected KEY=VALUE")
      items.append((key.strip(), _parse_value(value.strip())))
  for key, value in items:
    *parents, leaf = key.split(".")
    node = config
    for i, name in enumerate(parents):
      if name not in node:
        raise KeyError(f"override {key!r}: the config has no {'.'.join(parents[:i + 1])!r}")
      node = node[name]
    if leaf not in node:
      raise KeyError(f"override {key!r}: the config has no key {key!r}")
    if isinstance(node[leaf], tuple) and isinstance(value, list):
      value = tuple(value)
    setattr(node, leaf, value)
  return config


def load_config(spec: str, overrides=None):
  """A run config from "configs/<name>.py[:variant]", "<name>[:variant]" or
  any "path/to/config.py[:variant]", with `apply_overrides(overrides)`."""
  path, _, variant = spec.partition(":")
  config = _config_module(path).get_config(variant or None)
  return apply_overrides(config, overrides)


def dataset_num_classes(name: str) -> int:
  """The class count of dataset `name` (NUM_CLASSES, else its TFDS builder)."""
  if name in NUM_CLASSES:
    return NUM_CLASSES[name]
  try:
    import data  # the dataset's own class list (imports tensorflow_datasets)
    return data.dataset_meta(name).num_classes
  except ImportError as e:
    raise SystemExit(f"--num_classes is needed: the class count of dataset {name!r} is read from "
                     f"its TFDS builder, and {e}") from None


def num_classes(config, given: Optional[int] = None) -> int:
  """`given`, else the class count of config.dataset (`dataset_num_classes`)."""
  return int(given) if given else dataset_num_classes(str(config.dataset.name))


# ----------------------------------------------------------------------------
# Parameter counts.


def count_params(tree) -> int:
  """Elements of every array (or ShapeDtypeStruct) in `tree`."""
  import jax
  return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def param_counts(params, prototypes=None) -> dict:
  """{"params": all trainable parameters, "backbone_params": the backbone's
  share (params["backbone"]), "prototypes": elements of the prototypes
  (state, not parameters)}."""
  return {"params": count_params(params),
          "backbone_params": count_params(params.get("backbone", {})),
          "prototypes": count_params(prototypes or {})}


# ----------------------------------------------------------------------------
# Compiled memory.

MEMORY_KEYS = ("argument_bytes", "output_bytes", "temp_bytes", "alias_bytes",
               "memory_total_bytes")


def compiled_memory(compiled) -> dict:
  """XLA's memory analysis of a compiled program (an estimate of what the
  program holds, not a measured RSS), under one formula:

    memory_total_bytes = argument_bytes + output_bytes + temp_bytes - alias_bytes

  argument / output: the program's input and output buffers; temp: the
  scratch buffers beside them (activations, what remat reduces); alias: the
  output bytes that reuse a donated argument's buffer (counted once). Also
  temp_gib and memory_total_gib (GiB = 2**30, 3 decimals). Where the backend
  has no analysis: {"memory_analysis": "unavailable..."} only.
  """
  try:
    ma = compiled.memory_analysis()
  except Exception as e:  # pylint: disable=broad-except  (some backends do not implement it)
    return {"memory_analysis": f"unavailable: {type(e).__name__}"}
  if ma is None:
    return {"memory_analysis": "unavailable"}
  arg, out = int(ma.argument_size_in_bytes), int(ma.output_size_in_bytes)
  tmp, alias = int(ma.temp_size_in_bytes), int(ma.alias_size_in_bytes)
  total = arg + out + tmp - alias
  return {"argument_bytes": arg, "output_bytes": out, "temp_bytes": tmp, "alias_bytes": alias,
          "memory_total_bytes": total, "temp_gib": round(tmp / GiB, 3),
          "memory_total_gib": round(total / GiB, 3)}


# ----------------------------------------------------------------------------
# Timing.


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds per call of the timed runs of `time_fn`.

  times_s: wall seconds per call of each timed run (a run of k calls: its
  seconds / k); cpu_s: the process's CPU seconds per call (all threads) of
  each run.
  """
  times_s: tuple[float, ...]
  cpu_s: tuple[float, ...]
  warmup: int
  steps_per_run: int

  @property
  def median_s(self) -> float:
    return float(np.median(self.times_s))

  @property
  def min_s(self) -> float:
    return float(min(self.times_s))

  @property
  def cpu_median_s(self) -> float:
    return float(np.median(self.cpu_s))

  @property
  def total_s(self) -> float:
    """Wall seconds of all timed runs."""
    return float(sum(self.times_s)) * self.steps_per_run

  @property
  def cpu_total_s(self) -> float:
    return float(sum(self.cpu_s)) * self.steps_per_run

  @property
  def runs(self) -> int:
    return len(self.times_s)


def _block(out):
  import jax
  return jax.block_until_ready(out)


def time_fn(fn: Callable[[], Any], *, runs: int, warmup: int = 1, steps_per_run: int = 1,
            sync: Optional[Callable[[], Any]] = None, around=None,
            clock: Callable[[], float] = time.perf_counter,
            cpu_clock: Callable[[], float] = time.process_time) -> Timing:
  """Times `fn()`: `warmup` calls (compilation, caches), then `runs` timed runs.

  Each timed run calls fn() `steps_per_run` times back to back (dispatch
  pipelined: a stateful step chains its calls) and blocks on the last
  output (`jax.block_until_ready`, then `sync()` if given, e.g.
  torch.cuda.synchronize); its wall seconds / steps_per_run is one entry of
  `times_s`. Warm-up outputs are blocked on too. `around`: a context manager
  entered around the timed runs only (e.g. `jax.profiler.trace(dir)`).
  Returns Timing (median_s, min_s, cpu_median_s, times_s, ...).
  """
  if runs < 1 or steps_per_run < 1:
    raise ValueError(f"runs={runs} and steps_per_run={steps_per_run} must be >= 1")

  def finish(out):
    _block(out)
    if sync is not None:
      sync()

  for _ in range(warmup):
    finish(fn())
  times, cpu = [], []
  with around if around is not None else contextlib.nullcontext():
    for _ in range(runs):
      t0, c0 = clock(), cpu_clock()
      out = None
      for _ in range(steps_per_run):
        out = fn()
      finish(out)
      times.append((clock() - t0) / steps_per_run)
      cpu.append((cpu_clock() - c0) / steps_per_run)
      del out
  return Timing(times_s=tuple(times), cpu_s=tuple(cpu), warmup=warmup,
                steps_per_run=steps_per_run)


# ----------------------------------------------------------------------------
# FLOPs.


def _sub_jaxprs(value):
  """The jaxprs inside one equation parameter (a jaxpr, or a tuple/list of them)."""
  from jax.extend import core as jex_core
  if isinstance(value, jex_core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jex_core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def _eqn_flops(eqn) -> float:
  name = eqn.primitive.name
  if name == "dot_general":
    (lc, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    k = math.prod(lhs[d] for d in lc)
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
    per_output = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
  return 0.0


def _count(jaxpr, stats: dict) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
    name = eqn.primitive.name
    subs = [(k, list(_sub_jaxprs(v))) for k, v in eqn.params.items()]
    subs = [(k, js) for k, js in subs if js]
    if not subs:
      continue
    if name == "cond":
      total += max(_count(j, stats) for _, js in subs for j in js)
      continue
    inner = sum(_count(j, stats) for _, js in subs for j in js)
    if name == "scan":
      inner *= int(eqn.params["length"])
    elif name == "while":
      if inner:
        stats["while_loops_with_flops"] += 1   # trip count unknown: counted once
    elif name == "shard_map":
      inner *= int(eqn.params["mesh"].size)    # the body runs once per device
    total += inner
  return total


def matmul_conv_flops(closed_jaxpr) -> dict:
  """{"flops": matmul + conv FLOPs of a (closed) jaxpr, "while_loops_with_flops":
  loops counted once (trip count unknown)}."""
  stats = {"while_loops_with_flops": 0}
  jaxpr = getattr(closed_jaxpr, "jaxpr", closed_jaxpr)
  return {"flops": _count(jaxpr, stats), **stats}


def abstract(tree, sharding):
  """ShapeDtypeStructs of `tree`'s arrays placed on `sharding` (e.g. one CPU device)."""
  import jax
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def xla_cost(cost: Any, key: str = "flops") -> Optional[float]:
  """An entry ("flops", "bytes accessed", ...) of XLA's cost analysis of a
  Compiled / Lowered program (or of its `cost_analysis()`: a dict, or a list
  of them in older jax); None where it has none."""
  if hasattr(cost, "cost_analysis"):
    try:
      cost = cost.cost_analysis()
    except Exception:  # pylint: disable=broad-except  (not implemented for this backend)
      return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or key not in cost:
    return None
  return float(cost[key])


def xla_cpu_flops(traced) -> Optional[float]:
  """"flops_xla_cpu": XLA's cost analysis of `traced.jaxpr` (a `jit(...).trace(...)`)
  lowered for one CPU device, unoptimised HLO (every op, elementwise too;
  no compile). Raises what the lowering raises."""
  import jax
  from jax.extend import core as jex_core

  from protoseg_jax import sharding
  cmesh = sharding.create_mesh(jax.devices("cpu")[:1])
  rep = sharding.replicated(cmesh)
  closed = traced.jaxpr
  specs = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep) for a in closed.in_avals]
  fn = jax.jit(jex_core.jaxpr_as_fun(closed))
  with jax.set_mesh(cmesh):
    return xla_cost(fn.trace(*specs).lower().cost_analysis())


def flop_counts(traced, compiled=None) -> dict:
  """The FLOP figures of one program (2 per multiply-add):

  flops_model: matmul + conv FLOPs of `traced.jaxpr` (`matmul_conv_flops`;
    the MFU numerator); flops_model_note where while loops were counted once.
  flops_xla_cpu: `xla_cpu_flops(traced)` (None and flops_xla_cpu_error when
    the CPU lowering fails).
  flops_xla_device: the compiled program's own cost analysis (only with
    `compiled`; on GPU it misses the convolutions cuDNN runs).
  """
  out = {}
  mm = matmul_conv_flops(traced.jaxpr)
  out["flops_model"] = mm["flops"]
  if mm["while_loops_with_flops"]:
    out["flops_model_note"] = f"{mm['while_loops_with_flops']} while loop(s) counted once"
  try:
    out["flops_xla_cpu"] = xla_cpu_flops(traced)
  except Exception as e:  # pylint: disable=broad-except
    out["flops_xla_cpu"] = None
    out["flops_xla_cpu_error"] = f"{type(e).__name__}: {str(e)[:300]}"
  if compiled is not None:
    out["flops_xla_device"] = xla_cost(compiled)
  return out


# ----------------------------------------------------------------------------
# Inputs.


def random_batch(batch: int, crop, num_classes: int, seed: int = 0) -> dict:
  """{"image": float32 [B, H, W, 3] normal, "label": int32 [B, H, W] uniform in
  0..C-1, the top eighth of every label 255 (ignored, as in real labels)}."""
  rng = np.random.default_rng(seed)
  h, w = (int(v) for v in crop)
  labels = rng.integers(0, num_classes, size=(batch, h, w)).astype(np.int32)
  labels[:, : h // 8] = 255
  return {"image": rng.normal(size=(batch, h, w, 3)).astype(np.float32), "label": labels}


def _self_check():
  """The FLOP counter on programs whose FLOPs are known by hand."""
  import jax
  import jax.numpy as jnp
  from jax import lax

  x, w = jnp.ones((8, 32)), jnp.ones((32, 16))
  got = matmul_conv_flops(jax.make_jaxpr(jax.grad(lambda x, w: (x @ w).sum(), (0, 1)))(x, w))
  assert got["flops"] == 3 * 2 * 8 * 32 * 16, got          # forward + 2 gradients
  img, k = jnp.ones((2, 16, 16, 8)), jnp.ones((3, 3, 1, 8))   # depthwise 3x3, 8 channels

  def dw(img, k):
    return lax.conv_general_dilated(img, k, (1, 1), "SAME", feature_group_count=8,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()

  fwd = 2 * 2 * 16 * 16 * 8 * 9
  assert matmul_conv_flops(jax.make_jaxpr(dw)(img, k))["flops"] == fwd
  got = matmul_conv_flops(jax.make_jaxpr(jax.grad(dw, (0, 1)))(img, k))
  assert got["flops"] == 3 * fwd, got                      # input and kernel gradient as forward
  f = jax.jit(lambda a: jax.lax.fori_loop(0, 5, lambda i, b: b @ a, a))
  got = matmul_conv_flops(f.trace(jnp.ones((4, 4))).jaxpr)
  assert got["flops"] == 5 * 2 * 4**3, got                 # a fixed-length loop is a scan
  print("bench.harness: FLOP counter self-check passed")


if __name__ == "__main__":
  _self_check()
