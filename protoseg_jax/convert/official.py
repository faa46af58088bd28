"""Whole official ProtoSeg / openseg HRNet segmentors -> `Segmentor` variables.

  convert_protoseg_checkpoint(state_dict, arch="hrnet_w48")   HRNet_W48_Proto (ProtoSeg) or
      -> {"params", "batch_stats", "prototypes"?}              the softmax HRNet_W48 baseline
  protoseg_compat_overrides(variables, arch) -> {dotted config key: value}
  checkpoint_num_classes(variables) -> C
  apply_overrides(config, overrides)                           sets them on a config

The backbone goes through `protoseg_jax.convert.hrnet`; the keys of the heads
and the config switches are documented in docs/convert.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from protoseg_jax.convert.hrnet import convert_hrnet_head
from protoseg_jax.convert.hrnet import convert_state_dict as convert_hrnet
from protoseg_jax.convert.state_dict import (StateDictReader, check_variables, conv_kernel,
                                             float32_tree, layer_norm, sub_state_dict)
from protoseg_jax.models import IMAGENET_MEAN, IMAGENET_STD, hrnet
from protoseg_jax.models.segmentor import Segmentor
from protoseg_jax.validate import INPUT_ORDERS

# CLI arch prefix for whole official checkpoints: `--arch protoseg_hrnet_w48`.
FULL_MODEL_PREFIX = "protoseg_"
# The official ProjectionHead assigns `self.proj = self.mlp2 = Sequential(...)`,
# so every projection tensor is saved twice; the `mlp2` copies are checked and dropped.
_PROJ_ALIASES = ("proj_head.proj.", "proj_head.mlp2.")
# Fixed by the official model code, independent of the checkpoint.
_COMPAT_FUSION = "bilinear_align_corners"
_COMPAT_PROJ_NORM_AXIS = "width"
# openseg reads images with cv2 in BGR order ("input_mode": "BGR") and normalises
# channel i with the ImageNet statistics listed in RGB order (x / 255 - mean[i]) / std[i]:
# B with R's statistics and R with B's. INPUT_ORDERS: "rgb" flips the stem conv's input
# channels so the model reads RGB images normalised with the reversed statistics below
# (exactly equivalent); "bgr" keeps the weights as stored (the model wants openseg's input).
# The statistics openseg applies to its channels B, G, R. Since it applies the RGB-listed
# ImageNet statistics to BGR channel indices, these ARE models.IMAGENET_MEAN / IMAGENET_STD
# as tuples (the numbers are written only there).
OFFICIAL_MEAN_BGR_INPUT = tuple(IMAGENET_MEAN)
OFFICIAL_STD_BGR_INPUT = tuple(IMAGENET_STD)


def _shape(a) -> tuple[int, ...] | None:
  return None if a is None else tuple(np.shape(a))


def _checkpoint_head_kind(sd: Mapping[str, Any]) -> str:
  if "prototypes" in sd:
    return "proto"
  if "cls_head.3.weight" in sd:
    return "linear"
  heads = sorted(k for k in sd if not k.startswith("backbone."))[:12]
  raise ValueError("not an official ProtoSeg (HRNet_W48_Proto: `prototypes`, `proj_head.*`) or "
                   "softmax HRNet_W48 (`cls_head.3.weight`) checkpoint; its non-backbone keys "
                   f"start with {heads}")


def _proj_tensor(r: StateDictReader, suffix: str) -> np.ndarray | None:
  """`proj_head.proj.{suffix}`, checked against its `mlp2` alias (then dropped)."""
  main, alias = (p + suffix for p in _PROJ_ALIASES)
  if not r.has(main) and r.has(alias):  # a re-saved dict that kept only the alias
    main, alias = alias, main
  value = r.get(main)
  if r.has(alias):
    dup = r.get(alias)
    if value is not None and (dup.shape != value.shape or not np.array_equal(dup, value)):
      diff = (f"shape {dup.shape} vs {value.shape}" if dup.shape != value.shape
              else f"max |difference| {float(np.max(np.abs(dup - value))):.3g}")
      raise ValueError(
          f"state_dict[{r.prefix + alias!r}] differs from state_dict[{r.prefix + main!r}] "
          f"({diff}); the official ProjectionHead stores one tensor under both names "
          "(`self.proj = self.mlp2`), so they must be equal")
  return value


def _conv1x1(w: np.ndarray | None, name: str, d_in: int) -> np.ndarray | None:
  if w is None:
    return None
  if w.ndim != 4 or w.shape[1:] != (d_in, 1, 1):
    raise ValueError(f"state_dict[{name!r}] has shape {w.shape}, expected a 1x1 conv "
                     f"[out, {d_in}, 1, 1]")
  return conv_kernel(w)


def _convert_proto_head(r: StateDictReader, d_in: int) -> tuple[dict, np.ndarray | None]:
  """params of heads.ProtoSegHead and the [C, M, D] prototypes."""
  w1 = _conv1x1(_proj_tensor(r, "0.weight"), "proj_head.proj.0.weight", d_in)
  b1 = _proj_tensor(r, "0.bias")
  w2 = _conv1x1(_proj_tensor(r, "2.weight"), "proj_head.proj.2.weight", d_in)
  b2 = _proj_tensor(r, "2.bias")
  feat_norm = layer_norm(r, "feat_norm")
  mask_norm = layer_norm(r, "mask_norm")
  protos = r.get("prototypes")
  if protos is not None:
    if protos.ndim != 3:
      raise ValueError(f"state_dict['prototypes'] has shape {protos.shape}, expected "
                       "[num_classes, num_prototypes, embed_dim]")
    c, _, d = protos.shape
    want = {"proj_head.proj.0.weight": (_shape(w1), (1, 1, d_in, d_in)),
            "proj_head.proj.0.bias": (_shape(b1), (d_in,)),
            "proj_head.proj.2.weight": (_shape(w2), (1, 1, d_in, d)),
            "proj_head.proj.2.bias": (_shape(b2), (d,)),
            "feat_norm.weight": (_shape(feat_norm["scale"]), (d,)),
            "feat_norm.bias": (_shape(feat_norm["bias"]), (d,)),
            "mask_norm.weight": (_shape(mask_norm["scale"]), (c,)),
            "mask_norm.bias": (_shape(mask_norm["bias"]), (c,))}
    for name, (got, expect) in want.items():
      if got is not None and got != expect:
        raise ValueError(f"state_dict[{name!r}] has shape {got} (Flax layout), expected {expect} "
                         f"for prototypes of shape {protos.shape} and {d_in} head channels")
  params = {"proj_conv1": {"kernel": w1, "bias": b1}, "proj_conv2": {"kernel": w2, "bias": b2},
            "feat_norm": feat_norm, "mask_norm": mask_norm}
  return params, protos


def _convert_linear_classifier(r: StateDictReader, d_in: int) -> dict:
  """params of heads.LinearHead from the softmax baseline's `cls_head.3` (1x1, no bias).

  The Segmentor's LinearHead has a bias; a bias-free checkpoint gets zeros.
  """
  w = _conv1x1(r.get("cls_head.3.weight"), "cls_head.3.weight", d_in)
  if r.has("cls_head.3.bias"):
    b = r.get("cls_head.3.bias")
  else:
    b = None if w is None else np.zeros((w.shape[-1],), np.float32)
  return {"classifier": {"kernel": w, "bias": b}}


def _segmentor(arch: str, head: str, num_classes: int, num_prototypes: int = 10,
               embed_dim: int | None = None):
  """The Segmentor an official checkpoint of `arch` runs in, with the compat switches."""
  head_kwargs = ()
  if head == "proto":
    head_kwargs = (("embed_dim", embed_dim), ("num_prototypes", num_prototypes),
                   ("proj_norm_axis", _COMPAT_PROJ_NORM_AXIS), ("use_mask_norm", True))
  return Segmentor(num_classes=num_classes, backbone=arch, decoder="hrnet", head=head,
                   backbone_kwargs=(("fusion", _COMPAT_FUSION),), head_kwargs=head_kwargs)


def convert_protoseg_checkpoint(state_dict: Mapping[str, Any], *, arch: str = "hrnet_w48",
                                input_order: str = "rgb", check: bool = True) -> dict:
  """Segmentor variables from an official openseg/ProtoSeg HRNet segmentation checkpoint.

  Accepts `HRNet_W48_Proto` (ProtoSeg: keys `backbone.*`, `cls_head.0/1.*`,
  `proj_head.proj.0/2.*` + their `proj_head.mlp2.*` aliases, `feat_norm.*`,
  `mask_norm.*`, `prototypes` [C, M, D]) and the softmax baseline `HRNet_W48`
  (`cls_head.3.weight`, a bias-free 1x1 classifier, converted with a zero
  bias), with or without a `module.` prefix. `arch` is the backbone
  (hrnet_w48 for every published checkpoint; smaller HRNets for tests).

  Returns {"params": {"backbone", "decoder", "head"}, "batch_stats":
  {"backbone", "decoder"}, "prototypes": {"head": {"prototypes"}}} (no
  "prototypes" for the softmax baseline) for the Segmentor with
  decoder="hrnet" and head="proto" / "linear"; run it with the settings of
  `protoseg_compat_overrides` for outputs equal to the official model's.
  input_order="rgb" (default) folds openseg's BGR input into the stem conv
  (its kernel's input channels reversed): the model then reads RGB images
  normalised with the reversed statistics of `protoseg_compat_overrides`;
  "bgr" keeps the stem as stored (inputs must then be BGR as in openseg).
  Every key is used or explicitly dropped (`mlp2` aliases, after checking
  they equal the `proj` tensors; the backbone converter's ImageNet-head keys);
  unknown or missing keys raise a ValueError listing them. `check` also
  compares the result with the Segmentor's variable tree (shapes, paths).
  """
  if arch not in hrnet.CONFIGS:
    raise ValueError(f"arch {arch!r} is not an HRNet; official ProtoSeg checkpoints use "
                     f"hrnet_w48 (known: {sorted(hrnet.CONFIGS)})")
  if input_order not in INPUT_ORDERS:
    raise ValueError(f"input_order={input_order!r}; expected one of {INPUT_ORDERS}")
  sd, _ = sub_state_dict(state_dict)
  kind = _checkpoint_head_kind(sd)
  d_in = sum(hrnet.branch_channels(arch))
  w = sd.get("cls_head.0.weight")
  if w is not None and _shape(w) != (d_in, d_in, 3, 3):
    raise ValueError(f"state_dict['cls_head.0.weight'] has shape {_shape(w)}, expected "
                     f"{(d_in, d_in, 3, 3)} for arch {arch!r} (branches "
                     f"{hrnet.branch_channels(arch)}); is the arch right? The official "
                     "checkpoints are hrnet_w48 (720 channels)")
  backbone = convert_hrnet(arch, sd, prefix="backbone.", check=check)
  if input_order == "rgb":  # HWIO: reverse I, so RGB input meets the weights of B, G, R
    stem = backbone["params"]["conv1"]
    stem["kernel"] = np.ascontiguousarray(np.asarray(stem["kernel"])[:, :, ::-1, :])
  r = StateDictReader({k: v for k, v in sd.items() if not k.startswith("backbone.")})
  dec_params, dec_stats = convert_hrnet_head(r, "cls_head.")
  protos = None
  if kind == "proto":
    head, protos = _convert_proto_head(r, d_in)
  else:
    head = _convert_linear_classifier(r, d_in)
  r.finish()

  variables = {
      "params": float32_tree({"backbone": backbone["params"], "decoder": dec_params, "head": head}),
      "batch_stats": float32_tree({"backbone": backbone["batch_stats"], "decoder": dec_stats}),
  }
  if kind == "proto":
    variables["prototypes"] = {"head": {"prototypes": np.asarray(protos, np.float32)}}
  if check:
    check_variables(_segmentor(arch, **_head_shape(variables)), variables,
                    what="converted variables do not match the Segmentor")
  return variables


def _head_shape(variables: Mapping[str, Any]) -> dict:
  """num_classes (and num_prototypes, embed_dim) of converted Segmentor variables."""
  if "prototypes" in variables:
    c, m, d = np.shape(variables["prototypes"]["head"]["prototypes"])
    return {"head": "proto", "num_classes": int(c), "num_prototypes": int(m), "embed_dim": int(d)}
  head = variables["params"].get("head", {})
  if "classifier" not in head:
    raise ValueError("variables hold neither ProtoSeg prototypes nor a linear classifier "
                     f"(params/head has {sorted(head)})")
  return {"head": "linear", "num_classes": int(np.shape(head["classifier"]["kernel"])[-1])}


def checkpoint_num_classes(variables: Mapping[str, Any]) -> int:
  """C of converted official variables (must equal the dataset's class count)."""
  return _head_shape(variables)["num_classes"]


def protoseg_compat_overrides(variables: Mapping[str, Any], *, arch: str = "hrnet_w48",
                              input_order: str = "rgb") -> dict:
  """Config values (dotted keys) under which converted official weights give the official outputs.

  `variables` from `convert_protoseg_checkpoint` with the same `input_order`.
  Besides these, the dataset must have `checkpoint_num_classes(variables)`
  classes (19 for Cityscapes). input_order="rgb": RGB images normalised with
  the reversed statistics; "bgr": `dataset.input_order="bgr"` (the pipeline
  feeds BGR images, as openseg) with the statistics as openseg lists them.
  """
  if input_order not in INPUT_ORDERS:
    raise ValueError(f"input_order={input_order!r}; expected one of {INPUT_ORDERS}")
  shape = _head_shape(variables)
  out = {}
  out["dataset.input_order"] = input_order
  if input_order == "rgb":  # RGB channel c gets the statistics openseg applies to it
    out["dataset.mean"] = tuple(reversed(OFFICIAL_MEAN_BGR_INPUT))
    out["dataset.std"] = tuple(reversed(OFFICIAL_STD_BGR_INPUT))
  else:  # BGR images, channel i normalised with the listed mean[i] / std[i], as openseg
    out["dataset.mean"] = tuple(OFFICIAL_MEAN_BGR_INPUT)
    out["dataset.std"] = tuple(OFFICIAL_STD_BGR_INPUT)
  out.update({
      "model.backbone": arch,
      "model.backbone_kwargs.fusion": _COMPAT_FUSION,  # openseg HRNet fuse upsampling
      "model.decoder": "hrnet",
      "model.head": shape["head"],
      "model.aux_head": False,
      "model.align_corners": True,  # official logits upsampling (F.interpolate align_corners=True)
  })
  if shape["head"] == "proto":
    out.update({
        "protoseg.num_prototypes": shape["num_prototypes"],
        "protoseg.embed_dim": shape["embed_dim"],
        "protoseg.proj_norm_axis": _COMPAT_PROJ_NORM_AXIS,  # official L2 norm along width
        "protoseg.use_mask_norm": True,
    })
  return out


def apply_overrides(config, overrides: Mapping[str, Any]):
  """Set dotted keys on an ml_collections config in place (new keys allowed, also when
  the config is locked, e.g. `model.backbone_kwargs.fusion`); returns the config."""
  with config.unlocked():
    for key, value in overrides.items():
      *path, last = key.split(".")
      node = config
      for p in path:
        node = node[p]
      node[last] = value
  return config
