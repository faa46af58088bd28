"""The README's commands and examples as written: "Use the head in your own Flax
model" (with a stand-in backbone and data for the names it leaves to the reader),
and "Add a class without retraining" on one tiny workdir (the tools run as a
user runs them: tests/tool_runner.py)."""

import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from protoseg_jax.models.segmentor import build_model

import tool_runner
from conftest import random_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


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


# --- "Add a class without retraining": the documented commands, on one tiny workdir ------

def _section(title: str) -> str:
  with open(README) as f:
    return f.read().split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def _tool(args, timeout=600):
  """`python ARGS` in the checkout's root, as a user runs it (tests/tool_runner.py)."""
  return tool_runner.run(args, timeout=timeout)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """(a run's workdir as the tools read it: config.json, run.json and variables/ of the
  tiny demo model with random weights, nothing trained or compiled; a support folder of
  0/255 masks; a 50x70 photo)."""
  from conftest import make_tiny_config
  from protoseg_jax.trainer import checkpoints, run as runs
  tmp = tmp_path_factory.mktemp("readme")
  config = make_tiny_config(tmp / "tfds")           # the dataset is never read
  classes = runs.classes_of_config(config)
  model = build_model(config, classes.num_outputs, classes.ignore_index)
  abstract = jax.eval_shape(model.init, {"params": jax.random.key(0),
                                         "prototypes": jax.random.key(1)},
                            jnp.zeros((1, 64, 64, 3)))
  rng = np.random.default_rng(0)
  wd = tmp / "run"
  checkpoints.save_variables(random_variables(abstract), str(wd))
  runs.describe(str(wd), config, classes)
  support = tmp / "support"
  support.mkdir()
  for i in range(2):
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(support / f"x{i}.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[8:56, 16:48] = 255                          # a 0/255 mask: > 0 is the class
    Image.fromarray(mask).save(support / f"x{i}_mask.png")
  photo = tmp / "photo.jpg"
  Image.fromarray(rng.integers(0, 256, (50, 70, 3), np.uint8)).save(photo)
  return tmp, wd, support, photo


def test_readme_and_help_say_the_same_about_add_class():
  from protoseg_jax import add_class
  text = _section("Add a class without retraining")
  assert "any mask value > 0 is the new class" in " ".join(text.split())
  for use in ("--workdir=/tmp/held3_added --mode=eval", "--workdir=/tmp/held3_added --mode=predict",
              "protoseg_jax.diagnostics --workdir=/tmp/held3_added",
              "protoseg_jax.visualize --workdir=/tmp/held3_added"):
    assert use in text, use                          # OUT used as a workdir, no other flag
  assert "any value > 0 is the new class" in add_class.__doc__
  assert "--workdir=OUT --mode=eval" in add_class.__doc__
  assert "protoseg_jax.diagnostics --workdir=OUT" in add_class.__doc__
  assert "classes.json" not in text                  # the added model's classes: run.json


@pytest.mark.slow
def test_readme_add_class_output_is_a_workdir(workdir):
  """add_class (0/255 masks) -> OUT; OUT given as --workdir to predict (with the run's
  config file as it is) and diagnostics, no other flag; outputs carry dataset ids."""
  tmp, wd, support, photo = workdir
  out = tmp / "added"
  done = _tool(["-m", "protoseg_jax.add_class", f"--workdir={wd}", f"--support={support}",
                f"--output={out}", "--name=star"])
  assert done.returncode == 0, done.stderr[-3000:]
  assert "added class 6 'star' (class id 6)" in done.stdout
  assert f"use it as --workdir={out}" in done.stdout
  assert all((out / f).exists() for f in ("variables", "config.json", "run.json"))
  with open(out / "run.json") as f:
    classes = json.load(f)["classes"]
  assert classes["names"][-1] == "star" and classes["class_ids"] == list(range(7))

  pred = tmp / "pred"
  done = _tool(["main.py", "--config=configs/demo.py:runlocal", f"--workdir={out}",
                "--mode=predict", f"--input={photo}", f"--output={pred}"])
  assert done.returncode == 0, done.stderr[-3000:]
  ids = np.asarray(Image.open(pred / "photo.png"))
  assert ids.shape == (50, 70) and set(np.unique(ids)) <= set(range(7))
  assert (pred / "photo_color.png").is_file() and (pred / "photo_overlay.png").is_file()

  done = _tool(["-m", "protoseg_jax.diagnostics", f"--workdir={out}", "--num_batches=0"])
  assert done.returncode == 0, done.stderr[-3000:]
  rows = [line.split()[0] for line in done.stdout.splitlines() if line and line[0].isalpha()]
  assert rows[:8] == ["class", "background", "disc", "box", "triangle", "bar", "ring", "star"]
  chatter = [line for line in done.stderr.splitlines() if re.match(r"I\d{4} ", line)
             and "xla_bridge.py" not in line and "] Loaded variables " not in line]
  assert chatter == [], chatter                      # no orbax INFO lines before the table


def test_readme_add_class_errors_before_loading(workdir):
  """No --name on a model that lacks no class: one line, exit 2, before the weights load."""
  tmp, wd, support, _ = workdir
  done = _tool(["-m", "protoseg_jax.add_class", f"--workdir={wd}", f"--support={support}",
                f"--output={tmp / 'x'}"])
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
  (line,) = [line for line in done.stderr.splitlines() if "error:" in line]
  assert line.startswith("python -m protoseg_jax.add_class: error: --name is required")
  assert "Loaded" not in done.stderr and not (tmp / "x").exists()


def test_readme_diagnostics_variables_at_backbone_weights(workdir):
  """`diagnostics --config=... --variables=CONVERTED_DIR` given a converted backbone
  (what `convert --arch ARCH` writes): one line saying those weights are a backbone's."""
  from protoseg_jax.trainer import checkpoints
  tmp, wd, _, _ = workdir
  v = checkpoints.load_variables(str(wd))
  checkpoints.save_variables({"params": v["params"]["backbone"],
                              "batch_stats": v["batch_stats"]["backbone"]}, str(tmp / "bb"))
  done = _tool(["-m", "protoseg_jax.diagnostics", "--config=configs/demo.py:runlocal",
                f"--variables={tmp / 'bb'}", "--num_batches=0"])
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
  (line,) = [line for line in done.stderr.splitlines() if "error:" in line]
  assert line.startswith("python -m protoseg_jax.diagnostics: error: variables ")
  assert "holds a backbone's weights only" in line and "no decoder, head or prototypes" in line


# --- Every documented command names a tool, flags and config keys that exist ----------

DOCS = ["README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
ABSL_FLAGS = {"help", "helpshort", "helpfull", "verbosity", "v", "flagfile", "undefok",
              "logtostderr", "alsologtostderr"}
ABSL_TOOLS = {"main": "protoseg_jax.main", "protoseg_jax.diagnostics": "protoseg_jax.diagnostics",
              "protoseg_jax.visualize": "protoseg_jax.visualize",
              "protoseg_jax.add_class": "protoseg_jax.add_class",
              "protoseg_jax.convert": "protoseg_jax.convert.cli"}
PLACEHOLDER_KEYS = {"config.key"}                  # "[--config.key=value ...]"
FORWARDS = {"bench.bench_compile_cache": "bench.bench_train_step"}   # passes the rest on

# Prints {tool: its flags}: the absl tools' define_flags() one after the other (each one's
# flags removed again), the argparse ones' --help.
_FLAG_LISTER = """
import contextlib, importlib, inspect, io, json, re, sys
from absl import flags
FLAGS, out = flags.FLAGS, {}
for key, module in %(absl)r.items():
  mod = importlib.import_module(module)
  before = set(FLAGS)
  mod.define_flags()
  out[key] = sorted(set(FLAGS) - before)
  for name in out[key]:
    delattr(FLAGS, name)
for key in %(argparse)r:
  mod, buf = importlib.import_module(key), io.StringIO()
  sys.argv = [key, "--help"]
  with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
    mod.main(["--help"]) if inspect.signature(mod.main).parameters else mod.main()
  out[key] = sorted(set(re.findall(r"(?<![\\w-])--([A-Za-z][\\w-]*)", buf.getvalue())))
print("FLAGS " + json.dumps(out))
"""


def documented_commands() -> list[tuple[str, str, str]]:
  """(doc, tool, the command's text from its tool on) of every `python ...` command in a
  code block or inline code span of the README and docs/*.md."""
  found = []
  for doc in DOCS:
    with open(os.path.join(ROOT, doc)) as f:
      text = f.read()
    pieces, block, outside = [], None, []
    for line in text.replace("\\\n", " ").splitlines():
      if line.lstrip().startswith("```"):
        block = line.strip()[3:].strip() if block is None else None
      elif block in ("", "bash", "sh"):      # a shell block (not python, not a table)
        pieces.append(line)
      elif block is None:
        outside.append(line)
    pieces += re.findall(r"`([^`\n]*python [^`\n]*)`", "\n".join(outside))
    for piece in pieces:
      for m in re.finditer(r"python (-m )?(\S+)", piece):
        rest = re.split(r"&&| \| |;|\$\(|\"| #", piece[m.end():])[0]
        target = m.group(2).strip("`'\",.;:)")
        if m.group(1) is None:
          tool = "main" if target == "main.py" else None
        elif target in ("protoseg_jax", "protoseg_jax.export"):   # export: main's flags
          tool = "main"
        else:
          tool = target
        if tool and tool not in ("pytest", "bench.<script>"):
          found.append((doc, tool, rest))
  return found


def test_documented_commands_use_flags_and_keys_that_exist():
  """The next rename of a flag or config key that the docs still show fails here; the
  tools, configs and dataset builders themselves are what the other tests run."""
  from configs import default
  import ml_collections
  from protoseg_jax import main as main_lib
  commands = documented_commands()
  if "export" not in main_lib.MODES:          # docs/export.md lands with the export mode
    commands = [c for c in commands if not c[0].endswith("export.md")]
  argparse_tools = sorted({t for _, t, _ in commands if t not in ABSL_TOOLS} |
                          set(FORWARDS.values()))
  assert all(t == "data.prepare" or t.startswith("bench.") for t in argparse_tools), \
      argparse_tools
  assert len(commands) > 50 and {"main", "protoseg_jax.convert", "data.prepare"} <= {
      t for _, t, _ in commands}
  done = _tool(["-c", _FLAG_LISTER % {"absl": ABSL_TOOLS, "argparse": argparse_tools}])
  assert done.returncode == 0, done.stderr[-3000:]
  known = json.loads(done.stdout.split("FLAGS ", 1)[1])
  for tool, rest_to in FORWARDS.items():
    known[tool] = known.get(tool, []) + known[rest_to]
  config = default.get_config()
  problems = []
  for doc, tool, text in commands:
    for name in re.findall(r"(?<![\w.-])--([A-Za-z][\w.-]*)", text):
      name = name.rstrip(".")
      if name in PLACEHOLDER_KEYS:
        continue
      if tool in ABSL_TOOLS and name.startswith("config."):
        node = config
        for part in name.split(".")[1:]:
          if not isinstance(node, ml_collections.ConfigDict) or not node.keys():
            break                            # a leaf or a free dict (backbone_kwargs)
          if part not in node:
            problems.append(f"{doc}: {tool} --{name}: configs/default.py has no such key")
            break
          node = node[part]
      elif name not in set(known[tool]) | (ABSL_FLAGS if tool in ABSL_TOOLS else {"help"}):
        problems.append(f"{doc}: {tool} has no flag --{name}")
    for path in re.findall(r"--config=(configs/[\w.]+\.py)", text):
      if not os.path.isfile(os.path.join(ROOT, path)):
        problems.append(f"{doc}: {path} does not exist")
  assert problems == [], "\n".join(problems)
