"""The benchmark scripts that a GPU session runs blind: small smoke runs here,
and the shared harness (bench/harness.py) they all take their figures from."""

import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import bench_head_overhead, bench_looks, bench_remat, bench_vocab, harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("bench_backbones", "bench_compile_cache", "bench_few_shot", "bench_head_overhead",
           "bench_input_pipeline", "bench_looks", "bench_prototypes", "bench_remat",
           "bench_seeds", "bench_train_step", "bench_vocab", "suite")


# ----------------------------------------------------------------------------
# The harness.


def test_compiled_memory_is_arguments_outputs_temporaries_minus_aliased():
  f = jax.jit(lambda x, y: (x + 1.0, jnp.tanh(x @ y).sum()), donate_argnums=0)
  spec = jax.ShapeDtypeStruct((128, 128), jnp.float32)
  compiled = f.lower(spec, spec).compile()
  ma = compiled.memory_analysis()
  mem = harness.compiled_memory(compiled)
  assert set(harness.MEMORY_KEYS) <= set(mem)
  assert (mem["argument_bytes"], mem["output_bytes"], mem["temp_bytes"], mem["alias_bytes"]) == (
      ma.argument_size_in_bytes, ma.output_size_in_bytes, ma.temp_size_in_bytes,
      ma.alias_size_in_bytes)
  assert mem["memory_total_bytes"] == (ma.argument_size_in_bytes + ma.output_size_in_bytes
                                       + ma.temp_size_in_bytes - ma.alias_size_in_bytes)
  assert mem["alias_bytes"] == 128 * 128 * 4   # the donated x is the first output's buffer
  assert mem["temp_gib"] == round(ma.temp_size_in_bytes / 2**30, 3)

  class NoAnalysis:
    def memory_analysis(self):
      raise NotImplementedError

  assert harness.compiled_memory(NoAnalysis()) == {
      "memory_analysis": "unavailable: NotImplementedError"}


def test_time_fn_median_min_warmup_and_blocking():
  ticks = iter([0.0, 0.3, 1.0, 1.1, 2.0, 2.2])   # timed runs of 0.3, 0.1 and 0.2 s
  calls = []
  t = harness.time_fn(lambda: calls.append(1) or jnp.ones(3), runs=3, warmup=2,
                      clock=lambda: next(ticks), cpu_clock=lambda: 0.0)
  assert len(calls) == 5                              # 2 warm-up + 3 timed calls
  assert t.times_s == pytest.approx((0.3, 0.1, 0.2))
  assert (t.median_s, t.min_s, t.runs) == (pytest.approx(0.2), pytest.approx(0.1), 3)
  # Several calls per run: seconds per call; the last output is blocked on.
  ticks = iter([0.0, 0.4, 1.0, 1.8])
  t = harness.time_fn(lambda: jnp.ones(2), runs=2, warmup=0, steps_per_run=4,
                      clock=lambda: next(ticks))
  assert t.times_s == pytest.approx((0.1, 0.2)) and t.total_s == pytest.approx(1.2)
  # A real jitted function: every run waits for its result.
  f = jax.jit(lambda x: (x @ x).sum())
  x = jnp.ones((64, 64))
  synced = []
  t = harness.time_fn(lambda: f(x), runs=4, sync=lambda: synced.append(1))
  assert len(synced) == 5 and 0 < t.min_s <= t.median_s and len(t.cpu_s) == 4
  with pytest.raises(ValueError):
    harness.time_fn(lambda: None, runs=0)


def test_load_config_by_path_or_name_with_overrides():
  a = harness.load_config("configs/demo.py:runlocal")
  b = harness.load_config("demo:runlocal", {"model.dtype": "bfloat16", "batch_size": None})
  assert a.batch_size == b.batch_size == 8 and b.model.dtype == "bfloat16"
  c = harness.load_config("configs/demo.py", ["batch_size=4", "dataset.crop_size=32,48",
                                              "model.remat=stage"])
  assert (c.batch_size, tuple(c.dataset.crop_size), c.model.remat) == (4, (32, 48), "stage")
  with pytest.raises(KeyError, match="model.no_such_key"):
    harness.load_config("demo", {"model.no_such_key": 1})
  assert harness.num_classes(c) == 6 and harness.num_classes(c, 3) == 3


def test_flop_counter_and_param_counts():
  harness._self_check()   # pylint: disable=protected-access  (FLOPs counted by hand)
  assert harness.count_params({"a": jnp.ones((3, 4)), "b": [jax.ShapeDtypeStruct((5,), jnp.int32)]}) == 17
  assert harness.param_counts({"backbone": {"w": jnp.ones(4)}, "head": {"w": jnp.ones(2)}},
                              {"head": {"prototypes": jnp.ones((2, 3, 4))}}) == {
                                  "params": 6, "backbone_params": 4, "prototypes": 24}
  # The vocab benchmark counts the library's heads: the documented figures.
  assert bench_vocab.head_params("protoseg", 150, 10, 720) == 1_039_980
  assert bench_vocab.head_params("linear", 150, 10, 720) == 108_150


def test_flop_counts_of_a_program():
  f = jax.jit(lambda x, w: jnp.tanh(x @ w))
  x, w = jnp.ones((8, 16)), jnp.ones((16, 4))
  traced = f.trace(x, w)
  got = harness.flop_counts(traced, traced.lower().compile())
  assert got["flops_model"] == 2 * 8 * 16 * 4
  assert got["flops_xla_cpu"] >= got["flops_model"] and got["flops_xla_device"] > 0


# ----------------------------------------------------------------------------
# The scripts.


def test_bench_is_a_package_without_path_hacks():
  for path in glob.glob(os.path.join(ROOT, "bench", "*.py")):
    with open(path) as f:
      text = f.read()
    assert "sys.path.insert" not in text, path
    assert "python bench/" not in text, path
  for name in SCRIPTS:
    assert os.path.isfile(os.path.join(ROOT, "bench", f"{name}.py")), name


def test_vocab_run_size_memory_and_time():
  rec = bench_vocab.run_size("protoseg", 4, 64, 2, 8, 1, 2**30)
  assert rec["memory_total_bytes"] == (rec["argument_bytes"] + rec["output_bytes"]
                                       + rec["temp_bytes"] - rec["alias_bytes"])
  assert rec["step_ms"] >= 0 and rec["step_ms_min"] <= rec["step_ms"]
  skipped = bench_vocab.run_size("linear", 4, 64, 2, 8, 1, 0)
  assert "skipped" in skipped and "step_ms" not in skipped


def test_head_overhead_variants_costs_and_profile(tmp_path):
  recs = bench_head_overhead.measure(batch=1, hw=(8, 16), d_in=16, num_classes=3,
                                     num_prototypes=2, embed_dim=16, dtype="float32", steps=2,
                                     profile_dir=str(tmp_path))
  *variants, summary = recs
  by = {r["variant"]: r for r in variants}
  assert sorted(by) == sorted(["linear/train", "retrieval/train", "protoseg/train",
                               "linear/inference", "protoseg/inference"])
  for r in variants:
    assert r["ms"] > 0 and r["gflops_xla"] >= 0 and r["ms_min"] <= r["ms"]
    assert r["memory_total_bytes"] == (r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"]
                                       - r["alias_bytes"]) and "temp_gib" in r
  # Nested variants: the projection head adds FLOPs; learning adds memory traffic.
  assert by["retrieval/train"]["flops_xla"] > by["linear/train"]["flops_xla"]
  assert by["retrieval/train"]["flops_jaxpr"] > by["linear/train"]["flops_jaxpr"] > 0
  # --flops_only: the same counts, traced only.
  counted = bench_head_overhead.measure(batch=1, hw=(8, 16), d_in=16, num_classes=3,
                                        num_prototypes=2, embed_dim=16, dtype="float32",
                                        flops_only=True)
  assert [r["flops_jaxpr"] for r in counted[:-1]] == [r["flops_jaxpr"] for r in variants]
  assert "ms" not in counted[0] and "protoseg_minus_linear_ms" not in counted[-1]
  assert counted[-1]["protoseg_minus_linear_gflops_jaxpr"] == pytest.approx(
      (by["protoseg/train"]["flops_jaxpr"] - by["linear/train"]["flops_jaxpr"]) / 1e9, abs=1e-3)
  assert by["protoseg/train"]["bytes_accessed_xla"] > by["retrieval/train"]["bytes_accessed_xla"]
  assert summary["summary"] and summary["protoseg_minus_linear_ms"] == pytest.approx(
      by["protoseg/train"]["ms"] - by["linear/train"]["ms"], abs=1e-3)
  # The trace was read back and its ops named after the head's modules.
  ops = by["retrieval/train"]["top_ops"]
  assert ops and all(o["us_per_step"] >= 0 and 0 <= o["share"] <= 1 for o in ops)
  assert any("ProtoSegHead" in o["op_name"] for o in ops)


def test_remat_residuals_only_shrinks_and_recomputes():
  config = harness.load_config("configs/demo.py:runlocal")
  none, stage = (bench_remat.measure(config, 6, 2, (64, 64), r, residuals_only=True)
                 for r in ("none", "stage"))
  assert stage["residual_bytes"] < 0.8 * none["residual_bytes"]
  assert stage["grad_gflops_jaxpr"] > none["grad_gflops_jaxpr"] > 0


def test_suite_runs_its_items_as_modules(tmp_path):
  """`python -m bench.suite` from the checkout root, its child process started
  the same way (`-m bench.suite --child=matmul`), TensorFlow & co. blocked."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  listed = subprocess.run([sys.executable, "-m", "bench.suite", "--list"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True, timeout=120)
  items = listed.stdout.split()
  assert items[0] == "matmul" and "model:cityscapes_hrnet48_proto" in items and "vocab" in items
  out = tmp_path / "bench.jsonl"
  proc = subprocess.run([sys.executable, "-m", "bench.suite", "--quick", "--items=matmul",
                         "--dtype=float32", "--budget_s=0", f"--out={out}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  recs = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["what"] for r in recs] == ["suite_start", "matmul", "matmul", "suite_end"], recs
  assert recs[-1]["figures"]["status"] == {"matmul": "ok"}
  for r in recs[1:3]:
    assert r["trainer_stack_imported"] == [] and r["figures"]["ms_min"] <= r["figures"]["ms"]


def test_bench_assignment_agreement_is_softmax_of_q_at_its_argmax():
  """bench_assignment: the Gumbel pick equals the Sinkhorn argmax with
  probability softmax(Q)[argmax Q]: e / (e + M - 1) for a one-hot Q (the
  bound), 1/M for a flat one; the sampled rate agrees with the expectation."""
  import math
  import jax
  import numpy as np
  from bench import bench_assignment
  m = 4
  onehot = np.eye(m, dtype=np.float32)[np.arange(4000) % m]
  flat = np.full((4000, m), 1 / m, np.float32)
  a = bench_assignment.agreement(onehot, jax.random.key(0), 5)
  b = bench_assignment.agreement(flat, jax.random.key(1), 5)
  assert a["agreement_expected"] == a["bound"] == round(math.e / (math.e + m - 1), 4)
  assert abs(a["agreement_sampled"] - a["bound"]) < 0.02
  assert b["agreement_expected"] == b["uniform"] == 0.25 and b["q_max_mean"] == 0.25


def test_bench_seeds_tables_each_settings_seeds_and_resumes_finished_runs(tmp_path, monkeypatch):
  """bench_seeds: the table's mean and sample std are those of the runs' last
  evaluations, a run missing its last step is left out of its row, the plot is
  written, and a workdir that holds its last evaluation is not trained again."""
  from bench import bench_seeds
  runs = bench_seeds.plan(["protoseg", "linear"], seeds=3, steps=40, long_seeds=0,
                          long_steps=0, evals=2)
  assert [r.eval_every for r in runs] == [20] * 6
  miou = {("protoseg", 0): 80.0, ("protoseg", 1): 82.0, ("protoseg", 2): 84.0,
          ("linear", 0): 88.0, ("linear", 1): 90.0}   # linear seed 2 stopped at step 20
  for run in runs:
    workdir = tmp_path / run.name
    workdir.mkdir(parents=True)
    recs = [{"step": 10, "train/loss": 1.0},
            {"step": 20, "val/mIoU": 10.0 + run.seed, "val/proto_mean_cosine": 0.5}]
    if (run.setting, run.seed) in miou:
      last = {"step": 40, "val/mIoU": miou[run.setting, run.seed]}
      if run.setting == "protoseg":
        last.update({"val/proto_mean_cosine": 0.9 + run.seed / 100,
                     "val/proto_appearance_nmi": 0.1})
      recs.append(last)
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
  rows = bench_seeds.report(runs, str(tmp_path), "python -m bench.bench_seeds")
  proto, linear = rows
  assert proto["seeds"] == [0, 1, 2] and linear["seeds"] == [0, 1]
  assert proto["miou"] == {"mean": 82.0, "std": 2.0, "values": [80.0, 82.0, 84.0]}
  assert proto["cosine"]["values"] == [0.9, 0.91, 0.92] and proto["nmi"]["std"] < 1e-12
  assert linear["miou"]["mean"] == 89.0 and abs(linear["miou"]["std"] - 2 ** 0.5) < 1e-12
  assert "cosine" not in linear
  text = (tmp_path / "results.md").read_text()
  assert "| 40 | protoseg | 3 | 82.00 ± 2.00 (80.00, 82.00, 84.00) |" in text
  assert (tmp_path / "miou_over_steps.png").stat().st_size > 1000
  # Finished runs are skipped; the unfinished one would be trained.
  monkeypatch.setattr(bench_seeds.subprocess, "run", lambda *a, **k: pytest.fail("trained"))
  assert bench_seeds.train(runs[0], str(tmp_path), None) == 0.0
  with pytest.raises(pytest.fail.Exception):
    bench_seeds.train(runs[-1], str(tmp_path), None)


# ----------------------------------------------------------------------------
# bench_looks: k-means + NMI, and the pixel set of prototype_stats.


def test_looks_kmeans_finds_separated_looks_and_not_random_ones():
  gen = np.random.default_rng(1)
  looks = np.repeat([0, 1, 2], 200)
  centres = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
  x = centres[looks] + gen.normal(size=(600, 3))
  ids = bench_looks.kmeans(x, 3, seed=0)
  assert bench_looks.look_cluster_nmi(looks, ids) == pytest.approx(1.0)
  assert np.array_equal(ids, bench_looks.kmeans(x, 3, seed=0))       # deterministic
  # Looks that are directions 20 degrees apart, lengths 1 or 10 whatever the
  # look: spherical k-means takes the looks apart, Euclidean k-means the lengths.
  two = np.repeat([0, 1], 300)
  angle = 0.35 * two + 0.02 * gen.normal(size=600)
  x = np.stack([np.cos(angle), np.sin(angle)], 1) * np.where(gen.random(600) < 0.5, 1, 10)[:, None]
  ids = bench_looks.kmeans(x, 2, cosine=True)
  assert bench_looks.look_cluster_nmi(two, ids) == pytest.approx(1.0)
  assert bench_looks.look_cluster_nmi(two, bench_looks.kmeans(x, 2)) < 0.05
  # Clusters that ignore the looks: no information.
  noise = bench_looks.kmeans(gen.normal(size=(600, 3)), 3, seed=0)
  assert bench_looks.look_cluster_nmi(looks, noise) < 0.02
  # One look per class: no NMI (as prototype_stats).
  assert np.isnan(bench_looks.look_cluster_nmi(np.zeros(5, int), np.arange(5) % 2))


def test_looks_pixels_are_those_prototype_stats_counts():
  """Partial images, a feature map smaller than the image canvas (11 -> 6)
  and labels of another size: the bench's NumPy resizing must count exactly
  the look table of the usage step."""
  import flax.linen as nn
  from protoseg_jax import heads, prototype_stats
  c, m = 3, 2

  class Pooled(nn.Module):       # a stand-in model: stride-2 "decoder" + the head
    @nn.compact
    def __call__(self, images, train=False):
      x = nn.avg_pool(images, (2, 2), (2, 2), padding="SAME")
      return heads.ProtoSegHead(c, num_prototypes=m, embed_dim=4, name="head")(x)

  model = Pooled()
  gen = np.random.default_rng(0)
  images = jnp.asarray(gen.normal(size=(2, 11, 11, 5)), jnp.float32)
  variables = model.init(jax.random.key(0), images)
  label = gen.integers(0, c, size=(2, 9, 10)).astype(np.int32)
  label[0, 7:] = label[:, :, 9] = 255                        # padding outside label_hw
  batch = {"image": images, "image_hw": np.array([[7, 9], [11, 10]], np.int32),
           "label": label, "label_hw": np.array([[7, 9], [9, 9]], np.int32),
           "mask": np.array([True, True]),
           "appearance": gen.integers(0, 3, size=(2, 9, 10)).astype(np.int32)}
  _, _, want = prototype_stats.make_usage_step(model)(variables, batch)
  emb = heads.proto_head_output(model, variables, images).embeddings
  feats = nn.avg_pool(images, (2, 2), (2, 2), padding="SAME")
  got = bench_looks.batch_pixels(batch, feats, emb, variables["prototypes"],
                                 np.arange(256), np.zeros(5), np.ones(5))
  table = np.zeros((c, prototype_stats.MAX_LOOKS, m), np.int64)
  np.add.at(table, (got["label"], got["look"], got["prototype"]), 1)
  assert np.array_equal(table, np.asarray(want))
  assert got["rgb"].shape == (table.sum(), 5) and got["decoder"].shape == (table.sum(), 5)


def test_looks_probe_reads_a_look_that_is_not_the_main_structure():
  gen = np.random.default_rng(2)
  looks = gen.integers(0, 2, 800)
  # The look moves one low-variance feature; a high-variance one (e.g.
  # position) dominates, so k-means splits on it and misses the look.
  x = np.stack([10 * gen.normal(size=800) + 30 * (gen.random(800) < 0.5),
                looks + 0.1 * gen.normal(size=800)], 1)
  train = np.arange(800) % 2 == 0
  assert bench_looks.look_cluster_nmi(looks, bench_looks.kmeans(x, 2)) < 0.05
  assert bench_looks.probe_accuracy(x, looks, train) > 0.98
  # Features that do not carry the look: chance level.
  assert bench_looks.probe_accuracy(x[:, :1], looks, train) < 0.6
