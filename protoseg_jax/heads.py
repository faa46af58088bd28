"""Segmentation heads: ProtoSegHead (nonparametric, prototypes) and LinearHead.

Both turn a feature map `[B, h, w, D_in]` into class logits `[B, h, w, C]`
and share one call signature, so a model can switch heads by config:

    out = head(features, labels, train=True)   # HeadOutput
    out.logits                                 # [B, h, w, C]

ProtoSegHead keeps its C x M prototypes in the non-trainable variable
collection "prototypes" (variable "prototypes", [C, M, D]). Called with
labels and with that collection mutable (`apply(..., mutable=["prototypes",
...])`), it runs one prototype-learning step (Sinkhorn clustering + momentum
update) and returns `proto_targets`, `proto_lse` and `proto_target_logits`
for the PPC/PPD losses (`losses.protoseg_loss`).
Called without labels, or with the collection immutable, it changes nothing.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from protoseg_jax.ops import l2_normalize, resize_nearest
from protoseg_jax.prototypes import (ASSIGNMENTS, PROTOTYPE_UPDATES, chunked_retrieval,
                                     contrast_terms, learn_prototypes, learn_prototypes_per_device,
                                     max_over_prototypes, prototype_similarity,
                                     resolve_class_chunk, target_similarity)

PROTOTYPE_RNG = "prototypes"  # rng stream for the Gumbel assignment
PROJ_NORM_AXES = ("channel", "width")
# Prototype initialisation before L2 normalisation (std 0.02):
#   "trunc_normal_2std": normal truncated at +-2 std (+-0.04);
#   "timm_trunc_normal": the official `timm.trunc_normal_(std=0.02)`, whose
#     bounds a=-2, b=2 are ABSOLUTE (+-100 std), i.e. a plain normal in effect.
PROTO_INITS = ("trunc_normal_2std", "timm_trunc_normal")


@flax.struct.dataclass
class HeadOutput:
  """logits [B, h, w, C]; for ProtoSegHead also embeddings [B, h, w, D] and,
  when prototypes were learned this call, what PPC / PPD need, one value per
  pixel whether the similarity was computed at once or a chunk of classes at
  a time: proto_targets [B*h*w] (in [0, C*M); -1 for ignored pixels, never
  the label ignore_index, which is a real prototype when C*M > 255),
  proto_lse [B*h*w] (log-sum-exp over the C*M of similarity /
  ppc_temperature) and proto_target_logits [B*h*w] (the cosine to the
  target prototype); `losses.protoseg_loss` takes them."""
  logits: jnp.ndarray
  embeddings: Optional[jnp.ndarray] = None
  proto_targets: Optional[jnp.ndarray] = None
  proto_lse: Optional[jnp.ndarray] = None
  proto_target_logits: Optional[jnp.ndarray] = None


def init_prototypes(rng: jax.Array, shape: tuple[int, int, int], std: float = 0.02,
                    mode: str = "trunc_normal_2std") -> jnp.ndarray:
  """Truncated normal (std 0.02), then unit norm along D.

  mode (PROTO_INITS): "trunc_normal_2std" cuts at +-2 std; "timm_trunc_normal"
  cuts at +-2 absolute as timm's `trunc_normal_(std=0.02)` in the official code.
  """
  if mode not in PROTO_INITS:
    raise ValueError(f"proto_init must be one of {PROTO_INITS}, got {mode!r}")
  bound = 2.0 if mode == "trunc_normal_2std" else 2.0 / std   # in units of std
  return l2_normalize(std * jax.random.truncated_normal(rng, -bound, bound, shape, jnp.float32))


def _update_mesh():
  """The mesh of a per-device prototype update: the context mesh
  (`jax.set_mesh`) when it has the data axis, else the trainer's mesh over
  all devices (`sharding.create_mesh()`)."""
  from protoseg_jax import sharding
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and sharding.DATA_AXIS in mesh.axis_names:
    return mesh
  return sharding.create_mesh()


def labels_to_feature_size(labels: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  """[B, H, W] labels -> [B, h, w] with PyTorch `nearest` (floor(dst * H / h))."""
  return resize_nearest(labels[..., None], size)[..., 0]


class ProtoSegHead(nn.Module):
  """The nonparametric ProtoSeg head (PROTOSEG.md, forward pass steps 2-6).

  Attributes:
    num_classes: C.
    num_prototypes: M prototypes per class.
    embed_dim: D of the embedding; None keeps D_in (the official setting).
    gamma: momentum of the prototype update.
    sinkhorn_iters, sinkhorn_epsilon: Sinkhorn-Knopp parameters.
    assignment: "gumbel" (official) or "argmax" (deterministic); gumbel takes
      its randomness from the "prototypes" rng stream.
    use_mask_norm: LayerNorm over the C class scores (official, default on).
    use_feat_norm: LayerNorm over D of the projected features before their
      unit norm (official, default on); False: the unit-norm projection is
      the embedding (no params "feat_norm").
    proj_norm_axis: "channel" (paper intent, default) or "width" (official
      code quirk: the projection output is L2-normalised along image width;
      set it when loading official checkpoints).
    proto_init: prototype initialisation, one of PROTO_INITS
      ("trunc_normal_2std" default; "timm_trunc_normal" official).
    update_prototype: False = the official ablation: Sinkhorn targets and
      PPC/PPD as usual, but the prototypes are never moved by the momentum
      update (they stay at their initial, or warm-up-trained, values).
    prototype_update: "global" (default: Sinkhorn sums and the update over
      the global batch, identical on every device) or "per_device_mean"
      (official multi-GPU: each device's own pixels, then the prototypes are
      averaged over devices; `prototypes.learn_prototypes_per_device` over
      the data axis of the context mesh, else of `sharding.create_mesh()`;
      the batch must be sharded over that axis).
    ignore_index: ignored label value.
    class_chunk: classes per chunk of the similarity (large vocabularies):
      0 = automatic (`prototypes.resolve_class_chunk`: all classes at once
      while the [N, C*M] float32 similarity is at most 4 GiB, today's
      program; else chunks of about 256 MiB of similarity), >= C = all at
      once, k = chunks of k classes. With chunks neither pass holds more than
      one chunk's similarity [N, k*M] (`prototypes.chunked_retrieval`: the
      scores' max over M and PPC's log-sum-exp per chunk, the backward pass
      recomputing each chunk). The output is the same either way, equal up
      to float rounding.
    ppc_temperature: the PPC logits are similarity / ppc_temperature (1.0:
      the official code, no temperature; 0.1: the paper); used here for
      proto_lse, and by `losses.protoseg_loss` (give it the same).
    dtype: compute dtype of the projection convs; the embedding, similarity
      and prototype maths always run in float32.
  """
  num_classes: int
  num_prototypes: int = 10
  embed_dim: Optional[int] = None
  gamma: float = 0.999
  sinkhorn_iters: int = 3
  sinkhorn_epsilon: float = 0.05
  assignment: str = "gumbel"
  use_mask_norm: bool = True
  use_feat_norm: bool = True
  proj_norm_axis: str = "channel"
  proto_init: str = "trunc_normal_2std"
  update_prototype: bool = True
  prototype_update: str = "global"
  ignore_index: int = 255
  class_chunk: int = 0
  ppc_temperature: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: jnp.ndarray, labels: Optional[jnp.ndarray] = None, *,
               train: bool = False, update: Any = True,
               train_prototypes: Any = False) -> HeadOutput:
    """features [B, h, w, D_in]; labels [B, H, W] int (any H, W; resized with
    PyTorch nearest to h, w). `update` (bool or traced bool) gates the
    prototype update, e.g. off during warm-up iterations. `train_prototypes`
    (bool or traced bool) lets the gradient reach the prototypes through the
    class scores (official `pretrain_prototype` warm-up; see
    `prototype_similarity`); default False: the gradient is stopped."""
    if self.assignment not in ASSIGNMENTS:
      raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {self.assignment!r}")
    if self.prototype_update not in PROTOTYPE_UPDATES:
      raise ValueError(f"prototype_update must be one of {PROTOTYPE_UPDATES}, "
                       f"got {self.prototype_update!r}")
    if self.proj_norm_axis not in PROJ_NORM_AXES:
      raise ValueError(f"proj_norm_axis must be one of {PROJ_NORM_AXES}, got {self.proj_norm_axis!r}")
    if features.ndim != 4:
      raise ValueError(f"features must be [B, h, w, D_in], got shape {features.shape}")
    b, h, w, d_in = features.shape
    d = self.embed_dim or d_in
    c, m = self.num_classes, self.num_prototypes

    # Projection head: 1x1 conv + ReLU + 1x1 conv, then L2 normalisation.
    x = nn.Conv(d_in, (1, 1), dtype=self.dtype, name="proj_conv1")(features)
    x = nn.relu(x)
    x = nn.Conv(d, (1, 1), dtype=self.dtype, name="proj_conv2")(x)
    x = x.astype(jnp.float32)
    x = l2_normalize(x, axis=2 if self.proj_norm_axis == "width" else -1)
    # feat_norm: LayerNorm over D, then unit norm.
    if self.use_feat_norm:
      x = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name="feat_norm")(x)
    emb = l2_normalize(x).reshape(b * h * w, d)

    protos = self.variable("prototypes", "prototypes", init_prototypes,
                           self.make_rng("params") if self.is_initializing() else None,
                           (c, m, d), 0.02, self.proto_init)
    learning = (labels is not None and not self.is_initializing()
                and self.is_mutable_collection("prototypes"))
    if learning and (labels.ndim != 3 or labels.shape[0] != b):
      raise ValueError(f"labels must be [B={b}, H, W], got shape {labels.shape}")
    chunk = resolve_class_chunk(self.class_chunk, b * h * w, c, m)
    y = labels_to_feature_size(labels, (h, w)).reshape(-1) if learning else None
    if chunk >= c:
      sim = prototype_similarity(emb, protos.value, train_prototypes)  # [N, C*M]
      scores = max_over_prototypes(sim.reshape(-1, c, m))  # [N, C]
    else:
      # Labels outside [0, C) (the ignore index) have no own class.
      retrieval = chunked_retrieval(emb, protos.value, chunk, trainable=train_prototypes,
                                    labels=y, with_lse=learning,
                                    ppc_temperature=self.ppc_temperature)
      scores = retrieval.scores
    if self.use_mask_norm:
      # With chunks the LayerNorm over [N, C] is rematerialised: its backward
      # recomputes the normalised scores instead of keeping them (two [N, C]
      # f32 buffers fewer; bench/bench_vocab.py).
      norm = nn.LayerNorm if chunk >= c else nn.remat(nn.LayerNorm)
      scores = norm(epsilon=1e-5, dtype=jnp.float32, name="mask_norm")(scores)
    logits = scores.reshape(b, h, w, c)

    out = HeadOutput(logits=logits, embeddings=emb.reshape(b, h, w, d))
    if not learning:
      return out

    rng = None
    if self.assignment == "gumbel":
      if not self.has_rng(PROTOTYPE_RNG):
        raise ValueError("ProtoSegHead(assignment='gumbel') needs an rng stream "
                         f"{PROTOTYPE_RNG!r}: apply(..., rngs={{'{PROTOTYPE_RNG}': key}})")
      rng = self.make_rng(PROTOTYPE_RNG)
    kw = dict(gamma=self.gamma, num_iters=self.sinkhorn_iters, epsilon=self.sinkhorn_epsilon,
              assignment=self.assignment, rng=rng, ignore_index=self.ignore_index)
    if chunk >= c:
      kw["similarity"] = sim
    else:
      kw["own_similarity"] = retrieval.own
    old = protos.value
    if self.prototype_update == "per_device_mean":
      from protoseg_jax.sharding import DATA_AXIS
      res = learn_prototypes_per_device(_update_mesh(), DATA_AXIS, old, emb, scores, y, **kw)
    else:
      res = learn_prototypes(old, emb, scores, y, **kw)
    if self.update_prototype:
      protos.value = jnp.where(update, res.prototypes, protos.value)
    if chunk >= c:
      lse, target = contrast_terms(sim, res.proto_targets, self.ppc_temperature)
    else:
      lse = retrieval.lse
      target = target_similarity(emb, old, res.proto_targets, train_prototypes)
    return out.replace(proto_targets=res.proto_targets, proto_lse=lse,
                       proto_target_logits=target)


class LinearHead(nn.Module):
  """The parametric softmax baseline: a 1x1 conv to C classes.

  Same call signature as ProtoSegHead; labels and update are accepted and
  unused.
  """
  num_classes: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: jnp.ndarray, labels: Optional[jnp.ndarray] = None, *,
               train: bool = False, update: Any = True,
               train_prototypes: Any = False) -> HeadOutput:
    del labels, train, update, train_prototypes
    logits = nn.Conv(self.num_classes, (1, 1), use_bias=self.use_bias, dtype=self.dtype,
                     name="classifier")(features)
    return HeadOutput(logits=logits.astype(jnp.float32))


# ----------------------------------------------------------------------------
# Adding a class after training (no retraining).


def _proto_head_paths(variables) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(path of the prototypes array in variables["prototypes"], path of the
  head's params in variables["params"]): a bare ProtoSegHead keeps them at
  the top, a Segmentor under "head"."""
  protos = variables.get("prototypes", {})
  if "prototypes" in protos and hasattr(protos["prototypes"], "shape"):
    return ("prototypes",), ()
  if "head" in protos and "prototypes" in protos["head"]:
    return ("head", "prototypes"), ("head",)
  raise ValueError("variables hold no ProtoSeg prototypes (a ProtoSegHead's or a Segmentor's "
                   f"with head='proto'); collections: {sorted(variables)}")


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _with(tree, path, value):
  """A copy of the nested dict `tree` with `path` set to `value` (only the
  dicts along the path are copied; every other leaf is the same object)."""
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _with(tree[path[0]], path[1:], value)
  return out


def cluster_support(support_embeddings: jnp.ndarray, num_prototypes: int, *,
                    sinkhorn_iters: int = 3, sinkhorn_epsilon: float = 0.05,
                    num_rounds: int = 10) -> jnp.ndarray:
  """M unit prototypes [M, D] of one class from its support embeddings [N, D].

  Initialisation: farthest-point picks, a deterministic k-means++: the first
  prototype is the support pixel closest (cosine) to the class mean, each
  next one the pixel whose best cosine to the prototypes picked so far is
  lowest. With N < M some picks repeat (harmless: equal prototypes score
  equally). Then `num_rounds` rounds of the head's own clustering step,
  `prototypes.learn_prototypes` on this one class with assignment="argmax"
  and gamma=0: Sinkhorn-Knopp (`sinkhorn_iters`, `sinkhorn_epsilon`, the
  equipartition over the M prototypes the head trains with) assigns each
  pixel to a prototype, and each prototype becomes the normalised mean of
  its pixels (a prototype left with no pixel keeps its value). Every support
  pixel counts as "correctly classified" here (one class, logits [N, 1]).
  """
  x = l2_normalize(jnp.asarray(support_embeddings, jnp.float32))
  if x.ndim != 2 or x.shape[0] < 1:
    raise ValueError(f"support_embeddings must be [N >= 1, D], got shape {x.shape}")
  n, m = x.shape[0], int(num_prototypes)
  sim_mean = x @ l2_normalize(jnp.sum(x, axis=0))
  picks = [int(jnp.argmax(sim_mean))]
  best = x @ x[picks[0]]
  for _ in range(1, m):
    i = int(jnp.argmin(best))
    picks.append(i)
    best = jnp.maximum(best, x @ x[i])
  protos = x[jnp.asarray(picks)][None]             # [1, M, D]

  @jax.jit
  def step(p):
    return learn_prototypes(p, x, jnp.zeros((n, 1), jnp.float32), jnp.zeros((n,), jnp.int32),
                            gamma=0.0, num_iters=sinkhorn_iters, epsilon=sinkhorn_epsilon,
                            assignment="argmax").prototypes

  for _ in range(int(num_rounds)):
    protos = step(protos)
  return protos[0]


def add_class(variables: dict, support_embeddings: jnp.ndarray, *, num_prototypes: int,
              sinkhorn_iters: int = 3, sinkhorn_epsilon: float = 0.05, num_rounds: int = 10,
              mask_norm_scale: Optional[float] = None,
              mask_norm_bias: Optional[float] = None) -> dict:
  """Variables of the same model with one more class, C -> C + 1, no training.

  variables: a ProtoSegHead's or a whole Segmentor's (head="proto").
  support_embeddings: [N, D] the head's embeddings of pixels of the new class
    (e.g. from `support_embeddings`); L2-normalised here.
  num_prototypes, sinkhorn_iters, sinkhorn_epsilon: the head's M and Sinkhorn
    settings (config.protoseg); num_rounds: clustering rounds (see
    `cluster_support`, which builds the M prototypes).

  The new class's prototypes are appended as class C: prototypes [C+1, M, D].
  Every other array is the same object as in `variables` (bit-identical),
  except:
    * mask_norm (the LayerNorm over the class scores) gets one more
      scale/bias entry. Default: the MEAN of the existing classes' scale and
      bias (the new class is treated as a typical class; with the
      initial scale 1 / bias 0 it is exactly "argmax of the raw cosine
      scores"). `mask_norm_scale` / `mask_norm_bias` set them explicitly.
      The old entries are unchanged, but note that every class's normalised
      logit changes a little, since the LayerNorm's mean and variance now
      run over C+1 scores.
    * an auxiliary linear head (Segmentor aux_head, training only) gets a
      zero column for the new class so that the model with C+1 classes loads.

  Rebuild the model with num_classes=C+1 to use the result.
  """
  m = int(num_prototypes)
  ppath, hpath = _proto_head_paths(variables)
  old = _get(variables["prototypes"], ppath)
  c, m_old, d = old.shape
  if m_old != m:
    raise ValueError(f"num_prototypes={m} but the model has {m_old} prototypes per class")
  emb = jnp.asarray(support_embeddings)
  if emb.ndim != 2 or emb.shape[1] != d:
    raise ValueError(f"support_embeddings must be [N, D={d}], got shape {emb.shape}")
  new = cluster_support(emb, m, sinkhorn_iters=sinkhorn_iters, sinkhorn_epsilon=sinkhorn_epsilon,
                        num_rounds=num_rounds)
  protos = jnp.concatenate([jnp.asarray(old), new[None].astype(old.dtype)], axis=0)
  out = dict(variables)
  out["prototypes"] = _with(variables["prototypes"], ppath, protos)

  params = variables["params"]
  head = _get(params, hpath)
  if "mask_norm" in head:
    mn = head["mask_norm"]
    scale = jnp.asarray(mn["scale"])
    bias = jnp.asarray(mn["bias"])
    s = jnp.mean(scale) if mask_norm_scale is None else mask_norm_scale
    b = jnp.mean(bias) if mask_norm_bias is None else mask_norm_bias
    mn = dict(mn, scale=jnp.concatenate([scale, jnp.asarray([s], scale.dtype)]),
              bias=jnp.concatenate([bias, jnp.asarray([b], bias.dtype)]))
    params = _with(params, hpath + ("mask_norm",), mn)
  elif mask_norm_scale is not None or mask_norm_bias is not None:
    raise ValueError("mask_norm_scale/bias given but the head has no mask_norm")
  if hpath and "aux_head" in params:
    cls = dict(params["aux_head"]["classifier"])
    k = jnp.asarray(cls["kernel"])
    cls["kernel"] = jnp.concatenate([k, jnp.zeros(k.shape[:-1] + (1,), k.dtype)], axis=-1)
    if "bias" in cls:
      bb = jnp.asarray(cls["bias"])
      cls["bias"] = jnp.concatenate([bb, jnp.zeros((1,), bb.dtype)])
    params = _with(params, ("aux_head", "classifier"), cls)
  out["params"] = params
  return out


def proto_head_output(model: nn.Module, variables: dict, images: jnp.ndarray) -> HeadOutput:
  """The HeadOutput (logits [B, h, w, C], unit embeddings [B, h, w, D]) of the
  one ProtoSegHead inside `model` (e.g. a Segmentor, whose own output has no
  embeddings), at inference (train=False, nothing updated); `images` as the
  model expects them ([B, H, W, 3] normalised). Read with flax's
  `capture_intermediates`: the model's outputs are unchanged."""
  is_head = lambda mdl, method: isinstance(mdl, ProtoSegHead) and method == "__call__"
  _, state = model.apply(variables, images, train=False, capture_intermediates=is_head,
                         mutable=["intermediates"])
  found = [v for v in jax.tree.leaves(state["intermediates"],
                                      is_leaf=lambda x: isinstance(x, HeadOutput))
           if isinstance(v, HeadOutput)]
  if len(found) != 1:
    raise ValueError(f"expected one ProtoSegHead in the model, found {len(found)} (a model with "
                     "the ProtoSeg head: config.model.head='proto')")
  return found[0]


def head_embeddings(model: nn.Module, variables: dict, images: jnp.ndarray) -> jnp.ndarray:
  """The ProtoSeg head's unit embeddings [B, h, w, D] (`proto_head_output`)."""
  return proto_head_output(model, variables, images).embeddings


def support_embeddings(model: nn.Module, variables: dict, images: jnp.ndarray,
                       labels: jnp.ndarray, class_id: int) -> jnp.ndarray:
  """[N, D] the head's embeddings of the pixels labelled `class_id`.

  labels [B, H, W] (image resolution) are resized to the embedding map with
  the head's PyTorch-nearest rule, as in training. Not jittable (N depends
  on the labels).
  """
  emb = head_embeddings(model, variables, images)
  b, h, w, d = emb.shape
  y = labels_to_feature_size(jnp.asarray(labels), (h, w))
  mask = (y == class_id).reshape(-1)
  return emb.reshape(-1, d)[mask]
