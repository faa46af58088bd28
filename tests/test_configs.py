"""Every run config in configs/ loads, has the keys the tools rely on, and
builds its model (shapes only: jax.eval_shape of init on a tiny image, no
compilation, no dataset needed).

For each configs/*.py (except __init__ and default): get_config() and
get_config(v) for every v in the module's VARIANTS. Proto configs must have a
`prototypes` collection [C, M, D] (M = config.protoseg.num_prototypes, D the
ProtoSeg embedding); linear configs none. `<name>_linear.py` must equal
`<name>_proto.py` (or `<name>.py`) except config.model.head, for every variant.
A run config imports only configs/default.py, the recipe modules
(configs/datasets.py, configs/models.py) and, for a `_linear` run, its own
proto twin: never another run.
"""

from __future__ import annotations

import ast
import functools
import glob
import importlib
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import data
from protoseg_jax.models.segmentor import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs")
# Shared modules of configs/ that are not runs: the base and the recipes.
SHARED = ("default", "datasets", "models")
TOOL_KEYS = ("num_train_steps", "batch_size", "eval_every_steps", "checkpoint_every_steps",
             "log_every_steps", "seed")
# The run grid of the paper (file stems); each must exist with its twin.
GRID = ("cityscapes_hrnet48", "ade20k_hrnet48", "ade20k_r101_fcn", "ade20k_swin",
        "ade20k_mit_b2", "ade20k_mit_b5", "cityscapes_swin_b", "cityscapes_mit_b5",
        "coco_stuff164k_hrnet48", "coco_stuff164k_swin_b")
TINY = (1, 64, 64, 3)


def config_names() -> list[str]:
  names = sorted(os.path.splitext(os.path.basename(p))[0]
                 for p in glob.glob(os.path.join(CONFIG_DIR, "*.py")))
  return [n for n in names if n not in ("__init__", *SHARED)]


def load(name: str):
  return importlib.import_module(f"configs.{name}")


def num_classes_of(name: str) -> int:
  """Class count of dataset `name` from its builder (no dataset is prepared)."""
  return data.dataset_meta(name).num_classes


def cases() -> list[tuple[str, str | None]]:
  out = []
  for name in config_names():
    out.append((name, None))
    out.extend((name, v) for v in getattr(load(name), "VARIANTS", ()))
  return out


@functools.lru_cache(maxsize=None)
def abstract_variables(model) -> dict:
  """Shapes of model.init's variables (Segmentor is hashable: cached per model)."""
  init = functools.partial(model.init, train=False)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  return jax.eval_shape(init, rngs, jax.ShapeDtypeStruct(TINY, jnp.float32))


def flat(config: ml_collections.ConfigDict) -> dict:
  out = {}

  def walk(prefix, d):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(f"{prefix}{k}.", v)
      else:
        out[f"{prefix}{k}"] = v

  walk("", config.to_dict())
  return out


def test_grid_files_exist():
  names = set(config_names())
  missing = [f"{g}_{h}" for g in GRID for h in ("proto", "linear") if f"{g}_{h}" not in names]
  assert not missing, f"configs missing from the grid: {missing}"


def build_cases():
  """cases() but "distinct": its model is the base's with two head settings
  (test_distinct_variant_sets_only_the_study_setting), not built again."""
  return [(n, v) for n, v in cases() if v != "distinct"]


@pytest.mark.parametrize("name", [n for n in config_names() if n.endswith("_proto")])
def test_distinct_variant_sets_only_the_study_setting(name):
  """Every real-data ProtoSeg run has `:distinct` (issue 20's setting); it
  changes the assignment and the PPC temperature and nothing else; without it
  the run keeps the official values."""
  base, distinct = flat(load(name).get_config()), flat(load(name).get_config("distinct"))
  diff = sorted(k for k in base if base[k] != distinct[k])
  assert diff == ["protoseg.assignment", "protoseg.ppc_temperature"], diff
  assert (base["protoseg.assignment"], base["protoseg.ppc_temperature"]) == ("gumbel", 1.0)
  assert (distinct["protoseg.assignment"], distinct["protoseg.ppc_temperature"]) == ("argmax", 0.1)


@pytest.mark.parametrize("name,variant", build_cases())
def test_config_builds(name, variant):
  config = load(name).get_config(variant)
  for key in TOOL_KEYS:
    assert key in config, f"{name}:{variant} lacks config.{key}"
    value = config[key]
    assert isinstance(value, int) and not isinstance(value, bool), (name, key, value)
    assert value >= (0 if key == "seed" else 1), (name, key, value)
  ds = config.dataset
  assert ds.name in data.DATASETS, f"{name}: unknown dataset {ds.name!r}"
  assert config.eval_batch_size >= 1
  for key in ("crop_size", "eval_canvas", "eval_label_canvas"):
    hw = tuple(ds[key])
    assert len(hw) == 2 and all(int(s) > 0 for s in hw), (name, key, hw)
  if config.eval.mode == "slide":
    crop, stride = tuple(config.eval.slide_crop), tuple(config.eval.stride)
    assert all(0 < s <= c for s, c in zip(stride, crop)), (name, crop, stride)
    assert all(c <= h for c, h in zip(crop, ds.eval_canvas)), (name, crop, ds.eval_canvas)
  else:
    assert config.eval.mode == "whole", (name, config.eval.mode)
  if config.loss.class_weights is not None:
    assert len(config.loss.class_weights) == num_classes_of(ds.name)

  num_classes = num_classes_of(ds.name)
  model = build_model(config, num_classes)
  variables = abstract_variables(model)
  assert "params" in variables
  for part in ("backbone", "decoder", "head"):
    assert part in variables["params"], f"{name}:{variant}: no {part} params"
  assert ("aux_head" in variables["params"]) == bool(config.model.aux_head)

  head = config.model.head
  assert head in ("proto", "linear"), (name, head)
  if head == "proto":
    protos = variables["prototypes"]["head"]["prototypes"]
    d_in = variables["params"]["head"]["proj_conv1"]["kernel"].shape[-2]
    d = config.protoseg.embed_dim or d_in
    assert protos.shape == (num_classes, config.protoseg.num_prototypes, d), (name, protos.shape)
    if ds.name != "demo":
      # The official settings of every grid run: D = decoder width, M = 10, ...
      assert d == d_in, f"{name}: embed_dim {d} != decoder width {d_in}"
      p = config.protoseg
      assert (p.num_prototypes, p.gamma, p.sinkhorn_iters, p.sinkhorn_epsilon,
              p.lambda_ppc, p.lambda_ppd) == (10, 0.999, 3, 0.05, 0.01, 0.001), name
  else:
    assert "prototypes" not in variables, f"{name}:{variant} (linear head) has prototypes"
    kernel = variables["params"]["head"]["classifier"]["kernel"]
    assert kernel.shape[-1] == num_classes


@pytest.mark.parametrize("name,variant",
                         [c for c in cases() if c[0].endswith("_linear")])
def test_linear_twin_differs_only_in_head(name, variant):
  stem = name[:-len("_linear")]
  twin = stem + "_proto" if stem + "_proto" in config_names() else stem   # demo_linear -> demo
  if twin not in config_names():
    pytest.fail(f"{name} has no {stem}_proto.py (or {stem}.py) twin")
  linear = flat(load(name).get_config(variant))
  proto = flat(load(twin).get_config(variant))
  diff = sorted(k for k in set(linear) | set(proto) if linear.get(k) != proto.get(k))
  assert diff == ["model.head"], f"{name} vs {twin} ({variant}) differ in {diff}"
  assert linear["model.head"] == "linear" and proto["model.head"] == "proto"


def test_recipes():
  """A few facts of the published recipes that a config edit could silently break."""
  c = load("ade20k_swin_proto").get_config()
  assert c.model.backbone == "swin_base_patch4_window12_384"       # Swin-B is the default
  assert load("ade20k_swin_proto").get_config("swin_t").model.backbone == "swin_tiny_patch4_window7_224"
  assert (c.optim.name, c.optim.learning_rate, c.optim.weight_decay, c.optim.warmup_steps,
          c.optim.poly_power, c.optim.no_decay_norms_biases) == ("adamw", 6e-5, 0.01, 1500, 1.0, True)
  assert (c.num_train_steps, c.batch_size, tuple(c.dataset.crop_size)) == (160_000, 16, (512, 512))
  c = load("cityscapes_hrnet48_proto").get_config()
  assert c.model.backbone_kwargs.fusion == "bilinear_align_corners" and c.model.align_corners
  assert (c.num_train_steps, c.batch_size, tuple(c.dataset.crop_size)) == (80_000, 8, (512, 1024))
  np.testing.assert_allclose(c.loss.class_weights[:3], (0.8373, 0.9180, 0.8660))
  c = load("cityscapes_mit_b5_proto").get_config()
  assert (c.eval.mode, tuple(c.eval.slide_crop), tuple(c.eval.stride)) == (
      "slide", (1024, 1024), (768, 768))
  assert c.optim.head_lr_mult == 10.0 and tuple(c.dataset.crop_size) == (1024, 1024)
  for name in ("ade20k_mit_b2_proto", "ade20k_mit_b5_proto"):
    assert load(name).get_config().model.backbone == name.split("_", 1)[1][:-len("_proto")]
  with pytest.raises(ValueError, match="unknown config variant"):
    load("ade20k_swin_proto").get_config("swin_xl")


def _config_imports(name: str) -> set[str]:
  """The configs/ modules that configs/<name>.py imports (parsed, not run)."""
  with open(os.path.join(CONFIG_DIR, f"{name}.py")) as f:
    tree = ast.parse(f.read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == "configs":
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("configs."):
      out.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("configs."))
  return out


@pytest.mark.parametrize("name", config_names() + [s for s in SHARED if s != "default"])
def test_configs_import_no_other_run(name):
  """Runs build on default.py and the recipes, never on another run (a `_linear`
  run on its own proto twin only); the recipes never import a run."""
  allowed = set(SHARED)
  if name.endswith("_linear"):
    stem = name[:-len("_linear")]
    allowed.add(stem + "_proto" if stem + "_proto" in config_names() else stem)
  imported = _config_imports(name)
  if name not in SHARED:
    assert "default" in imported, f"configs/{name}.py does not start from configs/default.py"
  assert imported <= allowed, f"configs/{name}.py imports {sorted(imported - allowed)}"


def test_default_uses_the_one_imagenet_statistics():
  from configs import default  # pylint: disable=g-import-not-at-top
  from protoseg_jax import models  # pylint: disable=g-import-not-at-top
  ds = default.get_config().dataset
  assert tuple(ds.mean) == models.IMAGENET_MEAN and tuple(ds.std) == models.IMAGENET_STD
