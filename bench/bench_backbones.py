"""Benchmark: the grid's backbones with the ProtoSeg head, as their run configs build them.

For each model: parameters, XLA's FLOP count of the compiled forward pass and
train step, compile times, and the median wall time of the forward pass
(inference, train=False) and of one full train step (value_and_grad of the
loss incl. PPC/PPD and aux head, prototype update in the mutable `prototypes`
collection, optax update) per image, at the run config's crop size.

  python -m bench.bench_backbones                                  # every model below
  python -m bench.bench_backbones --backbones=swin_t,mit_b2        # a subset
  python -m bench.bench_backbones --dtype=bfloat16 --batch=8       # e.g. on a GPU
  python -m bench.bench_backbones --backbones=hrnet48 --crop=512,512

Models (key: run config, crop):
  r101_fcn    configs/ade20k_r101_fcn_proto.py   ResNet-101-V1c OS8 + FCN (+ aux), 512x512
  hrnet48     configs/ade20k_hrnet48_proto.py    HRNetV2-W48 + HRNet head, 512x512
  hrnet48_cs  configs/cityscapes_hrnet48_proto.py the same at the Cityscapes crop 512x1024
  swin_t      configs/ade20k_swin_proto.py:swin_t Swin-T + UperNet (+ aux), 512x512
  swin_b      configs/ade20k_swin_proto.py        Swin-B (window 12) + UperNet (+ aux), 512x512
  mit_b2      configs/ade20k_mit_b2_proto.py      MiT-B2 + SegFormer head, 512x512
  mit_b5      configs/ade20k_mit_b5_proto.py      MiT-B5 + SegFormer head, 512x512

Variables are random (drawn from the init shapes: no compiled initialiser, no
weights needed); values do not change the work done. FLOPs are what XLA's
cost analysis reports for the compiled program on this backend (a
multiply-add counts 2; `bench.harness.xla_cost`); per image = divided by
--batch. Times are medians over --repeats runs after one warm-up run, per
image (`bench.harness.time_fn`); parameter counts `bench.harness.param_counts`.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time

from bench import harness

MODELS = {
    "r101_fcn": ("ade20k_r101_fcn_proto", None),
    "hrnet48": ("ade20k_hrnet48_proto", None),
    "hrnet48_cs": ("cityscapes_hrnet48_proto", None),
    "swin_t": ("ade20k_swin_proto", "swin_t"),
    "swin_b": ("ade20k_swin_proto", "swin_b"),
    "mit_b2": ("ade20k_mit_b2_proto", None),
    "mit_b5": ("ade20k_mit_b5_proto", None),
}
DEFAULT = ("r101_fcn", "hrnet48", "swin_t", "swin_b", "mit_b2", "mit_b5")
NUM_CLASSES = harness.NUM_CLASSES   # (kept for callers of the old name)


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--backbones", default=",".join(DEFAULT),
                  help=f"comma-separated keys of {list(MODELS)}")
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--crop", default=None, help="H,W instead of the config's crop_size")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--no_train", action="store_true", help="forward pass only")
  return ap.parse_args(argv)


def _random_like(tree, seed: int):
  """numpy arrays with the shapes/dtypes of `tree` (ShapeDtypeStructs)."""
  import jax
  import numpy as np
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.02 * rng.standard_normal(s.shape)).astype(s.dtype), tree)


def _flops(compiled) -> float:
  flops = harness.xla_cost(compiled)
  return float("nan") if flops is None else flops


def bench_one(key: str, args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from protoseg_jax import optim, train
  from protoseg_jax.models.segmentor import build_model

  module, variant = MODELS[key]
  config = harness.load_config(f"{module}:{variant}" if variant else module,
                               {"model.dtype": args.dtype})
  crop = tuple(int(s) for s in args.crop.split(",")) if args.crop else tuple(config.dataset.crop_size)
  num_classes = harness.num_classes(config)
  model = build_model(config, num_classes)
  b = args.batch
  images = jnp.asarray(np.random.default_rng(0).standard_normal((b, *crop, 3)), jnp.float32)
  labels_np = np.random.default_rng(1).integers(0, num_classes, (b, *crop))
  labels_np[:, :8] = 255                         # some ignored pixels
  labels = jnp.asarray(labels_np, jnp.int32)

  init = functools.partial(model.init, train=False)
  shapes = jax.eval_shape(init, {"params": jax.random.key(0), "dropout": jax.random.key(1)},
                          jax.ShapeDtypeStruct((1, *crop, 3), jnp.float32))
  variables = _random_like(shapes, seed=0)
  if "batch_stats" in variables:                 # sane BN statistics
    variables["batch_stats"] = jax.tree_util.tree_map_with_path(
        lambda p, x: np.ones_like(x) if getattr(p[-1], "key", None) == "var" else np.zeros_like(x),
        variables["batch_stats"])
  if "prototypes" in variables:
    protos = variables["prototypes"]["head"]["prototypes"]
    variables["prototypes"]["head"]["prototypes"] = protos / np.linalg.norm(protos, axis=-1, keepdims=True)
  variables = jax.device_put(variables)
  params = variables["params"]
  counts = harness.param_counts(params, variables.get("prototypes"))
  row = {"model": key, "config": f"{module}{':' + variant if variant else ''}",
         "backbone": config.model.backbone, "decoder": config.model.decoder,
         "crop": f"{crop[0]}x{crop[1]}", "params_M": counts["params"] / 1e6,
         "backbone_params_M": counts["backbone_params"] / 1e6, **counts}

  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False).logits)
  t0 = time.perf_counter()
  fwd_c = fwd.lower(variables, images).compile()
  row["fwd_compile_s"] = time.perf_counter() - t0
  row["fwd_GFLOPs"] = _flops(fwd_c) / 1e9 / b
  t = harness.time_fn(lambda: fwd_c(variables, images), warmup=1, runs=args.repeats)
  row["fwd_ms"] = 1e3 * t.median_s / b
  row["fwd_ms_min"] = 1e3 * t.min_s / b
  print(f"  {key} forward: {row}", flush=True)     # kept if the train step is cut off

  if not args.no_train:
    tx, schedule = optim.create_optimizer(config, params)
    state = train.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
        prototypes=variables.get("prototypes", {}), opt_state=jax.jit(tx.init)(params),
        rng=jax.random.PRNGKey(0))
    step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, schedule=schedule,
                                     config=config), donate_argnums=0)
    batch = {"image": images, "label": labels}
    t0 = time.perf_counter()
    step_c = step.lower(state, batch).compile()
    row["train_compile_s"] = time.perf_counter() - t0
    row["train_GFLOPs"] = _flops(step_c) / 1e9 / b
    print(f"  {key} train step compiled: {row['train_compile_s']:.0f}s, "
          f"{row['train_GFLOPs']:.1f} GFLOPs/img", flush=True)
    holder = {"state": state}

    def run():
      holder["state"], metrics = step_c(holder["state"], batch)
      return metrics["train/loss"]

    loss = jax.block_until_ready(run())            # warm-up
    if not np.isfinite(float(loss)):
      raise FloatingPointError(f"{key}: train loss {float(loss)}")
    t = harness.time_fn(run, warmup=0, runs=args.repeats)
    row["train_ms"] = 1e3 * t.median_s / b
    row["train_ms_min"] = 1e3 * t.min_s / b
  return row


def device_line() -> str:
  import jax
  d = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  return (f"{d.platform}:{d.device_kind} x{jax.device_count()} | host {cpu}, "
          f"{os.cpu_count()} CPUs | jax {jax.__version__}")


def format_table(rows) -> str:
  cols = [("model", "model", "{}"), ("crop", "crop", "{}"), ("params_M", "params (M)", "{:.1f}"),
          ("backbone_params_M", "backbone (M)", "{:.1f}"), ("fwd_GFLOPs", "fwd GFLOPs/img", "{:.1f}"),
          ("train_GFLOPs", "train GFLOPs/img", "{:.1f}"), ("fwd_ms", "fwd ms/img", "{:.0f}"),
          ("train_ms", "train ms/img", "{:.0f}"), ("fwd_compile_s", "fwd compile s", "{:.0f}"),
          ("train_compile_s", "train compile s", "{:.0f}")]
  lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    lines.append("| " + " | ".join(fmt.format(r[k]) if k in r else "-" for k, _, fmt in cols) + " |")
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(argv)
  keys = [k.strip() for k in args.backbones.split(",") if k.strip()]
  unknown = [k for k in keys if k not in MODELS]
  if unknown:
    raise SystemExit(f"unknown --backbones {unknown}; known: {list(MODELS)}")
  print(f"device: {device_line()}")
  print(f"dtype {args.dtype}, batch {args.batch}, median of {args.repeats} runs after 1 warm-up")
  rows = []
  for key in keys:
    t0 = time.perf_counter()
    row = bench_one(key, args)
    rows.append(row)
    print(f"{key}: {row} ({time.perf_counter() - t0:.0f}s)", flush=True)
  print(format_table(rows))


if __name__ == "__main__":
  main()
