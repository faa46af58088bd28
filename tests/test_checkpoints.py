"""protoseg_jax.trainer.checkpoints: train-state restore, also of checkpoints written
before a TrainState field existed."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protoseg_jax import train
from protoseg_jax.trainer import checkpoints


class _Config:
  keep_checkpoints = 2


def _state(proto_opt_state=None):
  return train.TrainState(
      step=jnp.asarray(3, jnp.int32), params={"w": jnp.arange(4.0)},
      batch_stats={"bn": {"mean": jnp.ones(2)}},
      prototypes={"head": {"prototypes": jnp.full((2, 3, 4), 0.5)}},
      opt_state={"mu": jnp.zeros(4)}, rng=jnp.asarray([1, 2], jnp.uint32),
      proto_opt_state={} if proto_opt_state is None else proto_opt_state)


def _save_as_older_layout(workdir, state, drop):
  """A checkpoint of `state` without the fields `drop` (as an older TrainState wrote it)."""
  mngr = checkpoints.checkpoint_manager(workdir, _Config())
  older = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name not in drop}
  checkpoints.save_state(mngr, int(state.step), older)
  mngr.wait_until_finished()
  mngr.close()


def test_restore_round_trip(tmp_path):
  state = _state()
  mngr = checkpoints.checkpoint_manager(str(tmp_path), _Config())
  checkpoints.save_state(mngr, 3, state)
  mngr.wait_until_finished()
  got = checkpoints.restore_state(mngr, _state())
  np.testing.assert_array_equal(got.params["w"], state.params["w"])
  with pytest.raises(FileNotFoundError, match="step 7"):
    checkpoints.restore_state(mngr, _state(), step=7)
  mngr.close()


def test_checkpoint_without_proto_opt_state_restores(tmp_path):
  saved = _state()
  _save_as_older_layout(str(tmp_path), saved, drop=("proto_opt_state",))
  template = jax.tree.map(jnp.zeros_like, saved)
  mngr = checkpoints.checkpoint_manager(str(tmp_path), _Config(), read_only=True)
  got = checkpoints.restore_state(mngr, template)
  assert got.proto_opt_state == {}
  np.testing.assert_array_equal(got.prototypes["head"]["prototypes"], 0.5)
  assert int(got.step) == 3


def test_older_checkpoint_is_refused_when_the_missing_field_holds_arrays(tmp_path):
  _save_as_older_layout(str(tmp_path), _state(), drop=("proto_opt_state",))
  template = _state(proto_opt_state={"mu": jnp.zeros((2, 3, 4))})
  mngr = checkpoints.checkpoint_manager(str(tmp_path), _Config(), read_only=True)
  with pytest.raises(ValueError):
    checkpoints.restore_state(mngr, template)


# ---------------------------------------------------------------------------
# A damaged latest checkpoint: the newest intact one is used, the bad one kept.


class _Keep5:
  keep_checkpoints = 5


def _saved_steps(workdir, steps):
  """Checkpoints of `_state()` with params w = step, at each of `steps`."""
  mngr = checkpoints.checkpoint_manager(workdir, _Keep5())
  for s in steps:
    checkpoints.save_state(mngr, s, _state().replace(step=jnp.asarray(s, jnp.int32),
                                                     params={"w": jnp.full(4, float(s))}))
  mngr.wait_until_finished()
  mngr.close()


def _damage(workdir, step, how):
  """Truncate every data file of a step, or remove them ("missing")."""
  import glob
  import os
  files = glob.glob(os.path.join(workdir, "checkpoints", str(step), "default", "d", "*"))
  assert files
  for f in files:
    if how == "missing":
      os.remove(f)
    else:
      with open(f, "r+b") as fh:
        fh.truncate(10)


@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, how, caplog):
  import os
  workdir = str(tmp_path)
  _saved_steps(workdir, (1, 2, 3))
  _damage(workdir, 3, how)
  mngr = checkpoints.checkpoint_manager(workdir, _Keep5(), read_only=True)
  with caplog.at_level("WARNING"):
    state, step, bad = checkpoints.restore_state_and_step(mngr, _state())
  assert (step, bad) == (2, [3]) and int(state.step) == 2
  np.testing.assert_array_equal(state.params["w"], 2.0)
  assert any("step 3" in r.getMessage() and "cannot be restored" in r.getMessage()
             for r in caplog.records)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "3"))   # kept, never deleted
  # Asked for by number, the damaged step is refused, not replaced.
  with pytest.raises(checkpoints.NoIntactCheckpoint, match="step 3 .* cannot be restored"):
    checkpoints.restore_state(mngr, _state(), step=3)
  mngr.close()
  # The model variables alone (evaluation, predict) fall back the same way.
  abstract = {"params": {"w": jax.ShapeDtypeStruct((4,), jnp.float32)},
              "batch_stats": {"bn": {"mean": jax.ShapeDtypeStruct((2,), jnp.float32)}}}
  variables, step = checkpoints.restore_model_variables(workdir, abstract)
  assert step == 2 and set(variables) == {"params", "batch_stats"}
  np.testing.assert_array_equal(variables["params"]["w"], 2.0)
  # A resumed run sets the damaged step aside (kept) so it can save it again.
  (moved,) = checkpoints.set_aside(workdir, [3])
  assert moved == os.path.join(workdir, checkpoints.CORRUPT_DIR, "3") and os.path.isdir(moved)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
  workdir = str(tmp_path)
  _saved_steps(workdir, (1, 2))
  for s in (1, 2):
    _damage(workdir, s, "truncated")
  mngr = checkpoints.checkpoint_manager(workdir, _Keep5(), read_only=True)
  with pytest.raises(checkpoints.NoIntactCheckpoint,
                     match=r"none of the checkpoints .* step 2: .*; step 1: "):
    checkpoints.restore_state(mngr, _state())
  mngr.close()
  with pytest.raises(checkpoints.NoIntactCheckpoint, match="no checkpoint in"):
    checkpoints.restore_state(checkpoints.checkpoint_manager(str(tmp_path / "empty"), _Keep5(),
                                                             read_only=True), _state())


def test_a_checkpoint_of_another_model_is_not_taken_for_a_damaged_one(tmp_path):
  _saved_steps(str(tmp_path), (1, 2))
  other = _state().replace(params={"w": jnp.zeros(5)})
  mngr = checkpoints.checkpoint_manager(str(tmp_path), _Keep5(), read_only=True)
  with pytest.raises(ValueError, match="not compatible with the stored shape"):
    checkpoints.restore_state(mngr, other)     # no fallback to step 1: it does not fit either
  mngr.close()


def test_config_json_from_an_earlier_version_reads_with_the_added_keys(tmp_path):
  """A workdir written before keys were added (issues 19, 20) still loads: the
  missing keys come back with the behaviour that run had; present ones stay."""
  import json
  from configs import demo
  from protoseg_jax.trainer import run as runs
  from protoseg_jax.validate import validate_config
  config = demo.get_config()
  tree = json.loads(runs.config_to_json(config))
  del tree["protoseg"]["class_chunk"], tree["protoseg"]["use_feat_norm"]
  del tree["loss"]["label_rows"], tree["eval"]["class_chunk"]
  del tree["dataset"]["finish_on_device"], tree["dataset"]["resize_on_device"]
  del tree["workdir_lock_lease_s"]
  tree["protoseg"]["ppc_temperature"] = 0.1                  # present: kept
  (tmp_path / runs.CONFIG_FILE).write_text(json.dumps(tree))
  back = runs.read_config(str(tmp_path))
  assert back.protoseg.class_chunk == 0 and back.protoseg.use_feat_norm is True
  assert back.loss.label_rows == 0 and back.eval.class_chunk == 0
  assert back.dataset.finish_on_device is False           # the host normalised
  assert back.dataset.resize_on_device is False           # and did openseg's bicubic
  assert back.protoseg.ppc_temperature == 0.1
  assert back.workdir_lock_lease_s == 60.0
  validate_config(back)
  for key in runs.ADDED_KEYS:                                 # each is a key of today's configs
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    assert leaf in node, key
