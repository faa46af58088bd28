"""The trainer turns on JAX's persistent compilation cache (config.compilation_cache_dir)."""

import os

import jax
import jax.numpy as jnp
from jax.experimental.compilation_cache import compilation_cache
import ml_collections
import pytest

from protoseg_jax import train
from protoseg_jax.trainer import compile_cache


@pytest.fixture
def restore_jax_cache_config():
  saved = {k: getattr(jax.config, k) for k in (
      "jax_compilation_cache_dir", "jax_enable_compilation_cache",
      "jax_persistent_cache_min_compile_time_secs")}
  yield
  for k, v in saved.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


def _config(value):
  return ml_collections.ConfigDict({"compilation_cache_dir": value})


def test_cache_directory_settings_and_a_compiled_program_lands_in_it(tmp_path,
                                                                     restore_jax_cache_config):
  jax.config.update("jax_compilation_cache_dir", None)
  default = compile_cache.enable_compilation_cache(_config(""), str(tmp_path / "run"))
  assert default == str(tmp_path / "run" / compile_cache.COMPILATION_CACHE_DIR)
  # A directory the user set (JAX_COMPILATION_CACHE_DIR) is kept by the default...
  assert compile_cache.enable_compilation_cache(_config(""), str(tmp_path / "other")) == default
  # ... and an explicit one replaces it.
  chosen = str(tmp_path / "shared")
  assert compile_cache.enable_compilation_cache(_config(chosen), str(tmp_path / "run")) == chosen
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()
  assert os.listdir(chosen), "nothing was written to the cache"
  assert compile_cache.enable_compilation_cache(_config("off"), str(tmp_path / "run")) is None
  assert not jax.config.jax_enable_compilation_cache
