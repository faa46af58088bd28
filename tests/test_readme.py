"""The README's "Use the head in your own Flax model" example runs as written
(with a stand-in backbone and data for the names it leaves to the reader)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _head_example() -> str:
  with open(README) as f:
    text = f.read()
  section = text.split("## Use the head in your own Flax model", 1)[1]
  return section.split("```python", 1)[1].split("```", 1)[0]


class MyBackbone(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.relu(nn.Conv(24, (3, 3), strides=(4, 4))(x))


def test_readme_head_example_runs():
  rng = np.random.RandomState(0)
  labels = rng.randint(0, 19, (2, 32, 32)).astype(np.int32)   # full resolution
  labels[0, :8] = 255
  scope = {"MyBackbone": MyBackbone, "key": jax.random.key(1), "labels": jnp.asarray(labels),
           "images": jnp.asarray(rng.randn(2, 32, 32, 3).astype(np.float32))}
  exec(compile(_head_example(), README, "exec"), scope)  # pylint: disable=exec-used
  assert scope["logits"].shape == (2, 8, 8, 19)
  assert np.isfinite(float(scope["loss"]))
  old = jax.tree.leaves(scope["variables"]["prototypes"])[0]
  new = jax.tree.leaves(scope["new_prototypes"])[0]
  assert new.shape == old.shape and new.shape[:2] == (19, 10)
  assert not np.allclose(np.asarray(new), np.asarray(old))   # the update ran
