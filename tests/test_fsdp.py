"""FSDP: parameters and optimizer state sharded over the data axis by
config.sharding.rules give the same train step as the replicated state."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from protoseg_jax import sharding, train
from protoseg_jax.trainer import datasets, input_pipeline
from protoseg_jax.models.segmentor import build_model
from test_train import _decisive_labels


def test_fsdp_spec_picks_the_largest_divisible_dimension():
  assert sharding.fsdp_spec((3, 3, 64, 128), 8, 1) == P(None, None, None, "data")
  assert sharding.fsdp_spec((3, 3, 64, 12), 8, 1) == P(None, None, "data", None)
  assert sharding.fsdp_spec((7, 5), 8, 1) == P()               # nothing divisible
  assert sharding.fsdp_spec((64, 128), 8, 64 * 128 + 1) == P()  # below min_size
  assert sharding.fsdp_spec((64, 128), 1, 1) == P()


def test_rules_first_full_match_wins_and_optimizer_state_follows():
  mesh = sharding.create_mesh(jax.devices()[:4])
  params = {"backbone": {"conv": {"kernel": np.zeros((3, 3, 8, 16), np.float32),
                                  "bias": np.zeros((16,), np.float32)}},
            "head": {"proj": {"kernel": np.zeros((16, 8), np.float32)}}}
  rules = ((r"head/.*", "replicate"), (r".*kernel", "fsdp"))
  sh = sharding.param_shardings(params, mesh, rules, min_size=1)
  assert sh["backbone"]["conv"]["kernel"].spec == P(None, None, None, "data")
  assert sh["backbone"]["conv"]["bias"].spec == P()        # no rule matches: replicated
  assert sh["head"]["proj"]["kernel"].spec == P()          # first rule wins
  opt = optax.adamw(1e-3).init(params)
  osh = sharding.like_params(opt, params, sh, mesh)
  leaves = jax.tree_util.tree_flatten_with_path(osh)[0]
  kernels = [s for path, s in leaves if sharding.path_name(path).endswith("backbone/conv/kernel")]
  assert len(kernels) == 2 and all(s.spec == P(None, None, None, "data") for s in kernels)
  counts = [s for path, s in leaves if "count" in sharding.path_name(path)]
  assert counts and all(s.spec == P() for s in counts)
  with pytest.raises(ValueError, match="strategy 'shard'"):
    sharding.param_shardings(params, mesh, ((".*", "shard"),))


@pytest.mark.slow       # two inits and two compiles of the 8-device train step
def test_fsdp_train_step_equals_replicated(demo_dir, tiny_config):
  config = tiny_config(demo_dir, plumbing=True, **{
      "optim.name": "sgd", "optim.learning_rate": 0.05, "optim.warmup_steps": 0,
      "protoseg.assignment": "argmax"})
  config.model.decoder_kwargs.dropout = 0.0
  info = datasets.get_dataset_info(config)
  model = build_model(config, info.num_classes)
  mesh = sharding.create_mesh(jax.devices()[:8])
  data = sharding.batch_sharding(mesh)
  batch = jax.device_get(next(input_pipeline.create_train_iterator(config, data)))
  results = []
  for rules in (((".*", "replicate"),), ((".*", "fsdp"),)):
    config.sharding.rules = rules
    config.sharding.fsdp_min_size = 1
    state, tx, schedule = train.create_train_state(config, model, mesh, (1, 64, 64, 3))
    if not results:
      batch["label"] = _decisive_labels(model, jax.device_get(state.variables()),
                                        train.finish_batch(batch, config)["image"])
    specs = [s.spec for s in jax.tree.leaves(train.state_sharding(state.params))]
    opt_specs = [s.spec for s in jax.tree.leaves(train.state_sharding(state.opt_state))]
    if rules[0][1] == "fsdp":
      assert sum(s != P() for s in specs) > len(specs) // 2, specs
      assert sum(s != P() for s in opt_specs) == sum(s != P() for s in specs)   # SGD momentum
      # Prototypes and BN statistics stay replicated.
      for tree in (state.prototypes, state.batch_stats):
        assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(tree))
    else:
      assert all(s == P() for s in specs)
    step = train.make_train_step(model, tx, schedule, config, mesh,
                                 state_shardings=train.state_sharding(state))
    state, metrics = step(state, jax.device_put(batch, data))
    if rules[0][1] == "fsdp":   # the step keeps the layout
      assert [s.spec for s in jax.tree.leaves(train.state_sharding(state.params))] == specs
    results.append(jax.device_get((state, metrics)))
  (rep, m_rep), (fsdp, m_fsdp) = results
  for key in train.TRAIN_KEYS:
    np.testing.assert_allclose(m_fsdp[key], m_rep[key], rtol=1e-5, atol=1e-6)
  for tree in ("params", "batch_stats", "prototypes", "opt_state"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5),
                 getattr(rep, tree), getattr(fsdp, tree))
