"""The benchmark scripts that a GPU session runs blind: small smoke runs here."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))

import bench_head_overhead  # noqa: E402


def test_head_overhead_variants_costs_and_profile(tmp_path):
  recs = bench_head_overhead.measure(batch=1, hw=(8, 16), d_in=16, num_classes=3,
                                     num_prototypes=2, embed_dim=16, dtype="float32", steps=2,
                                     profile_dir=str(tmp_path))
  *variants, summary = recs
  by = {r["variant"]: r for r in variants}
  assert sorted(by) == sorted(["linear/train", "retrieval/train", "protoseg/train",
                               "linear/inference", "protoseg/inference"])
  for r in variants:
    assert r["ms"] > 0 and r["gflops_xla"] >= 0
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
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import bench_remat
  from bench_train_step import load_config
  config = load_config("configs/demo.py:runlocal")
  none, stage = (bench_remat.measure(config, 6, 2, (64, 64), r, residuals_only=True)
                 for r in ("none", "stage"))
  assert stage["residual_bytes"] < 0.8 * none["residual_bytes"]
  assert stage["grad_gflops_jaxpr"] > none["grad_gflops_jaxpr"] > 0
