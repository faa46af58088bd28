"""Checkpoint I/O: orbax train-state checkpoints, converted weights, `init_from`.

  checkpoint_manager(workdir, config)       orbax CheckpointManager of DIR/checkpoints
  restore_state(mngr, state, step=None)     a TrainState (or any pytree) from a step
  save_variables(variables, dst)            converted weights -> DST/variables
  load_variables(path)                      ... and back, as a dict of NumPy arrays
  init_from(config, variables)              model variables with `config.init_from` loaded in

The one module of the package that imports orbax; the library (heads, models,
losses, the train step) never needs it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from protoseg_jax import trees

CHECKPOINT_DIR = "checkpoints"   # under the workdir: DIR/checkpoints/<step>/
INIT_FROM_SCOPES = ("backbone", "all")


# --- train-state checkpoints --------------------------------------------------

def checkpoint_manager(workdir: str, config, *, read_only: bool = False) -> ocp.CheckpointManager:
  """Keeps the last `config.keep_checkpoints` steps; asynchronous saves unless read-only.

  Unless read-only, removes the unfinished save a killed run left behind
  (`<step>.orbax-checkpoint-tmp*`; never restored) when it opens.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=int(config.keep_checkpoints), create=not read_only,
      enable_async_checkpointing=not read_only, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                               options=options)


def save_state(mngr: ocp.CheckpointManager, step: int, state) -> bool:
  return mngr.save(step, args=ocp.args.StandardSave(state))


def restore_state(mngr: ocp.CheckpointManager, state, step: Optional[int] = None):
  """`state`'s tree (shapes, dtypes, shardings) restored from `step` (default: the latest)."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
  if step not in mngr.all_steps():
    raise FileNotFoundError(f"no checkpoint for step {step} in {mngr.directory}; "
                            f"available: {sorted(mngr.all_steps())}")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  except ValueError as error:
    older = _restore_older_layout(mngr, step, state, abstract)
    if older is None:
      raise error
    return older


def _stored_fields(mngr: ocp.CheckpointManager, step: int) -> set[str] | None:
  """Top-level keys of the train state stored at `step` (None if unreadable)."""
  try:
    with ocp.StandardCheckpointer() as ckptr:
      meta = ckptr.metadata(os.path.join(str(mngr.directory), str(step), "default"))
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    return set(tree) if isinstance(tree, dict) else None
  except (OSError, ValueError, TypeError):
    return None


def _restore_older_layout(mngr, step, state, abstract):
  """A checkpoint written before a TrainState field was added (e.g.
  `proto_opt_state`): restored when every field it lacks is empty in `state`
  (those keep `state`'s value); None when that is not the case."""
  stored = _stored_fields(mngr, step)
  names = [f.name for f in dataclasses.fields(state)] if dataclasses.is_dataclass(state) else None
  if stored is None or names is None or not stored <= set(names):
    return None
  missing = [n for n in names if n not in stored]
  if not missing or any(jax.tree.leaves(getattr(state, n)) for n in missing):
    return None
  restored = mngr.restore(step, args=ocp.args.StandardRestore(
      {n: getattr(abstract, n) for n in names if n in stored}))
  logging.info("Restored step %d written before the state had %s (kept empty)", step, missing)
  return state.replace(**restored)


# --- converted weights (python -m protoseg_jax.convert) -----------------------

def save_variables(variables: dict, dst: str):
  """Write converted variables with orbax (restorable by `load_variables`)."""
  dst = os.path.abspath(dst)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(dst, "variables"), variables, force=True)


def load_variables(path: str) -> dict:
  """Variables written by `save_variables` (DIR or DIR/variables)."""
  path = os.path.abspath(os.path.expanduser(path))
  sub = os.path.join(path, "variables")
  if os.path.isdir(sub):
    path = sub
  if not os.path.isdir(path):
    raise FileNotFoundError(f"converted weights {path!r} not found; create them with "
                            "`python -m protoseg_jax.convert --arch ARCH --src FILE --dst DIR`")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path)


# --- config.init_from ---------------------------------------------------------

def _fitted(want_tree, got_tree, what: str):
  """`got_tree` cast to the dtypes of `want_tree`, after checking paths and shapes agree."""
  trees.check_tree_shapes(got_tree, want_tree, f"{what} does not fit")
  return jax.tree.map(lambda x, y: jnp.asarray(y, x.dtype), want_tree, got_tree)


def init_from(config, variables: dict) -> dict:
  """`variables` (a model's init) with the weights of `config.init_from` loaded in.

  config.init_from_scope "backbone": the backbone's params/batch_stats are
  replaced (ImageNet weights); "all": every collection (a whole converted
  model, e.g. an official ProtoSeg checkpoint). Paths and shapes must match.
  """
  scope = config.init_from_scope
  if scope not in INIT_FROM_SCOPES:
    raise ValueError(f"config.init_from_scope must be one of {INIT_FROM_SCOPES}, got {scope!r}")
  loaded = load_variables(config.init_from)
  out = flax.core.unfreeze(variables)
  if scope == "all":
    return _load_whole_model(config, out, loaded)
  for col in ("params", "batch_stats"):
    if col not in loaded:
      continue
    if "backbone" not in out.get(col, {}):
      raise ValueError(f"init_from={config.init_from!r} has {col} but the model has no backbone {col}")
    src = loaded[col].get("backbone", loaded[col])
    out[col]["backbone"] = _fitted(
        out[col]["backbone"], src,
        f"init_from={config.init_from!r} ({col}) vs backbone {config.model.backbone!r}")
  logging.info("Initialised the backbone from %s", config.init_from)
  return out


def _load_whole_model(config, out: dict, loaded: dict) -> dict:
  """Every collection of the model from a whole converted model (init_from_scope='all')."""
  if set(loaded) != set(out):
    raise ValueError(f"init_from={config.init_from!r} holds collections {sorted(loaded)}, the "
                     f"model has {sorted(out)} (init_from_scope='all' needs a whole model, e.g. "
                     "from `python -m protoseg_jax.convert --arch protoseg_hrnet_w48`)")
  for col in out:
    out[col] = _fitted(out[col], loaded[col], f"init_from={config.init_from!r} ({col}) vs the model")
  logging.info("Initialised the whole model from %s", config.init_from)
  return out
