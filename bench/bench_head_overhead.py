"""Where the ProtoSeg head's extra time goes (issue 12, item 4): the head alone.

  python -m bench.bench_head_overhead                         # Cityscapes HRNet-W48 scale
  python -m bench.bench_head_overhead --batch=1 --hw=64,128   # CPU-sized
  python -m bench.bench_head_overhead --profile_dir=/tmp/prof  # + a jax.profiler trace

A train step differs between a ProtoSeg model and its linear twin only after
the decoder: the same backbone and decoder produce features [B, h, w, D_in]
and the head turns them into logits. This script times that part alone, on
random features of the recipe's shape (Cityscapes HRNet-W48: batch 8,
128x256 features of 720 channels from 512x1024 crops, C=19, M=10, D=720),
as three nested variants of the library's heads, each jitted the way the
train step uses it (forward, losses, gradient w.r.t. the head's parameters
and the features, which the decoder's backward pass needs):

  linear      `heads.LinearHead` + CE on the logits upsampled to the labels'
              resolution (`losses.segmentation_loss`): the linear twin's head.
  retrieval   `heads.ProtoSegHead` without labels: the projection head (two
              1x1 convs, L2 norm, feat_norm), cosine similarity to the C*M
              prototypes, max over M, mask_norm, the same CE. No learning.
  protoseg    the whole train-mode head as in `train.train_step`: retrieval,
              Sinkhorn targets, PPC + PPD (`losses.protoseg_loss`) and the
              momentum update of the prototypes.

and the inference forward pass (`train=False`) of the linear and ProtoSeg
heads. retrieval - linear is the cost of the projection head and the
nearest-prototype classifier; protoseg - retrieval is prototype learning.
Prints one JSON line per variant (matmul + conv FLOPs counted from its
jaxpr by `bench.harness.matmul_conv_flops`, median and min ms over --steps
after one warm-up (`bench.harness.time_fn`), the compiled program's FLOPs
and bytes accessed from XLA's cost analysis, its compiled memory
(`bench.harness.compiled_memory`: temp_gib, memory_total_bytes = argument +
output + temp - alias, and the parts)) and a
summary line with those differences; `--flops_only` traces the variants for
their jaxpr FLOPs alone (seconds at any size; no compile, no run). With --profile_dir the
timed steps of each variant run under `jax.profiler.trace` (open with
TensorBoard's profile plugin or Perfetto) and each record gets `top_ops`:
the instructions that took most time, per step, with the head's module path
they come from (from the trace and the compiled HLO's metadata). Needs only
jax, flax and numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import harness
from protoseg_jax import heads, losses

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def make_variants(num_classes: int, num_prototypes: int, embed_dim: int, dtype, align_corners=True):
  """{name: (module, fn(variables, features, labels, key))}; train variants
  return (loss, grads w.r.t. (params, features), new prototypes or None)."""
  proto = heads.ProtoSegHead(num_classes, num_prototypes=num_prototypes, embed_dim=embed_dim,
                             dtype=dtype)
  linear = heads.LinearHead(num_classes, dtype=dtype)

  def ce_train(head):
    """CE on the head's logits without labels (no prototype learning)."""
    def fn(v, x, y, key):
      def loss(params, x):
        logits = head.apply({**v, "params": params}, x, train=True).logits
        return losses.segmentation_loss(logits, y, align_corners=align_corners)
      val, grads = jax.value_and_grad(loss, argnums=(0, 1))(v["params"], x)
      return val, grads, None
    return fn

  def protoseg_train(v, x, y, key):
    def loss(params, x):
      out, upd = proto.apply({**v, "params": params}, x, y, train=True, mutable=["prototypes"],
                             rngs={heads.PROTOTYPE_RNG: key})
      total, _ = losses.protoseg_loss(out.logits, y, proto_targets=out.proto_targets,
                                      proto_lse=out.proto_lse,
                                      proto_target_logits=out.proto_target_logits,
                                      align_corners=align_corners)
      return total, upd["prototypes"]
    (val, protos), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(v["params"], x)
    return val, grads, protos

  return {
      "linear/train": (linear, ce_train(linear)),
      "retrieval/train": (proto, ce_train(proto)),
      "protoseg/train": (proto, protoseg_train),
      "linear/inference": (linear, lambda v, x, y, key: linear.apply(v, x).logits),
      "protoseg/inference": (proto, lambda v, x, y, key: proto.apply(v, x).logits),
  }


def top_ops(trace_dir: str, hlo_text: str, steps: int, k: int = 12) -> list[dict]:
  """The k HLO instructions of `hlo_text` that took most time in the
  jax.profiler trace under trace_dir (its trace.json.gz): microseconds per
  step, calls per step and the jax op_name they come from (the module path:
  e.g. `ProtoSegHead/proj_conv1/conv_general_dilated`, `transpose(jvp(...))`
  for the backward pass). Device events when the trace has a device, else
  the host's (CPU)."""
  import collections
  import glob
  import gzip
  import re
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    return []
  with gzip.open(sorted(files)[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  op_names = dict(re.findall(r'%?([\w.\-]+) = [^\n]*?metadata=\{[^}]*?op_name="([^"]+)"', hlo_text))
  proc = {e["pid"]: e.get("args", {}).get("name", "") for e in events
          if e.get("ph") == "M" and e.get("name") == "process_name"}
  on_device = any("/device:" in n for n in proc.values())
  time_us, calls = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or (on_device and "/device:" not in proc.get(e["pid"], "")):
      continue
    name = e.get("args", {}).get("hlo_op") or e["name"]
    if name in op_names:
      time_us[name] += e.get("dur", 0.0)
      calls[name] += 1
  total = sum(time_us.values())
  return [{"hlo": name, "us_per_step": round(t / steps, 1), "share": round(t / total, 3),
           "calls_per_step": round(calls[name] / steps, 2),
           "op_name": re.sub(r"^jit\([^)]*\)/", "", op_names[name])[-120:]}
          for name, t in time_us.most_common(k)]


def _cost(compiled) -> dict:
  """XLA's cost analysis (FLOPs, bytes accessed) and compiled memory of a variant."""
  flops, nbytes = (harness.xla_cost(compiled, k) for k in ("flops", "bytes accessed"))
  flops = float("nan") if flops is None else flops
  nbytes = float("nan") if nbytes is None else nbytes
  return {"flops_xla": flops, "bytes_accessed_xla": nbytes,
          "gflops_xla": round(flops / 1e9, 2), "gbytes_accessed_xla": round(nbytes / 1e9, 3),
          **harness.compiled_memory(compiled)}


def measure(*, batch=8, hw=(128, 256), d_in=720, num_classes=19, num_prototypes=10,
            embed_dim=720, dtype="bfloat16", label_stride=4, steps=10, profile_dir=None,
            variants=None, flops_only=False) -> list[dict]:
  """One record per variant (see the module docstring), then the summary.
  flops_only: only the matmul + conv FLOPs counted from each variant's jaxpr
  (`bench.harness.matmul_conv_flops`; traced, not compiled or run)."""
  h, w = hw
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, h, w, d_in)), DTYPES[dtype])
  labels = rng.integers(0, num_classes, size=(batch, h * label_stride, w * label_stride))
  labels[:, : h * label_stride // 8] = 255      # some ignored pixels, as in real labels
  y = jnp.asarray(labels, jnp.int32)
  key = jax.random.key(1)
  table = make_variants(num_classes, num_prototypes, embed_dim, DTYPES[dtype])
  shape = {"batch": batch, "features": [h, w, d_in], "labels": [h * label_stride, w * label_stride],
           "num_classes": num_classes, "num_prototypes": num_prototypes, "embed_dim": embed_dim,
           "dtype": dtype, "device": jax.devices()[0].device_kind, "jax": jax.__version__}
  out = []
  for name in variants or table:
    module, fn = table[name]
    v = module.init({"params": jax.random.key(0)}, x[:1])
    flops = harness.matmul_conv_flops(jax.make_jaxpr(fn)(v, x, y, key))["flops"]
    rec = {"bench": "head_overhead", "variant": name, **shape, "flops_jaxpr": flops,
           "gflops_jaxpr": round(flops / 1e9, 3)}
    if flops_only:
      out.append(rec)
      continue
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(v, x, y, key).compile()
    compile_s = time.perf_counter() - t0
    trace_dir = os.path.join(profile_dir, name.replace("/", "_")) if profile_dir else None
    t = harness.time_fn(lambda: compiled(v, x, y, key), warmup=1, runs=steps,
                        around=jax.profiler.trace(trace_dir) if trace_dir else None)
    rec.update({"ms": round(1e3 * t.median_s, 3), "ms_min": round(1e3 * t.min_s, 3),
                "compile_s": round(compile_s, 2), **_cost(compiled)})
    if trace_dir:
      rec["top_ops"] = top_ops(trace_dir, compiled.as_text(), steps)
    out.append(rec)
  by = {r["variant"]: r for r in out}
  summary = {"bench": "head_overhead", "summary": True, **shape}
  pairs = (("retrieval_minus_linear", "retrieval/train", "linear/train"),
           ("learning_minus_retrieval", "protoseg/train", "retrieval/train"),
           ("protoseg_minus_linear", "protoseg/train", "linear/train"),
           ("inference_protoseg_minus_linear", "protoseg/inference", "linear/inference"))
  figures = (("gflops_jaxpr", "flops_jaxpr", 1e-9), ("ms", "ms", 1.0),
             ("gbytes", "bytes_accessed_xla", 1e-9))
  for label, a, b in pairs:
    for suffix, key, scale in figures:
      if a in by and b in by and key in by[a]:
        summary[f"{label}_{suffix}"] = round(scale * (by[a][key] - by[b][key]), 3)
  out.append(summary)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--hw", default="128,256", help="feature map h,w (labels are --label_stride x)")
  p.add_argument("--d_in", type=int, default=720, help="decoder feature channels")
  p.add_argument("--num_classes", type=int, default=19)
  p.add_argument("--num_prototypes", type=int, default=10)
  p.add_argument("--embed_dim", type=int, default=720)
  p.add_argument("--label_stride", type=int, default=4)
  p.add_argument("--dtype", default="bfloat16", choices=tuple(DTYPES))
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--variants", default=None, help="comma-separated subset (default: all)")
  p.add_argument("--profile_dir", default=None)
  p.add_argument("--flops_only", action="store_true",
                 help="only the jaxpr matmul + conv FLOPs of each variant (no compile, no run)")
  args = p.parse_args(argv)
  for rec in measure(batch=args.batch, hw=tuple(int(v) for v in args.hw.split(",")),
                     d_in=args.d_in, num_classes=args.num_classes,
                     num_prototypes=args.num_prototypes, embed_dim=args.embed_dim,
                     dtype=args.dtype, label_stride=args.label_stride, steps=args.steps,
                     profile_dir=args.profile_dir, flops_only=args.flops_only,
                     variants=args.variants.split(",") if args.variants else None):
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  main()
