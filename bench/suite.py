"""Benchmark suite for one accelerator host: JSON lines, most important first.

  python -m bench.suite --out=$OUT/bench.jsonl          # GPU/TPU host: bfloat16, 540 s budget
  python -m bench.suite --quick --out=/tmp/bench.jsonl  # CPU smoke run: tiny crops and sizes
  python -m bench.suite --list                          # the items, in their order
  python -m bench.suite --items=model:ade20k_mit_b5_proto,model:ade20k_mit_b5_linear
  python -m bench.suite --flops_only --items=model:cityscapes_hrnet48_proto   # FLOPs, any host

Run from the checkout's root. Every item runs in a Python process of its own
(`python -m bench.suite --child=ITEM`, started in the checkout's root), one
after the other, under a
time limit (--item_timeout_s, and never past --budget_s from the start); each
record is written to --out and stdout, flushed, the moment it is measured, so
a run cut short keeps every finished figure, and items that could not start
get a "skipped" record. A record is one JSON object:

  {"what", "item", "config", "device", "dtype", "batch", "figures", "date", ...}

Items (default order: matmul, the ProtoSeg configs of Cityscapes HRNet-W48
and ADE20K Swin-B, prototypes, their linear twins, head_overhead, scaling,
the rest of the grid, vocab; `--list` prints it):
  matmul          a large matmul in bfloat16 (and in --dtype): the FLOP/s this
                  chip reaches on plain matmuls, measured in the same run.
  model:<config>  configs/<config>.py with random data at its crop size and
                  global batch: the library's create_train_state and
                  make_train_step (train_step record), then the model's
                  inference forward pass, train=False (inference_forward
                  record). Img/s, compile time, FLOPs, MFU, compiled memory
                  (memory_total_bytes, below).
                  Every run config of the grid (configs/*_proto.py and their
                  _linear twins); when both heads of a config have run, a
                  proto_vs_linear record compares them.
  prototypes      learn_prototypes (jit) vs the official-style per-class
                  PyTorch loop (bench_prototypes.measure; torch on CUDA when
                  torch has it), N=65536 C=150 M=10 D=720.
  scaling         weak scaling of the demo model's train step over 1/2/4/8
                  simulated CPU devices (JAX_PLATFORMS=cpu,
                  --xla_force_host_platform_device_count=8), fixed per-device
                  batch: partitioning overhead only (the simulated devices
                  share the host's cores), plus the compiled per-device FLOPs,
                  memory and collectives, which do not depend on the load.
  head_overhead   the ProtoSeg head alone vs the linear head at the Cityscapes
                  HRNet-W48 shapes (bench_head_overhead.measure: linear,
                  retrieval without learning, the whole train-mode head,
                  inference): where the ProtoSeg step's extra time goes;
                  --profile_dir adds a jax.profiler trace per variant.
  vocab           ProtoSeg vs linear head step as C grows (bench_vocab.run_size).

FLOPs (per train step / forward pass, 2 per multiply-add; bench.harness.flop_counts):
  flops_model       matmul + convolution FLOPs counted from the step's jaxpr
                    (bench.harness.matmul_conv_flops), the MFU numerator.
  flops_xla_cpu     XLA's cost analysis of the same jaxpr lowered for the CPU
                    backend, unoptimised HLO (every op, elementwise too).
  flops_xla_device  the device's own compiled cost analysis; on GPU it misses
                    the convolutions cuDNN runs, so do not use it for MFU.
MFU = flops_model / step time / the chip's dense bf16 peak (PEAK_BF16_TFLOPS
below, by device kind); matmul_ratio = the same FLOP/s over the bf16 matmul
item's FLOP/s.

Compiled memory (bench.harness.compiled_memory): argument_bytes, output_bytes,
temp_bytes, alias_bytes and memory_total_bytes = argument + output + temp -
alias (XLA's estimate of the program, not a measured peak; the donated state's
buffers counted once). compiled_peak_bytes_est is the same number under its
older name. device_peak_bytes: the device's own peak_bytes_in_use.

Times (bench.harness.time_fn): --windows timed windows of --steps calls each
(dispatch pipelined, one block at the end of a window) after warm-up calls;
step_ms is the median window's seconds per step, step_ms_min the fastest.

Imports: the suite needs jax, flax, optax, numpy, ml_collections (the
configs) and, for `prototypes`, torch. Every process of the suite blocks
--block (default: TensorFlow, TFDS, clu, orbax) the way
tests/test_imports.py does, so a run that passes here cannot need them.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

from bench import harness   # no jax at import: the parent process never starts jax

ROOT = harness.ROOT
MARK = "@@suite "
TRAINER_STACK = harness.TRAINER_STACK
BLOCK_DEFAULT = ",".join(TRAINER_STACK)
# Grid order: the two headline figures (Cityscapes HRNet-W48, ADE20K
# Swin-B) first, then the other models it names, then the rest by name.
PRIORITY = ("cityscapes_hrnet48", "ade20k_swin", "ade20k_mit_b5", "ade20k_r101_fcn",
            "cityscapes_mit_b5", "cityscapes_swin_b", "ade20k_hrnet48", "ade20k_mit_b2")

# Dense (no 2:4 sparsity) bf16 matmul peak per chip, TFLOP/s, by device_kind
# substring, first match wins. Sources: NVIDIA datasheets give BF16 Tensor
# Core figures "with sparsity", twice the dense ones: H100 SXM and H200
# 1,979 -> 989.4; H100 NVL and H200 NVL 1,671 -> 835.5; H100 PCIe 1,513 ->
# 756.5; A100 (SXM and PCIe) datasheet: 312 dense. Google Cloud TPU system
# architecture pages, "peak compute per chip (bf16)": v4 275, v5e 197, v5p
# 459, v6e (Trillium) 918.
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.5), ("H100 NVL", 835.5), ("H100 PCIe", 756.5),
    ("H200", 989.4), ("H100", 989.4), ("A100", 312.0),
    ("TPU v4", 275.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5p", 459.0),
    ("TPU v5", 459.0), ("TPU v6 lite", 918.0), ("TPU v6e", 918.0),
)


def peak_bf16_tflops(device_kind: str):
  """(TFLOP/s, the table key) for a jax device_kind, or (None, None)."""
  for key, peak in PEAK_BF16_TFLOPS:
    if key.lower() in device_kind.lower():
      return peak, key
  return None, None


def grid_configs() -> list[str]:
  """Run configs of the grid: every configs/*_proto.py in PRIORITY order (then
  by name), each followed by its _linear twin."""
  protos = [os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*_proto.py"))]
  rank = {f"{name}_proto": i for i, name in enumerate(PRIORITY)}
  out = []
  for p in sorted(protos, key=lambda p: (rank.get(p, len(rank)), p)):
    out.append(p)
    twin = p[: -len("_proto")] + "_linear"
    if os.path.exists(os.path.join(ROOT, "configs", twin + ".py")):
      out.append(twin)
  return out


def default_items() -> list[str]:
  """matmul, the two headline models' ProtoSeg configs, prototypes, their
  linear twins, head_overhead, scaling, the rest of the grid, vocab."""
  models = [f"model:{c}" for c in grid_configs()]   # [proto1, linear1, proto2, linear2, ...]
  return ["matmul", models[0], models[2], "prototypes", models[1], models[3], "head_overhead",
          "scaling", *models[4:], "vocab"]


# ----------------------------------------------------------------------------
# Shared by parent and children.


def block_imports(names):
  """Make `import NAME` (and NAME.*) fail for every NAME, as tests/test_imports.py does."""
  blocked = tuple(n for n in names if n)

  class _Blocker:
    def find_spec(self, name, path=None, target=None):
      del path, target
      if name.split(".")[0] in blocked:
        raise ImportError(f"{name} is blocked by bench/suite.py --block")
      return None

  if blocked:
    sys.meta_path.insert(0, _Blocker())


def today() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


# ----------------------------------------------------------------------------
# Children: one item each, records on stdout prefixed with MARK.


class Child:
  """What every item's child process shares: args, jax, the record writer."""

  def __init__(self, args):
    self.args = args
    import jax
    self.jax = jax
    d = jax.devices()[0]
    self.device = f"{d.platform}:{d.device_kind} x{jax.device_count()}"
    self.platform = d.platform
    self.dtype = args.dtype if args.dtype != "auto" else (
        "float32" if d.platform == "cpu" else "bfloat16")

  def emit(self, what: str, *, config=None, dtype=None, batch=None, figures=None, **extra):
    rec = {"what": what, "item": self.args.child, "config": config, "device": self.device,
           "dtype": dtype, "batch": batch, "figures": figures or {}, **extra,
           "date": today(), "jax": self.jax.__version__,
           "trainer_stack_imported": harness.trainer_stack_imported()}
    sys.stdout.write(MARK + json.dumps(rec) + "\n")
    sys.stdout.flush()

  def timed(self, run_once, steps: int, windows: int) -> harness.Timing:
    """`harness.time_fn`: `windows` windows of `steps` calls of run_once
    (dispatch pipelined, one block at the end of each window), no further
    warm-up (the callers warm up themselves)."""
    return harness.time_fn(run_once, warmup=0, runs=windows, steps_per_run=steps)

  def device_peak_bytes(self):
    stats = self.jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _memory(compiled) -> dict:
  """`harness.compiled_memory`, plus its total under the name older records used."""
  mem = harness.compiled_memory(compiled)
  if "memory_total_bytes" in mem:
    mem["compiled_peak_bytes_est"] = mem["memory_total_bytes"]
  return mem


def _time_figures(t: harness.Timing, batch: int) -> dict:
  return {"step_ms": round(1e3 * t.median_s, 3), "step_ms_min": round(1e3 * t.min_s, 3),
          "step_ms_windows": [round(1e3 * s, 3) for s in t.times_s],
          "img_per_s": round(batch / t.median_s, 3)}


def child_model(child: Child, name: str):
  """Train step, then inference forward, of configs/<name>.py on random data."""
  import functools

  import numpy as np

  from protoseg_jax import sharding, train
  from protoseg_jax.models.segmentor import build_model
  jax, args = child.jax, child.args

  spec = f"configs/{name}.py"
  config = harness.load_config(spec, {"model.dtype": child.dtype})
  crop = tuple(int(v) for v in config.dataset.crop_size)
  batch = int(config.batch_size)
  if args.quick:   # tiny shapes: a crop 64 high with the run's aspect ratio, 2 images per device
    crop, batch = (64, 64 * crop[1] // crop[0]), 2 * jax.device_count()
  harness.apply_overrides(config, {"dataset.crop_size": crop, "batch_size": batch})
  num_classes = harness.num_classes(config)
  model = build_model(config, num_classes)
  common = dict(config=spec, dtype=child.dtype, batch=batch, crop=list(crop))
  if args.flops_only:
    _model_flops_only(child, config, model, crop, batch, common)
    return
  mesh = sharding.create_mesh()

  t0 = time.perf_counter()
  state, tx, schedule = train.create_train_state(config, model, mesh, (1, *crop, 3))
  init_s = time.perf_counter() - t0
  step = train.make_train_step(model, tx, schedule, config, mesh,
                               state_shardings=train.state_sharding(state))
  data = jax.device_put(harness.random_batch(batch, crop, num_classes),
                        sharding.batch_sharding(mesh))
  static = {"head": config.model.head, "num_classes": num_classes,
            **harness.param_counts(state.params, state.prototypes)}

  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    traced = step.trace(state, data)
    compiled = traced.lower().compile()
  compile_s = time.perf_counter() - t0
  figs = {**static, "init_s": round(init_s, 2), "compile_s": round(compile_s, 2)}
  figs.update(harness.flop_counts(traced, compiled))
  figs.update(_memory(compiled))
  holder = {"state": state}

  def train_once():
    holder["state"], metrics = compiled(holder["state"], data)
    return metrics["train/loss"]

  loss = float(jax.block_until_ready(train_once()))   # warm-up
  t = child.timed(train_once, args.steps, args.windows)
  loss_end = float(jax.block_until_ready(train_once()))
  figs.update({**_time_figures(t, batch), "cpu_ms_per_step": round(1e3 * t.cpu_median_s, 1),
               "model_tflops_per_s": figs["flops_model"] / t.median_s / 1e12,
               "steps_per_window": args.steps, "windows": args.windows,
               "loss_first": loss, "loss_last": loss_end,
               "loss_finite": bool(np.isfinite(loss) and np.isfinite(loss_end)),
               "device_peak_bytes": child.device_peak_bytes()})
  child.emit("train_step", figures=figs, **common)
  del compiled, traced

  # Inference forward pass (train=False) at the same crop and batch.
  variables = holder["state"].variables()
  images = data["image"]
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False).logits)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    traced = fwd.trace(variables, images)
    compiled = traced.lower().compile()
  figs = {**static, "compile_s": round(time.perf_counter() - t0, 2)}
  figs.update(harness.flop_counts(traced, compiled))
  figs.update(_memory(compiled))
  run = functools.partial(compiled, variables, images)
  logits = jax.block_until_ready(run())
  t = child.timed(run, args.steps, args.windows)
  figs.update({**_time_figures(t, batch),
               "model_tflops_per_s": figs["flops_model"] / t.median_s / 1e12,
               "logits_shape": list(logits.shape)})
  child.emit("inference_forward", figures=figs, **common)


def _model_flops_only(child: Child, config, model, crop, batch, common):
  """--flops_only: FLOPs of the train step and forward pass, traced and lowered
  for one CPU device from abstract shapes (no init, no compile, nothing run)."""
  import jax.numpy as jnp

  from protoseg_jax import optim, sharding, train
  jax = child.jax
  mesh = sharding.create_mesh(jax.devices("cpu")[:1])
  rep, data_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  t0 = time.perf_counter()
  state = jax.eval_shape(lambda: train.create_train_state(config, model, mesh, (1, *crop, 3))[0])
  tx, schedule = optim.create_optimizer(config, state.params)
  step = train.make_train_step(model, tx, schedule, config, mesh)
  state = harness.abstract(state, rep)
  data = harness.abstract({"image": jax.ShapeDtypeStruct((batch, *crop, 3), jnp.float32),
                      "label": jax.ShapeDtypeStruct((batch, *crop), jnp.int32)}, data_sh)
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False).logits)
  static = {"head": config.model.head, **harness.param_counts(state.params, state.prototypes)}
  for what, fn, fargs in (("train_step_flops", step, (state, data)),
                          ("inference_forward_flops", fwd, (state.variables(), data["image"]))):
    with jax.set_mesh(mesh):
      traced = fn.trace(*fargs)
    fl = harness.flop_counts(traced)
    mm, hlo = fl["flops_model"], fl["flops_xla_cpu"]
    child.emit(what, figures={**static, **fl, "flops_model_per_img": mm / batch,
                              "flops_xla_cpu_per_img": hlo / batch if hlo else None,
                              "trace_lower_s": round(time.perf_counter() - t0, 1)}, **common)
    t0 = time.perf_counter()


def child_matmul(child: Child):
  import jax.numpy as jnp
  import numpy as np
  jax, args = child.jax, child.args
  n = 1024 if args.quick else 8192
  reps = 3 if args.quick else 20
  for dt in dict.fromkeys(("bfloat16", child.dtype)):
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n)), dt) for _ in range(2))
    f = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
    jax.block_until_ready(f(a, b))
    t = child.timed(lambda: f(a, b), reps, 3)
    child.emit("matmul", config=f"[{n},{n}] @ [{n},{n}]", dtype=dt, batch=None,
               figures={"n": n, "ms": round(1e3 * t.median_s, 3),
                        "ms_min": round(1e3 * t.min_s, 3),
                        "tflops_per_s": 2 * n**3 / t.median_s / 1e12, "reps_per_window": reps,
                        "windows": 3})


def child_prototypes(child: Child):
  from bench import bench_prototypes
  args = child.args
  n, c, m, d = (4096 if args.quick else 65536), 150, 10, 720
  torch_device = "cpu"
  try:
    import torch
    if child.platform == "gpu" and torch.cuda.is_available():
      torch_device = "cuda"
  except ImportError:
    pass
  res = bench_prototypes.measure(n, c, m, d, repeats=2 if args.quick else 5,
                                 torch_device=torch_device)
  figs = {name: round(1e3 * t, 3) for name, t in res["rows"]}
  figs = {"ms": figs, "torch": res["torch"], "torch_device": res["torch_device"],
          "speedup_vs_torch_gumbel": res["t_torch"] / res["t_gumbel"],
          "speedup_vs_torch_argmax": res["t_torch"] / res["t_argmax"],
          "over_read_once_floor_gumbel": res["t_gumbel"] / res["t_read"],
          "over_read_once_floor_argmax": res["t_argmax"] / res["t_read"]}
  child.emit("learn_prototypes", config=f"N={n} C={c} M={m} D={d}, similarity given",
             dtype="float32", batch=None, figures=figs)


def _collectives(hlo_text: str) -> dict:
  """Count and result bytes of each collective op in compiled HLO text."""
  import re

  import numpy as np
  sizes = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1,
           "s64": 8, "u64": 8, "f64": 8}
  out = {}
  for line in hlo_text.splitlines():
    m = re.search(r"=\s*(.*?)\s(all-reduce|all-gather|reduce-scatter|all-to-all|"
                  r"collective-permute)(-start)?\(", line)
    if not m:
      continue
    nbytes = 0
    for dt, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", m.group(1)):
      if dt in sizes:
        nbytes += sizes[dt] * int(np.prod([int(x) for x in dims.split(",") if x] or [1]))
    k = m.group(2)
    out.setdefault(k, {"count": 0, "bytes": 0})
    out[k]["count"] += 1
    out[k]["bytes"] += nbytes
  return out


def child_scaling(child: Child):
  """Weak scaling of the demo model's train step over 1/2/4/8 CPU devices."""
  import numpy as np

  from protoseg_jax import sharding, train
  from protoseg_jax.models.segmentor import build_model
  jax, args = child.jax, child.args
  per_device = 1 if args.quick else 2
  spec = "configs/demo.py"
  base = None
  for k in (1, 2, 4, 8):
    if k > jax.device_count():
      break
    config = harness.load_config(spec)
    crop = (64, 64) if args.quick else tuple(config.dataset.crop_size)
    harness.apply_overrides(config, {"dataset.crop_size": crop, "batch_size": per_device * k,
                                     "model.dtype": child.dtype})
    model = build_model(config, 6)   # the demo dataset's 6 classes
    mesh = sharding.create_mesh(jax.devices()[:k])
    state, tx, schedule = train.create_train_state(config, model, mesh, (1, *crop, 3))
    step = train.make_train_step(model, tx, schedule, config, mesh,
                                 state_shardings=train.state_sharding(state))
    rng = np.random.default_rng(0)
    data = jax.device_put(
        {"image": rng.normal(size=(config.batch_size, *crop, 3)).astype(np.float32),
         "label": rng.integers(0, 6, size=(config.batch_size, *crop)).astype(np.int32)},
        sharding.batch_sharding(mesh))
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
      compiled = step.trace(state, data).lower().compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def once():
      holder["state"], metrics = compiled(holder["state"], data)
      return metrics["train/loss"]

    jax.block_until_ready(once())
    t = child.timed(once, args.steps, args.windows)
    figs = {"devices": k, "per_device_batch": per_device, "crop": list(crop),
            "prototype_update": config.protoseg.prototype_update,
            "compile_s": round(compile_s, 2), "step_ms": round(1e3 * t.median_s, 2),
            "step_ms_min": round(1e3 * t.min_s, 2),
            "img_per_s": round(config.batch_size / t.median_s, 2),
            "cpu_ms_per_img": round(1e3 * t.cpu_median_s / config.batch_size, 2),
            "flops_xla_per_device": harness.xla_cost(compiled),
            "collectives": _collectives(compiled.as_text()), **_memory(compiled)}
    if base is None:
      base = figs
    figs["cpu_time_per_img_vs_1_device"] = figs["cpu_ms_per_img"] / base["cpu_ms_per_img"]
    figs["wall_time_per_img_vs_1_device"] = (base["img_per_s"] / figs["img_per_s"])
    child.emit("weak_scaling", config=spec, dtype=child.dtype, batch=config.batch_size,
               figures=figs, host_cpus=os.cpu_count())


def child_head_overhead(child: Child):
  """The head alone at the Cityscapes HRNet-W48 recipe's shapes (batch 8,
  128x256x720 features, C=19, M=10): bench_head_overhead's variants."""
  from bench import bench_head_overhead
  args = child.args
  batch, hw = (1, (16, 32)) if args.quick else (8, (128, 256))
  profile = os.path.join(args.profile_dir, "head_overhead") if args.profile_dir else None
  recs = bench_head_overhead.measure(batch=batch, hw=hw, dtype=child.dtype, steps=args.steps,
                                     profile_dir=profile)
  for r in recs:
    figs = {k: v for k, v in r.items() if k not in ("bench", "dtype", "batch", "device", "jax")}
    child.emit("head_overhead", config="head of configs/cityscapes_hrnet48_proto.py vs _linear",
               dtype=child.dtype, batch=batch, figures=figs)


def child_vocab(child: Child):
  from bench import bench_vocab
  args = child.args
  n = 1024 if args.quick else 65536
  classes = (150, 847) if args.quick else (150, 847, 3000, 10000)
  stats = child.jax.local_devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  max_bytes = 0.8 * limit if limit else args.vocab_max_gb * 2**30
  for c in classes:
    for head in ("protoseg", "linear"):
      rec = bench_vocab.run_size(head, c, n, 10, 720, 2 if args.quick else 3, max_bytes)
      child.emit("vocab_head_step", config=f"{head} head, C={c}, N={n}, M=10, D=720",
                 dtype="float32", batch=None, figures=rec)


def child_main(args):
  block_imports(args.block.split(","))
  child = Child(args)
  item = args.child
  if item == "matmul":
    child_matmul(child)
  elif item.startswith("model:"):
    child_model(child, item.split(":", 1)[1])
  elif item == "prototypes":
    child_prototypes(child)
  elif item == "scaling":
    child_scaling(child)
  elif item == "vocab":
    child_vocab(child)
  elif item == "head_overhead":
    child_head_overhead(child)
  else:
    raise SystemExit(f"unknown item {item!r}")


# ----------------------------------------------------------------------------
# Parent: runs the items, adds derived figures, writes the records.


class Recorder:
  """Writes records (stdout + --out), adds MFU / matmul ratios / head comparisons."""

  def __init__(self, path):
    self.f = open(path, "a") if path else None
    self.matmul = {}            # dtype -> TFLOP/s of the matmul item
    self.by_config = {}         # (what, config name) -> figures

  def write(self, rec: dict):
    line = json.dumps(rec)
    print(line, flush=True)
    if self.f:
      self.f.write(line + "\n")
      self.f.flush()

  def add(self, rec: dict):
    figs = rec.get("figures", {})
    if rec["what"] == "matmul":
      self.matmul[rec["dtype"]] = figs["tflops_per_s"]
    if "model_tflops_per_s" in figs:
      kind = rec["device"].split(":", 1)[1].rsplit(" x", 1)[0]
      ndev = int(rec["device"].rsplit(" x", 1)[1])
      peak, key = peak_bf16_tflops(kind)
      if peak:
        figs["mfu_vs_bf16_peak"] = figs["model_tflops_per_s"] / (peak * ndev)
        figs["peak_bf16_tflops"] = f"{peak} x{ndev} ({key})"
      if "bfloat16" in self.matmul:   # the ratio: to the bf16 matmul
        figs["matmul_ratio"] = figs["model_tflops_per_s"] / (self.matmul["bfloat16"] * ndev)
      if rec["dtype"] != "bfloat16" and rec["dtype"] in self.matmul:
        figs["matmul_ratio_run_dtype"] = figs["model_tflops_per_s"] / (self.matmul[rec["dtype"]]
                                                                       * ndev)
    self.write(rec)
    if rec["what"] in ("train_step", "inference_forward"):
      name = os.path.basename(rec["config"])[:-3]
      self.by_config[(rec["what"], name)] = rec
      self._compare(rec["what"], name)

  def _compare(self, what, name):
    """A proto_vs_linear record once both heads of a run have a `what` record
    (twins: X_proto or X, and X_linear)."""
    if name.endswith("_linear"):
      base = name[: -len("_linear")]
      linear, protos = name, (base + "_proto", base)
    else:
      linear, protos = (name[: -len("_proto")] if name.endswith("_proto") else name) + "_linear", (name,)
    l = self.by_config.get((what, linear))
    p = next((self.by_config[(what, q)] for q in protos if (what, q) in self.by_config), None)
    if not p or not l or p["dtype"] != l["dtype"] or p["batch"] != l["batch"]:
      return
    proto = os.path.basename(p["config"])[:-3]
    pf, lf = p["figures"], l["figures"]
    ratio = lambda k: (pf[k] / lf[k]) if pf.get(k) and lf.get(k) else None
    self.write({"what": "proto_vs_linear", "item": f"{what}:{proto}", "config": p["config"],
                "device": p["device"], "dtype": p["dtype"], "batch": p["batch"],
                "figures": {"step": what, "proto_img_per_s": pf["img_per_s"],
                            "linear_img_per_s": lf["img_per_s"],
                            "time_ratio_proto_over_linear": ratio("step_ms"),
                            "flops_ratio_proto_over_linear": ratio("flops_model"),
                            "memory_ratio_proto_over_linear": ratio("memory_total_bytes"),
                            "params_proto": pf["params"], "params_linear": lf["params"]},
                "date": p["date"]})


def run_item(item: str, args, deadline: float, rec: Recorder) -> str:
  """Runs one item's child under its time limit; returns ok / failed / timeout."""
  cmd = [sys.executable, "-m", "bench.suite", f"--child={item}", f"--dtype={args.dtype}",
         f"--block={args.block}", f"--steps={args.steps}", f"--windows={args.windows}",
         f"--vocab_max_gb={args.vocab_max_gb}"] + (["--quick"] if args.quick else []) + (
             ["--flops_only"] if args.flops_only else []) + (
             [f"--profile_dir={args.profile_dir}"] if args.profile_dir else [])
  env = dict(os.environ)
  if args.cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = args.cache_dir
  if item == "scaling":
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
  limit = max(1.0, min(args.item_timeout_s, deadline - time.monotonic()))
  errf = tempfile.TemporaryFile("w+")
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True, cwd=ROOT, env=env,
                          start_new_session=True)
  lines = queue.Queue()

  def read():
    for line in proc.stdout:
      lines.put(line)
    lines.put(None)

  threading.Thread(target=read, daemon=True).start()
  t0, status, n = time.monotonic(), "ok", 0
  while True:
    left = limit - (time.monotonic() - t0)
    try:
      line = lines.get(timeout=max(0.1, left))
    except queue.Empty:
      line = "" if left > 0 else None
      if line is None:
        status = "timeout"
        os.killpg(proc.pid, signal.SIGKILL)   # the child's own session: it and its threads only
        break
      continue
    if line is None:
      break
    if line.startswith(MARK):
      rec.add(json.loads(line[len(MARK):]))
      n += 1
    else:
      sys.stderr.write(f"[{item}] {line}")
  rc = proc.wait()
  if status == "ok" and rc != 0:
    status = "failed"
  if status != "ok":
    errf.seek(0)
    tail = errf.read()[-3000:]
    rec.write({"what": status, "item": item, "config": None, "device": None, "dtype": None,
               "batch": None, "figures": {"returncode": rc, "records_before": n,
                                          "limit_s": round(limit, 1),
                                          "wall_s": round(time.monotonic() - t0, 1),
                                          "stderr_tail": tail}, "date": today()})
  errf.close()
  return status


def parent_main(args):
  block_imports(args.block.split(","))
  items = default_items()
  if args.items not in ("", "all", "default"):
    items = [s.strip() for s in args.items.split(",") if s.strip()]
  if args.list:
    print("\n".join(items))
    return
  try:
    __import__("ml_collections")
  except ImportError as e:
    raise SystemExit(f"the run configs need ml_collections (and its dependencies absl-py and "
                     f"PyYAML): {e}. pip install ml_collections, or a wheel of it "
                     f"(pip install --no-deps .whl/ml_collections-*.whl)") from None
  budget = args.budget_s if args.budget_s > 0 else float("inf")
  start = time.monotonic()
  deadline = start + budget
  rec = Recorder(args.out)
  rec.write({"what": "suite_start", "item": None, "config": None, "device": None,
             "dtype": args.dtype, "batch": None, "date": today(),
             "figures": {"items": items, "budget_s": args.budget_s, "quick": args.quick,
                         "item_timeout_s": args.item_timeout_s, "argv": sys.argv[1:],
                         "host": f"{platform.machine()} {os.cpu_count()} CPUs",
                         "python": platform.python_version(), "blocked": args.block}})
  done = {}
  for item in items:
    if deadline - time.monotonic() < args.min_start_s:
      done[item] = "skipped"
      rec.write({"what": "skipped", "item": item, "config": None, "device": None, "dtype": None,
                 "batch": None, "figures": {"reason": f"--budget_s={args.budget_s} spent"},
                 "date": today()})
      continue
    done[item] = run_item(item, args, deadline, rec)
  rec.write({"what": "suite_end", "item": None, "config": None, "device": None, "dtype": None,
             "batch": None, "date": today(),
             "figures": {"wall_s": round(time.monotonic() - start, 1), "status": done}})


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", default="", help="JSON-lines file (appended to)")
  ap.add_argument("--items", default="default", help="comma-separated items, or 'default'")
  ap.add_argument("--list", action="store_true", help="print the items in order and exit")
  ap.add_argument("--quick", action="store_true",
                  help="tiny shapes (64-high crops, 2 images per device, small N): a smoke run")
  ap.add_argument("--dtype", default="auto",
                  help="model.dtype; auto: bfloat16 on accelerators, float32 on CPU")
  ap.add_argument("--steps", type=int, default=10, help="timed steps per window")
  ap.add_argument("--windows", type=int, default=3, help="timed windows (median reported)")
  ap.add_argument("--budget_s", type=float, default=540.0,
                  help="no item starts or runs past this many seconds from the start; 0: none")
  ap.add_argument("--item_timeout_s", type=float, default=300.0, help="per item")
  ap.add_argument("--min_start_s", type=float, default=30.0,
                  help="an item starts only with this much budget left")
  ap.add_argument("--block", default=BLOCK_DEFAULT,
                  help="modules whose import fails in every process of the suite ('' : none)")
  ap.add_argument("--cache_dir", default="", help="JAX persistent compilation cache for the items")
  ap.add_argument("--vocab_max_gb", type=float, default=8.0,
                  help="vocab item: run sizes under this estimate where the device has no "
                       "memory limit to read (CPU)")
  ap.add_argument("--flops_only", action="store_true",
                  help="model items: FLOP counts only, from the CPU lowering of abstract shapes "
                       "(no init, compile or run; any host)")
  ap.add_argument("--profile_dir", default="",
                  help="head_overhead item: a jax.profiler trace of each variant's timed steps here")
  ap.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.child:
    child_main(args)
  else:
    parent_main(args)


if __name__ == "__main__":
  main()
