"""The training input pipeline's per-example work, step by step, to time
(`python -m bench.bench_input_pipeline --profile`).

Built from the pipeline's own pieces (protoseg_jax.trainer.input_pipeline's
reader, decoders, options and seeds; augment.transform_stages), so that it
times the code the trainer runs; it lives here, not in the trainer, because
only the benchmark needs it.
"""

from __future__ import annotations

import tensorflow as tf

from protoseg_jax.trainer import augment, datasets, input_pipeline as ip


def profile_train_steps(config, seed: int = 0) -> list[tuple[str, tf.data.Dataset]]:
  """The per-example work of `make_train_dataset`, step by step, to time.

  For `bench.bench_input_pipeline --profile`: (name, dataset) pairs, the k-th
  dataset running the train split's records (stored order, repeated) through
  steps 1..k: read, decode the image, decode the label (with the size check
  and the held-out map), then `augment.transform_stages` (the host's part;
  the train step finishes the batch). Each yields one
  float per example, a sum over a sample of every tensor the last step made,
  so that nothing is pruned and no array is copied out. The difference of
  two consecutive datasets' cost is the cost of a step; shuffling, the row
  streams, batching and prefetching are what `make_train_dataset` costs above
  the last one.
  """
  builder = datasets.check_prepared(config)
  meta = datasets.builder_meta(builder)
  opts = ip.train_options(config, meta.ignore_index, meta.num_classes)
  decode_example = ip.train_decoder(config, builder)
  split = config.dataset.train_split
  records = ip.read_split(builder, split).repeat().enumerate()

  def fingerprint(*tensors):   # the named draws (`ops.PhotometricDraws`) entry by entry
    return tf.add_n([tf.reduce_sum(tf.cast(tf.reshape(t, [-1])[::1009], tf.float32))
                     for t in tf.nest.flatten(tensors)])

  def decoded(i, image_bytes, label_bytes):
    return (*decode_example(image_bytes, label_bytes), ip.example_seed(seed, 0, i))

  all_stages = augment.transform_stages(opts)

  def prefix(k):
    stages = all_stages[:k]

    def fn(i, image_bytes, label_bytes):
      ex = augment.run_stages(stages, *decoded(i, image_bytes, label_bytes))
      return fingerprint(*(v for key, v in sorted(ex.items()) if key != "seed"))
    return fn

  steps = [
      ("read", lambda i, image_bytes, label_bytes: fingerprint(
          tf.strings.length(image_bytes), tf.strings.length(label_bytes))),
      ("decode image", lambda i, image_bytes, label_bytes: fingerprint(
          ip.decode_image(image_bytes))),
      ("decode label, size check", prefix(0)),
  ]
  steps += [(name, prefix(k + 1)) for k, (name, _) in enumerate(all_stages)]
  return [(name, records.map(lambda i, ex, fn=fn: fn(i, *ex))) for name, fn in steps]
