"""PyTorch state_dict -> Flax variables.

Python API: `convert_state_dict(arch, state_dict) -> {"params": ..., "batch_stats": ...}`.
CLI: `python -m protoseg_jax.convert --arch ARCH --src FILE.pth|.safetensors --dst DIR`.

Each backbone family module (protoseg_jax.models.<family>) implements its own
key mapping with the helpers below; this module dispatches by arch name and
owns file loading and saving.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np


class StateDictReader:
  """Read tensors from a state_dict and remember which keys were used.

  `finish()` raises a ValueError listing keys that were never read (unknown
  keys) so that a silently ignored weight cannot slip through. Reading a key
  that is absent raises KeyError-like ValueError listing what was asked.
  """

  def __init__(self, state_dict: Mapping[str, Any], *, prefix: str = "",
               ignore: tuple[str, ...] = ()):
    self._sd = {k: v for k, v in state_dict.items()}
    self.prefix = prefix
    self._used: set[str] = set()
    self._missing: list[str] = []
    self._ignore = ignore

  def has(self, key: str) -> bool:
    return self.prefix + key in self._sd

  def keys(self):
    return [k[len(self.prefix):] for k in self._sd if k.startswith(self.prefix)]

  def get(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    full = self.prefix + key
    if full not in self._sd:
      self._missing.append(full)
      return None
    self._used.add(full)
    v = to_numpy(self._sd[full])
    if shape is not None and tuple(v.shape) != tuple(shape):
      raise ValueError(f"state_dict[{full!r}] has shape {tuple(v.shape)}, expected {tuple(shape)}")
    return v

  def mark_used(self, key: str):
    self._used.add(self.prefix + key)

  def finish(self):
    unknown = sorted(k for k in self._sd
                     if k not in self._used and not any(s in k for s in self._ignore))
    msgs = []
    if self._missing:
      msgs.append(f"missing keys ({len(self._missing)}): {self._missing}")
    if unknown:
      msgs.append(f"unknown keys ({len(unknown)}): {unknown}")
    if msgs:
      raise ValueError("state_dict does not match the model: " + "; ".join(msgs))


def to_numpy(t) -> np.ndarray:
  if hasattr(t, "detach"):  # torch.Tensor, without importing torch here
    t = t.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
      t = t.float()
    return t.numpy()
  return np.asarray(t)


# --- layout helpers (PyTorch -> Flax) ---------------------------------------

def conv_kernel(w: np.ndarray | None) -> np.ndarray | None:
  """OIHW -> HWIO (grouped/depthwise convs too: Flax wants HW(I/groups)O).

  None (a key the reader found missing) stays None; the reader's finish()
  then reports every missing key at once.
  """
  return None if w is None else np.transpose(w, (2, 3, 1, 0))


def dense_kernel(w: np.ndarray | None) -> np.ndarray | None:
  """[out, in] -> [in, out]; None stays None (see conv_kernel)."""
  return None if w is None else np.transpose(w, (1, 0))


def conv(r: StateDictReader, torch_name: str, *, bias: bool = True) -> dict:
  out = {"kernel": conv_kernel(r.get(f"{torch_name}.weight"))}
  if bias:
    out["bias"] = r.get(f"{torch_name}.bias")
  return out


def dense(r: StateDictReader, torch_name: str, *, bias: bool = True) -> dict:
  out = {"kernel": dense_kernel(r.get(f"{torch_name}.weight"))}
  if bias:
    out["bias"] = r.get(f"{torch_name}.bias")
  return out


def layer_norm(r: StateDictReader, torch_name: str) -> dict:
  return {"scale": r.get(f"{torch_name}.weight"), "bias": r.get(f"{torch_name}.bias")}


def batch_norm(r: StateDictReader, torch_name: str) -> tuple[dict, dict]:
  """(params, batch_stats) of a BatchNorm; num_batches_tracked is consumed."""
  if r.has(f"{torch_name}.num_batches_tracked"):
    r.mark_used(f"{torch_name}.num_batches_tracked")
  params = {"scale": r.get(f"{torch_name}.weight"), "bias": r.get(f"{torch_name}.bias")}
  stats = {"mean": r.get(f"{torch_name}.running_mean"), "var": r.get(f"{torch_name}.running_var")}
  return params, stats


def strip_prefix(state_dict: Mapping[str, Any], prefixes=("module.",)) -> dict:
  out = {}
  for k, v in state_dict.items():
    for p in prefixes:
      if k.startswith(p):
        k = k[len(p):]
    out[k] = v
  return out


# --- dispatch -----------------------------------------------------------------

def convert_state_dict(arch: str, state_dict: Mapping[str, Any], **kwargs) -> dict:
  """Flax variables ({"params", "batch_stats"?}) for backbone `arch`."""
  from protoseg_jax import models
  return models.backbone_family(arch).convert_state_dict(arch, state_dict, **kwargs)


def load_torch_file(path: str) -> dict:
  """A state_dict from .pth/.pt/.bin (torch) or .safetensors."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return dict(load_file(path))
  import torch  # only needed for .pth files
  obj = torch.load(path, map_location="cpu", weights_only=False)
  for key in ("state_dict", "model", "model_state"):
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
      obj = obj[key]
      break
  if not isinstance(obj, dict):
    raise ValueError(f"{path!r} holds a {type(obj).__name__}, expected a state_dict")
  return strip_prefix(obj)


def save_variables(variables: dict, dst: str):
  """Write converted variables with orbax (restorable by `load_variables`)."""
  import orbax.checkpoint as ocp
  dst = os.path.abspath(dst)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(dst, "variables"), variables, force=True)


def load_variables(path: str) -> dict:
  import orbax.checkpoint as ocp
  path = os.path.abspath(path)
  sub = os.path.join(path, "variables")
  if os.path.isdir(sub):
    path = sub
  if not os.path.isdir(path):
    raise FileNotFoundError(f"converted weights {path!r} not found; create them with "
                            "`python -m protoseg_jax.convert --arch ARCH --src FILE --dst DIR`")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path)


def main(argv=None):
  import argparse
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--arch", required=True, help="backbone arch name (timm naming), e.g. hrnet_w48")
  p.add_argument("--src", required=True, help="PyTorch .pth/.pt/.bin or .safetensors file")
  p.add_argument("--dst", required=True, help="output directory (orbax)")
  args = p.parse_args(argv)
  sd = load_torch_file(args.src)
  variables = convert_state_dict(args.arch, sd)
  save_variables(variables, args.dst)
  n = sum(int(np.prod(np.shape(x))) for x in __import__("jax").tree_util.tree_leaves(variables))
  print(f"converted {args.src} ({args.arch}): {n} values -> {args.dst}")


if __name__ == "__main__":
  main()
