"""Throughput of the library's train step (train.make_train_step) on random data.

  python bench/bench_train_step.py --config=configs/cityscapes_hrnet48_proto.py \
      --dtype=bfloat16 [--batch_size=8] [--steps=20] [--crop=512,1024]
  python bench/bench_train_step.py --config=configs/demo.py:runlocal --steps=5   # CPU smoke

Builds the run config's model, optimizer and prototypes with the library
alone (no TensorFlow, TFDS, clu or orbax is imported: this runs on an image
that has only jax, flax, optax and ml_collections) and times the jitted,
donated step over all local devices on one random batch of the config's crop
size. Prints one JSON line: device, config, global batch, dtype, compile
seconds, seconds from the process start to the end of the first step,
median step milliseconds and images per second, and which trainer packages
were imported (expected: none). `--compilation_cache_dir=DIR` turns on JAX's
persistent compilation cache as the trainer does (`bench/bench_compile_cache.py`
starts this twice on one cache to measure a restart).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before JAX is imported: "time to the first step" counts from here

import argparse
import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from protoseg_jax import sharding, train  # noqa: E402
from protoseg_jax.models.segmentor import build_model  # noqa: E402

TRAINER_STACK = ("tensorflow", "tensorflow_datasets", "clu", "orbax")


def load_config(spec: str):
  """`configs/NAME.py[:variant]` -> the run config."""
  path, _, variant = spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  module = importlib.import_module(f"configs.{name}")
  return module.get_config(variant or None)


def num_classes_of(config, given: int | None) -> int:
  if given:
    return given
  try:
    import data  # the dataset's own class list (needs tensorflow_datasets)
    return data.dataset_meta(config.dataset.name).num_classes
  except ImportError as e:
    raise SystemExit(f"--num_classes is needed: the class count of dataset "
                     f"{config.dataset.name!r} is read from its TFDS builder, and {e}") from None


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/cityscapes_hrnet48_proto.py")
  p.add_argument("--dtype", default=None, help="model.dtype (default: the config's)")
  p.add_argument("--batch_size", type=int, default=None, help="global (default: the config's)")
  p.add_argument("--crop", default=None, help="H,W (default: the config's dataset.crop_size)")
  p.add_argument("--num_classes", type=int, default=None,
                 help="default: the dataset's (needs tensorflow_datasets)")
  p.add_argument("--steps", type=int, default=20, help="timed steps after the compile")
  p.add_argument("--compilation_cache_dir", default="off",
                 help="JAX's persistent compilation cache for this run, as the trainer's "
                      "config.compilation_cache_dir: a directory, or 'off' (default)")
  args = p.parse_args(argv)

  config = load_config(args.config)
  if args.dtype:
    config.model.dtype = args.dtype
  if args.batch_size:
    config.batch_size = args.batch_size
  crop = tuple(int(v) for v in args.crop.split(",")) if args.crop else tuple(config.dataset.crop_size)
  num_classes = num_classes_of(config, args.num_classes)
  batch = int(config.batch_size)
  config.compilation_cache_dir = args.compilation_cache_dir
  cache_dir = train.enable_compilation_cache(config, workdir=".")

  model = build_model(config, num_classes)
  mesh = sharding.create_mesh()
  sharding.check_batch_size(batch, mesh)
  state, tx, schedule = train.create_train_state(config, model, mesh, (1, *crop, 3))
  step = train.make_train_step(model, tx, schedule, config, mesh)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, num_classes, size=(batch, *crop)).astype(np.int32)
  labels[:, : crop[0] // 8] = 255  # some ignored pixels, as in real labels
  data_sharding = sharding.batch_sharding(mesh)
  inputs = jax.device_put({"image": rng.normal(size=(batch, *crop, 3)).astype(np.float32),
                           "label": labels}, data_sharding)

  t0 = time.perf_counter()
  state, metrics = step(state, inputs)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  first_step_s = time.perf_counter() - T_START
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, metrics = step(state, inputs)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  loss = float(metrics["train/loss"])
  print(json.dumps({
      "bench": "train_step", "device": jax.devices()[0].device_kind,
      "num_devices": jax.device_count(), "jax": jax.__version__, "config": args.config,
      "backbone": config.model.backbone, "head": config.model.head, "num_classes": num_classes,
      "batch": batch, "crop": list(crop), "dtype": str(config.model.dtype),
      "compile_s": round(compile_s, 2), "first_step_after_start_s": round(first_step_s, 2),
      "compilation_cache": cache_dir is not None, "step_ms_median": round(1e3 * step_s, 2),
      "step_ms_min": round(1e3 * min(times), 2), "img_per_s": round(batch / step_s, 2),
      "steps": args.steps, "final_loss": loss, "loss_finite": bool(np.isfinite(loss)),
      "trainer_stack_imported": sorted(m for m in TRAINER_STACK if m in sys.modules),
  }))


if __name__ == "__main__":
  main()
