"""Throughput of the library's train step (train.make_train_step) on random data.

  python -m bench.bench_train_step --config=configs/cityscapes_hrnet48_proto.py \
      --dtype=bfloat16 [--batch_size=8] [--steps=20] [--crop=512,1024] [--set=KEY=VALUE ...]
  python -m bench.bench_train_step --config=configs/demo.py:runlocal --steps=5   # CPU smoke

Builds the run config's model, optimizer and prototypes with the library
alone (no TensorFlow, TFDS, clu or orbax is imported: this runs on an image
that has only jax, flax, optax and ml_collections) and times the jitted,
donated step over all local devices on one random batch of the config's crop
size. Prints one JSON line: device, config, global batch, dtype, compile
seconds (the first step: compile and run), seconds from the process start
to the end of the first step, the median and min step milliseconds of
--steps timed steps after it (`bench.harness.time_fn`) and images per
second, and which trainer packages were imported (expected: none). `--compilation_cache_dir=DIR`
turns on JAX's persistent compilation cache as the trainer does
(`python -m bench.bench_compile_cache` starts this twice on one cache to
measure a restart).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before JAX is imported: "time to the first step" counts from here

import argparse
import json

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import harness  # noqa: E402
from protoseg_jax import sharding, train  # noqa: E402
from protoseg_jax.models.segmentor import build_model  # noqa: E402
from protoseg_jax.trainer import compile_cache  # noqa: E402  (jax and absl only)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/cityscapes_hrnet48_proto.py",
                 help="configs/<name>.py[:variant] or <name>[:variant]")
  p.add_argument("--dtype", default=None, help="model.dtype (default: the config's)")
  p.add_argument("--batch_size", type=int, default=None, help="global (default: the config's)")
  p.add_argument("--crop", default=None, help="H,W (default: the config's dataset.crop_size)")
  p.add_argument("--num_classes", type=int, default=None,
                 help="default: the dataset's (bench.harness.NUM_CLASSES)")
  p.add_argument("--steps", type=int, default=20, help="timed steps after the compile")
  p.add_argument("--compilation_cache_dir", default="off",
                 help="JAX's persistent compilation cache for this run, as the trainer's "
                      "config.compilation_cache_dir: a directory, or 'off' (default)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a dotted config override, e.g. --set=model.remat=stage (repeatable)")
  args = p.parse_args(argv)

  config = harness.load_config(args.config, {
      "model.dtype": args.dtype, "batch_size": args.batch_size,
      "dataset.crop_size": tuple(int(v) for v in args.crop.split(",")) if args.crop else None,
      "compilation_cache_dir": args.compilation_cache_dir})
  harness.apply_overrides(config, args.set)
  crop = tuple(int(v) for v in config.dataset.crop_size)
  num_classes = harness.num_classes(config, args.num_classes)
  batch = int(config.batch_size)
  cache_dir = compile_cache.enable_compilation_cache(config, workdir=".")

  model = build_model(config, num_classes)
  mesh = sharding.create_mesh()
  sharding.check_batch_size(batch, mesh)
  state, tx, schedule = train.create_train_state(config, model, mesh, (1, *crop, 3))
  step = train.make_train_step(model, tx, schedule, config, mesh)
  inputs = jax.device_put(harness.random_batch(batch, crop, num_classes),
                          sharding.batch_sharding(mesh))
  holder = {"state": state}

  def once():
    holder["state"], holder["metrics"] = step(holder["state"], inputs)
    return holder["metrics"]

  t0 = time.perf_counter()
  jax.block_until_ready(once())
  compile_s = time.perf_counter() - t0
  first_step_s = time.perf_counter() - T_START
  t = harness.time_fn(once, warmup=0, runs=args.steps)
  loss = float(holder["metrics"]["train/loss"])   # of the last timed step
  print(json.dumps({
      "bench": "train_step", "device": jax.devices()[0].device_kind,
      "num_devices": jax.device_count(), "jax": jax.__version__, "config": args.config,
      "backbone": config.model.backbone, "head": config.model.head, "num_classes": num_classes,
      "batch": batch, "crop": list(crop), "dtype": str(config.model.dtype),
      "compile_s": round(compile_s, 2), "first_step_after_start_s": round(first_step_s, 2),
      "compilation_cache": cache_dir is not None, "step_ms_median": round(1e3 * t.median_s, 2),
      "step_ms_min": round(1e3 * t.min_s, 2), "img_per_s": round(batch / t.median_s, 2),
      "steps": args.steps, "final_loss": loss, "loss_finite": bool(np.isfinite(loss)),
      "trainer_stack_imported": harness.trainer_stack_imported(),
  }))


if __name__ == "__main__":
  main()
