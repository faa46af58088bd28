"""Benchmark: ProtoSeg head vs a linear head as the vocabulary grows (issue 11, part 6).

Random unit features stand in for the decoder/projection output: N pixels of
D = 720 dims (HRNet-W48's), C classes, M = 10 prototypes per class. Per size
and head, one jitted step on one CPU (or whatever jax's default device is):

  protoseg: class scores (cosine to the C*M prototypes, max over M,
            mask_norm LayerNorm), CE + PPC + PPD losses (lambda 0.01 / 0.001)
            and their gradient w.r.t. the embeddings and mask_norm, and one
            prototype-learning step (`prototypes.learn_prototypes`, gumbel,
            Sinkhorn 3 iterations) that reuses the forward's similarity.
  linear:   logits = emb @ W + b (a 1x1 conv D -> C), CE and its gradient
            w.r.t. the embeddings, W and b.

The projection head / feat_norm of ProtoSeg (2 1x1 convs D -> D) does not
depend on C and is left out of the timing; its parameters are counted.

Reported per size (one JSON line each): learnable parameters of the head
(`params_head`, `bench.harness.count_params` of the library's
`heads.ProtoSegHead` / `heads.LinearHead` on D-dim features: protoseg =
projection + feat_norm + mask_norm (2C); linear = D*C + C), the
non-learnable prototype count (C*M*D), XLA's compiled memory analysis
(`bench.harness.compiled_memory`: argument, output, temp and alias bytes;
`memory_total_bytes` = argument + output + temp - alias, an estimate, not a
measured RSS), and the median (`step_ms`) and min (`step_ms_min`) time of
`--repeats` runs after one warm-up (`bench.harness.time_fn`). A size whose
estimate is over `--max-gb` is compiled (for the memory figures) but not
run; its line says `"skipped"` and why.

  python -m bench.bench_vocab [--pixels 65536] [--classes 150,847,3000,10000]
                              [--m 10] [--d 720] [--repeats 3] [--max-gb 12]
                              [--losses library|gather]
  python -m bench.bench_vocab --check   # the --losses variants agree (max |diff| per output)
  python -m bench.bench_vocab --whole_step=configs/demo.py --classes=150,10000 \
      --heads=protoseg,protoseg_auto,linear --set protoseg.num_prototypes=10 ...
      # the whole train step compiled (not run): XLA's memory per head

--heads: protoseg (all classes at once, today's head), protoseg_auto (the
head's automatic class chunks, `prototypes.resolve_class_chunk`),
protoseg_k<K> (chunks of K classes), linear.

--losses=gather measures the loss and max-over-M forms the library used
before 2026-11-28 (log_softmax + take_along_axis, jnp.max), for comparison.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp

from bench import harness
from protoseg_jax import heads, losses
from protoseg_jax.ops import l2_normalize
from protoseg_jax.prototypes import (chunked_retrieval, contrast_terms, learn_prototypes,
                                     max_over_prototypes, prototype_similarity,
                                     resolve_class_chunk, target_similarity)


def layer_norm(x, scale, bias, eps=1e-5):
  mu = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + eps) * scale + bias


def cross_entropy_gather(logits, labels):
  """The library's CE (no class weights, ignore = any id outside [0, K)) in its
  form before 2026-11-28: log_softmax, then the target's entry by
  `take_along_axis` (whose gradient is a scatter into a zero [N, K] buffer)."""
  k = logits.shape[-1]
  valid = (labels >= 0) & (labels < k)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[:, None], axis=-1)[:, 0]
  w = valid.astype(jnp.float32)
  return jnp.sum(w * nll) / jnp.maximum(jnp.sum(w), 1e-12)


def ppd_gather(proto_logits, proto_targets):
  """The library's PPD before 2026-11-28: s[target] by take_along_axis."""
  k = proto_logits.shape[-1]
  valid = (proto_targets >= 0) & (proto_targets < k)
  s = jnp.take_along_axis(proto_logits.astype(jnp.float32),
                          jnp.where(valid, proto_targets, 0)[:, None], axis=1)[:, 0]
  sq = jnp.where(valid, jnp.square(1.0 - s), 0.0)
  return jnp.sum(sq) / jnp.maximum(jnp.sum(valid), 1)


def ppc_ppd_library(similarity, proto_targets):
  """(PPC, PPD) as the head and the losses compute them: the similarity's
  per-pixel terms (`prototypes.contrast_terms`), then `ppc_ppd_from_target`."""
  lse, target = contrast_terms(similarity, proto_targets)
  return losses.ppc_ppd_from_target(lse, target, proto_targets)


def ppc_ppd_gather(similarity, proto_targets):
  """PPC and PPD in their forms before 2026-11-28 (CE and s[target] by gather)."""
  return (cross_entropy_gather(similarity, proto_targets),
          ppd_gather(similarity, proto_targets))


# (CE, (PPC, PPD), max over M): the library's (protoseg_jax.losses: logsumexp -
# masked pick; prototypes.max_over_prototypes: select at the argmax) and the
# forms it used before ("gather": log_softmax + take_along_axis, jnp.max).
LOSSES = {
    "library": (lambda lg, y: losses.cross_entropy(lg, y, ignore_index=-1),
                ppc_ppd_library, max_over_prototypes),
    "gather": (cross_entropy_gather, ppc_ppd_gather, lambda x: jnp.max(x, axis=-1)),
}


def protoseg_step(emb, protos, scale, bias, labels, rng, loss_impl="library", class_chunk=None):
  """class_chunk: None = all classes at once (today's head); 0 = the head's
  automatic rule (`prototypes.resolve_class_chunk`); k = chunks of k classes."""
  c, m, _ = protos.shape
  ce_fn, ppc_ppd_fn, max_m = LOSSES[loss_impl]
  chunk = c if class_chunk is None else resolve_class_chunk(class_chunk, emb.shape[0], c, m)
  if chunk < c:
    if loss_impl != "library":
      raise ValueError("class chunks come with the library's loss forms")

    def chunked_loss(emb, scale, bias):
      r = chunked_retrieval(emb, protos, chunk, labels=labels, with_lse=True)
      scores = jax.checkpoint(layer_norm)(r.scores, scale, bias)   # as the head's remat
      res = learn_prototypes(protos, emb, scores, labels, rng=rng, own_similarity=r.own,
                             ignore_index=-1)
      target = target_similarity(emb, protos, res.proto_targets)
      ppc, ppd = losses.ppc_ppd_from_target(r.lse, target, res.proto_targets)
      return ce_fn(scores, labels) + 0.01 * ppc + 0.001 * ppd, res.prototypes

    (loss, new_protos), grads = jax.value_and_grad(chunked_loss, argnums=(0, 1, 2),
                                                   has_aux=True)(emb, scale, bias)
    return loss, new_protos, grads

  def loss_fn(emb, scale, bias):
    sim = prototype_similarity(emb, protos)                    # [N, C*M]
    scores = layer_norm(max_m(sim.reshape(-1, c, m)), scale, bias)
    res = learn_prototypes(protos, emb, scores, labels, rng=rng, similarity=sim,
                           ignore_index=-1)
    ce = ce_fn(scores, labels)
    ppc, ppd = ppc_ppd_fn(sim, res.proto_targets)
    return ce + 0.01 * ppc + 0.001 * ppd, res.prototypes

  (loss, new_protos), grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(
      emb, scale, bias)
  return loss, new_protos, grads


def linear_step(emb, kernel, bias, labels, loss_impl="library"):
  ce_fn = LOSSES[loss_impl][0]

  def loss_fn(emb, kernel, bias):
    return ce_fn(emb @ kernel + bias, labels)
  return jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(emb, kernel, bias)


def head_params(head: str, c: int, m: int, d: int) -> int:
  """Learnable parameters of the library's head on D-dim features (shapes only)."""
  module = (heads.ProtoSegHead(c, num_prototypes=m, embed_dim=d) if head != "linear"
            else heads.LinearHead(c))
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 1, 1, d), jnp.float32))
  return harness.count_params(shapes["params"])


HEADS = {"protoseg": None, "protoseg_auto": 0, "linear": None}   # head -> class_chunk


def head_chunk(head: str):
  """class_chunk of a --heads name: HEADS, or protoseg_k<K> for chunks of K classes."""
  if head.startswith("protoseg_k"):
    return int(head[len("protoseg_k"):])
  return HEADS[head]


def run_size(head, c, n, m, d, repeats, max_bytes, loss_impl="library") -> dict:
  sds = jax.ShapeDtypeStruct
  f32, i32 = jnp.float32, jnp.int32
  chunk = head_chunk(head)
  if head.startswith("protoseg"):
    fn = jax.jit(functools.partial(protoseg_step, loss_impl=loss_impl, class_chunk=chunk))
    shapes = (sds((n, d), f32), sds((c, m, d), f32), sds((c,), f32), sds((c,), f32),
              sds((n,), i32), jax.eval_shape(lambda: jax.random.key(0)))
    rec = {"params_head": head_params("protoseg", c, m, d), "prototypes": c * m * d,
           "class_chunk": c if chunk is None else resolve_class_chunk(chunk, n, c, m)}
  else:
    fn = jax.jit(functools.partial(linear_step, loss_impl=loss_impl))
    shapes = (sds((n, d), f32), sds((d, c), f32), sds((c,), f32), sds((n,), i32))
    rec = {"params_head": head_params(head, c, m, d), "prototypes": 0}
  rec = {"head": head, "losses": loss_impl, "C": c, "M": m if head != "linear" else None, "D": d,
         "N": n, **rec}
  t0 = time.perf_counter()
  compiled = fn.lower(*shapes).compile()
  rec["compile_s"] = round(time.perf_counter() - t0, 2)
  rec.update(harness.compiled_memory(compiled))
  est = rec.get("memory_total_bytes")
  if est is None:   # no analysis: the similarity (protoseg) or logits and their gradients
    est = 4 * n * c * (3 * m if head != "linear" else 3)
  if est > max_bytes:
    rec["skipped"] = (f"estimated {est / 2**30:.1f} GiB > --max-gb {max_bytes / 2**30:.1f} GiB")
    return rec
  k = jax.random.split(jax.random.key(c), 4)
  emb = l2_normalize(jax.random.normal(k[0], (n, d)))
  labels = jax.random.randint(k[1], (n,), 0, c)
  if head != "linear":
    args = (emb, l2_normalize(jax.random.normal(k[2], (c, m, d))), jnp.ones((c,)),
            jnp.zeros((c,)), labels, k[3])
  else:
    args = (emb, 0.01 * jax.random.normal(k[2], (d, c)), jnp.zeros((c,)), labels)
  t = harness.time_fn(lambda: compiled(*args), warmup=1, runs=repeats)
  rec["step_ms"] = round(1000 * t.median_s, 1)
  rec["step_ms_min"] = round(1000 * t.min_s, 1)
  return rec


def whole_step(spec: str, c: int, head: str, overrides=()) -> dict:
  """The whole train step (`train.make_train_step`) of config `spec` with C
  classes and `head` ("protoseg": today's all-at-once head and CE,
  "protoseg_auto": the automatic class chunks and CE row blocks, "linear":
  the linear head with today's CE, "linear_auto": with the CE's row blocks),
  compiled for one device (nothing run): XLA's memory (`harness.compiled_memory`)."""
  from protoseg_jax import optim, sharding, train
  from protoseg_jax.models.segmentor import build_model
  auto = head.endswith("_auto")
  linear = head.startswith("linear")
  config = harness.load_config(spec, list(overrides))
  harness.apply_overrides(config, {
      "model.head": "linear" if linear else "proto",
      "protoseg.class_chunk": 0 if auto else c, "loss.label_rows": 0 if auto else 1 << 20})
  model = build_model(config, c)
  mesh = sharding.create_mesh(jax.devices()[:1])
  crop, b = tuple(int(v) for v in config.dataset.crop_size), int(config.batch_size)
  rep, data_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  state = jax.eval_shape(lambda: train.create_train_state(config, model, mesh, (1, *crop, 3))[0])
  tx, schedule = optim.create_optimizer(config, state.params)
  step = train.make_train_step(model, tx, schedule, config, mesh)
  batch = harness.abstract({"image": jax.ShapeDtypeStruct((b, *crop, 3), jnp.float32),
                            "label": jax.ShapeDtypeStruct((b, *crop), jnp.int32)}, data_sh)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = step.lower(harness.abstract(state, rep), batch).compile()
  p = config.protoseg
  n = b * (crop[0] // 4) * (crop[1] // 4)
  rec = {"what": "whole_train_step", "config": spec, "overrides": list(overrides), "head": head,
         "C": c, "batch": b, "crop": list(crop), "N_feature_pixels": n,
         "M": int(p.num_prototypes) if not linear else None,
         "class_chunk": (resolve_class_chunk(0, n, c, int(p.num_prototypes)) if auto else c)
         if not linear else None,
         "label_rows": losses.resolve_label_rows(0 if auto else 1 << 20, b, crop[0], crop[1], c),
         "compile_s": round(time.perf_counter() - t0, 1)}
  rec.update(harness.compiled_memory(compiled))
  return rec


def check_variants(n=512, c=40, m=10, d=32):
  """Max |difference| of every output (loss, new prototypes, gradients) of each
  --losses variant against "library", on one small random problem."""
  k = jax.random.split(jax.random.key(0), 4)
  emb = l2_normalize(jax.random.normal(k[0], (n, d)))
  labels = jax.random.randint(k[1], (n,), -1, c)            # -1: ignored pixels
  protos = l2_normalize(jax.random.normal(k[2], (c, m, d)))
  proto_args = (emb, protos, jnp.full((c,), 1.3), jnp.full((c,), 0.1), labels, k[3])
  lin_args = (emb, 0.1 * jax.random.normal(k[2], (d, c)), jnp.zeros((c,)), labels)
  out = {}
  for head, step, args in (("protoseg", protoseg_step, proto_args),
                           ("linear", linear_step, lin_args)):
    ref = jax.tree.leaves(jax.jit(functools.partial(step, loss_impl="library"))(*args))
    for impl in LOSSES:
      got = jax.tree.leaves(jax.jit(functools.partial(step, loss_impl=impl))(*args))
      out[f"{head}/{impl}"] = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(ref, got)]
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--pixels", type=int, default=65536, help="N pixels per step")
  ap.add_argument("--classes", default="150,847,3000,10000")
  ap.add_argument("--m", type=int, default=10)
  ap.add_argument("--d", type=int, default=720)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--max-gb", type=float, default=12.0,
                  help="run only sizes whose compiled memory_total_bytes (GiB) is below this")
  ap.add_argument("--heads", default="protoseg,linear")
  ap.add_argument("--losses", default="library", choices=sorted(LOSSES),
                  help="library: protoseg_jax's forms; gather: the forms before 2026-11-28")
  ap.add_argument("--check", action="store_true",
                  help="only compare the --losses variants on a small problem and exit")
  ap.add_argument("--whole_step", default=None,
                  help="a config (configs/<name>.py[:variant]): compile its whole train step "
                       "for each --classes and --heads (protoseg, protoseg_auto, linear, "
                       "linear_auto)")
  ap.add_argument("--set", action="append", default=[],
                  help="--whole_step config overrides, KEY=VALUE (repeatable)")
  a = ap.parse_args(argv)
  if a.check:
    print(json.dumps(check_variants()))
    return
  if a.whole_step:
    dev = jax.devices()[0]
    print(json.dumps({"date": datetime.date.today().isoformat(), "jax": jax.__version__,
                      "device": f"{dev.platform}:{dev.device_kind}"}), flush=True)
    for c in [int(x) for x in a.classes.split(",")]:
      for head in a.heads.split(","):
        print(json.dumps(whole_step(a.whole_step, c, head, a.set)), flush=True)
    return
  dev = jax.devices()[0]
  print(json.dumps({"date": datetime.date.today().isoformat(), "jax": jax.__version__,
                    "device": f"{dev.platform}:{dev.device_kind}", "machine": platform.machine(),
                    "cpus": os.cpu_count()}), flush=True)
  for c in [int(x) for x in a.classes.split(",")]:
    for head in a.heads.split(","):
      print(json.dumps(run_size(head, c, a.pixels, a.m, a.d, a.repeats, a.max_gb * 2**30,
                                a.losses)), flush=True)


if __name__ == "__main__":
  main()
