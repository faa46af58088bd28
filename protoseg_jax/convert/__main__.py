"""`python -m protoseg_jax.convert ...` (see protoseg_jax.convert.cli)."""

import sys

NAME = "python -m protoseg_jax.convert"

try:
  from absl import flags
  from protoseg_jax.convert import cli as convert_cli
  from protoseg_jax.trainer import cli
except ModuleNotFoundError as e:  # the trainer's stack (orbax, absl, ...) is not installed
  if (e.name or "").split(".")[0] == "protoseg_jax":
    raise
  sys.exit(f"{NAME}: error: the converter writes with the trainer's stack, and {e.name} is "
           "not installed: pip install -r requirements.txt (in a checkout) or "
           "pip install 'protoseg-jax[train]'")

__doc__ = convert_cli.__doc__  # absl's --help shows the main module's docstring
convert_cli.define_flags()
flags.adopt_module_key_flags(convert_cli)   # --help lists them
cli.run(convert_cli.main, NAME)
