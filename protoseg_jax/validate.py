"""Run-config validation: every invalid value reported at once, before anything runs.

    validate_config(config)              # raises ConfigError listing every problem

`main.py` calls it before the mode dispatch and `train.train_and_evaluate` /
`train.evaluate_checkpoint` at their start, so a wrong value stops the run
before any dataset is prepared and before anything is compiled, with a
message naming the key, its value and what is allowed:

    config.protoseg.num_prototypes=0: must be an integer >= 1 (prototypes per class)

Unknown keys and values of the wrong Python type never reach this module
from the command line: main.py locks the config (`config_flags`,
lock_config=True) and reports those flag errors itself. Keys this module
does not know are left alone (every key is set in configs/default.py).

Pure Python: no compilation, no dataset, no TensorFlow. What it knows of the
datasets (their names, splits and class counts, which dataset.name, the
splits, loss.class_weights and dataset.held_out_class are checked against)
comes from the caller (`datasets=`: the trainer passes
`protoseg_jax.trainer.datasets.catalog()`); without it those checks are
skipped.

The config vocabulary of the trainer's edges is defined here, once
(AUGMENTATIONS, INPUT_ORDERS, INIT_FROM_SCOPES), and read by those modules.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Optional, Sequence

from typing import Mapping

from protoseg_jax import heads, inference, prototypes, sharding
from protoseg_jax.classes import DatasetMeta
from protoseg_jax.models import list_backbones
from protoseg_jax.models.layers import remat_plan
from protoseg_jax.models.segmentor import DECODERS, DTYPES, HEADS
from protoseg_jax.optim import OPTIMIZERS

# The trainer's vocabulary (its modules import TensorFlow or orbax and read these).
AUGMENTATIONS = ("mmseg", "openseg")       # config.dataset.augmentation (trainer.augment)
INPUT_ORDERS = ("rgb", "bgr")              # config.dataset.input_order (and convert's)
INIT_FROM_SCOPES = ("backbone", "all")     # config.init_from_scope (trainer.checkpoints)


_INVALID = object()   # returned by the checks for a missing or invalid value


class ConfigError(ValueError):
  """A run config with invalid values.

  Attributes:
    problems: one line per problem, each `config.<key>=<value>: <what is
      allowed>`; str(error) joins them with '; '.
  """

  def __init__(self, problems: Sequence[str]):
    self.problems = tuple(problems)
    super().__init__("; ".join(self.problems))


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return (isinstance(v, numbers.Real) and not isinstance(v, bool)
          and math.isfinite(float(v)))


def _show(v) -> str:
  if isinstance(v, list):
    v = tuple(v)
  return repr(v)


def _choices(options) -> str:
  return "must be one of " + ", ".join(repr(o) for o in options)


class _Checker:
  """Collects problems; each check returns the value, or _INVALID when it is not valid."""

  def __init__(self, config):
    self.config = config
    self.problems: list[str] = []

  def add(self, key: str, value, allowed: str):
    self.problems.append(f"config.{key}={_show(value)}: {allowed}")

  def get(self, key: str):
    node = self.config
    for part in key.split("."):
      try:
        node = node[part]
      except (KeyError, TypeError, AttributeError):
        self.problems.append(f"config.{key} is missing: every key is set in configs/default.py")
        return _INVALID
    return node

  def integer(self, key: str, lo: Optional[int] = None, hi: Optional[int] = None,
              allowed: Optional[str] = None, none_ok: bool = False):
    v = self.get(key)
    if v is _INVALID or (v is None and none_ok):
      return v
    if not (_is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)):
      if allowed is None:
        bounds = [f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else ""]
        allowed = "must be an integer " + " and ".join(b for b in bounds if b)
        allowed += " (or None)" if none_ok else ""
      self.add(key, v, allowed.rstrip())
      return _INVALID
    return int(v)

  def number(self, key: str, lo: Optional[float] = None, hi: Optional[float] = None, *,
             lo_open: bool = False, hi_open: bool = False, note: str = ""):
    """A finite number in the interval lo..hi (open or closed at each end)."""
    v = self.get(key)
    if v is _INVALID:
      return v
    ok = _is_real(v)
    if ok and lo is not None:
      ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
      ok = v < hi if hi_open else v <= hi
    if not ok:
      if lo is not None and hi is not None:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        allowed = f"must be a number in {left}{lo}, {hi}{right}"
      elif lo is not None:
        allowed = f"must be a number {'>' if lo_open else '>='} {lo}"
      elif hi is not None:
        allowed = f"must be a number {'<' if hi_open else '<='} {hi}"
      else:
        allowed = "must be a finite number"
      self.add(key, v, allowed + (f" ({note})" if note else ""))
      return _INVALID
    return float(v)

  def boolean(self, key: str):
    v = self.get(key)
    if v is _INVALID:
      return v
    if not isinstance(v, bool):
      self.add(key, v, "must be True or False")
      return _INVALID
    return v

  def string(self, key: str, none_ok: bool = False):
    v = self.get(key)
    if v is _INVALID or (v is None and none_ok):
      return v
    if not isinstance(v, str):
      self.add(key, v, "must be a string" + (" or None" if none_ok else ""))
      return _INVALID
    return v

  def choice(self, key: str, options: Sequence[str]):
    v = self.get(key)
    if v is _INVALID:
      return v
    if not isinstance(v, str) or v not in options:
      self.add(key, v, _choices(options))
      return _INVALID
    return v

  def pair(self, key: str, what: str = "(h, w)", none_ok: bool = False):
    """Two positive integers."""
    v = self.get(key)
    if v is _INVALID or (v is None and none_ok):
      return v
    if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(s) and s >= 1 for s in v)):
      self.add(key, v, f"must be two positive integers {what}" + (" or None" if none_ok else ""))
      return _INVALID
    return (int(v[0]), int(v[1]))

  def interval(self, key: str):
    """(lo, hi) with 0 < lo <= hi."""
    v = self.get(key)
    if v is _INVALID:
      return v
    if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_real(s) for s in v)
            and 0 < v[0] <= v[1]):
      self.add(key, v, "must be (lo, hi) with 0 < lo <= hi")
      return _INVALID
    return (float(v[0]), float(v[1]))

  def numbers(self, key: str, n: Optional[int] = None, *, positive: bool = False,
              none_ok: bool = False, what: str = ""):
    """A sequence of finite numbers (>= 0, or > 0 when positive), of length n if given."""
    v = self.get(key)
    if v is _INVALID or (v is None and none_ok):
      return v
    ok = isinstance(v, (tuple, list)) and len(v) >= 1 and all(_is_real(s) for s in v)
    ok = ok and all(s > 0 if positive else s >= 0 for s in v)
    ok = ok and (n is None or len(v) == n)
    if not ok:
      count = f"{n} numbers" if n is not None else "a non-empty sequence of numbers"
      self.add(key, v, f"must be {count}, each {'> 0' if positive else '>= 0'}{what}"
               + (" (or None)" if none_ok else ""))
      return _INVALID
    return tuple(float(s) for s in v)


def _valid(*values) -> bool:
  return all(v is not _INVALID for v in values)


# ---------------------------------------------------------------------------
# The training crop against the rescaled images.


def rescaled_size_bounds(scale, ratio_range, augmentation: str = "mmseg",
                         aspect_range=(1.0, 1.0)) -> tuple[tuple[int, int], tuple[int, int]]:
  """The largest rescaled training image, (h, w), in landscape and in portrait.

  The rule of `validate_config`'s crop check. With (long, short) =
  (max(scale), min(scale)) and r = ratio_range[1]:

  * augmentation "mmseg" (augment.train_transform): the keep-ratio rescale
    fits an image's long side into floor(long * r) and its short side into
    floor(short * r), whatever the image; so a rescaled image is at most
    (floor(short * r), floor(long * r)) in landscape, transposed in portrait.
  * augmentation "openseg" (augment.openseg_transform): the image's own size
    is multiplied (h by r / sqrt(aspect), w by r * sqrt(aspect)), and
    dataset.scale is not used by the transform; here it stands for the
    dataset's largest image (long, short) (Cityscapes 2048x1024: exact). With
    a_lo, a_hi = aspect_range: at most (floor(short * r / sqrt(a_lo)),
    floor(long * r * sqrt(a_hi))) in landscape and (floor(long * r /
    sqrt(a_lo)), floor(short * r * sqrt(a_hi))) in portrait.

  A crop that fits in neither box is padded in some dimension for every
  image: no rescaled image can fill it. Smaller crops are fine even when some
  images are smaller than the crop (those crops are padded, as mmseg does).

  Returns:
    ((h, w) landscape, (h, w) portrait).
  """
  long, short = max(scale), min(scale)
  r = float(ratio_range[1])
  if augmentation == "openseg":
    up, across = 1.0 / math.sqrt(float(aspect_range[0])), math.sqrt(float(aspect_range[1]))
    return ((math.floor(short * r * up), math.floor(long * r * across)),
            (math.floor(long * r * up), math.floor(short * r * across)))
  lo_side, hi_side = math.floor(short * r), math.floor(long * r)
  return (lo_side, hi_side), (hi_side, lo_side)


def _check_crop(ck: _Checker, crop, scale, ratio, augmentation, aspect):
  land, port = rescaled_size_bounds(scale, ratio, augmentation, aspect)
  if any(crop[0] <= h and crop[1] <= w for h, w in (land, port)):
    return
  if augmentation == "openseg":
    how = (f"augmentation='openseg' rescales each image by ratio_range={ratio} with "
           f"aspect_range={aspect}; taking dataset.scale={scale} as the largest image")
  else:
    how = (f"dataset.scale={scale} x ratio_range max {ratio[1]} rescales every image to at "
           f"most {land[1]} px on its long side and {land[0]} px on its short side")
  ck.add("dataset.crop_size", crop,
         f"no rescaled training image can fill this crop ({how}); allowed: a crop (h, w) "
         f"within {land[0]}x{land[1]}" + (f" or {port[0]}x{port[1]}" if port != land else "") +
         " (smaller images are padded), "
         "or raise dataset.scale / dataset.ratio_range")


# ---------------------------------------------------------------------------
# Sections.


def _split_names(spec: str) -> list[str]:
  """'train[:10%]+validation' -> ['train', 'validation']."""
  return [part.split("[", 1)[0].strip() for part in spec.split("+")]


def _check_run(ck: _Checker, num_devices: Optional[int], num_processes: int):
  ck.integer("seed")
  steps = ck.integer("num_train_steps", 1)
  batch = ck.integer("batch_size", 1)
  if _valid(batch):
    problem = sharding.batch_size_problem(batch, num_devices, num_processes, "config.batch_size")
    if problem:
      ck.problems.append(problem)
  eval_batch = ck.integer("eval_batch_size", 1)
  if _valid(eval_batch):
    # Evaluation pads a short batch to the device count: only the processes must divide it.
    problem = sharding.batch_size_problem(eval_batch, None, num_processes,
                                          "config.eval_batch_size")
    if problem:
      ck.problems.append(problem)
  for key in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps",
              "keep_checkpoints"):
    ck.integer(key, 1)
  max_eval = ck.get("max_eval_batches")
  if _valid(max_eval) and not (max_eval is None or (_is_int(max_eval) and
                                                    (max_eval == -1 or max_eval >= 1))):
    ck.add("max_eval_batches", max_eval, "must be -1 (the whole eval split) or an integer >= 1")
  ck.string("init_from")
  ck.choice("init_from_scope", INIT_FROM_SCOPES)
  return steps


def _check_dataset(ck: _Checker, datasets: Optional[Mapping[str, DatasetMeta]]):
  name = ck.string("dataset.name")
  if _valid(name) and datasets is not None:
    if name not in datasets:
      ck.add("dataset.name", name, f"unknown dataset; known: {', '.join(sorted(datasets))}"
             + (" (pascal_context59: see docs/datasets.md)" if name == "pascal_context59" else ""))
      name = _INVALID
    else:
      splits = datasets[name].splits
      for key in ("dataset.train_split", "dataset.eval_split"):
        spec = ck.string(key)
        if _valid(spec) and splits and any(s not in splits for s in _split_names(spec)):
          ck.add(key, spec, f"dataset {name!r} has the splits {', '.join(splits)} "
                 "(a TFDS split spec of them, e.g. 'train[:10%]', is fine too)")
  ck.string("dataset.data_dir", none_ok=True)
  ck.string("dataset.builder_config", none_ok=True)

  crop = ck.pair("dataset.crop_size")
  scale = ck.pair("dataset.scale", "(long, short)")
  ratio = ck.interval("dataset.ratio_range")
  augmentation = ck.choice("dataset.augmentation", AUGMENTATIONS)
  aspect = ck.interval("dataset.aspect_range")
  cat_max_ratio = ck.number("dataset.cat_max_ratio", 0, lo_open=True,
                            note=">= 1 turns the crop retries off")
  ck.number("dataset.flip_prob", 0, 1)
  photometric = ck.boolean("dataset.photometric")
  ck.integer("dataset.brightness_shift", 0, 255)
  if augmentation == "openseg" and _valid(photometric, cat_max_ratio) and (
      photometric or cat_max_ratio < 1.0):
    ck.add("dataset.augmentation", augmentation,
           "has no photometric distortion and no crop retries: set dataset.photometric=False "
           f"and dataset.cat_max_ratio=1.0 (got {photometric} and {cat_max_ratio})")
  if _valid(crop, scale, ratio, augmentation, aspect):
    _check_crop(ck, crop, scale, ratio, augmentation, aspect)

  ck.pair("dataset.eval_scale", "(long, short)", none_ok=True)
  ck.pair("dataset.eval_canvas")
  ck.pair("dataset.eval_label_canvas")
  ck.numbers("dataset.mean", 3)
  ck.numbers("dataset.std", 3, positive=True)
  ck.choice("dataset.input_order", INPUT_ORDERS)
  ck.boolean("dataset.finish_on_device")
  ck.boolean("dataset.resize_on_device")
  ck.integer("dataset.shuffle_buffer", 1)
  parallel = ck.get("dataset.num_parallel_calls")
  if _valid(parallel) and not (parallel is None or (_is_int(parallel) and
                                                    (parallel == -1 or parallel >= 1))):
    ck.add("dataset.num_parallel_calls", parallel, "must be -1 (AUTOTUNE) or an integer >= 1")
  ck.integer("dataset.prefetch", 0)
  return name


def _check_model(ck: _Checker):
  known = list_backbones()
  backbone = ck.get("model.backbone")
  if _valid(backbone) and backbone not in known:
    ck.add("model.backbone", backbone, f"unknown backbone; known: {', '.join(sorted(known))}")
  decoder = ck.get("model.decoder")
  if _valid(decoder) and decoder not in DECODERS:
    ck.add("model.decoder", decoder, f"unknown decoder; known: {', '.join(sorted(DECODERS))}")
  head = ck.get("model.head")
  if _valid(head) and head not in HEADS:
    ck.add("model.head", head, f"unknown head; known: {', '.join(HEADS)}")
  ck.boolean("model.aux_head")
  ck.number("model.aux_weight", 0)
  ck.integer("model.aux_channels", 1)
  ck.boolean("model.align_corners")
  ck.choice("model.dtype", DTYPES)


def _check_protoseg(ck: _Checker, steps):
  ck.integer("protoseg.num_prototypes", 1, allowed="must be an integer >= 1 (prototypes per class)")
  ck.integer("protoseg.embed_dim", 1, none_ok=True,
             allowed="must be an integer >= 1, or None (= the decoder's channels)")
  ck.number("protoseg.gamma", 0, 1, hi_open=True, note="momentum of the prototype update")
  ck.integer("protoseg.sinkhorn_iters", 1)
  ck.number("protoseg.sinkhorn_epsilon", 0, lo_open=True, note="Sinkhorn entropy weight")
  ck.choice("protoseg.assignment", prototypes.ASSIGNMENTS)
  ck.boolean("protoseg.use_mask_norm")
  ck.boolean("protoseg.use_feat_norm")
  ck.choice("protoseg.proj_norm_axis", heads.PROJ_NORM_AXES)
  ck.choice("protoseg.proto_init", heads.PROTO_INITS)
  ck.number("protoseg.lambda_ppc", 0)
  ck.number("protoseg.lambda_ppd", 0)
  ck.number("protoseg.ppc_temperature", 0, lo_open=True,
            note="PPC logits = cosine / temperature; 1.0: the official code")
  ck.integer("protoseg.class_chunk", 0,
             allowed="must be an integer >= 0 (classes per chunk; 0: automatic)")
  warmup = ck.integer("protoseg.warmup_iters", 0)
  if _valid(steps, warmup) and warmup > steps:
    ck.add("protoseg.warmup_iters", warmup,
           f"the prototype warm-up must not be longer than the run (config.num_train_steps="
           f"{steps}): use 0..{steps}")
  ck.boolean("protoseg.pretrain_prototype")
  ck.boolean("protoseg.update_prototype")
  ck.choice("protoseg.prototype_update", prototypes.PROTOTYPE_UPDATES)


def _check_optim(ck: _Checker, steps):
  ck.choice("optim.name", OPTIMIZERS)
  lr = ck.number("optim.learning_rate", 0, lo_open=True)
  ck.number("optim.momentum", 0, 1, hi_open=True)
  ck.boolean("optim.nesterov")
  ck.number("optim.weight_decay", 0)
  ck.number("optim.b1", 0, 1, hi_open=True)
  ck.number("optim.b2", 0, 1, hi_open=True)
  warmup = ck.integer("optim.warmup_steps", 0)
  if _valid(steps, warmup) and warmup > steps:
    ck.add("optim.warmup_steps", warmup,
           f"the learning-rate warm-up must not be longer than the run (config.num_train_steps="
           f"{steps}): use 0..{steps}")
  ck.number("optim.warmup_ratio", 0, 1)
  ck.number("optim.poly_power", 0)
  min_lr = ck.number("optim.min_lr", 0)
  if _valid(lr, min_lr) and min_lr > lr:
    ck.add("optim.min_lr", min_lr, f"must be <= optim.learning_rate={lr} (the poly schedule "
           "decays from the learning rate down to min_lr)")
  ck.number("optim.head_lr_mult", 0)
  ck.boolean("optim.no_decay_norms_biases")
  ck.number("optim.grad_clip_norm", 0, note="0: off")


def _check_eval(ck: _Checker):
  mode = ck.choice("eval.mode", inference.MODES)
  crop = ck.pair("eval.slide_crop", none_ok=True)
  stride = ck.pair("eval.stride", none_ok=True)
  if mode == "slide" and _valid(crop, stride):
    for key, v in (("eval.slide_crop", crop), ("eval.stride", stride)):
      if v is None:
        ck.add(key, v, "eval.mode='slide' needs eval.slide_crop and eval.stride, each (h, w)")
    if crop is not None and stride is not None and (stride[0] > crop[0] or stride[1] > crop[1]):
      ck.add("eval.stride", stride,
             f"must not exceed eval.slide_crop={crop} in either dimension (the windows would "
             "leave pixels uncovered)")
  ck.numbers("eval.scales", positive=True, what=" (image size ratios)")
  ck.boolean("eval.flip")
  resize = ck.choice("eval.resize", inference.RESIZES)
  if resize == "bicubic" and _valid(mode) and mode != "whole":
    ck.add("eval.resize", resize, f"needs eval.mode='whole' (got {mode!r}): bicubic resizes the "
           "whole image's logits straight to the label size")
  ck.choice("eval.merge", inference.MERGES)
  ck.integer("eval.class_chunk", 0, allowed="must be an integer >= 0 (0: automatic, k: classes "
             "per chunk of the label-resolution scores)")
  ck.integer("eval.log_every_batches", 1)


def _check_runtime(ck: _Checker):
  """Keys of the trainer's machinery: sharding rules, remat, fault handling,
  compilation cache, predict and the debug switches."""
  rules = ck.get("sharding.rules")
  if _valid(rules):
    ok = isinstance(rules, (tuple, list)) and len(rules) >= 1
    for rule in rules if ok else ():
      if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
              and rule[1] in sharding.STRATEGIES):
        ok = False
        break
      try:
        re.compile(rule[0])
      except re.error as e:
        ck.add("sharding.rules", rules, f"regex {rule[0]!r} does not compile ({e})")
        break
    if not ok:
      ck.add("sharding.rules", rules, "must be a non-empty sequence of (regex, strategy) pairs, "
             f"strategy one of {', '.join(repr(x) for x in sharding.STRATEGIES)}")
  ck.integer("sharding.fsdp_min_size", 0)
  remat = ck.get("model.remat")
  if _valid(remat):
    try:
      remat_plan(remat)
    except ValueError as e:   # "config.model.remat=...; expected ..."
      ck.add("model.remat", remat, str(e).partition("; ")[2] or str(e))
  ck.integer("max_consecutive_nonfinite", 0, allowed="must be an integer >= 0 (0: never stop)")
  ck.string("compilation_cache_dir")
  ck.number("workdir_lock_lease_s", 0, lo_open=True)
  ck.integer("eval.proto_usage_batches", -1,
             allowed="must be an integer >= -1 (-1: every eval batch, 0: off)")
  ck.integer("predict.max_pixels", 0, allowed="must be an integer >= 0 (0: no limit)")
  nan_steps = ck.get("debug.nan_steps")
  if _valid(nan_steps) and not (isinstance(nan_steps, (tuple, list))
                                and all(_is_int(v) and v >= 1 for v in nan_steps)):
    ck.add("debug.nan_steps", nan_steps, "must be a sequence of step numbers >= 1 (or empty)")


def _check_classes(ck: _Checker, datasets, name):
  """loss.class_weights (and dataset.held_out_class) against the dataset's class count."""
  ck.integer("loss.label_rows", 0, allowed="must be an integer >= 0 (label rows per CE block; "
             "0: automatic)")
  weights = ck.numbers("loss.class_weights", none_ok=True)
  held_out = _INVALID
  try:
    has_held_out = "held_out_class" in ck.config.dataset
  except (AttributeError, KeyError, TypeError):
    has_held_out = False
  if has_held_out:
    held_out = ck.integer("dataset.held_out_class", -1,
                          allowed="must be -1 (no class held out) or a class id >= 0")
  if _valid(weights, held_out) and weights is not None and held_out >= 0:
    # held_out.held_out_class refuses this at the start of training.
    ck.add("dataset.held_out_class", held_out, "cannot be combined with loss.class_weights "
           "(the weights are per dataset class); set one of them")
  needs_c = (_valid(weights) and weights is not None) or (_valid(held_out) and held_out >= 0)
  if not needs_c or datasets is None or not _valid(name):
    return
  c = datasets[name].num_classes
  if _valid(weights) and weights is not None and len(weights) != c:
    ck.add("loss.class_weights", weights,
           f"must have one weight per class of dataset {name!r}: {c} numbers, got {len(weights)}")
  if _valid(held_out) and held_out >= c:
    ck.add("dataset.held_out_class", held_out,
           f"must be -1 or a class id of dataset {name!r}, 0..{c - 1}")


# config.dataset switches of the train batches' last steps. The train step
# always does them now (`ops.finish_crops`); the keys stay so that configs and
# workdirs written with False (runs from before issue 22 read back False) load.
DEVICE_FINISH_KEYS = ("dataset.finish_on_device", "dataset.resize_on_device")


def host_finish_keys(config) -> list[str]:
  """Those of DEVICE_FINISH_KEYS that `config` sets False."""
  ck = _Checker(config)
  return [key for key in DEVICE_FINISH_KEYS if ck.get(key) is False]


def check_device_finish(config, *, new_run: bool) -> list[str]:
  """config.dataset.finish_on_device / resize_on_device False, the removed
  host path: a ConfigError (one line a key) for a new training run; for a
  resumed one (an old workdir's config) the keys, which the caller warns of
  and ignores (the run goes on with the train step finishing its batches)."""
  keys = host_finish_keys(config)
  if keys and new_run:
    raise ConfigError([f"config.{key}=False: the input pipeline no longer finishes train "
                       "batches on the host (the train step does); set it True" for key in keys])
  return keys


def validate_config(config, *, num_devices: Optional[int] = None,
                    num_processes: Optional[int] = None,
                    datasets: Optional[Mapping[str, DatasetMeta]] = None) -> None:
  """Checks every key of a run config; raises ConfigError listing ALL problems.

  What is checked (each problem names the key, its value and what is
  allowed): types and ranges (positive step counts and batch sizes, gamma in
  [0, 1), sinkhorn_epsilon > 0, lambdas >= 0, ...); every enumerated string
  (protoseg.assignment, proj_norm_axis, proto_init, prototype_update,
  eval.mode / resize / merge, optim.name, dataset.augmentation /
  input_order, init_from_scope, model.dtype); the backbone, decoder, head
  and dataset names (the known ones listed); and these cross-key rules:

  * batch_size is a multiple of the device count and of the process count
    (the message names the nearest sizes that are); eval_batch_size of the
    process count only (evaluation pads a short batch to the devices).
  * optim.warmup_steps and protoseg.warmup_iters are at most num_train_steps.
  * dataset.crop_size can be filled by some rescaled training image: see
    `rescaled_size_bounds` for the rule (from dataset.scale, ratio_range and,
    for augmentation='openseg', aspect_range); smaller images are padded.
  * with `datasets`: dataset.name is one of them, the train / eval splits
    are its splits, loss.class_weights has one entry per class and
    dataset.held_out_class is a class id.
  * eval.mode='slide' has eval.slide_crop and eval.stride (stride <= crop);
    eval.resize='bicubic' needs eval.mode='whole'; augmentation='openseg'
    needs photometric=False and cat_max_ratio=1.0.
  * sharding.rules are (regex, 'replicate'|'fsdp') pairs whose regexes
    compile; model.remat parses (`models.layers.remat_plan`).

  Args:
    config: the run config (ml_collections.ConfigDict).
    num_devices: devices the global batch is split over; None: jax.device_count().
    num_processes: processes that load the batch; None: jax.process_count().
    datasets: {name: classes.DatasetMeta} of the known datasets (the trainer's
      `trainer.datasets.catalog()`); None skips the checks that need them.

  Raises:
    ConfigError: with one entry in `.problems` per invalid value.
  """
  if num_devices is None or num_processes is None:
    import jax  # pylint: disable=g-import-not-at-top
    num_devices = jax.device_count() if num_devices is None else num_devices
    num_processes = jax.process_count() if num_processes is None else num_processes
  ck = _Checker(config)
  steps = _check_run(ck, num_devices, num_processes)
  name = _check_dataset(ck, datasets)
  _check_model(ck)
  _check_protoseg(ck, steps)
  _check_optim(ck, steps)
  _check_eval(ck)
  _check_runtime(ck)
  _check_classes(ck, datasets, name)
  if ck.problems:
    raise ConfigError(ck.problems)
