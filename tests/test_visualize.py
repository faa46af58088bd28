"""protoseg_jax.visualize, the model-facing parts of prototype_stats and
`trainer.run.load_run` (converted variables, a checkpoint) on a tiny model with random variables."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import data
from protoseg_jax import prototype_stats as diagnostics, sharding, train, visualize
from protoseg_jax.heads import proto_head_output
from protoseg_jax.models.segmentor import build_model
from protoseg_jax.trainer import run as runs

from conftest import make_tiny_config, random_variables, save_train_state

# Its module fixtures are built once: every test here runs on one worker.
pytestmark = pytest.mark.xdist_group("visualize")


@pytest.fixture(scope="module")
def tiny(demo_dir):
  """(config, DatasetMeta, model, random variables) of configs/demo.py:runlocal on the
  session's demo data."""
  config = make_tiny_config(demo_dir)
  meta = data.dataset_meta(config.dataset.name)
  model = build_model(config, meta.num_classes, meta.ignore_index)
  return config, meta, model, random_variables(train.abstract_variables(config, model))


def test_prototype_colors_are_distinct_shades():
  palette = [(0, 0, 0), (0, 0, 0), (255, 255, 255), (200, 10, 10)]
  colors = visualize.prototype_colors(palette, 5)
  assert colors.shape == (4, 5, 3) and colors.dtype == np.uint8
  assert len({tuple(c) for c in colors.reshape(-1, 3)}) == 20
  assert np.all(np.diff(colors[3, :, 0].astype(int)) > 0)        # dark -> light
  c, m = visualize.decode_prototype_map(colors, colors)
  np.testing.assert_array_equal(c, np.repeat(np.arange(4)[:, None], 5, 1))
  np.testing.assert_array_equal(m, np.repeat(np.arange(5)[None], 4, 0))


def test_pca_2d_matches_svd():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 6)) * np.array([5, 3, 1, 0.1, 0.1, 0.1])
  p = visualize.pca_2d(x)
  xc = x - x.mean(0)
  cov_eig = np.linalg.eigvalsh(xc.T @ xc)[::-1][:2]
  np.testing.assert_allclose(np.sum(p ** 2, axis=0), cov_eig, rtol=1e-6)


def test_embed_gives_the_heads_unit_embeddings_and_the_logits(tiny):
  config, meta, model, variables = tiny
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
  out = proto_head_output(model, variables, x)
  logits, emb = out.logits, out.embeddings
  np.testing.assert_allclose(logits, model.apply(variables, x, train=False).logits, atol=1e-5)
  assert emb.shape == (2, 16, 16, config.protoseg.embed_dim)
  np.testing.assert_allclose(jnp.linalg.norm(emb, axis=-1), 1.0, atol=1e-4)


def test_visualize_writes_decodable_pngs(tiny, tmp_path):
  from PIL import Image
  config, meta, model, variables = tiny
  image = np.random.default_rng(1).integers(0, 256, size=(70, 50, 3), dtype=np.uint8)
  paths = visualize.visualize(model, variables, image, config, meta.palette, meta.class_names,
                              str(tmp_path / "out"), name="img", classes=None, max_points=100)
  for p in paths.values():
    assert os.path.getsize(p) > 0 and p.endswith(".png")
  pmap = np.asarray(Image.open(paths["prototypes"]).convert("RGB"))
  x, (h, w) = visualize.preprocess(image, config)
  assert (h, w) == (96, 69)                              # the demo's eval_scale (96, 96)
  assert x.shape == (1, 96, 96, 3) and pmap.shape == image.shape   # at the image's own size
  protos = diagnostics.prototype_array(variables["prototypes"])
  c, m, _ = protos.shape
  colors = visualize.prototype_colors(meta.palette, m)
  cls, proto = visualize.decode_prototype_map(pmap, colors)
  assert np.all((cls >= 0) & (cls < c) & (proto >= 0) & (proto < m))
  # The map is the model's retrieval: predicted class, then its nearest prototype.
  out = proto_head_output(model, variables, jnp.asarray(x))
  want_c, want_m = visualize.retrieval(protos, out.embeddings[0, :24, :18], out.logits[0, :24, :18])
  rows, cols = (np.arange(70) * 24) // 70, (np.arange(50) * 18) // 50   # PyTorch nearest
  np.testing.assert_array_equal(cls, want_c[rows][:, cols])
  np.testing.assert_array_equal(proto, want_m[rows][:, cols])
  assert len(np.unique(cls * m + proto)) > 1


def test_usage_over_eval_batches_from_converted_variables(tiny, tmp_path):
  from protoseg_jax.trainer import checkpoints, input_pipeline
  config, meta, model, variables = tiny
  checkpoints.save_variables(variables, str(tmp_path / "conv"))
  run = runs.load_run(config=config, variables_dir=str(tmp_path / "conv"))
  assert run.classes.output_names == meta.class_names and run.step is None
  protos = diagnostics.prototype_array(run.variables["prototypes"])
  batches = input_pipeline.create_eval_iterator(config, sharding.batch_sharding(run.mesh))
  step = diagnostics.jit_usage_step(run.model, run.classes.label_lut(), run.mesh)
  counts, n = diagnostics.eval_usage_counts(step, run.variables, batches, num_batches=1)
  assert n == config.eval_batch_size
  assert counts.shape == protos.shape[:2] and counts.sum() > 0
  table = diagnostics.format_table(protos, meta.class_names, counts)
  assert table.splitlines()[0].startswith("class") and "background" in table


def test_load_model_variables_from_a_checkpoint(tiny, tmp_path):
  config, meta, model, variables = tiny
  save_train_state(tmp_path, config, variables, 3)
  run = runs.load_run(str(tmp_path), config)    # no optimizer state is read
  loaded = jax.device_get(run.variables)
  assert run.step == 3 and jax.tree.structure(loaded) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(FileNotFoundError, match="available: \\[3\\]"):
    runs.load_run(str(tmp_path), config, checkpoint_step=7)


def test_weights_that_are_no_model_of_the_config_are_one_line_errors(tiny, tmp_path):
  """--variables at a converted backbone (no decoder, head or prototypes) says so;
  another model's variables name the arrays; a workdir without weights has no
  doubled space in its message. All user errors of the command-line layer."""
  from protoseg_jax.trainer import checkpoints, cli
  config, meta, model, variables = tiny
  backbone = {"params": variables["params"]["backbone"],
              "batch_stats": variables["batch_stats"]["backbone"]}
  checkpoints.save_variables(backbone, str(tmp_path / "bb"))
  with pytest.raises(runs.WeightsDoNotFit, match=r"holds a backbone's weights only .*no "
                     r"decoder, head or prototypes.*--config.init_from="):
    runs.load_run(config=config, variables_dir=str(tmp_path / "bb"))
  other = jax.tree.map(lambda x: x, variables)
  other["params"]["head"]["proj_conv2"]["kernel"] = np.zeros((3, 3), np.float32)
  checkpoints.save_variables(other, str(tmp_path / "other"))
  with pytest.raises(runs.WeightsDoNotFit, match=r"does not fit the model of the config.*"
                     r"proj_conv2.*give the --config these weights were made for"):
    runs.load_run(config=config, variables_dir=str(tmp_path / "other"))
  assert runs.WeightsDoNotFit in cli.RUN_ERRORS and runs.RunNotFound in cli.RUN_ERRORS
  (tmp_path / "empty").mkdir()
  with pytest.raises(runs.RunNotFound) as e:
    runs.load_run(str(tmp_path / "empty"), config)
  assert "no checkpoint in " in str(e.value) and "  " not in str(e.value)
