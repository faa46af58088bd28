"""`python -m protoseg_jax ...`: the trainer's command (protoseg_jax/main.py), anywhere."""

from protoseg_jax.main import run

run()
