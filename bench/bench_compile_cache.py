"""What the persistent compilation cache saves on a restart (issue 12, item 7).

  python -m bench.bench_compile_cache --config=configs/cityscapes_hrnet48_proto.py \\
      --num_classes=19 --batch_size=1 --crop=256,512
  python -m bench.bench_compile_cache --config=configs/demo.py:runlocal --num_classes=6

Starts `python -m bench.bench_train_step` twice as fresh processes on one new, empty
cache directory (the trainer's `config.compilation_cache_dir`): the first
start compiles and writes the train step (and the state initialisation) to
the cache, the second loads them. Prints one JSON line per start (`start`
1 and 2) with the seconds from the process start to the end of the first
step, the first step's own seconds (compilation or cache load included), the
whole process's wall seconds and the cache's size after it, then a summary
line. Other flags go to bench_train_step unchanged. No TensorFlow needed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench import harness


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cache_dir", default=None,
                 help="an empty or missing directory to use (default: a new temporary one)")
  p.add_argument("--steps", type=int, default=2, help="timed steps after the first (each start)")
  args, rest = p.parse_known_args(argv)
  cache = os.path.abspath(args.cache_dir or tempfile.mkdtemp(prefix="protoseg_compile_cache_"))
  if os.path.isdir(cache) and os.listdir(cache):
    p.error(f"--cache_dir={cache!r} is not empty: the first start must compile")
  cmd = [sys.executable, "-m", "bench.bench_train_step", *rest,
         f"--steps={args.steps}", f"--compilation_cache_dir={cache}"]
  runs = []
  for start in (1, 2):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=harness.ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
      sys.stderr.write(proc.stderr[-4000:])
      raise SystemExit(f"start {start} failed (exit {proc.returncode}): {' '.join(cmd)}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {"bench": "compile_cache", "start": start, "config": rec["config"],
           "device": rec["device"], "num_devices": rec["num_devices"], "jax": rec["jax"],
           "batch": rec["batch"], "crop": rec["crop"], "dtype": rec["dtype"],
           "first_step_after_start_s": rec["first_step_after_start_s"],
           "first_step_s": rec["compile_s"], "process_wall_s": round(wall, 2),
           "step_ms_median": rec["step_ms_median"], "cache_bytes": _dir_bytes(cache)}
    runs.append(out)
    print(json.dumps(out), flush=True)
  cold, warm = runs
  print(json.dumps({
      "bench": "compile_cache", "summary": True, "config": cold["config"],
      "first_step_after_start_s": [cold["first_step_after_start_s"], warm["first_step_after_start_s"]],
      "saved_s": round(cold["first_step_after_start_s"] - warm["first_step_after_start_s"], 2),
      "cache_dir": cache}), flush=True)


if __name__ == "__main__":
  main()
