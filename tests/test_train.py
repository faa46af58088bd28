"""End-to-end trainer tests on the tiny demo dataset (8 simulated CPU devices)."""

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protoseg_jax import sharding, train
from protoseg_jax.trainer import datasets, faults, input_pipeline, loop
from protoseg_jax.models.segmentor import build_model


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
@pytest.mark.xdist_group("trained_run")
def test_train_and_evaluate_end_to_end(trained_run, tmp_path):
  """The session's tiny run (conftest.trained_run): trained without class 3
  (config.dataset.held_out_class), evaluated after each of its 2 steps:
  metrics, the workdir's own description, and the val/proto_* usage counted
  against the model's 5 classes (dataset label 4 is model class 3, ...) by a
  usage step compiled once per run."""
  from protoseg_jax import prototype_stats
  from protoseg_jax.heads import proto_head_output
  from protoseg_jax.trainer import run as runs
  config = trained_run.config
  workdir = trained_run.copy_to(tmp_path / "run")          # evaluated again below
  variables = trained_run.variables                         # of the state the run returned
  assert trained_run.step == 2
  recs = _records(workdir)
  train_recs = [r for r in recs if "train/loss" in r]
  val_recs = [r for r in recs if "val/mIoU" in r]
  assert [r["step"] for r in train_recs] == [1, 2]
  for key in train.TRAIN_KEYS:
    assert np.isfinite(train_recs[-1][key]), key
  assert train_recs[-1]["train/loss_ppc"] > 0 and train_recs[-1]["train/loss_ppd"] > 0
  for r in train_recs:                                    # the loop's own measure
    assert 0.0 <= r["train/input_wait_frac"] <= 1.0
  assert [r["step"] for r in val_recs] == [1, 2]
  for key in ("val/mIoU", "val/mAcc", "val/aAcc"):
    assert 0.0 <= val_recs[-1][key] <= 100.0
  assert val_recs[-1]["val/IoU"]["triangle"] == 0.0       # never predicted, scored as class 3
  assert trained_run.usage_traces == 1                    # 2 evaluations, 1 compilation
  # The workdir describes itself: the config and the run's classes.
  written = runs.read_config(workdir)
  assert written.to_json_best_effort(sort_keys=True) == config.to_json_best_effort(sort_keys=True)
  assert written.dataset.held_out_class == 3 and written.dataset.crop_size == (64, 64)
  classes = runs.read_classes(workdir)
  assert classes.class_ids == (0, 1, 2, 4, 5) and classes.held_out_class == 3
  assert classes.output_names == ("background", "disc", "box", "bar", "ring")
  # Prototype usage by the eval pixels, against the model's classes.
  val, m = val_recs[-1], config.protoseg.num_prototypes
  assert val["val/proto_images"] == 10 and 0 < val["val/proto_used_frac"] <= 1
  for key in ("val/proto_mean_cosine", "val/proto_max_cosine", "val/proto_distinct_frac"):
    assert np.isfinite(val[key]), key
  names = list(classes.output_names)
  assert list(val["val/proto_used"]) == list(val["val/proto_usage"]) == names
  # Reference counts: embeddings of the final state, labels of every eval image
  # at the embeddings' size (12x12 for the plumbing model's output stride 8:
  # every 8th pixel of 96x96, PyTorch nearest), mapped dataset -> model class
  # with a table written here.
  model = build_model(config, 5)
  lut = np.full(256, 255)
  lut[[0, 1, 2, 4, 5]] = np.arange(5)
  want = np.zeros((5, m), np.int64)
  want_looks = np.zeros((5, prototype_stats.MAX_LOOKS, m), np.int64)
  sh = sharding.batch_sharding(sharding.create_mesh())
  prototypes = variables["prototypes"]
  for batch in input_pipeline.create_eval_iterator(config, sh):
    emb = proto_head_output(model, variables, batch["image"]).embeddings
    stride = batch["label"].shape[1] // emb.shape[1]
    assert stride * emb.shape[1] == batch["label"].shape[1] == 96 and stride == 8
    labels = lut[np.asarray(batch["label"])[:, ::stride, ::stride]]
    labels[~np.asarray(batch["mask"])] = 255
    want += np.asarray(prototype_stats.usage_counts(prototypes, emb, labels))
    looks = np.asarray(batch["appearance"])[:, ::stride, ::stride]   # the demo records each look
    want_looks += np.asarray(prototype_stats.look_counts(prototypes, emb, labels, looks,
                                                         prototype_stats.MAX_LOOKS))
  for c, n in enumerate(names):
    if want[c].sum():
      np.testing.assert_allclose(val["val/proto_usage"][n], want[c] / want[c].sum(), atol=2e-6)
    else:
      assert val["val/proto_usage"][n] is None
  # val/proto_appearance_nmi: per class with two looks or more among its pixels.
  nmi = prototype_stats.appearance_nmi(want_looks)
  assert np.sum(~np.isnan(nmi)) >= 1
  for c, n in enumerate(names):
    got = val["val/proto_appearance_nmi_per_class"][n]
    assert (got is None) if np.isnan(nmi[c]) else got == pytest.approx(nmi[c], abs=1e-6), n
  assert val["val/proto_appearance_nmi"] == pytest.approx(np.nanmean(nmi), abs=1e-6)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
  # eval mode: evaluates the checkpoint and appends to the same file; without a
  # config it reads the workdir's own.
  metrics = loop.evaluate_checkpoint(config, workdir)
  again = loop.evaluate_checkpoint(None, workdir)
  recs2 = _records(workdir)
  assert len(recs2) == len(recs) + 2 and recs2[-1]["step"] == 2
  np.testing.assert_allclose(recs2[-2]["val/mIoU"], val_recs[-1]["val/mIoU"], atol=1e-6)
  assert recs2[-2]["val/proto_usage"] == recs2[-1]["val/proto_usage"] == val["val/proto_usage"]
  assert metrics["mIoU"] == again["mIoU"] == recs2[-1]["val/mIoU"]
  with pytest.raises(FileNotFoundError, match="step 7"):
    loop.evaluate_checkpoint(config, workdir, step=7)


@pytest.mark.slow
def test_resume_continues_exactly(demo_dir, tmp_path, tiny_config):
  straight = str(tmp_path / "straight")
  config = tiny_config(demo_dir, plumbing=True, num_train_steps=4)
  final = loop.train_and_evaluate(config, straight)
  # A run of 2 steps leaves exactly the step-2 checkpoint of the straight run
  # (same code path); restart from it in a fresh workdir and run 2 more. The
  # step-4 checkpoint is there too, damaged (truncated files): the run resumes
  # from step 2, the newest intact one, and keeps the damaged one aside.
  resumed = str(tmp_path / "resumed")
  os.makedirs(os.path.join(resumed, "checkpoints"))
  for step in ("2", "4"):
    shutil.copytree(os.path.join(straight, "checkpoints", step),
                    os.path.join(resumed, "checkpoints", step))
  data_files = glob.glob(os.path.join(resumed, "checkpoints", "4", "default", "d", "*"))
  assert data_files
  for f in data_files:
    with open(f, "r+b") as fh:
      fh.truncate(16)
  again = loop.train_and_evaluate(config, resumed)
  assert int(again.step) == 4
  assert os.path.isdir(os.path.join(resumed, "checkpoints_unreadable", "4"))   # kept
  assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["2", "4"]
  a = [r for r in _records(straight) if "train/loss" in r and r["step"] > 2]
  b = [r for r in _records(resumed) if "train/loss" in r]
  assert [r["step"] for r in b] == [3, 4]
  for ra, rb in zip(a, b):
    for key in train.TRAIN_KEYS:
      np.testing.assert_allclose(rb[key], ra[key], rtol=1e-6, atol=1e-6)
  for x, y in zip(jax.tree.leaves(final.prototypes), jax.tree.leaves(again.prototypes)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-6)
  for x, y in zip(jax.tree.leaves(final.params), jax.tree.leaves(again.params)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-6)


def _decisive_labels(model, variables, images, margin=1e-3):
  """Labels equal to the model's own train-mode prediction wherever its top-2
  logit margin exceeds `margin` (else ignore), nearest-upsampled to the image.

  With them every "correctly predicted" decision of prototype learning is far
  from a tie, so float noise of ~1e-6 (the all-reduce order of SyncBN and of
  the global sums differs between 1 and 8 devices) cannot flip a pixel into or
  out of the update set, and the sharded step must equal the single-device
  step to float precision. (With random labels at random init, near-ties of
  the LayerNorm'ed class scores do flip and move a prototype by (1-gamma) *
  one pixel's share: a genuine discrete difference, not an error.)
  """
  out, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
  top2 = np.sort(np.asarray(out.logits), axis=-1)[..., -2:]
  small = np.where(top2[..., 1] - top2[..., 0] > margin, np.asarray(out.logits).argmax(-1), 255)
  scale = images.shape[1] // small.shape[1]
  return np.repeat(np.repeat(small, scale, axis=1), scale, axis=2).astype(np.int32)


def test_sharded_train_step_equals_single_device(demo_dir, tiny_config):
  # SGD (the HRNet recipe): Adam's first steps are ~lr * sign(g), which turns
  # reduction-order rounding of near-zero gradients into lr-sized differences.
  config = tiny_config(demo_dir, plumbing=True, **{
      "optim.name": "sgd", "optim.learning_rate": 0.05, "optim.warmup_steps": 0,
      "protoseg.assignment": "argmax"})
  config.model.decoder_kwargs.dropout = 0.0
  info = datasets.get_dataset_info(config)
  model = build_model(config, info.num_classes)
  mesh1 = sharding.create_mesh(jax.devices()[:1])
  mesh8 = sharding.create_mesh(jax.devices()[:8])
  assert mesh8.devices.size == 8
  batch = jax.device_get(next(input_pipeline.create_train_iterator(
      config, sharding.batch_sharding(mesh1))))
  state0, tx, schedule = train.create_train_state(config, model, mesh1, (1, 64, 64, 3))
  state0 = jax.device_get(state0)
  batch["label"] = _decisive_labels(model, state0.variables(),
                                    train.finish_batch(batch, config)["image"])
  assert 0.3 < np.mean(batch["label"] != 255)
  results = []
  for mesh in (mesh1, mesh8):
    state = jax.device_put(state0, sharding.replicated(mesh))
    step = train.make_train_step(model, tx, schedule, config, mesh)
    b = jax.device_put(batch, sharding.batch_sharding(mesh))
    assert len(b["image"].sharding.device_set) == mesh.devices.size
    state, metrics = step(state, b)
    results.append(jax.device_get((state, metrics)))
  (s1, m1), (s8, m8) = results
  for key in train.TRAIN_KEYS:
    np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, atol=1e-6)
  # 3e-5: with the batch of the process-count-independent data order, one
  # 432-element leaf differs by up to 2.05e-5 (reduction order of SyncBN and
  # the gradient sums over 8 devices vs 1).
  for tree in ("params", "batch_stats", "prototypes"):
    for x, y in zip(jax.tree.leaves(getattr(s1, tree)), jax.tree.leaves(getattr(s8, tree))):
      np.testing.assert_allclose(y, x, atol=3e-5)
  # The step did learn prototypes and params.
  for tree in ("params", "prototypes"):
    moved = max(np.abs(np.asarray(a) - np.asarray(b)).max()
                for a, b in zip(jax.tree.leaves(getattr(s1, tree)),
                                jax.tree.leaves(getattr(state0, tree))))
    assert moved > 1e-4, tree


def _one_device_setup(config, batch=None):
  """(model, host batch, host initial state, run) on one device; run(state,
  batch) -> the host (state, metrics) after one train step. batch: the first
  train batch of the config's data (default: read here).

  The batch's images are float32 (`faults.float_images`: the same values as
  the pipeline's uint8, which the step casts to float32 first), so that the
  tests here that differ only in that (a NaN batch cannot be uint8) share one
  compiled step."""
  info = datasets.get_dataset_info(config)
  model = build_model(config, info.num_classes)
  mesh = sharding.create_mesh(jax.devices()[:1])
  if batch is None:
    batch = jax.device_get(faults.float_images(next(input_pipeline.create_train_iterator(
        config, sharding.batch_sharding(mesh)))))
  state0, tx, schedule = train.create_train_state(config, model, mesh, (1, 64, 64, 3))
  step = train.make_train_step(model, tx, schedule, config, mesh)

  def run(state, b):
    return jax.device_get(step(jax.device_put(state, sharding.replicated(mesh)),
                               jax.device_put(b, sharding.batch_sharding(mesh))))

  return model, batch, jax.device_get(state0), run


def _one_device_steps(config, num_steps, batch=None):
  model, batch, state0, run = _one_device_setup(config, batch)
  state, out = state0, []
  for _ in range(num_steps):
    state, metrics = run(state, batch)
    out.append((state, metrics))
  return model, batch, state0, out


def _protos(state):
  return np.asarray(state.prototypes["head"]["prototypes"])


@pytest.mark.slow
def test_prototype_warmup_modes_and_frozen_prototypes(demo_dir, tiny_config):
  base = {"optim.name": "sgd", "optim.learning_rate": 0.05, "optim.warmup_steps": 0,
          "protoseg.assignment": "argmax", "protoseg.warmup_iters": 1}
  # pretrain_prototype=True (official trainer): warm-up step 0 is one SGD
  # step of the normalised prototypes on the CE gradient; no PPC/PPD.
  config = tiny_config(demo_dir, plumbing=True, **base, **{"protoseg.pretrain_prototype": True})
  model, first_batch, state0, [(s1, m1), (s2, m2)] = _one_device_steps(config, 2)
  batch = train.finish_batch(first_batch, config)      # what the step's model sees
  # (loss_ppc/ppd are logged during warm-up too, with weight 0 in the total)
  np.testing.assert_allclose(m1["train/loss"], m1["train/loss_ce"], rtol=1e-6)
  assert m2["train/loss"] > m2["train/loss_ce"] and m2["train/loss_ppc"] > 0
  p0 = _protos(state0)
  p0n = p0 / np.linalg.norm(p0, axis=-1, keepdims=True)
  k_dropout, k_proto = jax.random.split(jax.random.fold_in(state0.rng, 0))

  def ce(protos):
    v = {**state0.variables(), "prototypes": {"head": {"prototypes": protos}}}
    out, _ = model.apply(v, batch["image"], batch["label"], train=True, update=False,
                         train_prototypes=True, mutable=["batch_stats", "prototypes"],
                         rngs={"dropout": k_dropout, "prototypes": k_proto})
    return train.losses.segmentation_loss(out.logits, batch["label"],
                                          class_weights=config.loss.class_weights,
                                          align_corners=config.model.align_corners)

  g = np.asarray(jax.grad(ce)(jnp.asarray(p0n)))
  o = config.optim
  lr = float(train.optim.learning_rate_schedule(o, config.num_train_steps)(0)) * o.head_lr_mult
  expect = p0n - lr * (g + o.weight_decay * p0n)     # SGD's first step: momentum buffer = grad
  assert np.abs(expect - p0n).max() > 1e-5
  np.testing.assert_allclose(_protos(s1), expect, atol=1e-6)
  assert jax.tree.leaves(s1.proto_opt_state)
  # After warm-up: no gradient, only the momentum update (unit norm again);
  # the prototype optimizer state stays as it was.
  np.testing.assert_allclose(np.linalg.norm(_protos(s2), axis=-1), 1.0, atol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.proto_opt_state), jax.tree.leaves(s2.proto_opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # Default (pretrain_prototype=False): frozen during warm-up, no extra state.
  # (The same data settings: the same first batch.)
  config = tiny_config(demo_dir, plumbing=True, **base)
  _, _, state0, [(s1, m1)] = _one_device_steps(config, 1, first_batch)
  np.testing.assert_array_equal(_protos(s1), _protos(state0))
  assert s1.proto_opt_state == {}
  np.testing.assert_allclose(m1["train/loss"], m1["train/loss_ce"], rtol=1e-6)

  # update_prototype=False (official ablation): PPC/PPD on, prototypes never move.
  config = tiny_config(demo_dir, plumbing=True, **{**base, "protoseg.warmup_iters": 0,
                                                    "protoseg.update_prototype": False})
  _, _, state0, [(s1, m1)] = _one_device_steps(config, 1, first_batch)
  np.testing.assert_array_equal(_protos(s1), _protos(state0))
  assert m1["train/loss_ppc"] > 0 and m1["train/loss_ppd"] > 0


def test_per_device_mean_train_step_on_8_devices(demo_dir, tiny_config):
  # The official multi-GPU prototype update inside the jitted train step:
  # every device ends the step with the same prototypes (the pmean).
  config = tiny_config(demo_dir, plumbing=True, **{
      "optim.name": "sgd", "optim.warmup_steps": 0, "protoseg.assignment": "argmax",
      "protoseg.prototype_update": "per_device_mean"})
  info = datasets.get_dataset_info(config)
  model = build_model(config, info.num_classes)
  mesh = sharding.create_mesh(jax.devices()[:8])
  state0, tx, schedule = train.create_train_state(config, model, mesh, (1, 64, 64, 3))
  p0 = np.asarray(jax.device_get(state0.prototypes["head"]["prototypes"]))
  batch = next(input_pipeline.create_train_iterator(config, sharding.batch_sharding(mesh)))
  step = train.make_train_step(model, tx, schedule, config, mesh)
  assert hasattr(step.jitted, "lower")
  # Ahead of time and outside any mesh context: the step's .lower enters its mesh.
  state, metrics = step.lower(state0, batch).compile()(state0, batch)
  protos = state.prototypes["head"]["prototypes"]
  shards = [np.asarray(s.data) for s in protos.addressable_shards]
  assert len(shards) == 8
  for s in shards[1:]:
    np.testing.assert_array_equal(s, shards[0])
  assert np.all(np.isfinite(shards[0])) and np.abs(shards[0] - p0).max() > 1e-5
  assert np.isfinite(float(metrics["train/loss"])) and float(metrics["train/loss_ppc"]) > 0


# ----------------------------------------------------------------------------
# Non-finite steps: skipped inside the jitted step, counted in the log; too
# many in a row stop the run with its last checkpoints intact.

TREES = ("params", "opt_state", "batch_stats", "prototypes", "proto_opt_state")


def _checkpoint(workdir, step):
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.join(workdir, "checkpoints", str(step), "default"))


def _tree(state, name):
  return state[name] if isinstance(state, dict) else getattr(state, name)


def _assert_same(a, b, what):
  """Every tree of TREES bit for bit."""
  for name in TREES:
    x, y = _tree(a, name), _tree(b, name)
    assert jax.tree.structure(x) == jax.tree.structure(y), (what, name)
    for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=f"{what}: {name}")


def _moved(a, b, name):
  return max(float(np.abs(np.asarray(u) - np.asarray(v)).max())
             for u, v in zip(jax.tree.leaves(_tree(a, name)), jax.tree.leaves(_tree(b, name))))


def _all_finite(state):
  return all(np.all(np.isfinite(np.asarray(x, np.float64)))
             for name in TREES for x in jax.tree.leaves(_tree(state, name)))


@pytest.mark.slow
def test_nan_steps_are_skipped_counted_and_a_streak_stops_the_run(demo_dir, tmp_path, tiny_config):
  # test_resume_continues_exactly's run, its images float32 (the loop's
  # `faults.float_images` with config.debug.nan_steps: one compiled step for
  # finite and NaN steps), all-NaN at steps 1, 3, 4 (config.debug.nan_steps:
  # loss, gradients, BatchNorm statistics and prototype update non-finite).
  # NaN at step 1 (alone: skipped, the run goes on) and at steps 3 and 4 (2 in
  # a row = the limit: the run stops at step 4, the last, without saving it).
  workdir = str(tmp_path / "run")
  config = tiny_config(demo_dir, plumbing=True, num_train_steps=4, checkpoint_every_steps=1,
                       eval_every_steps=1000, max_consecutive_nonfinite=2,
                       **{"debug.nan_steps": (1, 3, 4)})
  with pytest.raises(FloatingPointError, match=r"2 consecutive train steps \(3\.\.4\).*stopped at "
                                               r"step 4 without saving it.*latest checkpoint \(step 3 "):
    loop.train_and_evaluate(config, workdir)

  recs = {r["step"]: r for r in _records(workdir) if "train/lr" in r}
  assert sorted(recs) == [1, 2, 3, 4] and not [r for r in _records(workdir) if "val/mIoU" in r]
  assert [recs[s]["train/nonfinite_steps"] for s in range(1, 5)] == [1, 0, 1, 1]
  assert [recs[s]["train/nonfinite_steps_total"] for s in range(1, 5)] == [1, 1, 2, 3]
  for key in train.TRAIN_KEYS:   # the finite step's means
    assert np.isfinite(recs[2][key]), key
  for s in (1, 3, 4):   # a window of skipped steps only: no loss means at all
    assert not [k for k in recs[s] if k.startswith("train/loss")], recs[s]

  # Nothing saved at the stop; the checkpoints are restorable and finite.
  assert sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints"))) == [1, 2, 3]
  ckpt = {s: _checkpoint(workdir, s) for s in (1, 2, 3)}
  for s, c in ckpt.items():
    assert int(c["step"]) == s and _all_finite(c), s   # the step count advances over skipped steps
  _assert_same(ckpt[2], ckpt[3], "skipped step 3")
  for name in ("params", "prototypes", "batch_stats"):   # step 2 trained again
    assert _moved(ckpt[1], ckpt[2], name) > 0, name


def test_skipped_step_keeps_warmup_and_momentum_prototype_updates(demo_dir, tiny_config):
  # test_prototype_warmup_modes_and_frozen_prototypes' first config (and so its
  # compiled step): state.step 0 is warm-up (prototypes trained by gradient
  # with their own optimizer state), from state.step 1 on the momentum update
  # in the forward.
  config = tiny_config(demo_dir, plumbing=True, **{
      "optim.name": "sgd", "optim.learning_rate": 0.05, "optim.warmup_steps": 0,
      "protoseg.assignment": "argmax", "protoseg.warmup_iters": 1,
      "protoseg.pretrain_prototype": True})
  # float32 images for the finite step too (`_one_device_setup`): one program for
  # the three steps, as the loop does (`faults.float_images`)
  _, batch, state0, run = _one_device_setup(config)
  assert batch["image"].dtype == np.float32
  bad = jax.device_get(faults.nan_images(batch))
  assert np.all(np.isnan(bad["image"])) and np.array_equal(bad["label"], batch["label"])

  s1, m1 = run(state0, bad)    # warm-up step: skipped
  s2, m2 = run(s1, bad)        # momentum step: skipped
  s3, m3 = run(s2, batch)      # finite: learns
  assert [float(m["train/nonfinite"]) for m in (m1, m2, m3)] == [1.0, 1.0, 0.0]
  assert not np.isfinite(m1["train/loss"]) and np.isfinite(m3["train/loss"])
  assert [int(s.step) for s in (s1, s2, s3)] == [1, 2, 3]
  assert jax.tree.leaves(state0.proto_opt_state)
  _assert_same(state0, s1, "skipped warm-up step")
  _assert_same(state0, s2, "skipped momentum step")
  assert _all_finite(s3)
  for name in ("params", "prototypes", "batch_stats", "opt_state"):
    assert _moved(s2, s3, name) > 0, name


def test_log_window_means_over_finite_steps_and_streaks_across_windows():
  log = faults.SkippedSteps(limit=3)
  step = lambda loss, lr, bad: {"train/loss": loss, "train/lr": lr, "train/nonfinite": float(bad)}
  s = log.summary([step(1.0, 0.1, 0), step(np.nan, 0.2, 1), step(3.0, 0.3, 0), step(np.inf, 0.4, 1)],
                  last_step=4)
  assert s == {"train/loss": 2.0, "train/lr": 0.4, "train/nonfinite_steps": 2,
               "train/nonfinite_steps_total": 2}
  assert log.tripped is None
  # Steps 4, 5, 6 in a row (across windows): tripped, also with a finite step 7 after.
  s = log.summary([step(np.nan, 0.5, 1), step(np.nan, 0.6, 1), step(5.0, 0.7, 0)], last_step=7)
  assert log.tripped == (4, 6) and s["train/loss"] == 5.0
  assert s["train/nonfinite_steps"] == 2 and s["train/nonfinite_steps_total"] == 4
  assert "(4..6)" in log.message(7, "/w/checkpoints", 3)
  never = faults.SkippedSteps(limit=0)
  never.summary([step(np.nan, 0.1, 1)] * 50, last_step=50)
  assert never.tripped is None and never.total == 50


def test_one_trainer_per_workdir_and_a_killed_one_leaves_it_free(tmp_path, tiny_config):
  """A second trainer on a workdir that a live one holds refuses before
  building anything, naming the holder; a trainer killed with SIGKILL leaves
  the workdir free (the kernel drops its flock)."""
  import signal
  import subprocess
  import sys
  import time
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom protoseg_jax.trainer import faults\n"
       f"lock = faults.WorkdirLock({workdir!r})\nlock.acquire()\nprint('held', flush=True)\n"
       "time.sleep(300)"],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), stdout=subprocess.PIPE,
      text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    config = tiny_config(str(tmp_path / "tfds"))
    start = time.time()
    with pytest.raises(faults.WorkdirInUse, match=rf"in use by a running trainer: process "
                                                  rf"{holder.pid} on host"):
      loop.train_and_evaluate(config, workdir)
    assert time.time() - start < 5
    assert sorted(os.listdir(workdir)) == ["trainer.lock"]      # nothing else was started
    assert not os.path.exists(tmp_path / "tfds")
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with faults.WorkdirLock(workdir):                           # free again after the kill
    with pytest.raises(faults.WorkdirInUse):
      faults.WorkdirLock(workdir).acquire()                   # and held while we hold it


def test_input_wait_fraction_and_its_warning(monkeypatch):
  """train/input_wait_frac = time in next() / wall time since the last summary;
  over 10% it warns once, naming the knobs."""
  import time
  warnings = []
  monkeypatch.setattr(loop.logging, "warning", lambda msg, *a: warnings.append(msg % a))
  waits = loop.InputWait()
  with waits:
    time.sleep(0.05)
  time.sleep(0.02)
  frac = waits.summary()["train/input_wait_frac"]
  assert 0.3 < frac < 0.95          # 0.05 s of 0.07 s, with a loaded machine's slack
  assert len(warnings) == 1 and "num_parallel_calls" in warnings[0] and "cores" in warnings[0]
  with waits:
    time.sleep(0.03)
  assert waits.summary()["train/input_wait_frac"] > 0.9 and len(warnings) == 1   # once
  time.sleep(0.02)
  assert waits.summary()["train/input_wait_frac"] == 0.0


def test_progress_line_eta_counts_the_evaluations_still_to_come():
  """The ETA is the remaining steps at the train speed (compilation and
  evaluations excluded) plus the evaluations to come at their measured time;
  before the first evaluation they are named as a count."""
  now = [0.0]
  progress = loop.Progress(total=400, eval_every=200, clock=lambda: now[0])
  assert progress.line(1) is None                      # before the first step's end
  progress.started(1)
  now[0] = 4.9                                          # 49 steps in 4.9 s: 10 steps/s
  assert progress.line(50) == "step 50/400 (12%): 10.0 steps/s, ETA 35s + 2 evaluations"
  now[0] = 19.9                                         # steps 50..200 at 10 steps/s
  assert progress.line(200) == "step 200/400 (50%): 10.0 steps/s, ETA 20s + 2 evaluations"
  now[0] = 49.9
  progress.evaluated(30.0)                              # the step-200 evaluation: 30 s
  now[0] = 54.9                                         # 50 more steps in 5 s
  assert progress.line(250) == ("step 250/400 (62%): 10.0 steps/s, ETA 45s "
                                "(1 evaluation included)")   # 15 s of steps + 30 s
  now[0] = 69.9
  assert progress.line(400) == ("step 400/400 (100%): 10.0 steps/s, ETA 30s "
                                "(1 evaluation included)")   # the last step's evaluation
  # A later evaluation's time replaces the first's, which compiled the eval step.
  progress = loop.Progress(total=300, eval_every=100, clock=lambda: now[0])
  now[0] = 0.0
  progress.started(1)
  for step, seconds in ((100, 30.0), (200, 10.0)):
    now[0] += 9.9 if step == 100 else 10.0              # 10 steps/s
    progress.line(step)
    progress.evaluated(seconds)
  now[0] += 5.0
  assert progress.line(250) == ("step 250/300 (83%): 10.0 steps/s, ETA 15s "
                                "(1 evaluation included)")   # 5 s of steps + 10 s
  # No periodic evaluation: only the last step's.
  now[0] = 0.0
  progress = loop.Progress(total=100, eval_every=0, clock=lambda: now[0])
  progress.started(1)
  now[0] = 4.9
  assert progress.line(50) == "step 50/100 (50%): 10.0 steps/s, ETA 5s + 1 evaluation"
