"""The ProtoSeg head, and whole segmentors, inside Flax NNX models.

  from flax import nnx
  from protoseg_jax import nnx_bridge

  head = nnx_bridge.ProtoSegHead(num_classes=C, in_features=D_in, num_prototypes=M,
                                 embed_dim=D, rngs=nnx.Rngs(0, prototypes=1))
  out = head(features, labels, train=True)    # learns the prototypes, in place
  out = head(features)                        # inference: out.logits [B, h, w, C]

  seg = nnx_bridge.segmentor(model, variables)   # a Linen Segmentor and its variables
                                                 # (trainer.run.load_run(DIR): a trained run)
  out = seg(images)                              # eval; seg(images, labels, train=True) learns
  variables = nnx_bridge.linen_variables(seg)    # back to Linen (checkpoints, export)

Prototypes are an NNX variable type of their own, `Prototypes`, registered
for Linen's collection "prototypes" (`nnx.register_variable_name`), so that
`nnx.bridge` maps the two both ways (as "params" <-> `nnx.Param` and
"batch_stats" <-> `nnx.BatchStat`). They are never `nnx.Param`s: an
`nnx.Optimizer(model, tx, wrt=nnx.Param)` leaves them alone, the gradient
through them is stopped (as in Linen), and a forward pass with labels and
train=True writes their momentum update (`prototypes.learn_prototypes`:
Sinkhorn assignment, EMA) into the variables, as Linen's
`mutable=["prototypes"]` does.

`ProtoSegHead` is a thin NNX module of its own around the Linen
`heads.ProtoSegHead` (its parameters `nnx.Param`s, its prototypes
`Prototypes`); each learning call draws one key from the `prototypes` stream
of the `nnx.Rngs` it was built with (the Gumbel assignment's noise), so that
an NNX model and a Linen one fed the same keys learn the same prototypes.
`segmentor` wraps a whole Linen `Segmentor` with `nnx.bridge.ToNNX` (every
collection mapped by name: params, batch_stats, prototypes).

The library: jax and flax only.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from flax import nnx
from flax.nnx.bridge import variables as bridge_variables
import jax
import jax.numpy as jnp

from protoseg_jax import heads

COLLECTION = "prototypes"


class Prototypes(nnx.Variable):
  """The ProtoSeg prototypes [C, M, D] (Linen collection "prototypes"):
  state updated by the head's prototype learning, not by an optimizer."""


def _register():
  """Maps Linen's "prototypes" collection to `Prototypes` (once per process)."""
  try:
    known = nnx.variable_type_from_name(COLLECTION)
  except ValueError:
    known = None
  same = known is not None and (known.__module__, known.__qualname__) == (
      Prototypes.__module__, Prototypes.__qualname__)     # this module, imported again
  if known is not None and known is not Prototypes and not same:
    raise ValueError(f"the Linen collection {COLLECTION!r} is already mapped to {known}")
  if known is not Prototypes:
    nnx.register_variable_name(COLLECTION, Prototypes, overwrite=True)


_register()


def _values(tree):
  """Variables -> their values (a nested dict of arrays)."""
  return jax.tree.map(lambda v: v.get_value(), tree,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


class ProtoSegHead(nnx.Module):
  """`heads.ProtoSegHead` as an NNX module.

  Args:
    num_classes: C.
    in_features: channels of the feature maps it is called on.
    rngs: `nnx.Rngs`; `params` initialises the projection and the prototypes,
      `prototypes` (or `default`) gives the key of each learning call.
    **head_kwargs: `heads.ProtoSegHead`'s (num_prototypes, embed_dim, gamma,
      assignment, ...).
  """

  def __init__(self, num_classes: int, in_features: int, *, rngs: nnx.Rngs, **head_kwargs):
    self.linen = heads.ProtoSegHead(num_classes, **head_kwargs)
    # One compiled init, not an op-by-op one (a compile per operation on CPU).
    variables = jax.jit(self.linen.init)({"params": rngs.params()},
                                         jnp.zeros((1, 1, 1, int(in_features)), jnp.float32))
    self.params = nnx.data(jax.tree.map(nnx.Param, dict(variables["params"])))
    self.prototypes = Prototypes(variables[COLLECTION]["prototypes"])
    self.rngs = rngs

  def linen_variables(self) -> dict:
    """{"params", "prototypes"} of the Linen head (`heads.ProtoSegHead.apply`)."""
    return {"params": _values(self.params),
            COLLECTION: {"prototypes": self.prototypes.get_value()}}

  def __call__(self, features: jnp.ndarray, labels: Optional[jnp.ndarray] = None, *,
               train: bool = False, update: Any = True, train_prototypes: Any = False):
    """`heads.ProtoSegHead.__call__`: features [B, h, w, in_features]; labels
    [B, H, W] with train=True learn the prototypes (written into
    `self.prototypes`). Returns the head's output (.logits [B, h, w, C],
    .proto_targets, .proto_lse, .proto_target_logits, ...)."""
    variables = self.linen_variables()
    if labels is not None and train:
      out, updates = self.linen.apply(variables, features, labels, train=True, update=update,
                                      train_prototypes=train_prototypes, mutable=[COLLECTION],
                                      rngs={"prototypes": self.rngs.prototypes()})
      self.prototypes.set_value(updates[COLLECTION]["prototypes"])
      return out
    return self.linen.apply(variables, features, labels, train=train, update=update,
                            train_prototypes=train_prototypes)


def segmentor(model, variables: Optional[Mapping] = None, *, sample_images=None,
              rngs: Optional[nnx.Rngs] = None) -> nnx.bridge.ToNNX:
  """A Linen `Segmentor` (any Linen model) as an NNX module (`nnx.bridge.ToNNX`).

  variables: its Linen variables ({"params", "batch_stats", "prototypes"},
  e.g. of `trainer.run.load_run`), loaded as nnx.Param / nnx.BatchStat /
  Prototypes; None: initialised from `sample_images` with `rngs`.

  Call it as the Linen model: `seg(images)` (eval; `.logits`), and to train
  `seg(images, labels, train=True, mutable=["batch_stats", "prototypes"],
  rngs=nnx.Rngs(dropout=..., prototypes=...))`: the updated collections are
  written back into its variables.
  """
  bridged = nnx.bridge.ToNNX(model, rngs=rngs if rngs is not None else nnx.Rngs(0))
  if variables is None:
    if sample_images is None:
      raise ValueError("give variables= (a run's) or sample_images= to initialise from")
    return bridged.lazy_init(sample_images)
  variables = {k: v for k, v in dict(variables).items()}
  for name, value in bridge_variables.linen_vars_to_nnx_attrs(variables).items():
    setattr(bridged, name, nnx.data(value))
  return bridged


def linen_variables(bridged: nnx.bridge.ToNNX) -> dict:
  """The Linen variables of a `segmentor` (collections by variable type),
  e.g. for `export.export_model` or a checkpoint."""
  state = {k: v for k, v in vars(bridged).items()
           if not k.startswith("to_nnx__") and not k.startswith("_pytree__")}
  return bridge_variables.nnx_attrs_to_linen_vars(state)
