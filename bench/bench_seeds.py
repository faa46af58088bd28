"""Is ProtoSeg better than the usual head on the demo? The same question over seeds.

  python -m bench.bench_seeds --root=/tmp/protoseg_seeds          # the whole study (~2.5 h, 2 cores)
  python -m bench.bench_seeds --root=/tmp/protoseg_seeds --report  # the table and plot of what ran

Three settings of the README's demo (configs/demo.py), each trained with
several seeds by `main.py` one run after the other:

  protoseg   the demo's ProtoSeg default (argmax assignment, PPC temperature 0.1)
  official   ProtoSeg with the official code's settings (Gumbel assignment,
             PPC without a temperature)
  linear     the linear twin (configs/demo_linear.py): the usual 1x1 conv head

at the demo's 400 steps (--seeds, default 5) and at a 4x longer schedule
(--long_steps 1600, --long_seeds 3: does a longer schedule close the gap, as
the paper's 80k-step results would suggest?). Every run evaluates --evals
times on the way (the curve), each evaluation being the trainer's own
(val/mIoU, and for ProtoSeg the prototypes' val/proto_mean_cosine and
val/proto_appearance_nmi). Evaluating every 50 steps instead of the demo's
200 does not change the training: seed 0's 400-step run here gave every
value of the README command's metrics.jsonl (timings aside) bit for bit
(checked on 2026-12-04). The runs share one compilation cache
(<root>/compilation_cache).

A run whose workdir already holds its last evaluation is not trained again;
one that stopped half way resumes (the trainer's own resume), so the study
can be stopped and started again. Writes under --root: steps<N>/<setting>/
seed<k>/ (each run's workdir and console.log), results.json (per run: the
curve; per setting and schedule: mean, std and the per-seed values),
results.md (the tables, with the command, commit and machine) and
miou_over_steps.png (val mIoU over the steps, one line per setting, a band
from the lowest to the highest seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time

from bench import harness

ROOT = harness.ROOT

OFFICIAL = ("--config.protoseg.assignment=gumbel", "--config.protoseg.ppc_temperature=1.0")
SETTINGS = {
    "protoseg": ("configs/demo.py", ()),
    "official": ("configs/demo.py", OFFICIAL),
    "linear": ("configs/demo_linear.py", ()),
}
# What the table reports of each run's last evaluation (metrics.jsonl keys).
KEYS = {"miou": "val/mIoU", "cosine": "val/proto_mean_cosine",
        "nmi": "val/proto_appearance_nmi"}


@dataclasses.dataclass(frozen=True)
class Run:
  setting: str
  seed: int
  steps: int
  evals: int

  @property
  def name(self) -> str:
    return f"steps{self.steps}/{self.setting}/seed{self.seed}"

  @property
  def eval_every(self) -> int:
    return max(1, self.steps // self.evals)

  def command(self, root: str, data_dir: str | None) -> list[str]:
    config, extra = SETTINGS[self.setting]
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), f"--config={os.path.join(ROOT, config)}",
           f"--workdir={os.path.join(root, self.name)}", f"--config.seed={self.seed}",
           # One compilation cache for the study: a setting's program is compiled once.
           f"--config.compilation_cache_dir={os.path.join(root, 'compilation_cache')}",
           f"--config.num_train_steps={self.steps}",
           f"--config.eval_every_steps={self.eval_every}",
           f"--config.checkpoint_every_steps={self.steps}", *extra]
    if data_dir:
      cmd.append(f"--config.dataset.data_dir={data_dir}")
    return cmd


def plan(settings, seeds: int, steps: int, long_seeds: int, long_steps: int,
         evals: int) -> list[Run]:
  runs = [Run(s, k, steps, evals) for s in settings for k in range(seeds)]
  if long_seeds and long_steps:
    runs += [Run(s, k, long_steps, evals) for s in settings for k in range(long_seeds)]
  return runs


def read_curve(workdir: str) -> dict[int, dict]:
  """{step: {key: value}} of the evaluations in a workdir's metrics.jsonl."""
  path = os.path.join(workdir, "metrics.jsonl")
  curve = {}
  if not os.path.exists(path):
    return curve
  with open(path) as f:
    for line in f:
      rec = json.loads(line)
      if "val/mIoU" in rec:
        curve[int(rec["step"])] = {k: rec[k] for k in KEYS.values() if k in rec}
  return curve


def train(run: Run, root: str, data_dir: str | None) -> float:
  """Trains one run unless its workdir has its last evaluation; the seconds it took."""
  workdir = os.path.join(root, run.name)
  if run.steps in read_curve(workdir):
    return 0.0
  os.makedirs(workdir, exist_ok=True)
  cmd = run.command(root, data_dir)
  print(f"[{time.strftime('%H:%M:%S')}] {run.name}: {' '.join(cmd[1:])}", flush=True)
  start = time.time()
  with open(os.path.join(workdir, "console.log"), "a") as log:
    done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
  if done.returncode != 0:
    raise SystemExit(f"bench_seeds: {run.name} failed (exit {done.returncode}); "
                     f"see {os.path.join(workdir, 'console.log')}")
  return time.time() - start


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (n - 1; 0 for one value)."""
  n = len(values)
  mean = sum(values) / n
  var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
  return mean, math.sqrt(var)


def summarize(curves: dict[Run, dict[int, dict]]) -> list[dict]:
  """Per (steps, setting): each key's mean, std and per-seed values at the last step."""
  groups: dict[tuple[int, str], list[Run]] = {}
  for run in curves:
    groups.setdefault((run.steps, run.setting), []).append(run)
  rows = []
  order = lambda group: (group[0][0], list(SETTINGS).index(group[0][1]))
  for (steps, setting), runs in sorted(groups.items(), key=order):
    runs = sorted(runs, key=lambda r: r.seed)
    finished = [r for r in runs if steps in curves[r]]
    row = {"steps": steps, "setting": setting, "seeds": [r.seed for r in finished]}
    for short, key in KEYS.items():
      values = [curves[r][steps][key] for r in finished if key in curves[r][steps]]
      if values:
        mean, std = mean_std(values)
        row[short] = {"mean": mean, "std": std, "values": values}
    rows.append(row)
  return rows


def _cell(stat: dict | None, digits: int) -> str:
  if not stat:
    return "-"
  values = ", ".join(f"{v:.{digits}f}" for v in stat["values"])
  return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f} ({values})"


def table(rows: list[dict]) -> str:
  lines = ["| steps | setting | seeds | val mIoU | within-class cosine | appearance NMI |",
           "|---|---|---|---|---|---|"]
  for row in rows:
    lines.append(f"| {row['steps']} | {row['setting']} | {len(row['seeds'])} | "
                 f"{_cell(row.get('miou'), 2)} | {_cell(row.get('cosine'), 3)} | "
                 f"{_cell(row.get('nmi'), 3)} |")
  return "\n".join(lines)


def plot(curves: dict[Run, dict[int, dict]], path: str) -> None:
  """val mIoU over the steps: a line per setting (the seeds' mean), a min-max band."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  schedules = sorted({r.steps for r in curves})
  fig, axes = plt.subplots(1, len(schedules), figsize=(6 * len(schedules), 4), squeeze=False)
  for ax, steps in zip(axes[0], schedules):
    for setting in SETTINGS:
      runs = [r for r in curves if r.steps == steps and r.setting == setting and curves[r]]
      if not runs:
        continue
      shared = sorted(set.intersection(*(set(curves[r]) for r in runs)))
      values = [[curves[r][s]["val/mIoU"] for r in runs] for s in shared]
      mean = [sum(v) / len(v) for v in values]
      line, = ax.plot(shared, mean, marker="o", label=f"{setting} ({len(runs)} seeds)")
      ax.fill_between(shared, [min(v) for v in values], [max(v) for v in values],
                      color=line.get_color(), alpha=0.2)
    ax.set_title(f"demo, {steps} steps")
    ax.set_xlabel("train step")
    ax.set_ylabel("val mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def machine() -> str:
  return f"{platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def commit() -> str:
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()
    return head + (" (with uncommitted changes)" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def report(runs: list[Run], root: str, command: str) -> list[dict]:
  curves = {r: read_curve(os.path.join(root, r.name)) for r in runs}
  rows = summarize(curves)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  text = "\n".join([
      f"Command: `{command}`", f"Date: {stamp}; commit {commit()}; machine: {machine()}", "",
      "Values at each schedule's last step: mean ± sample std (per-seed values in seed order).",
      "", table(rows), ""])
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write(text)
  with open(os.path.join(root, "results.json"), "w") as f:
    json.dump({"rows": rows, "runs": [dict(dataclasses.asdict(r), curve=curves[r])
                                      for r in runs]}, f, indent=1)
  if any(curves.values()):
    plot(curves, os.path.join(root, "miou_over_steps.png"))
  print(text)
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", default="/tmp/protoseg_seeds", help="where the runs and results go")
  p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, of: "
                 + ", ".join(SETTINGS))
  p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 at --steps")
  p.add_argument("--steps", type=int, default=400, help="the demo's schedule")
  p.add_argument("--long_seeds", type=int, default=3, help="seeds at --long_steps (0: none)")
  p.add_argument("--long_steps", type=int, default=1600, help="the longer schedule")
  p.add_argument("--evals", type=int, default=8, help="evaluations per run (the curve)")
  p.add_argument("--data_dir", default=None, help="the demo's TFDS data_dir (default TFDS's)")
  p.add_argument("--report", action="store_true", help="train nothing: tables and plot only")
  args = p.parse_args(argv)
  settings = [s for s in args.settings.split(",") if s]
  unknown = [s for s in settings if s not in SETTINGS]
  if unknown:
    p.error(f"--settings: unknown {', '.join(unknown)}; expected some of {', '.join(SETTINGS)}")
  if args.evals < 1:
    p.error(f"--evals={args.evals}: expected at least 1")
  runs = plan(settings, args.seeds, args.steps, args.long_seeds, args.long_steps, args.evals)
  os.makedirs(args.root, exist_ok=True)
  if not args.report:
    for i, run in enumerate(runs):
      seconds = train(run, args.root, args.data_dir)
      if seconds:
        print(f"  {run.name} done in {seconds:.0f} s ({i + 1} of {len(runs)})", flush=True)
  report(runs, args.root, "python -m bench.bench_seeds " + " ".join(sys.argv[1:] if argv is None
                                                                     else argv))


if __name__ == "__main__":
  main()
