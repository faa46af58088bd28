"""The command-line layer every tool shares (protoseg_jax/trainer/cli.py): every
config problem, a misspelled key and a wrong type included, reported at once
as one line each, exit status 2, no traceback, before anything is compiled."""

import os

import pytest

import tool_runner

TOOLS = {
    "main.py": ["main.py"],
    "python -m protoseg_jax.diagnostics": ["-m", "protoseg_jax.diagnostics"],
    "python -m protoseg_jax.visualize": ["-m", "protoseg_jax.visualize", "--image=x.png",
                                         "--output=out"],
    "python -m protoseg_jax.add_class": ["-m", "protoseg_jax.add_class", "--support=s",
                                         "--output=out"],
}


def _run(args):
  """The tool as a user runs it, in the checkout's root; JAX logs every compilation."""
  return tool_runner.run(args, timeout=300, log_compiles=True)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_config_problem_at_once_in_one_line_each(tool, tmp_path):
  args = [*TOOLS[tool], "--config=configs/demo.py:runlocal", f"--workdir={tmp_path / 'w'}",
          f"--config.dataset.data_dir={tmp_path / 'tfds'}",
          "--config.protoseg.num_protoypes=5",          # no such key
          "--config.batch_size=abc",                    # the wrong type
          "--config.optim.warmup_steps=99",             # longer than the 2-step run
          "--config.protoseg.gamma=1.5"]                # out of range
  done = _run(args)
  assert done.returncode == 2, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  lines = [line for line in done.stderr.splitlines() if "error:" in line]
  assert all(line.startswith(f"{tool}: config error: ") for line in lines), lines
  assert len(lines) == 4, lines
  text = "\n".join(lines)
  assert "config.protoseg has no key 'num_protoypes' (did you mean 'num_prototypes'?)" in text
  assert "--config.batch_size=abc: must be an integer" in text
  assert "config.optim.warmup_steps=99: the learning-rate warm-up must not be longer" in text
  assert "config.protoseg.gamma=1.5: must be a number in [0, 1)" in text
  assert "Compiling" not in done.stderr                       # nothing compiled
  assert not os.path.exists(tmp_path / "w") and not os.path.exists(tmp_path / "tfds")


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_a_missing_config_file_is_one_line(tool, tmp_path):
  done = _run([*TOOLS[tool], "--config=configs/nope.py", f"--workdir={tmp_path}"])
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
  (line,) = [line for line in done.stderr.splitlines() if "error:" in line]
  assert line.startswith(f"{tool}: config error: --config=configs/nope.py: cannot load")
