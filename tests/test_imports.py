"""The package's shape: no import circle, models below the converter, and a
library that imports and trains without the trainer's stack (TensorFlow,
TFDS, clu, orbax)."""

import ast
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tool_runner
from conftest import xla_flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "protoseg_jax"
TRAINER_STACK = ("tensorflow", "tensorflow_datasets", "clu", "orbax")


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: pathlib.Path, name: str, known: set) -> set:
  """protoseg_jax modules imported anywhere in the file (module level or inside functions)."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      # `from pkg import mod` imports pkg.mod when that is a module.
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in known:  # `import protoseg_jax.models.hrnet as h` etc.
        t = t.rpartition(".")[0]
      if t and t != name:
        out.add(t)
  return out


def import_graph() -> dict[str, set]:
  mods = _modules()
  return {name: _imports(path, name, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set]):
  """One import cycle as a list of modules, or None."""
  state, stack = {}, []

  def visit(n):
    state[n] = "open"
    stack.append(n)
    for m in sorted(graph.get(n, ())):
      if state.get(m) == "open":
        return stack[stack.index(m):] + [m]
      if m not in state:
        found = visit(m)
        if found:
          return found
    state[n] = "done"
    stack.pop()
    return None

  for n in sorted(graph):
    if n not in state:
      found = visit(n)
      if found:
        return found
  return None


def test_no_import_circle_in_the_package():
  graph = import_graph()
  assert "protoseg_jax.heads" in graph and "protoseg_jax.train" in graph
  cycle = find_cycle(graph)
  assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle():
  # The check above must be able to fail: a planted two-module circle.
  graph = import_graph()
  graph["protoseg_jax.ops"] = graph["protoseg_jax.ops"] | {"protoseg_jax.heads"}
  graph["protoseg_jax.heads"] = graph["protoseg_jax.heads"] | {"protoseg_jax.ops"}
  assert find_cycle(graph) is not None


def test_models_never_import_the_converter_or_the_trainer():
  above = ("protoseg_jax.convert", "protoseg_jax.train", "protoseg_jax.trainer.checkpoints",
           "protoseg_jax.trainer.input_pipeline", "protoseg_jax.trainer.datasets", "protoseg_jax.trainer.augment",
           "protoseg_jax.evaluate", "protoseg_jax.inference", "protoseg_jax.metrics")
  for name, deps in import_graph().items():
    if name.startswith("protoseg_jax.models"):
      bad = sorted(d for d in deps if d.startswith(above))
      assert not bad, f"{name} imports {bad}"


# The layers, by folder: protoseg_jax/trainer/ is the trainer's edges (the only
# place importing its stack); TOOLS are the commands on top of it; every other
# module is the library.
TOOLS = ("protoseg_jax.main", "protoseg_jax.__main__", "protoseg_jax.predict",
         "protoseg_jax.diagnostics", "protoseg_jax.visualize", "protoseg_jax.add_class",
         "protoseg_jax.export", "protoseg_jax.convert.cli", "protoseg_jax.convert.__main__")
LIBRARY_THIRD_PARTY = {"jax", "jaxlib", "flax", "optax", "numpy", "absl"}
# Optional readers of checkpoint files, imported inside the function that needs them (.pth
# files need no torch: convert/torch_file.py reads them with the standard library and NumPy).
LIBRARY_OPTIONAL = {"protoseg_jax.convert.state_dict": {"safetensors"}}


def layer(name: str) -> str:
  if name == "protoseg_jax.trainer" or name.startswith("protoseg_jax.trainer."):
    return "trainer"
  return "tool" if name in TOOLS else "library"


def _third_party(path: pathlib.Path) -> set:
  std = set(sys.stdlib_module_names)
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      found.add(node.module.split(".")[0])
  return {m for m in found if m not in std and m != "protoseg_jax"}


def layer_problems(graph: dict[str, set], third_party: dict[str, set]) -> list[str]:
  problems = []
  for name, deps in sorted(graph.items()):
    for dep in sorted(deps):
      if layer(name) == "library" and layer(dep) != "library":
        problems.append(f"library module {name} imports the {layer(dep)} module {dep}")
      if layer(name) == "trainer" and layer(dep) == "tool":
        problems.append(f"trainer module {name} imports the tool {dep}")
    extra = third_party.get(name, set())
    stack = sorted(extra & set(TRAINER_STACK))
    if stack and layer(name) != "trainer":
      problems.append(f"{name} ({layer(name)}) imports {stack}: only protoseg_jax/trainer/ may")
    if layer(name) == "library":
      bad = sorted(extra - LIBRARY_THIRD_PARTY - LIBRARY_OPTIONAL.get(name, set()))
      if bad:
        problems.append(f"library module {name} imports {bad} (the library: jax, flax, optax, "
                        "numpy, absl)")
  return problems


def test_import_layers_by_folder():
  """library <- protoseg_jax/trainer/ <- tools: the library imports neither the
  trainer nor a tool nor anything but jax/flax/optax/numpy/absl; TensorFlow,
  TFDS, clu and orbax only in protoseg_jax/trainer/; the trainer no tool."""
  mods = _modules()
  graph = import_graph()
  third = {name: _third_party(path) for name, path in mods.items()}
  assert {layer(n) for n in graph} == {"library", "trainer", "tool"}
  assert layer_problems(graph, third) == []
  # The check can fail: a library module importing the trainer, TF in a tool.
  planted = dict(graph, **{"protoseg_jax.heads": graph["protoseg_jax.heads"] |
                           {"protoseg_jax.trainer.loop"}})
  planted_third = dict(third, **{"protoseg_jax.predict": third["protoseg_jax.predict"] |
                                 {"tensorflow"}})
  assert len(layer_problems(planted, planted_third)) == 2


def private_name_reads(path: pathlib.Path, ours=("protoseg_jax", "data", "configs", "bench")
                       ) -> list[str]:
  """`module._name` and `from module import _name` of another module of ours."""
  tree = ast.parse(path.read_text(), str(path))
  aliases = {}                 # local name -> module it is
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] in ours:
          aliases[a.asname or a.name.split(".")[0]] = a.name
    elif isinstance(node, ast.ImportFrom) and node.module and (
        node.level or node.module.split(".")[0] in ours):
      for a in node.names:
        if a.name.startswith("_") and not a.name.startswith("__"):
          out.append(f"{path}:{node.lineno}: from {node.module} import {a.name}")
        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in aliases and node.attr.startswith("_")
        and not node.attr.startswith("__")):
      out.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
  return out


def test_no_module_reads_another_modules_private_names(tmp_path):
  files = [p for d in ("protoseg_jax", "data", "configs", "bench") for p in (ROOT / d).rglob("*.py")]
  files.append(ROOT / "main.py")
  found = [line for p in files for line in private_name_reads(p)]
  assert found == []
  planted = tmp_path / "planted.py"
  planted.write_text("from protoseg_jax import heads\nfrom protoseg_jax.ops import _x\n"
                     "heads._proto_head_paths({})\n")
  assert len(private_name_reads(planted)) == 2


def _run_without_trainer_stack(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
  """Run `code` in a fresh interpreter where importing the trainer's stack fails."""
  prelude = textwrap.dedent(f"""
      import sys
      BLOCKED = {TRAINER_STACK!r}
      class _Blocker:
        def find_spec(self, name, path=None, target=None):
          if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked in this test")
          return None
      sys.meta_path.insert(0, _Blocker())
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=xla_flags(1))
  return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


def test_the_blocker_blocks():
  done = _run_without_trainer_stack("import tensorflow")
  assert done.returncode != 0 and "tensorflow is blocked" in done.stderr


@pytest.mark.slow       # a train step in a subprocess of its own (no TensorFlow there)
def test_library_imports_and_trains_without_tensorflow_tfds_clu_orbax():
  done = _run_without_trainer_stack("""
      import importlib, pkgutil
      import jax, jax.numpy as jnp, numpy as np
      import protoseg_jax.models as models
      library = ["protoseg_jax.heads", "protoseg_jax.prototypes", "protoseg_jax.sinkhorn",
                 "protoseg_jax.losses", "protoseg_jax.ops", "protoseg_jax.optim",
                 "protoseg_jax.sharding", "protoseg_jax.train", "protoseg_jax.metrics",
                 "protoseg_jax.inference", "protoseg_jax.evaluate", "protoseg_jax.validate",
                 "protoseg_jax.classes", "protoseg_jax.held_out", "protoseg_jax.prototype_stats",
                 "protoseg_jax.trees", "protoseg_jax.convert"]
      library += [f"protoseg_jax.models.{m.name}" for m in pkgutil.iter_modules(models.__path__)]
      for name in library:
        importlib.import_module(name)
      from protoseg_jax import sharding, train
      from protoseg_jax.models.segmentor import build_model
      sys.path.insert(0, "tests")
      import tiny_runs            # the demo's config with the tests' plumbing model
      config = tiny_runs.get_config("plumbing")
      config.protoseg.num_prototypes = 2
      config.protoseg.embed_dim = 16
      from protoseg_jax.validate import validate_config
      validate_config(config, num_devices=1, num_processes=1)
      model = build_model(config, num_classes=3)
      mesh = sharding.create_mesh()
      state, tx, schedule = train.create_train_state(config, model, mesh, (1, 32, 32, 3))
      step = train.make_train_step(model, tx, schedule, config, mesh)
      rng = np.random.default_rng(0)
      batch = {"image": jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32),
               "label": jnp.asarray(rng.integers(0, 3, size=(2, 32, 32)), jnp.int32)}
      state, metrics = step(state, batch)
      assert int(state.step) == 1 and np.isfinite(float(metrics["train/loss"]))
      assert float(metrics["train/loss_ppc"]) > 0
      for m in ("tensorflow", "tensorflow_datasets", "clu", "orbax"):
        assert m not in sys.modules, m
      print("TRAINED", float(metrics["train/loss"]))
      """)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
  assert "TRAINED" in done.stdout


@pytest.mark.slow
@pytest.mark.xdist_group("trained_run")
def test_wheel_installs_a_package_that_evaluates_predicts_and_diagnoses_a_workdir(
    tmp_path, trained_run, request):
  """`pip install .` gives a package that works outside the checkout: the
  library imports, and an existing workdir is evaluated, predicted on and
  diagnosed with only `--workdir` (its config.json and run.json say the rest;
  the dataset prepared where its config says). Built here without network
  (no build isolation, no deps), installed into a folder of its own that the
  commands run from another directory with nothing of the checkout on the path."""
  from PIL import Image
  # Built from a copy of what the sdist holds, so nothing is written into the checkout.
  src = tmp_path / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, src / name)
  shutil.copytree(PACKAGE, src / "protoseg_jax", ignore=shutil.ignore_patterns("__pycache__"))
  wheels = tmp_path / "wheels"
  done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                         "--no-build-isolation", "-w", str(wheels), str(src)],
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
  (wheel,) = wheels.glob("protoseg_jax-*.whl")
  target = tmp_path / "site"
  done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target",
                         str(target), str(wheel)], capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
  assert (target / "protoseg_jax" / "heads.py").is_file()
  assert (target / "protoseg_jax" / "trainer" / "run.py").is_file()
  assert not (target / "tests").exists() and not (target / "configs").exists()
  assert not (target / "data").exists()

  # A run trained in the checkout (configs and dataset builders are there): the
  # session's tiny run (conftest.trained_run), its dataset prepared where its
  # config says.
  workdir = pathlib.Path(trained_run.copy_to(tmp_path / "run"))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1))
  with open(workdir / "metrics.jsonl") as f:
    trained_vals = [json.loads(line) for line in f if "val/mIoU" in line]

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(
      elsewhere / "photo.png")
  # The commands as tests/tool_runner.py runs them, from a driver that imports
  # the installed package (PYTHONPATH) in another directory: one import for all.
  driver = tool_runner.Driver(env=dict(env, PYTHONPATH=str(target)), cwd=elsewhere)
  request.addfinalizer(driver.close)

  def run(*args):
    return driver.run(args, cwd=elsewhere, timeout=900)

  done = run("-c", "import protoseg_jax, protoseg_jax.heads, protoseg_jax.convert, sys; "
                   "print(protoseg_jax.__file__); "
                   "import importlib.util as u; print(u.find_spec('data'), u.find_spec('configs'))")
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.splitlines()[0].startswith(str(target))
  assert done.stdout.splitlines()[1] == "None None"          # no checkout on the path
  done = run("-m", "protoseg_jax", f"--workdir={workdir}", "--mode=eval")
  assert done.returncode == 0, done.stderr[-3000:]
  with open(workdir / "metrics.jsonl") as f:
    vals = [json.loads(line) for line in f if "val/mIoU" in line]
  # One record more: the last checkpoint's evaluation, as the run's own at that step.
  assert vals[:-1] == trained_vals and vals[-1]["step"] == trained_vals[-1]["step"]
  assert vals[-1]["val/mIoU"] == pytest.approx(trained_vals[-1]["val/mIoU"], abs=1e-6)
  done = run("-m", "protoseg_jax", f"--workdir={workdir}", "--mode=predict",
             "--input=photo.png", "--output=pred")
  assert done.returncode == 0, done.stderr[-3000:]
  assert np.asarray(Image.open(elsewhere / "pred" / "photo.png")).shape == (40, 50)
  done = run("-m", "protoseg_jax.diagnostics", f"--workdir={workdir}")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "usage over 10 images of validation" in done.stdout, done.stdout   # the data read too
  summary = done.stdout.splitlines()[-2:]                     # the demo has looks: NMI last
  assert summary[0].startswith("used (>= 1 pixel"), done.stdout
  assert summary[1].startswith("appearance NMI (look vs retrieved prototype"), done.stdout
  # Training needs the checkout's configs: one line saying so, exit 2.
  done = run("-m", "protoseg_jax", f"--workdir={tmp_path / 'new'}", "--config=configs/demo.py")
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert "cannot load the config file" in done.stderr
