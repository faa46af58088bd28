"""protoseg_jax: ProtoSeg (CVPR 2022) in JAX/Flax.

The reusable part is `protoseg_jax.heads` (ProtoSegHead, LinearHead) with the
pure functions behind it in `sinkhorn`, `prototypes` and `losses`.
"""

__version__ = "0.1.0"
