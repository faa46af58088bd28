"""`python -m protoseg_jax.convert ...` (see protoseg_jax.convert.cli)."""

from protoseg_jax.convert.cli import main

main()
