"""Plain per-class NumPy references written line by line from PROTOSEG.md.

Independent of protoseg_jax on purpose: loops over classes, exp domain,
float64, exactly the official algorithm's steps.
"""

import numpy as np


def sinkhorn_one_class(s, num_iters=3, epsilon=0.05):
  """Official distributed_sinkhorn on one class's [N_c, M] scores (no Gumbel)."""
  s = np.asarray(s, np.float64)
  L = np.exp(s / epsilon).T  # M x N_c
  n_c = L.shape[1]
  m = L.shape[0]
  L = L / L.sum()
  for _ in range(num_iters):
    L = L / L.sum(axis=1, keepdims=True)
    L = L / m
    L = L / L.sum(axis=0, keepdims=True)
    L = L / n_c
  L = L * n_c
  return L.T  # N_c x M


def sinkhorn_per_class(scores, segment_ids, num_segments, num_iters=3, epsilon=0.05):
  q = np.zeros(scores.shape, np.float64)
  for c in range(num_segments):
    idx = np.nonzero(segment_ids == c)[0]
    if len(idx) == 0:
      continue
    q[idx] = sinkhorn_one_class(scores[idx], num_iters, epsilon)
  return q


def l2n(x, axis=-1):
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def learn_prototypes_reference(prototypes, embeddings, logits, labels, gamma=0.999,
                               num_iters=3, epsilon=0.05):
  """Argmax-assignment prototype learning, one class at a time.

  Labels outside [0, C) are ignored; their targets are -1 (official code)."""
  P = l2n(np.asarray(prototypes, np.float64))
  C, M, D = P.shape
  e = np.asarray(embeddings, np.float64)
  labels = np.asarray(labels)
  sim = e @ P.reshape(C * M, D).T  # [N, C*M]
  pred = np.argmax(logits, axis=1)
  correct = pred == labels
  targets = np.full(labels.shape, -1, np.int64)
  new = P.copy()
  for c in range(C):
    idx = np.nonzero(labels == c)[0]
    if len(idx) == 0:
      continue
    s_c = sim[idx].reshape(len(idx), C, M)[:, c, :]
    q = sinkhorn_one_class(s_c, num_iters, epsilon)
    index = np.argmax(q, axis=1)
    targets[idx] = c * M + index
    for m in range(M):
      members = idx[(index == m) & correct[idx]]
      if len(members) == 0:
        continue
      f = l2n(e[members].sum(axis=0))
      new[c, m] = gamma * P[c, m] + (1 - gamma) * f
  return l2n(new), sim, targets


# ---------------------------------------------------------------------------
# The training augmentation's last steps as the input pipeline did them on the
# host before the train step took them over (protoseg_jax.ops.finish_crops):
# the second implementation that tests/test_augment.py compares the device's
# with. TensorFlow; `draws` is any object with ops.PhotometricDraws' fields.


def scale_saturation_tf(image, factor):
  """HSV saturation times `factor` (clipped to 1), hue and value kept, on RGB
  float32 [..., 3] >= 0: channel c -> V - a (V - c), a = min(factor, V / (V - m))."""
  import tensorflow as tf
  v = tf.reduce_max(image, axis=-1, keepdims=True)
  m = tf.reduce_min(image, axis=-1, keepdims=True)
  a = tf.minimum(factor, v / tf.maximum(v - m, 1e-6))
  return tf.clip_by_value(v - a * (v - image), 0., 255.)


def photometric_distortion_tf(image, draws):
  """mmseg PhotoMetricDistortion of one float32 [H, W, 3] RGB 0..255 image with
  `draws` (scalars): brightness, contrast before or after the HSV steps,
  saturation, hue (tf.image.adjust_hue), each when its flag is set, clipped
  to 0..255 after each."""
  import tensorflow as tf
  d = draws

  def contrast(x):
    return tf.clip_by_value(x * d.alpha, 0., 255.) if d.contrast else x

  x = tf.clip_by_value(image + d.delta, 0., 255.) if d.brightness else image
  x = contrast(x) if d.contrast_first else x
  x = scale_saturation_tf(x, d.factor) if d.saturation else x
  x = tf.image.adjust_hue(x, d.hue_shift / 180.) if d.hue else x
  return x if d.contrast_first else contrast(x)


def normalize_reference(image, mean, std, input_order="rgb"):
  """Channel order, then x * (1 / std) - mean / std with float32 constants,
  multiply and subtract rounded separately (NumPy float32)."""
  x = np.asarray(image, np.float32)
  x = x[..., ::-1] if input_order == "bgr" else x
  scale = (1.0 / np.asarray(std, np.float32)).astype(np.float32)
  return x * scale - np.asarray(mean, np.float32) * scale


def keys_cubic_resize(image, out_h, out_w, a=-0.75):
  """Plain NumPy Keys cubic convolution (a = -0.75) in float64: half-pixel
  centres, border replicated, no antialiasing (OpenCV INTER_CUBIC / PyTorch
  bicubic align_corners=False)."""
  def kernel(x):
    x = abs(x)
    if x <= 1:
      return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
    if x < 2:
      return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
    return 0.0

  def matrix(n_in, n_out):
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
      src = (i + 0.5) * n_in / n_out - 0.5
      base = int(np.floor(src))
      for k in range(base - 1, base + 3):
        m[i, min(max(k, 0), n_in - 1)] += kernel(src - k)
    return m

  image = np.asarray(image, np.float64)
  mh, mw = matrix(image.shape[0], out_h), matrix(image.shape[1], out_w)
  return np.einsum("oh,hwc,pw->opc", mh, image, mw, optimize=True)
