"""A JAX function as a TensorFlow SavedModel (jax2tf, native serialisation).

  write_saved_model(apply_fn, variables, input_shape, path, platforms=("cpu", "cuda"))

`apply_fn(variables, images) -> (logits, labels)` is lowered once to
StableHLO (`jax2tf.convert`, native serialisation: the same StableHLO that
`jax.export` writes), with a symbolic batch dimension; the variables become
`tf.Variable`s of the SavedModel (not constants of the graph, so that a large
model stays below protobuf's 2 GiB limit) and the signature `serving_default`
takes `images` float32 [None, H, W, 3] and returns {"logits", "labels"}.

The module of the export tool that imports TensorFlow (the trainer's edges).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

SIGNATURE = "serving_default"
INPUT_NAME = "images"


def write_saved_model(apply_fn: Callable, variables, input_shape: Sequence[int], path: str,
                      platforms: Sequence[str] = ("cpu", "cuda")) -> None:
  """Writes `apply_fn(variables, images)` as a SavedModel at `path`.

  input_shape: (H, W, 3) of one image; the batch is free ([None, H, W, 3]).
  platforms: what the serialised StableHLO is lowered for (TF picks the
  one it runs on).
  """
  from jax.experimental import jax2tf  # imports TensorFlow: only here

  h, w, c = (int(v) for v in input_shape)
  tf_fn = jax2tf.convert(apply_fn, polymorphic_shapes=[None, "(batch, _, _, _)"],
                         native_serialization_platforms=tuple(platforms), with_gradient=False)
  module = tf.Module()
  module.model_variables = tf.nest.map_structure(
      lambda a: tf.Variable(np.asarray(a), trainable=False), variables)

  @tf.function(input_signature=[tf.TensorSpec([None, h, w, c], tf.float32, name=INPUT_NAME)],
               autograph=False)
  def serve(images):
    logits, labels = tf_fn(module.model_variables, images)
    return {"logits": logits, "labels": labels}

  module.serve = serve
  tf.saved_model.save(module, path, signatures={SIGNATURE: serve})
