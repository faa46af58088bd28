"""Training input pipeline throughput on ADE20K-like JPEGs.

Writes N synthetic 512x683 JPEG scenes with 150-class label PNGs in the
official ADEChallengeData2016.zip layout to a tmp dir, prepares them with the
ade20k builder, then times `input_pipeline.make_train_dataset` with the full
ADE20K train transform (rescale in (2048, 512) x [0.5, 2.0], 512x512 crop with
cat_max_ratio 0.75, flip, photometric distortion, normalise, pad) using
`--threads` CPU threads for tf.data and TF ops. Prints images/s and images/s
per thread (= per core when the cores are otherwise idle), and images per
CPU-second of the process (the per-core figure on a shared machine).

  python bench/bench_input_pipeline.py --threads=1
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402


def _scene(rng, h, w):
  """A smooth, JPEG-realistic RGB scene and a blobby label with ids 0..150."""
  small = rng.uniform(0, 255, (h // 32 + 1, w // 32 + 1, 3)).astype(np.uint8)
  image = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
  image += rng.normal(0, 12, image.shape)
  ids = rng.integers(0, 151, (h // 64 + 1, w // 64 + 1)).astype(np.uint8)
  label = np.asarray(Image.fromarray(ids).resize((w, h), Image.NEAREST))
  return np.clip(image, 0, 255).astype(np.uint8), label


def write_ade_like(manual_dir: str, num_images: int, h: int = 512, w: int = 683, seed: int = 0):
  rng = np.random.default_rng(seed)
  root = "ADEChallengeData2016"
  with zipfile.ZipFile(os.path.join(manual_dir, f"{root}.zip"), "w") as zf:
    for split, folder, count in (("train", "training", num_images), ("val", "validation", 1)):
      for i in range(count):
        image, label = _scene(rng, h, w)
        stem = f"ADE_{split}_{i + 1:08d}"
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=90)
        zf.writestr(f"{root}/images/{folder}/{stem}.jpg", buf.getvalue())
        buf = io.BytesIO()
        Image.fromarray(label, mode="L").save(buf, format="PNG")
        zf.writestr(f"{root}/annotations/{folder}/{stem}.png", buf.getvalue())


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--threads", type=int, default=1, help="CPU threads for tf.data / TF ops")
  parser.add_argument("--num_images", type=int, default=48, help="distinct JPEGs written")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--batches", type=int, default=30, help="timed batches (after warm-up)")
  parser.add_argument("--no_photometric", action="store_true")
  args = parser.parse_args(argv)

  tf.config.threading.set_intra_op_parallelism_threads(args.threads)
  tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  from configs import datasets, default  # pylint: disable=g-import-not-at-top
  from data import prepare as prepare_lib  # pylint: disable=g-import-not-at-top
  from protoseg_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    manual = os.path.join(tmp, "manual")
    os.makedirs(manual)
    t0 = time.time()
    write_ade_like(manual, args.num_images)
    prepare_lib.prepare("ade20k", manual, os.path.join(tmp, "tfds"))
    print(f"wrote and prepared {args.num_images} 512x683 JPEGs in {time.time() - t0:.1f} s")

    config = datasets.set_ade20k(default.get_config())   # the ADE20K training recipe
    config.batch_size, config.eval_batch_size, config.seed = args.batch_size, args.batch_size, 0
    config.dataset.update(dict(
        data_dir=os.path.join(tmp, "tfds"), photometric=not args.no_photometric,
        shuffle_buffer=args.num_images, num_parallel_calls=args.threads, prefetch=2))
    ds = ip.make_train_dataset(config, process_index=0, process_count=1)
    options = tf.data.Options()
    options.threading.private_threadpool_size = args.threads
    options.autotune.cpu_budget = args.threads
    it = ds.with_options(options).as_numpy_iterator()
    for _ in range(3):  # warm-up: tracing, file open, first shuffle buffer fill
      batch = next(it)
    t0, c0 = time.time(), time.process_time()
    for _ in range(args.batches):
      batch = next(it)
    dt, cpu = time.time() - t0, time.process_time() - c0
  images = args.batches * args.batch_size
  assert batch["image"].shape == (args.batch_size, 512, 512, 3)
  print(f"host: {platform.node()} {platform.machine()} {platform.processor() or ''}".rstrip()
        + f", {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.2f}")
  print(f"tf {tf.__version__}, threads={args.threads}, batch={args.batch_size}, "
        f"photometric={not args.no_photometric}")
  print(f"{images} images in {dt:.2f} s wall, {cpu:.2f} s CPU (all threads of this process)")
  print(f"wall: {images / dt:.1f} images/s = {images / dt / args.threads:.1f} images/s per thread")
  print(f"CPU:  {images / cpu:.1f} images per CPU-second (= images/s per fully used core)")


if __name__ == "__main__":
  main()
