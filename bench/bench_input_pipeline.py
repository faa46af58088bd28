"""Training input pipeline throughput on synthetic ADE20K- or Cityscapes-like images.

--recipe=ade20k (default): N synthetic 512x683 JPEG scenes (quality 90) with
150-class label PNGs in the official ADEChallengeData2016.zip layout, and the
training pipeline of configs/ade20k_swin_proto.py (mmseg: rescale in (2048,
512) x [0.5, 2.0], 512x512 crop with cat_max_ratio 0.75, flip, photometric
distortion, normalise, pad).

--recipe=cityscapes: N synthetic 2048x1024 PNG scenes (RGB, ~3 MB each; the
released leftImg8bit PNGs average ~2.3 MB) with gtFine labelIds PNGs in the
official folder layout, and the pipeline of configs/cityscapes_hrnet48_proto.py
(the official openseg transforms: bicubic rescale 0.5-2.0 with aspect jitter,
1024x512 crop, flip, brightness, normalise, pad; BGR).

The files go to a tmp dir, are prepared with the dataset's builder, then
`protoseg_jax.trainer.input_pipeline.make_train_dataset` runs with `--threads` CPU threads for
tf.data and TF ops. Prints images/s and images/s per thread (= per core when
the cores are otherwise idle), and images per CPU-second of the process (the
per-core figure on a shared machine). Each batch is timed by
`bench.harness.time_fn` (3 warm-up batches: tracing, file open, the first
shuffle buffer fill; then --batches timed ones).

--profile adds the cost of each step of the per-example work (read, decode
image, decode label, then the transform's steps: `augment.transform_stages`)
in CPU-ms per example: `bench.input_profile.profile_train_steps` gives a dataset
per step that runs the work up to that step; each is timed --repeats times
over --batches x --batch_size examples and the medians are differenced; the
last row is what the whole pipeline (shuffle, row streams, batching,
prefetch) costs above the steps.

  python -m bench.bench_input_pipeline --threads=1
  python -m bench.bench_input_pipeline --recipe=cityscapes --threads=1
  python -m bench.bench_input_pipeline --recipe=cityscapes --threads=1 --profile

--data_dir=gs://BUCKET/tfds prepares the dataset into that folder (a bucket:
docs/buckets.md runs it against tests/gcs_emulator.py) instead of the tmp
dir, and the pipeline reads it from there.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from bench import harness  # noqa: E402


def _scene(rng, h, w, label_ids=np.arange(151), noise=12.0):
  """A smooth RGB scene with pixel noise (std `noise`) and a blobby label of `label_ids`."""
  small = rng.uniform(0, 255, (h // 32 + 1, w // 32 + 1, 3)).astype(np.uint8)
  image = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
  image += rng.normal(0, noise, image.shape)
  ids = rng.choice(np.asarray(label_ids, np.uint8), (h // 64 + 1, w // 64 + 1))
  label = np.asarray(Image.fromarray(ids).resize((w, h), Image.NEAREST))
  return np.clip(image, 0, 255).astype(np.uint8), label


def write_ade_like(manual_dir: str, num_images: int, h: int = 512, w: int = 683,
                   seed: int = 0) -> float:
  """ADEChallengeData2016.zip with `num_images` train scenes and one val; returns
  the mean train JPEG MB."""
  rng = np.random.default_rng(seed)
  root = "ADEChallengeData2016"
  sizes = []
  with zipfile.ZipFile(os.path.join(manual_dir, f"{root}.zip"), "w") as zf:
    for split, folder, count in (("train", "training", num_images), ("val", "validation", 1)):
      for i in range(count):
        image, label = _scene(rng, h, w)
        stem = f"ADE_{split}_{i + 1:08d}"
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=90)
        zf.writestr(f"{root}/images/{folder}/{stem}.jpg", buf.getvalue())
        if split == "train":
          sizes.append(len(buf.getvalue()))
        buf = io.BytesIO()
        Image.fromarray(label, mode="L").save(buf, format="PNG")
        zf.writestr(f"{root}/annotations/{folder}/{stem}.png", buf.getvalue())
  return float(np.mean(sizes)) / 1e6


def write_cityscapes_like(manual_dir: str, num_images: int, h: int = 1024, w: int = 2048,
                          seed: int = 0) -> float:
  """The official extracted layout (leftImg8bit/<split>/<city>/..., gtFine/...):
  `num_images` train scenes, one val and one test; returns the mean train PNG MB."""
  rng = np.random.default_rng(seed)
  label_ids = np.arange(34)   # cityscapesScripts labelIds 0..33 (the builder maps them)
  sizes = []
  for split, count in (("train", num_images), ("val", 1), ("test", 1)):
    for folder in ("leftImg8bit", "gtFine"):
      os.makedirs(os.path.join(manual_dir, folder, split, "city"), exist_ok=True)
    for i in range(count):
      image, label = _scene(rng, h, w, label_ids, noise=2.0)
      stem = f"city_{i:06d}_000019"
      path = os.path.join(manual_dir, "leftImg8bit", split, "city", f"{stem}_leftImg8bit.png")
      Image.fromarray(image).save(path, format="PNG")
      if split == "train":
        sizes.append(os.path.getsize(path))
      Image.fromarray(label, mode="L").save(
          os.path.join(manual_dir, "gtFine", split, "city", f"{stem}_gtFine_labelIds.png"))
  return float(np.mean(sizes)) / 1e6


RECIPES = {
    # recipe: (run config whose config.dataset is used, writer, what is written)
    "ade20k": ("ade20k_swin_proto", write_ade_like, "512x683 JPEGs (quality 90)"),
    "cityscapes": ("cityscapes_hrnet48_proto", write_cityscapes_like, "2048x1024 PNGs"),
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--recipe", default="ade20k", choices=sorted(RECIPES))
  parser.add_argument("--threads", type=int, default=1, help="CPU threads for tf.data / TF ops")
  parser.add_argument("--num_images", type=int, default=48, help="distinct images written")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--batches", type=int, default=30, help="timed batches (after warm-up)")
  parser.add_argument("--no_photometric", action="store_true")
  parser.add_argument("--profile", action="store_true", help="also the cost of each step")
  parser.add_argument("--repeats", type=int, default=3, help="timings per step with --profile")
  parser.add_argument("--data_dir", default=None, help="prepare and read the dataset there "
                      "(e.g. gs://bucket/tfds) instead of a tmp dir")
  args = parser.parse_args(argv)

  tf.config.threading.set_intra_op_parallelism_threads(args.threads)
  tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  from data import prepare as prepare_lib  # pylint: disable=g-import-not-at-top
  from protoseg_jax.trainer import input_pipeline as ip  # pylint: disable=g-import-not-at-top

  run_config, writer, written = RECIPES[args.recipe]
  config = harness.load_config(run_config)
  name = config.dataset.name
  with tempfile.TemporaryDirectory() as tmp:
    manual = os.path.join(tmp, "manual")
    os.makedirs(manual)
    t0 = time.time()
    mean_mb = writer(manual, args.num_images)
    data_dir = args.data_dir or os.path.join(tmp, "tfds")
    prepare_lib.prepare(name, manual, data_dir)
    print(f"wrote and prepared {args.num_images} {written} in {time.time() - t0:.1f} s"
          + f" (mean {mean_mb:.3f} MB each)")

    config.batch_size, config.eval_batch_size, config.seed = args.batch_size, args.batch_size, 0
    config.dataset.update(dict(
        data_dir=data_dir, shuffle_buffer=args.num_images,
        num_parallel_calls=args.threads, prefetch=2))
    if args.no_photometric:
      config.dataset.photometric = False
    options = tf.data.Options()
    options.threading.private_threadpool_size = args.threads
    options.autotune.cpu_budget = args.threads
    steps = []
    if args.profile:
      count = args.batches * args.batch_size
      from bench.input_profile import profile_train_steps  # pylint: disable=g-import-not-at-top
      for name, step_ds in profile_train_steps(config):
        it = step_ds.with_options(options).as_numpy_iterator()
        for _ in range(min(count, 3 * args.batch_size)):        # warm-up: tracing, file open
          next(it)
        cpu = []
        for _ in range(args.repeats):
          c0 = time.process_time()
          for _ in range(count):
            next(it)
          cpu.append((time.process_time() - c0) / count)
        steps.append((name, float(np.median(cpu))))
    ds = ip.make_train_dataset(config, process_index=0, process_count=1)
    it = ds.with_options(options).as_numpy_iterator()
    last = {}

    def next_batch():
      last["batch"] = next(it)
      return last["batch"]

    t = harness.time_fn(next_batch, warmup=3, runs=args.batches)
    dt, cpu, batch = t.total_s, t.cpu_total_s, last["batch"]
  images = args.batches * args.batch_size
  # the crops, or with openseg's resize on the device the source canvases
  assert batch["label"].shape == (args.batch_size, *config.dataset.crop_size), batch["label"].shape
  assert batch["image"].shape[0] == args.batch_size and ("resize" in batch or
      batch["image"].shape[1:] == (*config.dataset.crop_size, 3)), batch["image"].shape
  print(f"host: {platform.node()} {platform.machine()} {platform.processor() or ''}".rstrip()
        + f", {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.2f}")
  print(f"recipe {args.recipe} (configs/{run_config}.py: augmentation "
        f"{config.dataset.augmentation}, crop {tuple(config.dataset.crop_size)}, photometric "
        f"{config.dataset.photometric}), tf {tf.__version__}, threads={args.threads}, "
        f"batch={args.batch_size}")
  print(f"data_dir {data_dir}")
  print(f"{images} images in {dt:.2f} s wall, {cpu:.2f} s CPU (all threads of this process)")
  print(f"wall: {images / dt:.1f} images/s = {images / dt / args.threads:.1f} images/s per thread")
  print(f"CPU:  {images / cpu:.1f} images per CPU-second (= images/s per fully used core)")
  print(f"per batch: median {1e3 * t.median_s:.1f} ms, min {1e3 * t.min_s:.1f} ms wall")
  if steps:
    whole = 1e3 * cpu / images
    print(f"\nCPU-ms per example, by step (median of {args.repeats}; whole pipeline {whole:.2f}):")
    print(f"{'step':<44} {'cumulative':>10} {'step':>8} {'share':>6}")
    before = 0.0
    rows = [(name, 1e3 * c) for name, c in steps]
    rows.append(("shuffle, row streams, batch, prefetch", whole))
    for name, cumulative in rows:
      print(f"{name:<44} {cumulative:>10.2f} {cumulative - before:>8.2f} "
            f"{(cumulative - before) / whole:>6.1%}")
      before = cumulative


if __name__ == "__main__":
  main()
