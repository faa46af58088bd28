"""Low-level PyTorch state_dict helpers, shared by every converter.

  load_torch_file(path)               a state_dict from .pth/.pt/.bin (torch_file: no torch
                                      needed, no pickled code run) or .safetensors
  sub_state_dict(sd, prefix)          THE prefix handling: DataParallel's `module.` stripped,
                                      a sub-model (`backbone.`, `decode_head.`) selected
  StateDictReader                     reads tensors, remembers which keys were used, reports
                                      unknown and missing keys all at once
  to_numpy, conv_kernel, dense_kernel tensors and layouts, PyTorch -> Flax
  conv, dense, layer_norm, batch_norm readers of one PyTorch layer -> Flax params
  VariableBuilder                     collects params / batch_stats under Flax module paths
  finalize(reader, variables, model)  the end of every converter: no unused or missing key,
                                      float32 leaves, paths and shapes equal to the model's
                                      own `jax.eval_shape(init)` (`trees.check_variables`)

Imports nothing from protoseg_jax.models: the family converters next to this
module know the models, this module only knows state_dicts and trees.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from protoseg_jax.convert import torch_file
from protoseg_jax.trees import check_variables, float32_tree

# DataParallel / DistributedDataParallel wrap every key in this.
MODULE_PREFIX = "module."


def sub_state_dict(state_dict: Mapping[str, Any], prefix: str | None = "", *,
                   detect: tuple[str, ...] = (),
                   outside: tuple[str, ...] | None = None) -> tuple[dict, str]:
  """(the entries under `prefix`, with the prefix removed from their keys; the prefix).

  A leading `module.` (DataParallel / DDP) is stripped from every key first.
  prefix=None picks the first of `detect` that starts some key ("" when none
  does). Keys outside the prefix belong to other converters (a segmentor's
  `decode_head.*` for a backbone) and are left out; with `outside` given they
  must start with one of those strings, else a ValueError names them. A
  non-empty prefix that starts no key raises a ValueError.
  """
  sd = {(k[len(MODULE_PREFIX):] if k.startswith(MODULE_PREFIX) else k): v
        for k, v in state_dict.items()}
  if prefix is None:
    prefix = next((p for p in detect if any(k.startswith(p) for k in sd)), "")
  if not prefix:
    return sd, prefix
  out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
  if not out:
    raise ValueError(f"no state_dict key starts with prefix {prefix!r}; first keys: {sorted(sd)[:8]}")
  if outside is not None:
    stray = sorted(k for k in sd if not k.startswith(prefix) and not k.startswith(outside))
    if stray:
      raise ValueError(f"{len(stray)} state_dict keys are neither under {prefix!r} nor under "
                       f"one of {outside}, e.g. {stray[:8]}")
  return out, prefix


class StateDictReader:
  """Read tensors from a state_dict and remember which keys were used.

  `state_dict` holds keys relative to `prefix` (as `sub_state_dict` returns
  them); messages name the full keys, `prefix + key`. `finish()` raises a
  ValueError listing the keys that were never read (unknown keys) and those
  that were asked for but absent (missing keys), so that a silently ignored
  weight cannot slip through. Keys containing one of `ignore` are never unknown.
  """

  def __init__(self, state_dict: Mapping[str, Any], *, prefix: str = "",
               ignore: tuple[str, ...] = ()):
    self._sd = dict(state_dict)
    self.prefix = prefix
    self._used: set[str] = set()
    self._missing: list[str] = []
    self._ignore = ignore

  def has(self, key: str) -> bool:
    return key in self._sd

  def keys(self) -> list[str]:
    return list(self._sd)

  def get(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    """The tensor as NumPy, or None (recorded as missing) when absent."""
    if key not in self._sd:
      self._missing.append(self.prefix + key)
      return None
    self._used.add(key)
    v = to_numpy(self._sd[key])
    if shape is not None and tuple(v.shape) != tuple(shape):
      raise ValueError(f"state_dict[{self.prefix + key!r}] has shape {tuple(v.shape)}, "
                       f"expected {tuple(shape)}")
    return v

  def mark_used(self, key: str):
    self._used.add(key)

  def drop(self, *, prefixes: tuple[str, ...] = (), suffixes: tuple[str, ...] = ()):
    """Consume, unread, every key starting with one of `prefixes` or ending with one of
    `suffixes` (classifier heads, derived buffers: dropped on purpose)."""
    for k in self._sd:
      if k.startswith(prefixes) or k.endswith(suffixes):
        self._used.add(k)

  def finish(self):
    unknown = sorted(self.prefix + k for k in self._sd
                     if k not in self._used and not any(s in k for s in self._ignore))
    msgs = []
    if self._missing:
      msgs.append(f"missing keys ({len(self._missing)}): {_first(self._missing)}")
    if unknown:
      msgs.append(f"unknown keys ({len(unknown)}): {_first(unknown)}")
    if msgs:
      raise ValueError("state_dict does not match the model: " + "; ".join(msgs))


def _first(keys: list[str], limit: int = 12) -> str:
  """The first `limit` keys, and how many more (a wrong --arch misses hundreds)."""
  more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
  return f"{keys[:limit]}{more}"


def to_numpy(t) -> np.ndarray:
  if hasattr(t, "detach"):  # torch.Tensor, without importing torch here
    t = t.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
      t = t.float()
    return t.numpy()
  return np.asarray(t)


# --- layouts (PyTorch -> Flax) ------------------------------------------------

def conv_kernel(w: np.ndarray | None) -> np.ndarray | None:
  """OIHW -> HWIO (grouped/depthwise convs too: Flax wants HW(I/groups)O).

  None (a key the reader found missing) stays None; the reader's finish()
  then reports every missing key at once.
  """
  return None if w is None else np.transpose(w, (2, 3, 1, 0))


def dense_kernel(w: np.ndarray | None) -> np.ndarray | None:
  """[out, in] -> [in, out]; None stays None (see conv_kernel)."""
  return None if w is None else np.transpose(w, (1, 0))


# --- one PyTorch layer -> Flax params -------------------------------------------
# A missing tensor comes back as None and is reported by the reader's finish().

def _weight(r: StateDictReader, torch_name: str, ndim: int, layout: str) -> np.ndarray | None:
  w = r.get(f"{torch_name}.weight")
  if w is not None and w.ndim != ndim:
    raise ValueError(f"state_dict[{r.prefix + torch_name + '.weight'!r}] has shape {w.shape}, "
                     f"expected {layout}")
  return w


def _with_bias(r: StateDictReader, torch_name: str, kernel, bias: bool) -> dict:
  out = {"kernel": kernel}
  if bias:
    out["bias"] = r.get(f"{torch_name}.bias")
  return out


def conv(r: StateDictReader, torch_name: str, *, bias: bool = True) -> dict:
  """`nn.Conv` params {"kernel" HWIO[, "bias"]} of the torch Conv2d `torch_name`."""
  w = _weight(r, torch_name, 4, "a conv weight [O, I, kh, kw]")
  return _with_bias(r, torch_name, conv_kernel(w), bias)


def dense(r: StateDictReader, torch_name: str, *, bias: bool = True) -> dict:
  """`nn.Dense` params {"kernel" [in, out][, "bias"]} of the torch Linear `torch_name`."""
  w = _weight(r, torch_name, 2, "a linear weight [out, in]")
  return _with_bias(r, torch_name, dense_kernel(w), bias)


def layer_norm(r: StateDictReader, torch_name: str) -> dict:
  return {"scale": r.get(f"{torch_name}.weight"), "bias": r.get(f"{torch_name}.bias")}


def batch_norm(r: StateDictReader, torch_name: str) -> tuple[dict, dict]:
  """(params, batch_stats) of a BatchNorm; num_batches_tracked is consumed."""
  if r.has(f"{torch_name}.num_batches_tracked"):
    r.mark_used(f"{torch_name}.num_batches_tracked")
  params = {"scale": r.get(f"{torch_name}.weight"), "bias": r.get(f"{torch_name}.bias")}
  stats = {"mean": r.get(f"{torch_name}.running_mean"), "var": r.get(f"{torch_name}.running_var")}
  return params, stats


def _put(tree: dict, path: tuple[str, ...], value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


class VariableBuilder:
  """Collects converted `params` / `batch_stats` under Flax module paths (tuples of names)."""

  def __init__(self, reader: StateDictReader):
    self.r = reader
    self.params: dict = {}
    self.stats: dict = {}

  def conv(self, path: tuple[str, ...], torch_name: str, *, bias: bool = False):
    """A conv (by default without bias: it is followed by a BatchNorm)."""
    _put(self.params, path, conv(self.r, torch_name, bias=bias))

  def bn(self, path: tuple[str, ...], torch_name: str):
    p, s = batch_norm(self.r, torch_name)
    _put(self.params, path, p)
    _put(self.stats, path, s)

  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.stats}


def finalize(reader: StateDictReader, variables: dict, model=None, *,
             what: str = "converted variables do not match the Flax model") -> dict:
  """`variables` as float32 after `reader.finish()`; with a Flax `model`, also checked
  against its own variable tree (`trees.check_variables`: paths and shapes, no compute)."""
  reader.finish()
  variables = float32_tree(variables)
  if model is not None:
    check_variables(model, variables, what=what)
  return variables


SAFETENSORS_PIP = "pip install safetensors (it comes with pip install -r requirements.txt)"


class MissingDependency(ImportError):
  """A package a file format needs is not installed; the message names the pip command."""


def load_torch_file(path: str) -> dict:
  """A state_dict from .pth/.pt/.bin (`torch_file.load`: no torch, no pickled code run) or
  .safetensors, `module.` stripped.

  Raises:
    FileNotFoundError: no such file.
    torch_file.TorchFileError: not a checkpoint this reads (or it names code: refused).
    ValueError: the file holds no state_dict.
    MissingDependency: .safetensors without the safetensors package.
  """
  path = os.path.expanduser(os.fspath(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist")
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file
    except ImportError:
      raise MissingDependency(f"reading {path} needs the safetensors package: "
                              f"{SAFETENSORS_PIP}") from None
    return dict(load_file(path))
  obj = torch_file.load(path)
  for key in ("state_dict", "model", "model_state"):
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
      obj = obj[key]
      break
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a {type(obj).__name__}, expected a state_dict (a dict of "
                     "tensors, or one under 'state_dict', 'model' or 'model_state')")
  return sub_state_dict(obj)[0]
