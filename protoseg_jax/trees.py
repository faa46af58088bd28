"""Small helpers on pytrees of variables: dtype casts and shape checks.

Low-level on purpose: weight conversion, checkpoint loading and the trainer
all compare variable trees with a model's own, and none of them should have
to import the others for that. Imports only jax and numpy.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def float32_tree(tree):
  """Every leaf as a float32 NumPy array (converted variables are stored in f32)."""
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), tree)


def _is_shape(x) -> bool:
  return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def _leaf_shape(x) -> tuple[int, ...]:
  if _is_shape(x):
    return x
  return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def tree_shapes(tree) -> dict[str, tuple[int, ...]]:
  """{path: shape} of a tree whose leaves are arrays, ShapeDtypeStructs or shape tuples."""
  return {jax.tree_util.keystr(p): _leaf_shape(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree, is_leaf=_is_shape)}


def _listed(items: list, limit: int = 20) -> str:
  more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
  return f"{items[:limit]}{more}"


def check_tree_shapes(got, want, what: str):
  """Raise `ValueError("{what}: missing [...]; unexpected [...]; wrong shapes [...]")`
  unless the trees `got` and `want` have the same paths and leaf shapes (leaves:
  arrays, ShapeDtypeStructs or shape tuples; long lists are cut at 20 entries)."""
  g, w = tree_shapes(got), tree_shapes(want)
  missing = sorted(w.keys() - g.keys())
  extra = sorted(g.keys() - w.keys())
  bad = [(k, g[k], w[k]) for k in sorted(g.keys() & w.keys()) if g[k] != w[k]]
  if missing or extra or bad:
    raise ValueError(f"{what}: missing {_listed(missing)}; unexpected {_listed(extra)}; "
                     f"wrong shapes (path, got, expected) {_listed(bad)}")


def check_variables(module, variables: Mapping[str, Any], image_hw: tuple[int, int] = (64, 64),
                    what: str = "converted variables do not match the Flax model"):
  """`check_tree_shapes` of `variables` against every collection of `module.init` (no compute)."""
  abstract = jax.eval_shape(lambda: module.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)},
      jnp.zeros((1, *image_hw, 3), jnp.float32)))
  check_tree_shapes(variables, dict(abstract), what)
