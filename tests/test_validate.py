"""protoseg_jax.validate and main.py's config errors: every invalid value is
reported at once, naming the key, its value and what is allowed, before any
dataset is prepared or anything is compiled; every shipped config is valid.

The invalid configs are `configs/demo.py:runlocal` (the tests' tiny run:
2 steps, batch 8, 64x64 crops of the 96x96 demo scenes rescaled 0.75-1.5)
with one or a few values changed. Pure Python except the slow tests, which
run main.py as a user does (tests/tool_runner.py; each stops at its config
error, in seconds).
"""

from __future__ import annotations

import ast
import glob
import importlib
import os
import time

import jax
import pytest

import tool_runner

from configs import demo
from protoseg_jax import sharding
from protoseg_jax.trainer import datasets, loop
from protoseg_jax.validate import ConfigError, rescaled_size_bounds, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE = {"num_devices": 1, "num_processes": 1}
CATALOG = datasets.catalog()     # what the trainer passes: the checkout's dataset builders


def _config(overrides=None):
  """configs/demo.py:runlocal with dotted `overrides` set (type-checked as a
  --config.<key> override would be)."""
  config = demo.get_config("runlocal")
  for key, value in (overrides or {}).items():
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node[part]
    node[last] = value
  return config


def _problems(overrides=None, **counts) -> tuple[str, ...]:
  try:
    validate_config(_config(overrides), datasets=CATALOG, **{**ONE, **counts})
  except ConfigError as e:
    return e.problems
  return ()


# (overrides, how the one problem starts: key=value, a piece of what is allowed)
INVALID = [
    ({"protoseg.num_prototypes": 0}, "config.protoseg.num_prototypes=0:", ">= 1"),
    ({"protoseg.sinkhorn_epsilon": -1.0}, "config.protoseg.sinkhorn_epsilon=-1.0:", "> 0"),
    ({"protoseg.sinkhorn_epsilon": 0.0}, "config.protoseg.sinkhorn_epsilon=0.0:", "> 0"),
    ({"protoseg.gamma": 1.0}, "config.protoseg.gamma=1.0:", "[0, 1)"),
    ({"protoseg.gamma": -0.5}, "config.protoseg.gamma=-0.5:", "[0, 1)"),
    ({"protoseg.sinkhorn_iters": 0}, "config.protoseg.sinkhorn_iters=0:", ">= 1"),
    ({"protoseg.embed_dim": 0}, "config.protoseg.embed_dim=0:", ">= 1"),
    ({"protoseg.lambda_ppc": -0.01}, "config.protoseg.lambda_ppc=-0.01:", ">= 0"),
    ({"protoseg.lambda_ppd": -0.01}, "config.protoseg.lambda_ppd=-0.01:", ">= 0"),
    ({"protoseg.ppc_temperature": 0.0}, "config.protoseg.ppc_temperature=0.0:", "> 0"),
    ({"protoseg.class_chunk": -1}, "config.protoseg.class_chunk=-1:", ">= 0"),
    ({"loss.label_rows": -3}, "config.loss.label_rows=-3:", ">= 0"),
    ({"protoseg.assignment": "gumble"}, "config.protoseg.assignment='gumble':",
     "'gumbel', 'argmax'"),
    ({"protoseg.proj_norm_axis": "height"}, "config.protoseg.proj_norm_axis='height':",
     "'channel', 'width'"),
    ({"protoseg.proto_init": "normal"}, "config.protoseg.proto_init='normal':",
     "'trunc_normal_2std', 'timm_trunc_normal'"),
    ({"protoseg.prototype_update": "local"}, "config.protoseg.prototype_update='local':",
     "'global', 'per_device_mean'"),
    ({"protoseg.warmup_iters": 3}, "config.protoseg.warmup_iters=3:", "num_train_steps=2"),
    ({"optim.warmup_steps": 3}, "config.optim.warmup_steps=3:", "num_train_steps=2"),
    ({"optim.name": "adam"}, "config.optim.name='adam':", "'sgd', 'adamw'"),
    ({"optim.learning_rate": 0.0}, "config.optim.learning_rate=0.0:", "> 0"),
    ({"optim.momentum": 1.0}, "config.optim.momentum=1.0:", "[0, 1)"),
    ({"optim.weight_decay": -1e-4}, "config.optim.weight_decay=-0.0001:", ">= 0"),
    ({"optim.b2": 1.5}, "config.optim.b2=1.5:", "[0, 1)"),
    ({"optim.min_lr": 1.0}, "config.optim.min_lr=1.0:", "<= optim.learning_rate"),
    ({"num_train_steps": 0}, "config.num_train_steps=0:", ">= 1"),
    ({"batch_size": 0}, "config.batch_size=0:", ">= 1"),
    ({"eval_batch_size": 0}, "config.eval_batch_size=0:", ">= 1"),
    ({"log_every_steps": 0}, "config.log_every_steps=0:", ">= 1"),
    ({"eval_every_steps": 0}, "config.eval_every_steps=0:", ">= 1"),
    ({"checkpoint_every_steps": -5}, "config.checkpoint_every_steps=-5:", ">= 1"),
    ({"keep_checkpoints": 0}, "config.keep_checkpoints=0:", ">= 1"),
    ({"max_eval_batches": 0}, "config.max_eval_batches=0:", "-1"),
    ({"init_from_scope": "everything"}, "config.init_from_scope='everything':",
     "'backbone', 'all'"),
    ({"dataset.name": "pascal_voc"}, "config.dataset.name='pascal_voc':", "cityscapes, coco"),
    ({"dataset.train_split": "training"}, "config.dataset.train_split='training':",
     "train, validation"),
    ({"dataset.augmentation": "randaug"}, "config.dataset.augmentation='randaug':",
     "'mmseg', 'openseg'"),
    ({"dataset.augmentation": "openseg"}, "config.dataset.augmentation='openseg':",
     "cat_max_ratio=1.0"),
    ({"dataset.input_order": "rbg"}, "config.dataset.input_order='rbg':", "'rgb', 'bgr'"),
    # demo: scale (96, 96) x ratio_range max 1.5 -> images of at most 144x144.
    ({"dataset.crop_size": (256, 256)}, "config.dataset.crop_size=(256, 256):", "144"),
    ({"dataset.crop_size": (145, 64)}, "config.dataset.crop_size=(145, 64):", "144"),
    ({"dataset.crop_size": ("1,2,x",)}, "config.dataset.crop_size=('1,2,x',):",
     "two positive integers"),
    ({"dataset.crop_size": (64, 0)}, "config.dataset.crop_size=(64, 0):", "two positive integers"),
    # openseg: 96 x 1.5 / sqrt(0.9) and 96 x 1.5 x sqrt(1.1): at most 151x151.
    ({"dataset.augmentation": "openseg", "dataset.cat_max_ratio": 1.0,
      "dataset.crop_size": (152, 100)}, "config.dataset.crop_size=(152, 100):", "151x151"),
    ({"dataset.ratio_range": (2.0, 0.5)}, "config.dataset.ratio_range=(2.0, 0.5):",
     "0 < lo <= hi"),
    ({"dataset.flip_prob": 1.5}, "config.dataset.flip_prob=1.5:", "[0, 1]"),
    ({"dataset.std": (1.0, 0.0, 1.0)}, "config.dataset.std=(1.0, 0.0, 1.0):", "> 0"),
    ({"dataset.cat_max_ratio": 0.0}, "config.dataset.cat_max_ratio=0.0:", "> 0"),
    ({"dataset.shuffle_buffer": 0}, "config.dataset.shuffle_buffer=0:", ">= 1"),
    ({"dataset.eval_canvas": (96,)}, "config.dataset.eval_canvas=(96,):", "two positive"),
    ({"model.backbone": "hrnet_w99"}, "config.model.backbone='hrnet_w99':", "hrnet_tiny"),
    ({"model.decoder": "deeplab"}, "config.model.decoder='deeplab':", "fcn, hrnet, segformer"),
    ({"model.head": "mlp"}, "config.model.head='mlp':", "proto, linear"),
    ({"model.dtype": "float16"}, "config.model.dtype='float16':", "'float32', 'bfloat16'"),
    ({"model.aux_weight": -0.4}, "config.model.aux_weight=-0.4:", ">= 0"),
    ({"model.remat": "blocks"}, "config.model.remat='blocks':", "'none', 'stage' or 'block'"),
    ({"model.remat": "block:1;stage:1"}, "config.model.remat='block:1;stage:1':",
     "each stage named at most once"),
    ({"sharding.rules": ((".*", "shard"),)}, "config.sharding.rules=", "'replicate', 'fsdp'"),
    ({"sharding.rules": (("backbone/(", "fsdp"),)}, "config.sharding.rules=", "does not compile"),
    ({"sharding.rules": ()}, "config.sharding.rules=():", "non-empty sequence"),
    ({"sharding.fsdp_min_size": -1}, "config.sharding.fsdp_min_size=-1:", ">= 0"),
    ({"max_consecutive_nonfinite": -1}, "config.max_consecutive_nonfinite=-1:", "0: never stop"),
    ({"eval.proto_usage_batches": -2}, "config.eval.proto_usage_batches=-2:", "-1: every"),
    ({"predict.max_pixels": -5}, "config.predict.max_pixels=-5:", "0: no limit"),
    ({"debug.nan_steps": (0, 2)}, "config.debug.nan_steps=(0, 2):", "step numbers >= 1"),
    ({"eval.mode": "sliding"}, "config.eval.mode='sliding':", "'whole', 'slide'"),
    ({"eval.mode": "slide", "eval.stride": (32, 32)}, "config.eval.slide_crop=None:",
     "needs eval.slide_crop and eval.stride"),
    ({"eval.mode": "slide", "eval.slide_crop": (32, 32), "eval.stride": (48, 32)},
     "config.eval.stride=(48, 32):", "must not exceed eval.slide_crop=(32, 32)"),
    ({"eval.resize": "nearest"}, "config.eval.resize='nearest':", "'bicubic'"),
    ({"eval.resize": "bicubic", "eval.mode": "slide", "eval.slide_crop": (32, 32),
      "eval.stride": (32, 32)}, "config.eval.resize='bicubic':", "eval.mode='whole'"),
    ({"eval.merge": "max"}, "config.eval.merge='max':", "'mean_softmax', 'sum_logits'"),
    ({"eval.scales": ()}, "config.eval.scales=():", "non-empty"),
    ({"eval.scales": (1.0, -0.5)}, "config.eval.scales=(1.0, -0.5):", "> 0"),
    ({"eval.log_every_batches": 0}, "config.eval.log_every_batches=0:", ">= 1"),
    ({"eval.class_chunk": -1}, "config.eval.class_chunk=-1:", ">= 0"),
    ({"loss.class_weights": (1.0, 2.0)}, "config.loss.class_weights=(1.0, 2.0):",
     "dataset 'demo': 6 numbers, got 2"),
    ({"loss.class_weights": (1.0,) * 5 + (-1.0,)}, "config.loss.class_weights=(1.0,", ">= 0"),
    ({"dataset.held_out_class": 3, "loss.class_weights": (1.0,) * 6},
     "config.dataset.held_out_class=3:", "cannot be combined with loss.class_weights"),
]


@pytest.mark.parametrize("overrides,start,allowed", INVALID,
                         ids=[" ".join(f"{k}={v!r}" for k, v in c[0].items()) for c in INVALID])
def test_invalid_value_is_one_problem_naming_key_value_and_what_is_allowed(overrides, start,
                                                                          allowed):
  problems = _problems(overrides)
  assert len(problems) == 1, problems
  assert problems[0].startswith(start), problems[0]
  assert allowed in problems[0], problems[0]


def test_the_tiny_run_and_edge_values_are_valid():
  assert _problems() == ()
  # A crop up to the largest rescaled image (96 x 1.5 = 144); smaller images are padded.
  assert _problems({"dataset.crop_size": (144, 144)}) == ()
  # Non-square scale (long 200, short 100) at ratio <= 1: landscape 100x200 or portrait 200x100.
  rect = {"dataset.scale": (200, 100), "dataset.ratio_range": (0.5, 1.0)}
  assert _problems({**rect, "dataset.crop_size": (200, 64)}) == ()
  assert _problems({**rect, "dataset.crop_size": (64, 200)}) == ()
  (problem,) = _problems({**rect, "dataset.crop_size": (150, 150)})
  assert "at most 200 px on its long side and 100 px on its short side" in problem
  # openseg's aspect jitter reaches 151 where mmseg's rescale stops at 144.
  assert _problems({"dataset.augmentation": "openseg", "dataset.cat_max_ratio": 1.0,
                    "dataset.crop_size": (151, 151)}) == ()
  assert _problems({"eval.mode": "slide", "eval.slide_crop": (64, 64), "eval.stride": (48, 48),
                    "protoseg.warmup_iters": 2, "optim.warmup_steps": 0}) == ()
  assert _problems({"max_eval_batches": -1, "protoseg.embed_dim": None}) == ()


def test_rescaled_size_bounds():
  assert rescaled_size_bounds((2048, 1024), (0.5, 2.0)) == ((2048, 4096), (4096, 2048))
  assert rescaled_size_bounds((1024, 2048), (0.5, 2.0)) == ((2048, 4096), (4096, 2048))
  # openseg: h x 2 / sqrt(0.9), w x 2 x sqrt(1.1) of the (long, short) image.
  assert rescaled_size_bounds((2048, 1024), (0.5, 2.0), "openseg", (0.9, 1.1)) == (
      (2158, 4295), (4317, 2147))


def test_every_problem_is_reported_together():
  with pytest.raises(ConfigError) as e:
    validate_config(_config({"protoseg.num_prototypes": 0, "protoseg.sinkhorn_epsilon": -1.0,
                             "optim.name": "adam", "dataset.crop_size": (500, 500),
                             "batch_size": 12}), num_devices=8, num_processes=1)
  keys = [p.split("=", 1)[0] for p in e.value.problems]
  assert sorted(keys) == sorted([
      "config.protoseg.num_prototypes", "config.protoseg.sinkhorn_epsilon", "config.optim.name",
      "config.dataset.crop_size", "config.batch_size"]), e.value.problems
  assert str(e.value) == "; ".join(e.value.problems)
  assert isinstance(e.value, ValueError)


def test_batch_size_must_split_over_devices_and_processes_naming_the_nearest():
  (problem,) = _problems({"batch_size": 12}, num_devices=8)
  assert problem == ("config.batch_size=12: must be a multiple of the number of devices (8) and "
                     "of the number of processes (1); the nearest that are: 8 or 16")
  (problem,) = _problems({"batch_size": 4}, num_devices=8)
  assert problem.endswith("the nearest that are: 8")
  # 2 processes of 3 devices each: multiples of 6.
  (problem,) = _problems({"batch_size": 8}, num_devices=6, num_processes=2)
  assert problem.endswith("6 or 12"), problem
  # Evaluation pads a short batch to the devices: only the processes must divide it.
  assert _problems({"eval_batch_size": 6}, num_devices=4) == ()
  (problem,) = _problems({"eval_batch_size": 3}, num_devices=2, num_processes=2)
  assert problem == ("config.eval_batch_size=3: must be a multiple of the number of processes (2); "
                     "the nearest that are: 2 or 4")


def test_check_batch_size_gives_the_validators_message():
  mesh = sharding.create_mesh(jax.devices()[:3])
  with pytest.raises(ValueError) as e:
    sharding.check_batch_size(8, mesh)
  (problem,) = _problems({"batch_size": 8}, num_devices=3, num_processes=jax.process_count())
  assert str(e.value) == problem
  assert "6 or 9" in problem
  sharding.check_batch_size(9, mesh)  # a multiple passes


def test_the_trainer_validates_before_preparing_data(tmp_path):
  """train_and_evaluate / evaluate_checkpoint (the library entry points) check too."""
  config = _config({"protoseg.num_prototypes": 0, "dataset.data_dir": str(tmp_path / "tfds")})
  with pytest.raises(ConfigError, match=r"config\.protoseg\.num_prototypes=0"):
    loop.evaluate_checkpoint(config, str(tmp_path / "workdir"))
  assert not os.listdir(tmp_path)


def _shipped_configs() -> list[tuple[str, str | None]]:
  names = sorted(os.path.splitext(os.path.basename(p))[0]
                 for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
  out = []
  for name in names:
    if name in ("__init__", "default", "datasets", "models"):
      continue
    module = importlib.import_module(f"configs.{name}")
    out += [(name, None)] + [(name, v) for v in getattr(module, "VARIANTS", ())]
  return out


@pytest.mark.parametrize("name,variant", _shipped_configs())
def test_every_shipped_config_and_variant_is_valid(name, variant):
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  validate_config(config, datasets=CATALOG, **ONE)


def _literal(path: str, name: str):
  """The literal value of module-level `name = ...` in protoseg_jax/<path> (not imported)."""
  with open(os.path.join(ROOT, "protoseg_jax", path)) as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
      return ast.literal_eval(node.value)
  raise AssertionError(f"{path} has no {name}")


def test_the_trainers_vocabulary_is_defined_once():
  """validate.py holds the trainer's config vocabulary; the trainer's modules
  read it from there (no copies kept in sync by hand)."""
  from protoseg_jax import validate
  from protoseg_jax.convert import official
  from protoseg_jax.trainer import augment, checkpoints
  assert augment.AUGMENTATIONS is validate.AUGMENTATIONS
  assert augment.INPUT_ORDERS is validate.INPUT_ORDERS is official.INPUT_ORDERS
  assert checkpoints.INIT_FROM_SCOPES is validate.INIT_FROM_SCOPES
  for path, name in (("trainer/augment.py", "AUGMENTATIONS"), ("trainer/augment.py", "INPUT_ORDERS"),
                     ("trainer/checkpoints.py", "INIT_FROM_SCOPES"),
                     ("convert/official.py", "INPUT_ORDERS")):
    with pytest.raises(AssertionError, match="has no"):
      _literal(path, name)                     # not assigned there


def test_without_the_dataset_catalog_the_dataset_checks_are_skipped():
  """The library (no TFDS, no dataset builders) validates everything else."""
  config = _config({"dataset.name": "pascal_voc", "loss.class_weights": (1.0, 2.0)})
  validate_config(config, **ONE)             # nothing known of the datasets: not checked
  with pytest.raises(ConfigError, match="unknown dataset"):
    validate_config(config, datasets=CATALOG, **ONE)


@pytest.mark.slow
@pytest.mark.parametrize("override,named", [
    ("--config.protoseg.num_prototypes=0",
     "config.protoseg.num_prototypes=0: must be an integer >= 1"),
    ("--config.protoseg.num_protoypes=5", "config.protoseg has no key 'num_protoypes' "
                                          "(did you mean 'num_prototypes'?)"),
    ("--config.batch_size=abc", "--config.batch_size=abc: must be an integer"),
])
def test_main_reports_a_config_error_in_one_line_and_exits_2(tmp_path, override, named):
  start = time.time()
  done = tool_runner.run(
      ["main.py", "--config=configs/demo.py:runlocal", f"--workdir={tmp_path / 'workdir'}",
       f"--config.dataset.data_dir={tmp_path / 'tfds'}", override], timeout=300,
      log_compiles=True)
  seconds = time.time() - start
  assert done.returncode == 2, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  errors = [line for line in done.stderr.splitlines() if "error:" in line]
  assert len(errors) == 1 and errors[0].startswith("main.py: config error: "), done.stderr[-3000:]
  assert named in errors[0], errors[0]
  # Nothing compiled (JAX_LOG_COMPILES logs every compilation), no data, no workdir.
  assert "Compiling" not in done.stderr, done.stderr[-3000:]
  assert not os.listdir(tmp_path), os.listdir(tmp_path)
  print(f"{override}: exit 2 after {seconds:.1f}s")
