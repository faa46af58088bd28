"""Segmentor: backbone -> decoder -> head (+ optional auxiliary FCN head).

    model = build_model(config, num_classes)
    out = model.apply(variables, images, labels, train=True, update=True,
                      mutable=["batch_stats", "prototypes"],
                      rngs={"dropout": k1, "prototypes": k2})
    out.logits         # [B, h, w, C] at decoder resolution
    out.aux_logits     # [B, h', w', C] or None
    out.proto_targets  # [N] in [0, C*M), -1 = ignored pixel; None unless the
                       # ProtoSeg head learned prototypes this call
    out.proto_lse, out.proto_target_logits   # [N] each, PPC / PPD's terms (heads.HeadOutput)

Variables: params and batch_stats under "backbone", "decoder", "head",
"aux_decoder", "aux_head"; prototypes under {"prototypes": {"head": ...}}.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

import flax.linen as nn
import flax.struct
import jax.numpy as jnp

from protoseg_jax import heads
from protoseg_jax.models import get_backbone
from protoseg_jax.models.layers import remat_plan

# decoder name -> (module, class). Each decoder maps the 4 backbone features
# to one [B, h, w, D] map at 1/4 resolution: __call__(features, *, train).
DECODERS = {
    "hrnet": ("protoseg_jax.models.hrnet", "HRNetHead"),
    "fcn": ("protoseg_jax.models.fcn", "FCNHead"),
    "uper": ("protoseg_jax.models.uper", "UPerHead"),
    "segformer": ("protoseg_jax.models.segformer", "SegFormerHead"),
}
HEADS = ("proto", "linear")
# config.model.dtype -> the compute dtype (parameters stay float32).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def get_decoder_class(name: str):
  if name not in DECODERS:
    raise ValueError(f"Unknown decoder {name!r}; known: {sorted(DECODERS)}")
  module, cls = DECODERS[name]
  return getattr(importlib.import_module(module), cls)


@flax.struct.dataclass
class SegmentorOutput:
  logits: jnp.ndarray
  aux_logits: Optional[jnp.ndarray] = None
  proto_targets: Optional[jnp.ndarray] = None
  proto_lse: Optional[jnp.ndarray] = None
  proto_target_logits: Optional[jnp.ndarray] = None


class Segmentor(nn.Module):
  """Attributes are plain hashable values (kwargs as tuples of pairs) so the
  module can be rebuilt from a config anywhere (see build_model)."""
  num_classes: int
  backbone: str
  decoder: str
  head: str = "proto"
  backbone_kwargs: tuple = ()
  decoder_kwargs: tuple = ()
  head_kwargs: tuple = ()
  aux_head: bool = False
  aux_channels: int = 256
  remat: str = "none"  # backbone activation checkpointing (layers.remat_plan)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, labels: Optional[jnp.ndarray] = None, *,
               train: bool = False, update: Any = True,
               train_prototypes: Any = False) -> SegmentorOutput:
    """images [B, H, W, 3] normalised; labels [B, H, W] int (training only).
    update / train_prototypes: see heads.ProtoSegHead."""
    if self.head not in HEADS:
      raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
    backbone = get_backbone(self.backbone, dtype=self.dtype, remat=self.remat,
                            **dict(self.backbone_kwargs))
    feats = backbone.clone(parent=self, name="backbone")(images, train=train)
    x = get_decoder_class(self.decoder)(dtype=self.dtype, **dict(self.decoder_kwargs),
                                        name="decoder")(feats, train=train)
    if self.head == "proto":
      out = heads.ProtoSegHead(self.num_classes, dtype=self.dtype, **dict(self.head_kwargs),
                               name="head")(x, labels, train=train, update=update,
                                            train_prototypes=train_prototypes)
    else:
      out = heads.LinearHead(self.num_classes, dtype=self.dtype, name="head")(x, train=train)
    aux = None
    if self.aux_head:
      fcn = get_decoder_class("fcn")
      a = fcn(in_index=2, channels=self.aux_channels, num_convs=1, concat_input=False,
              dtype=self.dtype, name="aux_decoder")(feats, train=train)
      aux = heads.LinearHead(self.num_classes, dtype=self.dtype, name="aux_head")(a).logits
    return SegmentorOutput(logits=out.logits, aux_logits=aux, proto_targets=out.proto_targets,
                           proto_lse=out.proto_lse,
                           proto_target_logits=out.proto_target_logits)


def _items(cd) -> tuple:
  d = cd.to_dict() if hasattr(cd, "to_dict") else dict(cd or {})
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


def build_model(config, num_classes: int, ignore_index: int = 255) -> Segmentor:
  """The Segmentor described by config.model / config.protoseg."""
  m, p = config.model, config.protoseg
  dtype = DTYPES.get(m.dtype)
  if dtype is None:
    raise ValueError(f"config.model.dtype must be one of {tuple(DTYPES)}, got {m.dtype!r}")
  remat_plan(m.remat)  # a bad config.model.remat fails here, not at the first trace
  head_kwargs = ()
  if m.head == "proto":
    head_kwargs = _items(dict(
        num_prototypes=p.num_prototypes, embed_dim=p.embed_dim, gamma=p.gamma,
        sinkhorn_iters=p.sinkhorn_iters, sinkhorn_epsilon=p.sinkhorn_epsilon,
        assignment=p.assignment, use_mask_norm=p.use_mask_norm,
        use_feat_norm=bool(p.use_feat_norm),
        proj_norm_axis=p.proj_norm_axis, proto_init=p.proto_init,
        update_prototype=bool(p.update_prototype), prototype_update=p.prototype_update,
        ignore_index=ignore_index, class_chunk=int(p.class_chunk),
        ppc_temperature=float(p.ppc_temperature)))
  return Segmentor(num_classes=num_classes, backbone=m.backbone, decoder=m.decoder, head=m.head,
                   backbone_kwargs=_items(m.backbone_kwargs),
                   decoder_kwargs=_items(m.decoder_kwargs), head_kwargs=head_kwargs,
                   aux_head=bool(m.aux_head), aux_channels=int(m.aux_channels),
                   remat=str(m.remat), dtype=dtype)
