"""Memory saved by backbone remat (config.model.remat): XLA's compiled estimate.

  export XLA_FLAGS=--xla_disable_hlo_passes=cse_barrier_expander   # on a CPU, see below
  python -m bench.bench_remat --config=configs/cityscapes_hrnet48_proto.py \
      --num_classes=19 --batch=2 --crop=512,1024 --remat=none,stage,block
  python -m bench.bench_remat --config=configs/cityscapes_swin_b_proto.py \
      --num_classes=19 --batch=2 --crop=512,1024 --remat=none,stage,block

For each remat setting, builds the run config's model and abstract train
state (shapes only: nothing is initialised or executed) and compiles, on one
device, for a batch of the given shape, either (`--what=grad`, default) the
gradient of the train step's loss (`train.train_loss`, the library's own:
train-mode forward with the prototype update, CE + PPC + PPD (+ aux),
`jax.value_and_grad` w.r.t. the params) or (`--what=step`) the whole library train step (`train.train_step`
jitted and donated as `train.make_train_step` does, optimizer update
included). Prints one JSON line per setting with XLA's memory analysis
(`bench.harness.compiled_memory`): temp bytes (the activations and other
scratch buffers beside arguments and outputs: what remat reduces), argument,
output and alias bytes, `memory_total_bytes` (argument + output + temp -
alias); the FLOPs from `cost_analysis()` (recomputation shows up there); the compile
seconds; and `residual_bytes`: what JAX itself keeps from the forward pass
for the backward pass of the loss (backend-independent, params included).
Nothing is run, so this works on a CPU for models whose step would take
minutes. `--residuals_only` skips the compile (XLA:CPU needs more than 24 GB
of host memory to compile HRNet-W48's step at 256x512) and reports only the
residual bytes and the gradient's matmul + conv FLOPs counted from its jaxpr
(`bench.harness.matmul_conv_flops`; recomputation included), from abstract tracing: seconds
for any model and size.

XLA:CPU undoes remat by default: its pipeline starts by expanding the
optimization barriers that `jax.checkpoint(prevent_cse=True)` puts around
the recomputation (pass `cse_barrier_expander`), after which common
subexpression elimination merges the recomputation with the forward pass
and every activation is stored again (temp bytes equal to, or above, those
without remat). Disable that pass (the export above) to see what remat does
on a backend that keeps the barriers. Each JSON line records XLA_FLAGS and
`barriers_kept`, the number of `opt-barrier` instructions left in the
compiled program (0 with remat on: the remat was undone).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import jax
import jax.numpy as jnp

from bench import harness
from protoseg_jax import sharding, train
from protoseg_jax.models.segmentor import build_model


def abstract_state(config, model, mesh, image_shape):
  """(TrainState of ShapeDtypeStructs, tx, schedule): create_train_state traced, not run."""
  found = {}

  def make():
    state, tx, schedule = train.create_train_state(config, model, mesh, image_shape)
    found.update(tx=tx, schedule=schedule)
    return state

  state = jax.eval_shape(make)
  return state, found["tx"], found["schedule"]


def loss_fn(config, model):
  """The train step's loss, `train.train_loss`, as (params, state, batch) ->
  (total, (parts, updates)): after warm-up (prototype learning and PPC/PPD
  on, no prototype pretraining), dropout and Gumbel keys fixed."""
  rngs = {"dropout": jax.random.key(0), "prototypes": jax.random.key(1)}

  def loss(params, state, batch):
    return train.train_loss(params, state.prototypes, state, batch, model=model, config=config,
                            learn=True, pretrain=False, rngs=rngs)

  return loss


def residual_bytes(config, model, state, batch) -> int:
  """Bytes JAX keeps from the forward pass for the backward pass of the
  step's loss (`loss_fn`): the leaves of `jax.vjp`'s backward function,
  traced abstractly (params included, the same for every remat setting).
  Backend-independent: what remat removes before XLA schedules anything."""
  loss = loss_fn(config, model)
  res = jax.eval_shape(
      lambda s, b: jax.tree.leaves(jax.vjp(lambda q: loss(q, s, b)[0], s.params)[1]),
      state, batch)
  return sum(math.prod(r.shape) * r.dtype.itemsize for r in res)


def measure(config, num_classes: int, batch: int, crop: tuple[int, int], remat: str,
            what: str = "grad", residuals_only: bool = False) -> dict:
  config = config.copy_and_resolve_references()
  config.model.remat = remat
  model = build_model(config, num_classes)
  mesh = sharding.create_mesh(jax.devices()[:1])
  state, tx, schedule = abstract_state(config, model, mesh, (1, crop[0], crop[1], 3))
  data = {"image": jax.ShapeDtypeStruct((batch, crop[0], crop[1], 3), jnp.float32),
          "label": jax.ShapeDtypeStruct((batch, crop[0], crop[1]), jnp.int32)}
  rec = {"backbone": config.model.backbone, "decoder": config.model.decoder,
         "dtype": config.model.dtype, "batch": batch, "crop": list(crop), "remat": remat}
  # The gradient of the step's loss and the variable updates, alone (the
  # state without its optimizer state, which the loss does not read).
  loss_state = state.replace(opt_state={}, proto_opt_state={})
  grad = jax.value_and_grad(loss_fn(config, model), argnums=0, has_aux=True)
  grad_args = (state.params, loss_state, data)
  with jax.set_mesh(mesh):
    residuals = residual_bytes(config, model, loss_state, data)
    if residuals_only:
      flops = harness.matmul_conv_flops(jax.make_jaxpr(grad)(*grad_args))["flops"]
      return {**rec, "what": "residuals", "residual_bytes": residuals,
              "residual_gib": round(residuals / 2**30, 3),
              "grad_gflops_jaxpr": round(flops / 1e9, 1)}
    t0 = time.time()
    if what == "step":   # the library's jitted, donated train step on this one device
      compiled = train.make_train_step(model, tx, schedule, config, mesh).lower(
          state, data).compile()
    else:
      compiled = jax.jit(grad).lower(*grad_args).compile()
  seconds = time.time() - t0
  flops = harness.xla_cost(compiled)
  return {
      **rec, "what": what, **harness.compiled_memory(compiled),
      "residual_bytes": residuals, "residual_gib": round(residuals / 2**30, 3),
      "gflops": round(flops / 1e9, 1) if flops is not None else None,
      "compile_s": round(seconds, 1),
      "barriers_kept": compiled.as_text().count("opt-barrier"),
      "device": jax.devices()[0].device_kind,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/cityscapes_hrnet48_proto.py")
  p.add_argument("--num_classes", type=int, default=None,
                 help="class count (default: the dataset's, bench.harness.NUM_CLASSES)")
  p.add_argument("--batch", type=int, default=2, help="batch on the one device")
  p.add_argument("--crop", default=None, help="h,w (default: the config's crop_size)")
  p.add_argument("--dtype", default=None, help="model.dtype (default: the config's)")
  p.add_argument("--what", default="grad", choices=("grad", "step"),
                 help="grad: the gradient of the step's loss alone; step: the whole train step")
  p.add_argument("--residuals_only", action="store_true",
                 help="only JAX's residual bytes (abstract tracing, seconds, any model size); "
                      "no XLA compile")
  p.add_argument("--remat", default="none,stage,block",
                 help="remat settings to compare, separated by ';' or ',' (e.g. 'none;block:3,4')")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a dotted config override, e.g. --set=model.aux_weight=0.0 (repeatable)")
  args = p.parse_args(argv)
  config = harness.load_config(args.config, {"model.dtype": args.dtype})
  harness.apply_overrides(config, args.set)
  crop = tuple(int(v) for v in args.crop.split(",")) if args.crop else tuple(config.dataset.crop_size)
  num_classes = harness.num_classes(config, args.num_classes)
  sep = ";" if ";" in args.remat else ","
  for remat in [r.strip() for r in args.remat.split(sep) if r.strip()]:
    rec = measure(config, num_classes, args.batch, crop, remat, args.what, args.residuals_only)
    rec["config"] = args.config
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  main()
