"""Take a trained model out of the trainer: jax.export, TF SavedModel and ONNX.

  python main.py --mode=export --config=CFG --workdir=DIR --export_dir=OUT
      [--export_size=H,W] [--export_format=all|jax|saved_model|onnx] [--checkpoint_step=N]
      [--overwrite]
  python main.py --mode=export --config=CFG --config.init_from=WEIGHTS --export_dir=OUT
  python -m protoseg_jax.export --workdir=DIR --export_dir=OUT            (anywhere)

In Python:

  run = trainer.run.load_run(DIR)                           # the one way to load a run
  export.export_run(run, OUT, size=(512, 512))              # every format
  fn = export.inference_function(run.config, run.model, run.classes)
  logits, labels = fn(variables, images)                    # what every artefact computes

Every artefact is the same function, the model's whole-image inference
with the evaluation's normalisation inside (`ops.normalize_pixels`
with config.dataset.mean / std / input_order):

  images  float32 [B, H, W, 3], RGB, 0..255, H x W the export size (default
          config.dataset.eval_canvas), B free
  logits  float32 [B, H, W, C]: the model's logits resized (bilinear, the
          model's align_corners) to the input, `inference.whole_inference`
  labels  int32 [B, H, W]: argmax over C as the run's class ids
          (`classes.ClassMap.class_ids`: the dataset's ids, also for a model
          trained without a class or with one added)

Files in OUT (written to a temporary folder beside it and renamed when
complete, so OUT is never half-written):

  model.jax       `jax.export.serialize` of the function, batch symbolic,
                  lowered for cpu, cuda and tpu (`jax.export.deserialize(...).call`)
  saved_model/    TF SavedModel, signature serving_default: images -> {logits, labels}
                  (jax2tf native serialisation, for cpu and cuda; trainer/saved_model.py)
  model.onnx      ONNX opset 23 (jax2onnx), input "images", outputs "logits", "labels";
                  checked by onnx.checker and run once by onnxruntime when written
  export.json     the classes (names, palette, ignore index, the class id of every
                  output), the input contract, the source run and its checkpoint step,
                  the config, the versions of jax / flax / the package / the converters

The sizes a model takes: multiples of its backbone's total stride
(`model_stride`: 32 for HRNet, Swin and MiT, 8 for a ResNet of output
stride 8), where every stage's feature map is an exact fraction of the
image. Other sizes are refused, naming the nearest that work.

Errors (protoseg_jax/trainer/cli.py): a bad flag (an unknown format, a size
the model cannot take, a non-empty OUT without --overwrite, no weights) is
one line and exit status 2, before anything is loaded or compiled. A format
that cannot express the model is one line naming the operation, exit status
1; the other formats are written all the same and export.json lists what
failed. Known for ONNX: a bfloat16 model (ONNX has no bfloat16 Einsum; export
with --config.model.dtype=float32) and a class-chunked ProtoSeg head
(jax2onnx cannot convert its loop over a symbolic batch; export with
--config.protoseg.class_chunk=C).

A tool on the trainer: the run comes from `trainer.run.load_run`, the
SavedModel from `trainer.saved_model` (TensorFlow); ONNX needs the extra
`export` (pip install ".[train,export]").
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import tempfile
import traceback
from typing import Callable, Optional, Sequence

from absl import flags, logging
import jax
import jax.numpy as jnp
import numpy as np

import protoseg_jax
from protoseg_jax import inference, ops, prototypes
from protoseg_jax.classes import ClassMap
from protoseg_jax.models import get_backbone
from protoseg_jax.trainer import cli, paths
from protoseg_jax.trainer.cli import ArgumentError, UserError

FORMATS = ("jax", "saved_model", "onnx")
ARTEFACTS = {"jax": "model.jax", "saved_model": "saved_model", "onnx": "model.onnx"}
EXPORT_FILE = "export.json"
FORMAT_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "labels")
# What the serialised StableHLO is lowered for (jax.export; the SavedModel:
# the platforms TF runs XLA on).
JAX_PLATFORMS = ("cpu", "cuda", "tpu")
SAVED_MODEL_PLATFORMS = ("cpu", "cuda")
ONNX_OPSET = 23
STRIDE_PROBE = 512     # the backbone's stride is measured on a PROBE x PROBE image

FLAGS = flags.FLAGS


class ExportFailed(UserError):
  """A requested format could not be written (one line, exit 1)."""


def define_flags():
  """The export flags (--workdir, --config, --checkpoint_step come from cli.define_run_flags)."""
  flags.DEFINE_string("export_dir", None, "export mode: the folder to write model.jax, "
                      "saved_model/, model.onnx and export.json to (refused when it exists and "
                      "is not empty, unless --overwrite).")
  flags.DEFINE_string("export_size", None, "export mode: H,W (or S) of the exported input; "
                      "default: config.dataset.eval_canvas.")
  flags.DEFINE_string("export_format", "all", "export mode: all, or a comma-separated list "
                      f"of {', '.join(FORMATS)}.")
  flags.DEFINE_bool("overwrite", False, "export mode: replace a non-empty --export_dir.")


# --------------------------------------------------------------------------
# Arguments.


def parse_formats(text: Optional[str]) -> tuple[str, ...]:
  """'all' or a comma-separated list of FORMATS -> the formats, in FORMATS order."""
  names = [n.strip() for n in str(text or "all").split(",") if n.strip()]
  if names == ["all"]:
    return FORMATS
  bad = [n for n in names if n not in FORMATS]
  if bad or not names:
    raise ArgumentError(f"--export_format={text}: unknown format {', '.join(bad) or '(none)'}; "
                        f"must be all or a comma-separated list of {', '.join(FORMATS)}")
  return tuple(f for f in FORMATS if f in names)


def parse_size(text: str) -> tuple[int, int]:
  """'H,W' (or 'S' for S,S) -> (H, W), positive ints."""
  parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
  try:
    size = tuple(int(p) for p in parts)
  except ValueError:
    size = ()
  if len(size) == 1:
    size = size * 2
  if len(size) != 2 or min(size) <= 0:
    raise ArgumentError(f"--export_size={text}: must be H,W (two positive integers, e.g. "
                        "512,512)")
  return size


def check_export_dir(path: str, overwrite: bool = False) -> str:
  """The absolute export dir (or a URL); ArgumentError when it is a file, or a
  non-empty folder without `overwrite`, or cannot be created (a bucket that
  does not exist or cannot be read). Creates nothing."""
  if paths.is_url(path):
    cli.check_path(path, "--export_dir")
    folder = paths.resolve(path)
    if folder.is_file():
      raise ArgumentError(f"--export_dir={path} is a file, not a folder")
    entries = list(folder.iterdir()) if folder.is_dir() else []
    if entries and not overwrite:
      raise ArgumentError(f"--export_dir={path} exists and is not empty ({len(entries)} "
                          "entries); choose another folder or pass --overwrite to replace it")
    return paths.text(path)
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ArgumentError(f"--export_dir={path} is a file, not a folder")
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise ArgumentError(f"--export_dir={path} exists and is not empty ({len(os.listdir(path))} "
                        "entries); choose another folder or pass --overwrite to replace it")
  existing = os.path.dirname(path)
  while not os.path.isdir(existing):
    if os.path.exists(existing):
      raise ArgumentError(f"--export_dir={path}: {existing} is a file, not a folder")
    existing = os.path.dirname(existing)
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ArgumentError(f"--export_dir={path}: {existing} cannot be written")
  return path


def model_stride(model) -> int:
  """The backbone's total stride: the largest image / feature-map ratio of
  its stages, measured abstractly (`jax.eval_shape`, nothing compiled) on a
  STRIDE_PROBE x STRIDE_PROBE image."""
  backbone = get_backbone(model.backbone, dtype=model.dtype, **dict(model.backbone_kwargs))
  x = jax.ShapeDtypeStruct((1, STRIDE_PROBE, STRIDE_PROBE, 3), jnp.float32)
  feats, _ = jax.eval_shape(lambda x: backbone.init_with_output(jax.random.key(0), x), x)
  return max(max(STRIDE_PROBE // int(f.shape[1]), STRIDE_PROBE // int(f.shape[2]))
             for f in feats)


def check_size(size: Sequence[int], stride: int, what: str = "--export_size") -> tuple[int, int]:
  """`size` when both sides are positive multiples of `stride`; else
  ArgumentError naming the nearest sizes that are."""
  h, w = (int(v) for v in size)
  if h > 0 and w > 0 and h % stride == 0 and w % stride == 0:
    return h, w
  lower = tuple(max(stride, v // stride * stride) for v in (h, w))
  upper = tuple(max(stride, -(-v // stride) * stride) for v in (h, w))
  near = [f"{a},{b}" for a, b in dict.fromkeys([lower, upper])]
  raise ArgumentError(f"{what}={h},{w}: the model takes sizes whose sides are multiples of "
                      f"{stride} (its backbone's total stride); the nearest are "
                      f"{' and '.join(near)}")


# --------------------------------------------------------------------------
# The exported function.


def for_symbolic_batch(model, variables, size: Sequence[int]):
  """The model with its ProtoSeg head's automatic class chunk
  (config.protoseg.class_chunk = 0, which depends on the batch) fixed for one
  image of `size`: the batch of an artefact is symbolic. Other models as they are."""
  if model.head != "proto":
    return model
  kw = dict(model.head_kwargs)
  if int(kw.get("class_chunk", 0)) != 0:
    return model
  x = jax.ShapeDtypeStruct((1, int(size[0]), int(size[1]), 3), jnp.float32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False).logits, variables, x)
  _, h, w, c = out.shape
  kw["class_chunk"] = prototypes.resolve_class_chunk(0, h * w, c, int(kw["num_prototypes"]))
  return model.clone(head_kwargs=tuple(sorted(kw.items())))


def normalize(images: jnp.ndarray, eval_options) -> jnp.ndarray:
  """float32 [..., 3] RGB 0..255 -> what the network sees: the eval
  preprocessing's channel order and normalisation (`ops.normalize_image`)."""
  return ops.normalize_image(images, eval_options.mean, eval_options.std,
                             input_order=eval_options.input_order)


def inference_function(config, model, classes: ClassMap) -> Callable:
  """`fn(variables, images) -> (logits, labels)`: the model's whole-image
  inference with the normalisation inside (see the module docstring)."""
  from protoseg_jax.trainer import input_pipeline
  opts = input_pipeline.eval_options(config)
  # The evaluation's options, of which an artefact keeps the whole-image pass
  # (the model's align_corners): windows, scales and flips are the caller's.
  align_corners = inference.inference_options(config).align_corners
  ids = np.asarray(classes.class_ids, np.int32)
  if len(ids) != model.num_classes:
    raise ValueError(f"the model has {model.num_classes} outputs, the class map {len(ids)}")
  identity = bool(np.array_equal(ids, np.arange(len(ids))))

  def fn(variables, images):
    x = normalize(images, opts)
    logits = inference.whole_inference(
        lambda x: model.apply(variables, x, train=False).logits, x, align_corners=align_corners)
    pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    labels = pred if identity else jnp.asarray(ids)[pred]
    return logits.astype(jnp.float32), labels

  return fn


def host_variables(variables) -> dict:
  """The model's variables as host NumPy arrays (the artefacts hold them)."""
  variables = {k: v for k, v in dict(variables).items()
               if k in ("params", "batch_stats", "prototypes")}
  return jax.tree.map(np.asarray, jax.device_get(variables))


# --------------------------------------------------------------------------
# The formats.


def _input_spec(size, batch="batch"):
  (b,) = jax.export.symbolic_shape(batch)
  return jax.ShapeDtypeStruct((b, int(size[0]), int(size[1]), 3), jnp.float32)


def write_jax(fn: Callable, size, path: str, platforms: Sequence[str] = JAX_PLATFORMS):
  """`fn(images)` as serialised `jax.export` (batch symbolic) at `path`."""
  exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(_input_spec(size))
  with open(path, "wb") as f:
    f.write(exported.serialize())


def write_saved_model(apply_fn: Callable, variables, size, path: str,
                      platforms: Sequence[str] = SAVED_MODEL_PLATFORMS):
  """`apply_fn(variables, images)` as a TF SavedModel (`trainer.saved_model`)."""
  from protoseg_jax.trainer import saved_model
  with _quiet():
    saved_model.write_saved_model(apply_fn, variables, (int(size[0]), int(size[1]), 3), path,
                                  platforms)


_ONNX_OP_PATTERNS = (r"primitive '([^']+)'",            # jax2onnx: no rule for a JAX primitive
                     r"op_type:\s*(\w+)",                # onnx.checker: an invalid node
                     r"operator \((\w+)\)",               # onnxruntime: a node it cannot load
                     r"implementation for (\w+)\(",        # onnxruntime: no kernel for a node
                     r"running (\w+) node")                 # onnxruntime: a node that fails to run


def onnx_failure(error: BaseException, stage: str = "jax2onnx") -> str:
  """One line saying which operation ONNX (its converter, checker or
  runtime: `stage`) could not express."""
  text = " ".join(str(error).split()) or type(error).__name__
  op = next((m.group(1) for m in (re.search(p, text) for p in _ONNX_OP_PATTERNS) if m), None)
  if op is None:   # the converter rule that raised: .../jax2onnx/plugins/<...>/<op>.py
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
      parts = frame.filename.replace("\\", "/").split("/")
      if "jax2onnx" in parts and "plugins" in parts and not parts[-1].startswith("_"):
        op = os.path.splitext(parts[-1])[0]
        break
  dtype = re.search(r"tensor\((\w+)\)", text)
  where = f"the operation '{op}'" if op else "an operation of the model"
  if dtype:
    where += f" on {dtype.group(1)}"
  hint = ("; export a float32 copy with --config.model.dtype=float32 (the parameters are "
          "float32 already)" if dtype and "bfloat16" in dtype.group(1) else "")
  versions = f"jax2onnx {_version('jax2onnx')}, onnx {_version('onnx')}"
  if stage == "onnxruntime":
    versions += f", onnxruntime {_version('onnxruntime')}"
  return (f"onnx: {stage} ({versions}) cannot express {where}: {text[:240]} "
          f"({type(error).__name__}){hint}")


def write_onnx(fn: Callable, size, path: str, opset: int = ONNX_OPSET):
  """`fn(images)` as ONNX at `path`, batch symbolic, checked by onnx's
  checker and run once (batch 1, zeros) by onnxruntime; ExportFailed naming
  the operation when the converter, the checker or the runtime cannot
  express it."""
  try:
    import onnx
    from jax2onnx import to_onnx
  except ImportError as e:
    raise ExportFailed(f"onnx: {e.name or e} is not installed: pip install \".[export]\" "
                       "(jax2onnx with --no-deps, see pyproject.toml)") from None
  with _quiet():
    try:
      model = to_onnx(fn, inputs=[_input_spec(size)], model_name="protoseg_jax", opset=opset,
                      input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES))
    except Exception as e:  # noqa: BLE001 (any converter failure: one line naming the op)
      raise ExportFailed(onnx_failure(e)) from e
  # The converter's intermediate shape annotations are partly NCHW where
  # the values are NHWC (onnxruntime warns and ignores them): leave shapes
  # of intermediate values to the runtime's own inference.
  del model.graph.value_info[:]
  large = model.ByteSize() > (1 << 31) - (64 << 20)
  onnx.save_model(model, path, save_as_external_data=large,
                  location=os.path.basename(path) + ".data" if large else None)
  del model
  stage = "onnx.checker"
  try:
    onnx.checker.check_model(path, full_check=True)
    try:
      import onnxruntime
    except ImportError:
      return
    stage = "onnxruntime"
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    session.run(None, {INPUT_NAME: np.zeros((1, int(size[0]), int(size[1]), 3), np.float32)})
  except Exception as e:  # noqa: BLE001 (an invalid graph: one line naming the op)
    raise ExportFailed(onnx_failure(e, stage)) from e


class _quiet:
  """Python logging above INFO only, and the loggers of jax2onnx (it imports
  every plugin it ships, those of libraries not installed too, and warns of
  each) and onnx_ir at ERROR: their chatter does not concern the model."""

  def __enter__(self):
    import logging as pylogging
    names = ("", "absl", "jax2onnx", "onnx_ir")
    self.saved = [(pylogging.getLogger(n), pylogging.getLogger(n).level) for n in names]
    for logger, _ in self.saved:
      logger.setLevel(pylogging.ERROR if logger.name in ("jax2onnx", "onnx_ir")
                      else max(logger.getEffectiveLevel(), pylogging.WARNING))
    return self

  def __exit__(self, *exc):
    for logger, level in self.saved:
      logger.setLevel(level)
    return False


# --------------------------------------------------------------------------
# export.json


def _version(module: str) -> Optional[str]:
  try:
    from importlib import metadata
    return metadata.version(module)
  except Exception:  # noqa: BLE001
    return None


def describe(config, classes: ClassMap, size, formats: Sequence[str], *, source: str,
             step: Optional[int], workdir: Optional[str], failed: dict) -> dict:
  """export.json's contents."""
  from protoseg_jax.trainer import input_pipeline
  from protoseg_jax.trainer import run as runs
  opts = input_pipeline.eval_options(config)
  h, w = (int(v) for v in size)
  c = classes.num_outputs
  versions = {"jax": jax.__version__, "jaxlib": _version("jaxlib"), "flax": _version("flax"),
              "protoseg_jax": protoseg_jax.__version__}
  if "saved_model" in formats:
    versions["tensorflow"] = _version("tensorflow") or _version("tensorflow-cpu")
  if "onnx" in formats:
    versions.update(jax2onnx=_version("jax2onnx"), onnx=_version("onnx"))
  return {
      "format": FORMAT_VERSION,
      "artefacts": {f: ARTEFACTS[f] for f in formats if f not in failed},
      "failed": dict(failed),
      "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", h, w, 3],
                "layout": "NHWC", "channels": "RGB", "range": [0, 255],
                "normalisation_inside": {"mean": list(opts.mean), "std": list(opts.std),
                                         "input_order": opts.input_order},
                "note": ("resize an image to fit H x W keeping its aspect ratio "
                         "(config.dataset.eval_scale) and pad bottom/right with the mean "
                         "colour to match the evaluation")},
      "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", h, w, c],
                   "meaning": "the model's logits of each output class, at the input size"},
                  {"name": "labels", "dtype": "int32", "shape": ["batch", h, w],
                   "meaning": "argmax of the logits as class ids (classes.class_ids)"}],
      "inference": {"mode": "whole",
                    "align_corners": inference.inference_options(config).align_corners,
                    "compute_dtype": str(config.model.dtype),
                    "platforms": {"jax": list(JAX_PLATFORMS),
                                  "saved_model": list(SAVED_MODEL_PLATFORMS)}},
      "classes": dict(classes.to_json()["classes"], output_names=list(classes.output_names),
                      num_outputs=c),
      "source": {"workdir": workdir, "weights": source, "checkpoint_step": step},
      "config": json.loads(runs.config_to_json(config)),
      "versions": versions,
  }


# --------------------------------------------------------------------------
# Export.


@dataclasses.dataclass
class ExportResult:
  export_dir: str
  written: tuple[str, ...]           # formats written
  failed: dict                       # format -> one-line reason
  size: tuple[int, int]


def export_model(config, model, variables, classes: ClassMap, export_dir: str, *,
                 size: Optional[Sequence[int]] = None, formats: Sequence[str] = FORMATS,
                 overwrite: bool = False, source: str = "", step: Optional[int] = None,
                 workdir: Optional[str] = None, check_stride: bool = True) -> ExportResult:
  """Writes the artefacts of `formats` and export.json to `export_dir`.

  size: (H, W) of the input (default: config.dataset.eval_canvas). Built in a
  temporary folder beside `export_dir` and renamed to it when done (a URL:
  built in a local temporary folder, then uploaded); a format
  that fails (ExportFailed) is left out and listed in export.json's
  "failed", the others are written; when every format fails nothing is.
  Returns an ExportResult; raises ArgumentError for a bad size or folder.
  """
  from protoseg_jax.trainer import input_pipeline
  formats = parse_formats(formats if isinstance(formats, str) else ",".join(formats))
  export_dir = check_export_dir(export_dir, overwrite)
  size = tuple(int(v) for v in (size if size is not None
                                else input_pipeline.eval_canvases(config)[0]))
  if check_stride:
    size = check_size(size, model_stride(model))
  variables = host_variables(variables)
  model = for_symbolic_batch(model, variables, size)
  apply_fn = inference_function(config, model, classes)
  closed = functools.partial(apply_fn, variables)
  remote = paths.is_url(export_dir)
  made = []                        # folders created for export_dir, removed again if unused
  if remote:
    tmp = tempfile.mkdtemp(prefix=".export.partial-")
  else:
    parent = os.path.dirname(export_dir)
    d = parent
    while not os.path.isdir(d):
      made.append(d)
      d = os.path.dirname(d)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(export_dir)}.partial-", dir=parent)
  written, failed = [], {}
  try:
    for fmt in formats:
      path = os.path.join(tmp, ARTEFACTS[fmt])
      logging.info("export: writing %s (%dx%d, batch symbolic)", ARTEFACTS[fmt], *size)
      try:
        if fmt == "jax":
          write_jax(closed, size, path)
        elif fmt == "saved_model":
          write_saved_model(apply_fn, variables, size, path)
        else:
          write_onnx(closed, size, path)
        written.append(fmt)
      except ExportFailed as e:
        failed[fmt] = str(e) + (_chunk_hint(model) if fmt == "onnx" else "")
        logging.error("export: %s", failed[fmt])
        _remove(path)
    if not written:
      return ExportResult(export_dir, (), failed, size)
    meta = describe(config, classes, size, formats, source=source, step=step, workdir=workdir,
                    failed=failed)
    with open(os.path.join(tmp, EXPORT_FILE), "w") as f:
      json.dump(meta, f, indent=1)
      f.write("\n")
    if remote:
      _upload(tmp, export_dir)
    else:
      _replace(tmp, export_dir)
      tmp = None
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
      for d in made:                           # innermost first
        try:
          os.rmdir(d)
        except OSError:
          break
  logging.info("export: wrote %s to %s", ", ".join(ARTEFACTS[f] for f in written), export_dir)
  return ExportResult(export_dir, tuple(written), failed, size)


def _chunk_hint(model) -> str:
  """What to do when ONNX fails on a class-chunked ProtoSeg head."""
  kw = dict(model.head_kwargs) if model.head == "proto" else {}
  chunk = int(kw.get("class_chunk", 0))
  if 0 < chunk < model.num_classes:
    return (f"; the ProtoSeg head computes its {model.num_classes} classes in chunks of {chunk} "
            "(config.protoseg.class_chunk), a loop over a symbolic batch that jax2onnx cannot "
            f"convert: --config.protoseg.class_chunk={model.num_classes} exports them at once "
            "(equal up to float rounding, more memory)")
  return ""


def _remove(path: str):
  if os.path.isdir(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.exists(path):
    os.remove(path)


def _replace(src: str, dst: str):
  """Renames folder `src` to `dst`, replacing what is there."""
  if not os.path.exists(dst):
    os.rename(src, dst)
    return
  old = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.old-", dir=os.path.dirname(dst))
  os.rmdir(old)
  os.rename(dst, old)
  os.rename(src, dst)
  shutil.rmtree(old, ignore_errors=True)


def _upload(src: str, dst: str):
  """The local folder `src` uploaded as `dst` (a URL), what was there removed
  first (--overwrite; an object store has no rename to swap folders with)."""
  folder = paths.resolve(dst)
  if folder.is_dir():
    folder.rmtree()
  paths.upload_tree(src, dst)


def export_run(run, export_dir: str, *, size=None, formats: Sequence[str] = FORMATS,
               overwrite: bool = False, workdir: Optional[str] = None,
               check_stride: bool = True) -> ExportResult:
  """`export_model` of a run of `trainer.run.load_run`."""
  return export_model(run.config, run.model, run.variables, run.classes, export_dir, size=size,
                      formats=formats, overwrite=overwrite, source=run.source, step=run.step,
                      workdir=workdir, check_stride=check_stride)


# --------------------------------------------------------------------------
# The command (main.py --mode=export, python -m protoseg_jax.export).


def run_command(workdir: Optional[str]) -> int:
  """The export mode: every argument checked before the run is loaded."""
  from protoseg_jax.models.segmentor import build_model
  from protoseg_jax.trainer import input_pipeline
  from protoseg_jax.trainer import run as runs
  if jax.process_count() > 1:
    raise ArgumentError("--mode=export runs in one process")
  if not FLAGS.export_dir:
    raise ArgumentError("--export_dir is required with --mode=export")
  config = cli.run_config(workdir, num_devices=1, num_processes=1)
  formats = parse_formats(FLAGS.export_format)
  export_dir = check_export_dir(FLAGS.export_dir, FLAGS.overwrite)
  try:
    runs.weights_source(workdir, config)
  except runs.RunNotFound as e:
    raise ArgumentError(str(e)) from None
  if FLAGS.export_size:
    size = parse_size(FLAGS.export_size)
    what = "--export_size"
  else:
    size = input_pipeline.eval_canvases(config)[0]
    what = "config.dataset.eval_canvas (the default export size; give --export_size=H,W)"
  size = check_size(size, model_stride(build_model(config, 1)), what)   # nothing compiled yet
  run = runs.load_run(workdir, config, checkpoint_step=FLAGS.checkpoint_step,
                      devices=jax.local_devices()[:1])
  result = export_run(run, export_dir, size=size, formats=formats, overwrite=FLAGS.overwrite,
                      workdir=paths.text(workdir) if workdir else None, check_stride=False)
  if result.failed:
    done = (f"; {', '.join(ARTEFACTS[f] for f in result.written)} and {EXPORT_FILE} written "
            f"to {result.export_dir}" if result.written else "; nothing written")
    raise ExportFailed("; ".join(result.failed.values()) + done)
  return 0


def main(argv):
  del argv
  return run_command(cli.expand(FLAGS.workdir, "--workdir"))


if __name__ == "__main__":
  cli.define_run_flags(config_required=False)
  define_flags()
  cli.run(main, "python -m protoseg_jax.export")
