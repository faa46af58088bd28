"""protoseg_jax.checkpoints: train-state restore, also of checkpoints written
before a TrainState field existed."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protoseg_jax import checkpoints, train


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
