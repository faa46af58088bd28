"""Checkpoint I/O: orbax train-state checkpoints, converted weights, `init_from`.

  checkpoint_manager(workdir, config)       orbax CheckpointManager of DIR/checkpoints
  restore_state(mngr, state, step=None)     a TrainState (or any pytree) from a step; the
                                            newest intact one by default (an unreadable
                                            latest step is named and skipped, never deleted)
  restore_model_variables(workdir, abstract) the model's variables of a train-state
                                            checkpoint, without its optimizer state
  set_aside(workdir, steps)                 unreadable steps -> DIR/checkpoints_unreadable/
  save_variables(variables, dst)            converted weights -> DST/variables
  load_variables(path)                      ... and back, as a dict of NumPy arrays
  init_from(config, variables)              model variables with `config.init_from` loaded in

The module of the package that imports orbax; the library (heads, models,
losses, the train step) never needs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from protoseg_jax import trees
from protoseg_jax.trainer import paths
from protoseg_jax.validate import INIT_FROM_SCOPES

CHECKPOINT_DIR = "checkpoints"   # under the workdir: DIR/checkpoints/<step>/


# --- train-state checkpoints --------------------------------------------------

def checkpoint_manager(workdir: str, config, *, read_only: bool = False) -> ocp.CheckpointManager:
  """Keeps the last `config.keep_checkpoints` steps; asynchronous saves unless
  read-only (config may be None when read-only).

  Unless read-only, removes the unfinished save a killed run left behind
  (`<step>.orbax-checkpoint-tmp*`; never restored) when it opens.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if config is None else int(config.keep_checkpoints), create=not read_only,
      enable_async_checkpointing=not read_only, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(paths.resolve(workdir) / CHECKPOINT_DIR, options=options)


def save_state(mngr: ocp.CheckpointManager, step: int, state) -> bool:
  """Starts saving `state` as step `step` (asynchronously: the previous save's
  failure surfaces here). A bucket that keeps failing: paths.StoreError."""
  with _store_errors(mngr, "saving a checkpoint in"):   # this step's, or the one before
    return mngr.save(step, args=ocp.args.StandardSave(state))


def finish(mngr: ocp.CheckpointManager):
  """Waits for the save in flight and closes the manager (paths.StoreError as
  `save_state`)."""
  with _store_errors(mngr, "finishing the checkpoints in"):
    mngr.wait_until_finished()
    mngr.close()


@contextlib.contextmanager
def _store_errors(mngr: ocp.CheckpointManager, doing: str):
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except (orbax, tensorstore and TF types)
    if not paths.is_url(mngr.directory):
      raise
    raise paths.store_error(mngr.directory, doing, e) from e


class NoIntactCheckpoint(FileNotFoundError):
  """No checkpoint of a workdir (or not the one asked for) can be restored."""


# What orbax says when a readable checkpoint does not fit the template (another
# model or config): raised as it is, never taken for a damaged checkpoint.
_MISMATCH = ("not compatible with the stored shape", "Structure mismatch",
             "tree structures do not match")


def _does_not_fit(e: BaseException) -> bool:
  return isinstance(e, ValueError) and any(m in str(e) for m in _MISMATCH)


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:240] if text else ''}"


def restore_with_fallback(mngr: ocp.CheckpointManager, restore_one: Callable[[int], Any],
                          step: Optional[int] = None) -> tuple[Any, int, list[int]]:
  """`restore_one(step)` of the newest checkpoint that restores.

  step None: the latest; when it cannot be read (a truncated or missing
  file, a save that did not finish), a warning names it and the next older
  one is tried, and so on. The unreadable steps are left where they are
  (never deleted). An explicit `step` is restored or refused, never
  replaced by another. A readable checkpoint that does not fit the
  template (another model: shapes or tree structure) raises orbax's
  ValueError at once.

  Returns:
    (restored, its step, the newer steps that could not be read).
  Raises:
    NoIntactCheckpoint: no checkpoint at all, `step` is not there or cannot
      be read, or none can be read (each step named with its error).
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  where = str(mngr.directory)
  if not steps:
    raise NoIntactCheckpoint(f"no checkpoint in {where}")
  if step is not None:
    if step not in steps:
      raise NoIntactCheckpoint(f"no checkpoint for step {step} in {where}; available: "
                               f"{sorted(steps)}")
    try:
      return restore_one(step), step, []
    except Exception as e:  # pylint: disable=broad-except (any failure: unreadable)
      if _does_not_fit(e):
        raise
      raise NoIntactCheckpoint(f"checkpoint step {step} in {where} cannot be restored "
                               f"({_first_line(e)}); the intact steps may be others of "
                               f"{sorted(steps)}") from e
  bad = []
  for s in steps:
    try:
      restored = restore_one(s)
    except Exception as e:  # pylint: disable=broad-except
      if _does_not_fit(e):
        raise
      bad.append((s, _first_line(e)))
      logging.warning("checkpoint step %d in %s cannot be restored (%s): it is left as it is; "
                      "trying the previous checkpoint", s, where, bad[-1][1])
      continue
    if bad:
      logging.warning("restored step %d instead of the latest step %d of %s (unreadable: %s)",
                      s, steps[0], where, ", ".join(str(b) for b, _ in bad))
    return restored, s, [b for b, _ in bad]
  raise NoIntactCheckpoint(f"none of the checkpoints in {where} can be restored: " +
                           "; ".join(f"step {s}: {why}" for s, why in bad))


def restore_state(mngr: ocp.CheckpointManager, state, step: Optional[int] = None):
  """`state`'s tree (shapes, dtypes, shardings) restored from `step` (default:
  the newest intact one, `restore_with_fallback`)."""
  return restore_state_and_step(mngr, state, step)[0]


def restore_state_and_step(mngr: ocp.CheckpointManager, state, step: Optional[int] = None):
  """(state, step, unreadable newer steps) as `restore_with_fallback` says."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)

  def restore_one(s):
    try:
      return mngr.restore(s, args=ocp.args.StandardRestore(abstract))
    except ValueError as error:
      older = _restore_older_layout(mngr, s, state, abstract)
      if older is None:
        raise error
      return older

  return restore_with_fallback(mngr, restore_one, step)


MODEL_COLLECTIONS = ("params", "batch_stats", "prototypes")


def restore_model_variables(workdir: str, abstract: dict, step: Optional[int] = None
                            ) -> tuple[dict, int]:
  """The model's variables of a train-state checkpoint of DIR, without its
  optimizer state: (variables, step).

  abstract: the model's variables as ShapeDtypeStructs (their shardings are
  kept), e.g. `train.abstract_variables`; only its collections (of
  MODEL_COLLECTIONS) are read from the checkpoint (orbax partial restore).
  The newest intact step unless `step` (`restore_with_fallback`).
  """
  tree = {k: abstract[k] for k in MODEL_COLLECTIONS if abstract.get(k)}
  mngr = checkpoint_manager(workdir, None, read_only=True)

  def restore_one(s):
    path = mngr.directory / str(s) / "default"
    with ocp.PyTreeCheckpointer() as ckptr:
      return ckptr.restore(path, args=ocp.args.PyTreeRestore(
          tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree),
          partial_restore=True))

  try:
    restored, s, _ = restore_with_fallback(mngr, restore_one, step)
  finally:
    mngr.close()
  return {**{k: abstract[k] for k in abstract if k not in tree}, **restored}, s


CORRUPT_DIR = "checkpoints_unreadable"   # under the workdir


def set_aside(workdir: str, steps) -> list[str]:
  """Moves unreadable checkpoint steps to DIR/checkpoints_unreadable/<step>
  (kept, never deleted), so that a resumed run can save those steps again
  (`paths.move`: in a bucket, a copy and a delete)."""
  moved = []
  root = paths.resolve(workdir)
  for s in steps:
    src, dst = root / CHECKPOINT_DIR / str(s), root / CORRUPT_DIR / str(s)
    if dst.exists():
      dst = dst.parent / f"{s}.{int(time.time())}"
    paths.move(src, dst)
    logging.warning("unreadable checkpoint step %s moved to %s (kept; this run saves step %s "
                    "again when it gets there)", s, dst, s)
    moved.append(str(dst))
  return moved


def _stored_fields(mngr: ocp.CheckpointManager, step: int) -> set[str] | None:
  """Top-level keys of the train state stored at `step` (None if unreadable)."""
  try:
    with ocp.StandardCheckpointer() as ckptr:
      meta = ckptr.metadata(mngr.directory / str(step) / "default")
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
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(paths.resolve(dst) / "variables", variables, force=True)


def load_variables(path: str) -> dict:
  """Variables written by `save_variables` (DIR or DIR/variables)."""
  path = paths.resolve(path)
  if (path / "variables").is_dir():
    path = path / "variables"
  if not path.is_dir():
    raise FileNotFoundError(f"converted weights {str(path)!r} not found; create them with "
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
