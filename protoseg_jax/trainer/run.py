"""A run's workdir describes itself, and `load_run` is the one way to load a run.

The trainer writes, at the start of a run (process 0):

  DIR/config.json   the run config (`read_config` gives it back as a ConfigDict)
  DIR/run.json      the run's description (`classes.ClassMap.to_json`): the class
                    id, name and colour of each model output, held-out and added
                    classes included; its dataset's description (`DatasetMeta`:
                    ignore index, splits, where it is prepared); the package version

so that a tool given only `--workdir=DIR` knows the model, its classes and
its data, without the config file it was trained from (nor the checkout's
dataset builders). `python -m protoseg_jax.add_class --output=OUT` writes
the same two files and OUT/variables, so OUT is a workdir too.

`load_run(workdir, config)` gives a run's model, its variables (of the
latest intact checkpoint, or of `checkpoint_step`; of DIR/variables; of
converted weights; or of config.init_from), its classes and its config,
building no optimizer state: what evaluation, `Predictor`, diagnostics,
visualize, add_class and export all start from.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from protoseg_jax import held_out, sharding, train, trees
from protoseg_jax.classes import ClassMap, DatasetMeta
from protoseg_jax.models.segmentor import Segmentor, build_model
from protoseg_jax.trainer import checkpoints, datasets, paths

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"


class RunNotFound(FileNotFoundError):
  """A workdir, its config or its weights cannot be found (a user error: one line)."""


class WeightsDoNotFit(ValueError):
  """Saved or converted weights that are not the config's model (a user error: one line)."""


MODEL_PARTS = ("backbone", "decoder", "head")   # the Segmentor's top-level params


# --- config.json ---------------------------------------------------------------

def _tuples(x):
  """JSON lists back to the tuples the configs use."""
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  return x


def config_to_json(config) -> str:
  return config.to_json_best_effort(indent=1, sort_keys=True) + "\n"


# Keys added to configs/default.py after runs were written without them, with
# the value that gives the behaviour those runs had: a workdir's config.json
# from before reads back with them filled in (and still evaluates, predicts,
# resumes exactly as it did).
ADDED_KEYS = {
    "protoseg.class_chunk": 0,            # issue 19: automatic = all at once for them
    "protoseg.ppc_temperature": 1.0,      # issue 19/20: the official code's (none)
    "protoseg.use_feat_norm": True,       # issue 20: the official head's feat_norm
    "loss.label_rows": 0,                 # issue 19: automatic
    "eval.class_chunk": 0,                # issue 19: automatic
    "dataset.finish_on_device": False,    # issue 22: the host finished the crops
    "dataset.resize_on_device": False,    # issue 22: the host did openseg's bicubic
    "workdir_lock_lease_s": 60.0,         # issue 30: the default (a lock in a bucket)
}


def config_from_json(text: str) -> ml_collections.ConfigDict:
  """A config written by `config_to_json`, locked (an override of a missing
  key fails); ADDED_KEYS missing from it are filled in with their values."""
  tree = _tuples(json.loads(text))
  filled = []
  for key, value in ADDED_KEYS.items():
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
      node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf not in node:
      node[leaf] = value
      filled.append(key)
  if filled:
    logging.info("config.json from an earlier version: %s set to the behaviour it had (%s)",
                 ", ".join(filled), ", ".join(repr(ADDED_KEYS[k]) for k in filled))
  config = ml_collections.ConfigDict(tree)
  config.lock()
  return config


def read_config(workdir: str) -> Optional[ml_collections.ConfigDict]:
  """DIR/config.json as a ConfigDict, or None when the workdir has none."""
  path = paths.resolve(workdir) / CONFIG_FILE
  if not path.is_file():
    return None
  return config_from_json(path.read_text())


# --- run.json ------------------------------------------------------------------

def read_classes(workdir: Optional[str]) -> Optional[ClassMap]:
  """DIR/run.json, or None (no workdir, or one written before run.json existed)."""
  if not workdir:
    return None
  path = paths.resolve(workdir) / RUN_FILE
  if not path.is_file():
    return None
  try:
    return ClassMap.from_json(json.loads(path.read_text()))
  except (ValueError, KeyError, TypeError) as e:
    raise RunNotFound(f"{path} is not a run description this version reads ({e})") from e


def describe(workdir: str, config, classes: ClassMap):
  """Writes DIR/config.json and DIR/run.json (process 0; each appears whole:
  `paths.write_text`). run.json says where the dataset is prepared: as
  `classes` says, else (a new run, converted weights) as its builder does."""
  if jax.process_index() != 0:
    return
  if classes.meta.tfds_name is None and datasets.builders() is not None:
    classes = dataclasses.replace(classes, meta=datasets.prepared(config, classes))
  root = paths.resolve(workdir)
  root.mkdir(parents=True, exist_ok=True)
  paths.write_text(root / CONFIG_FILE, config_to_json(config))
  paths.write_text(root / RUN_FILE, json.dumps(classes.to_json(), indent=1) + "\n")


def classes_of_config(config, num_outputs: Optional[int] = None,
                      run: Optional[ClassMap] = None,
                      meta: Optional[DatasetMeta] = None) -> ClassMap:
  """The classes of a model of config.dataset when no run.json says: a new
  run, converted weights, an older workdir. `num_outputs` None: the
  config's, its held_out_class left out; else C - 1 outputs with a held-out
  class are the dataset's minus it, C outputs are all of them (the held-out
  class last when one is set: added back). `meta`: config.dataset's
  description when the caller has read it already (`datasets.dataset_meta`)."""
  meta = meta if meta is not None else datasets.dataset_meta(config, run)
  k = held_out.held_out_class(config, meta.num_classes)
  classes = ClassMap.of_dataset(str(config.dataset.name), meta, k)
  if num_outputs is None:
    return classes
  return dataclasses.replace(
      classes, class_ids=held_out.class_ids_for_model(config, meta.num_classes, num_outputs))


# --- load_run ------------------------------------------------------------------

@dataclasses.dataclass
class LoadedRun:
  """A run's model, ready for inference.

  config: the run config (the one given, else the workdir's config.json).
  model: the Segmentor with one output per class of `classes`.
  variables: {"params", "batch_stats"?, "prototypes"?} laid out over `mesh`.
  classes: `classes.ClassMap` (the class id of each output, names, palette,
    the dataset): the workdir's run.json, else of the config (converted
    weights, an old workdir: `classes_of_config`).
  step: the checkpoint's step (None for converted weights / init_from).
  source: where the variables came from, for logs and artefacts.
  """
  config: Any
  model: Segmentor
  variables: dict
  classes: ClassMap
  step: Optional[int]
  source: str
  mesh: Any


def _num_outputs(variables: Mapping) -> Optional[int]:
  """The class count of converted / saved variables (prototypes or classifier)."""
  protos = variables.get("prototypes") or {}
  leaves = jax.tree.leaves(protos)
  if leaves:
    return int(np.shape(leaves[0])[0])
  head = (variables.get("params") or {}).get("head", {})
  kernel = (head.get("classifier") or {}).get("kernel")
  return None if kernel is None else int(np.shape(kernel)[-1])


def _put(tree, shardings):
  """Host (or device) arrays laid out as `shardings` (multi-host safe)."""
  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(put, tree, shardings)


def _has_checkpoints(workdir: str) -> bool:
  d = paths.resolve(workdir) / checkpoints.CHECKPOINT_DIR
  return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


def weights_source(workdir: Optional[str], config, variables_dir: Optional[str] = None) -> str:
  """Which weights `load_run` would load, checked before any slow work:
  "variables", "checkpoint", "workdir_variables" or "init_from".

  Raises:
    RunNotFound: none of them exists (naming what was looked for).
  """
  if variables_dir:
    if not paths.resolve(variables_dir).is_dir():
      raise RunNotFound(f"--variables {variables_dir}: no such directory (converted weights "
                        "come from `python -m protoseg_jax.convert ... --dst DIR`)")
    return "variables"
  if workdir and _has_checkpoints(workdir):
    return "checkpoint"
  if workdir and (paths.resolve(workdir) / "variables").is_dir():
    return "workdir_variables"
  if config is not None and config.init_from:
    return "init_from"
  where = (f"no checkpoint in {paths.resolve(workdir) / checkpoints.CHECKPOINT_DIR} and no "
           f"{paths.resolve(workdir) / 'variables'}" if workdir else "no --workdir")
  raise RunNotFound(f"{where}, and config.init_from is empty: train first (python main.py "
                    "--config=... --workdir=DIR), or give converted weights with "
                    "--config.init_from=DIR (and --config.init_from_scope=all for a whole model)")


def load_config(workdir: Optional[str], config=None):
  """`config`, else the workdir's config.json (RunNotFound when neither)."""
  if config is not None:
    return config
  found = read_config(workdir) if workdir else None
  if found is None:
    why = "no --workdir" if not workdir else f"the workdir {workdir} has no {CONFIG_FILE}"
    raise RunNotFound(f"give --config: {why} (workdirs describe themselves from this "
                      "version on)")
  return found


def load_run(workdir: Optional[str] = None, config=None, *,
             checkpoint_step: Optional[int] = None, variables_dir: Optional[str] = None,
             devices: Optional[Sequence[jax.Device]] = None) -> LoadedRun:
  """The model of a run, its variables, classes and config.

  Args:
    workdir: a run's directory (checkpoints, or add_class's variables/, and
      its run.json / config.json).
    config: the run config; None: the workdir's config.json. The classes
      come from the workdir's run.json when it has one (whatever the
      config's held_out_class says), else from the config.
    checkpoint_step: that checkpoint instead of the newest intact one.
    variables_dir: converted weights (`python -m protoseg_jax.convert`)
      instead of the workdir's.
    devices: the mesh to lay the variables out over (default: every device;
      FSDP params as config.sharding says).

  Raises:
    RunNotFound: no workdir config, no weights (`weights_source`).
    WeightsDoNotFit: the variables are a backbone's alone, or another model's.
    checkpoints.NoIntactCheckpoint: no checkpoint (or not checkpoint_step)
      can be restored.
  """
  workdir = paths.text(workdir) if workdir else None
  config = load_config(workdir, config)
  source = weights_source(workdir, config, variables_dir)
  recorded = read_classes(workdir)
  mesh = sharding.create_mesh(devices)
  loaded, step = None, None
  if source in ("variables", "workdir_variables"):
    path = paths.text(variables_dir) if source == "variables" else workdir
    loaded = checkpoints.load_variables(path)
    where = f"variables {path}"
  classes = recorded if recorded is not None else classes_of_config(
      config, None if loaded is None else _num_outputs(loaded))
  model = build_model(config, classes.num_outputs, classes.ignore_index)
  abstract = train.abstract_variables(config, model)
  shardings = train.variable_shardings(config, abstract, mesh)
  if source == "checkpoint":
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    variables, step = checkpoints.restore_model_variables(workdir, target, checkpoint_step)
    where = f"checkpoint step {step} of {paths.resolve(workdir) / checkpoints.CHECKPOINT_DIR}"
  elif source == "init_from":
    initial, _ = train.init_variables(config, model, mesh)
    variables = _put(checkpoints.init_from(config, jax.device_get(initial)), shardings)
    where = f"config.init_from={config.init_from}"
  else:
    got = _num_outputs(loaded)
    if got is not None and got != classes.num_outputs:
      raise RunNotFound(f"{where} has {got} classes, but the run's classes are "
                        f"{classes.num_outputs} ({', '.join(classes.output_names)})")
    loaded = {k: v for k, v in loaded.items() if k in abstract}
    if not set(MODEL_PARTS) & set(loaded.get("params", {})):
      raise WeightsDoNotFit(
          f"{where} holds a backbone's weights only (what `python -m protoseg_jax.convert "
          "--arch ARCH` writes to train from): no decoder, head or prototypes, so there is no "
          f"model to run; train from them with --config.init_from={path}, or give a whole "
          "model (a workdir, add_class's output, or an official checkpoint converted with "
          "--arch protoseg_hrnet_w48)")
    try:
      trees.check_tree_shapes(loaded, abstract, f"{where} does not fit the model of the config")
    except ValueError as e:
      raise WeightsDoNotFit(f"{e} (give the --config these weights were made for)") from None
    variables = _put(jax.tree.map(lambda x, a: np.asarray(x, a.dtype), loaded, abstract),
                     shardings)
  logging.info("Loaded %s: %d classes (%s)", where, classes.num_outputs,
               ", ".join(classes.output_names[:8]) + (", ..." if classes.num_outputs > 8 else ""))
  return LoadedRun(config=config, model=model, variables=variables, classes=classes,
                   step=step, source=where, mesh=mesh)
