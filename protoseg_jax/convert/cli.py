"""`python -m protoseg_jax.convert`: a PyTorch checkpoint -> Flax variables in an orbax directory.

  python -m protoseg_jax.convert --arch ARCH --src FILE.pth|.safetensors --dst DIR [--prefix backbone.]
  python -m protoseg_jax.convert --arch protoseg_hrnet_w48 --src CKPT.pth --dst DIR [--input_order rgb|bgr]

--arch takes a backbone's name (timm naming, e.g. hrnet_w48, resnet101d,
swin_base_patch4_window12_384, mit_b2) or protoseg_<hrnet arch> for a whole
official ProtoSeg (HRNet_W48_Proto) or softmax HRNet_W48 checkpoint; the
second also writes DIR/config_overrides.json, the config values the weights
need (docs/convert.md). .pth/.pt/.bin files are read without torch and
without running any pickled code (`convert.torch_file`); .safetensors with
the safetensors package.

Errors (the shared command-line layer, protoseg_jax/trainer/cli.py), one line
each on stderr, no traceback: a bad flag, an unknown --arch, a --src that
does not exist or a --dst that is a file: exit status 2; a --src that is no
checkpoint this reads (or names code: refused) or whose keys do not fit
--arch: exit status 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Optional

from absl import flags
import jax
import numpy as np

from protoseg_jax import models
from protoseg_jax.convert.dispatch import convert_state_dict
from protoseg_jax.convert.official import (FULL_MODEL_PREFIX, INPUT_ORDERS, checkpoint_num_classes,
                                           convert_protoseg_checkpoint, protoseg_compat_overrides)
from protoseg_jax.convert.state_dict import MissingDependency, load_torch_file
from protoseg_jax.convert.torch_file import TorchFileError
from protoseg_jax.trainer import cli, paths
from protoseg_jax.trainer.checkpoints import save_variables

FLAGS = flags.FLAGS
NAME = "python -m protoseg_jax.convert"
OVERRIDES_FILE = "config_overrides.json"


def define_flags():
  flags.DEFINE_string("arch", None, "Backbone arch (timm naming), e.g. hrnet_w48; or "
                      f"{FULL_MODEL_PREFIX}<hrnet arch>, e.g. {FULL_MODEL_PREFIX}hrnet_w48, for a "
                      "whole official ProtoSeg (HRNet_W48_Proto) or softmax HRNet_W48 checkpoint.")
  flags.DEFINE_string("src", None, "PyTorch .pth/.pt/.bin (read without torch) or .safetensors "
                      "file.")
  flags.DEFINE_string("dst", None, "Output directory (DIR/variables: orbax).")
  flags.DEFINE_enum("input_order", "rgb", list(INPUT_ORDERS),
                    f"{FULL_MODEL_PREFIX}* only: 'rgb' (default) folds openseg's BGR input into "
                    "the stem conv so the model reads this project's RGB images (with the dataset "
                    "statistics it prints); 'bgr' keeps the weights as stored, for runs with "
                    "dataset.input_order='bgr' (openseg's input; the official recipe).")
  flags.DEFINE_string("prefix", None, "Backbones only: read the backbone under this key prefix, "
                      "e.g. 'backbone.' for the backbone of an mmseg or official ProtoSeg "
                      "segmentation checkpoint (default: the family's own default; Swin and MiT "
                      "detect it).")


def check_arguments(arch: str, src: str, dst: str, *, input_order: str = "rgb",
                    prefix: Optional[str] = None):
  """Every argument problem before anything is read (cli.ArgumentError: exit 2)."""
  backbone = arch[len(FULL_MODEL_PREFIX):] if arch.startswith(FULL_MODEL_PREFIX) else arch
  if backbone not in models.list_backbones():
    raise cli.ArgumentError(f"--arch={arch}: unknown arch; backbones: "
                            f"{', '.join(sorted(models.list_backbones()))}; whole official "
                            f"checkpoints: {FULL_MODEL_PREFIX}<hrnet arch>, e.g. "
                            f"{FULL_MODEL_PREFIX}hrnet_w48")
  if arch.startswith(FULL_MODEL_PREFIX) and prefix is not None:
    raise cli.ArgumentError(f"--prefix is for backbones; --arch={arch} reads the whole checkpoint")
  if not arch.startswith(FULL_MODEL_PREFIX) and input_order != "rgb":
    raise cli.ArgumentError(f"--input_order is for {FULL_MODEL_PREFIX}* archs (whole official "
                            "checkpoints)")
  cli.check_path(src, "--src")
  cli.check_path(dst, "--dst")
  source, target = paths.resolve(src), paths.resolve(dst)
  if not source.is_file():
    why = "is a directory" if source.is_dir() else "no such file"
    raise cli.ArgumentError(f"--src={src}: {why} (a PyTorch .pth/.pt/.bin or .safetensors "
                            "checkpoint)")
  if target.is_file():
    raise cli.ArgumentError(f"--dst={dst}: a file, not a directory")


@contextlib.contextmanager
def _local_file(src: str):
  """A local path of `src`: itself, or for a URL a temporary copy (same file name)."""
  if not paths.is_url(src):
    yield src
    return
  with tempfile.TemporaryDirectory(prefix="protoseg_convert_") as tmp:
    local = os.path.join(tmp, paths.resolve(src).name)
    paths.resolve(src).copy(local)
    yield local


def convert_file(arch: str, src: str, dst: str, *, input_order: str = "rgb",
                 prefix: Optional[str] = None) -> dict:
  """Convert `src` for `arch` and write it to `dst` (DIR/variables, and for whole official
  checkpoints DIR/config_overrides.json); prints what it wrote and returns the variables.

  Raises:
    cli.ArgumentError: an argument names nothing usable (`check_arguments`).
    cli.UserError: `src` is no checkpoint this reads (or names code), or does not fit `arch`.
  """
  src, dst = paths.expand(src), paths.expand(dst)
  check_arguments(arch, src, dst, input_order=input_order, prefix=prefix)
  with _local_file(src) as local:
    try:
      sd = load_torch_file(local)
    except (TorchFileError, MissingDependency, ValueError) as e:  # ValueError: no state_dict
      raise cli.UserError(str(e).replace(local, src)) from None
  overrides = None
  try:
    if arch.startswith(FULL_MODEL_PREFIX):
      backbone = arch[len(FULL_MODEL_PREFIX):]
      variables = convert_protoseg_checkpoint(sd, arch=backbone, input_order=input_order)
      overrides = protoseg_compat_overrides(variables, arch=backbone, input_order=input_order)
    else:
      variables = convert_state_dict(arch, sd, **({} if prefix is None else {"prefix": prefix}))
  except ValueError as e:  # the converters' key and shape checks
    raise cli.UserError(f"{src} does not fit --arch={arch}: {e}") from None
  save_variables(variables, dst)
  n = sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(variables))
  print(f"converted {src} ({arch}): {n} values -> {dst}")
  if overrides is not None:
    num_classes = checkpoint_num_classes(variables)
    path = paths.resolve(dst) / OVERRIDES_FILE
    paths.write_text(path, json.dumps({"num_classes": num_classes, "input_order": input_order,
                                       "overrides": overrides}, indent=2))
    print(f"official model with {num_classes} classes; run it with these config values "
          f"(also in {path}):")
    for k, v in overrides.items():
      print(f"  config.{k} = {v!r}")
  return variables


def main(argv):
  del argv
  missing = [f"--{f} is required" for f in ("arch", "src", "dst") if not getattr(FLAGS, f)]
  if missing:
    cli.fail(missing)
  convert_file(FLAGS.arch, FLAGS.src, FLAGS.dst, input_order=FLAGS.input_order,
               prefix=FLAGS.prefix)
