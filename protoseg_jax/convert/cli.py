"""PyTorch state_dict -> Flax variables.

Python API (protoseg_jax.convert):
  convert_state_dict(arch, state_dict) -> {"params", "batch_stats"?}    a backbone
  convert_protoseg_checkpoint(state_dict, arch="hrnet_w48")             a whole official
      -> {"params", "batch_stats", "prototypes"?}                       ProtoSeg / softmax
                                                                        HRNet segmentor
  protoseg_compat_overrides(variables, arch) -> {dotted config key: value}
CLI:
  python -m protoseg_jax.convert --arch ARCH --src FILE.pth|.safetensors --dst DIR [--prefix backbone.]
  python -m protoseg_jax.convert --arch protoseg_hrnet_w48 --src CKPT.pth --dst DIR

Each backbone family has its key mapping in protoseg_jax.convert.<family>;
convert_state_dict dispatches by arch name. An arch `protoseg_<hrnet arch>`
converts a full official (openseg) checkpoint, HRNet_W48_Proto or the
HRNet_W48 softmax baseline, into the variables of the Segmentor (see
docs/convert.md).
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np

from protoseg_jax.trainer.checkpoints import save_variables
from protoseg_jax.convert.dispatch import convert_state_dict
from protoseg_jax.convert.official import (FULL_MODEL_PREFIX, INPUT_ORDERS, checkpoint_num_classes,
                                           convert_protoseg_checkpoint, protoseg_compat_overrides)
from protoseg_jax.convert.state_dict import load_torch_file


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m protoseg_jax.convert", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--arch", required=True,
                 help="backbone arch name (timm naming), e.g. hrnet_w48; or "
                      f"{FULL_MODEL_PREFIX}<hrnet arch>, e.g. {FULL_MODEL_PREFIX}hrnet_w48, for a "
                      "whole official ProtoSeg (HRNet_W48_Proto) or softmax HRNet_W48 checkpoint")
  p.add_argument("--src", required=True, help="PyTorch .pth/.pt/.bin or .safetensors file")
  p.add_argument("--dst", required=True, help="output directory (orbax)")
  p.add_argument("--input_order", choices=INPUT_ORDERS, default="rgb",
                 help=f"{FULL_MODEL_PREFIX}* only: 'rgb' (default) folds openseg's BGR input into "
                      "the stem conv so the model reads this project's RGB images (with the "
                      "dataset statistics it prints); 'bgr' keeps the weights as stored, for runs "
                      "with dataset.input_order='bgr' (openseg's input; the official recipe)")
  p.add_argument("--prefix", default=None,
                 help="backbones only: read the backbone under this key prefix, e.g. 'backbone.' "
                      "for the backbone of an mmseg or official ProtoSeg segmentation checkpoint "
                      "(default: the family's own default; Swin and MiT detect it)")
  args = p.parse_args(argv)
  sd = load_torch_file(args.src)
  overrides = None
  if args.arch.startswith(FULL_MODEL_PREFIX):
    if args.prefix is not None:
      p.error(f"--prefix is for backbones; --arch {args.arch} reads the whole checkpoint")
    arch = args.arch[len(FULL_MODEL_PREFIX):]
    variables = convert_protoseg_checkpoint(sd, arch=arch, input_order=args.input_order)
    overrides = protoseg_compat_overrides(variables, arch=arch, input_order=args.input_order)
  else:
    if args.input_order != "rgb":
      p.error(f"--input_order is for {FULL_MODEL_PREFIX}* archs (whole official checkpoints)")
    kwargs = {} if args.prefix is None else {"prefix": args.prefix}
    variables = convert_state_dict(args.arch, sd, **kwargs)
  save_variables(variables, args.dst)
  n = sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(variables))
  print(f"converted {args.src} ({args.arch}): {n} values -> {args.dst}")
  if overrides is not None:
    num_classes = checkpoint_num_classes(variables)
    with open(os.path.join(args.dst, "config_overrides.json"), "w") as f:
      json.dump({"num_classes": num_classes, "input_order": args.input_order,
                 "overrides": overrides}, f, indent=2)
    print(f"official model with {num_classes} classes; run it with these config values "
          f"(also in {os.path.join(args.dst, 'config_overrides.json')}):")
    for k, v in overrides.items():
      print(f"  config.{k} = {v!r}")
