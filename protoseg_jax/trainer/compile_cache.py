"""JAX's persistent compilation cache for a run (config.compilation_cache_dir)."""

from __future__ import annotations

from typing import Optional

from absl import logging
import jax

from protoseg_jax.trainer import paths

COMPILATION_CACHE_DIR = "compilation_cache"   # under the workdir


def enable_compilation_cache(config, workdir: str) -> Optional[str]:
  """Turns on JAX's persistent compilation cache; returns its directory.

  config.compilation_cache_dir: "" (default) = DIR/compilation_cache, unless
  the user set one already (JAX_COMPILATION_CACHE_DIR, jax.config); "off";
  or a directory (e.g. one shared by runs of the same model). A
  restart then loads the train and eval steps instead of compiling them
  (programs that compile in under a second are not cached, JAX's default).
  """
  from jax.experimental.compilation_cache import compilation_cache
  setting = str(config.compilation_cache_dir)
  if setting == "off":
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    return None
  if not setting and jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  path = paths.text(setting or paths.resolve(workdir) / COMPILATION_CACHE_DIR)   # or gs://...
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  compilation_cache.reset_cache()   # also when this process compiled before (picks up the dir)
  logging.info("Persistent compilation cache: %s", path)
  return path
