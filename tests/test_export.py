"""protoseg_jax.export and `main.py --mode=export`: model.jax, saved_model/,
model.onnx and export.json.

Every artefact is loaded by its own runtime in a fresh process (jax.export,
TensorFlow, onnxruntime; docs/export.md's snippets are the loaders) and
gives the project's logits (at most 1e-4 of their range apart) at two batch
sizes, for the demo model (HRNet + ProtoSeg, through `predict.Predictor`)
and a small random model of each backbone family (ResNet-FCN, Swin-UperNet
with a class-chunked ProtoSeg head, MiT-SegFormer trained without a class:
its labels are dataset ids). A bf16 model exports with a float32 interface;
ONNX, which has no bfloat16 Einsum, is refused in one line naming it, the
others written; so is ONNX of a class-chunked ProtoSeg head, whose model.jax
gives the project's logits. The command line: a checkpointed workdir and converted
weights export, and each bad input (no weights, a size the model cannot
take, a non-empty export dir, an unknown format) is one line, exit 2,
nothing written, nothing compiled.

Cost: the models are tiny and random (no training); the artefacts are
loaded in one subprocess that compiles at XLA's optimisation level 0 and
runs while this process exports the next model; the command-line cases run
as tests/tool_runner.py runs the tools (one import of the stack for all).
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tool_runner
from conftest import make_tiny_config, random_variables, save_train_state, xla_flags
from protoseg_jax import export, inference, optim, train
from protoseg_jax.models.segmentor import build_model
from protoseg_jax.trainer import augment, checkpoints, input_pipeline
from protoseg_jax.trainer import run as runs

# Its module fixtures are built once: every test here runs on one worker.
pytestmark = pytest.mark.xdist_group("export")

ROOT = pathlib.Path(__file__).resolve().parent.parent
BATCHES = (1, 3)
REL_TOL = 1e-4            # max |artefact - project| <= REL_TOL * (max - min of the project's logits)
FAST = {"xla_backend_optimization_level": 0}
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
           XLA_FLAGS=xla_flags(1))

# case -> (config overrides of configs/demo.py:runlocal, export size or None: the eval canvas)
CASES = {
    "demo_hrnet_proto": ({}, None),
    "resnet_fcn_linear": ({
        # ResNet-D: the deep stem's max-pool and the average-pool shortcuts (stride 2; "same"
        # padding in the dilated stages), output stride 8.
        "model.backbone": "resnet50d", "model.backbone_kwargs.layers": (1, 1, 1, 1),
        "model.backbone_kwargs.base_width": 4, "model.backbone_kwargs.stem_width": 4,
        "model.backbone_kwargs.output_stride": 8, "model.decoder": "fcn",
        "model.decoder_kwargs.in_index": 3, "model.decoder_kwargs.channels": 8,
        "model.decoder_kwargs.num_convs": 1, "model.decoder_kwargs.concat_input": True,
        "model.decoder_kwargs.dropout": 0.1, "model.head": "linear",
        "model.align_corners": False}, (40, 48)),
    "swin_uper_proto": ({
        "model.backbone": "swin_tiny_patch4_window7_224", "model.backbone_kwargs.embed_dim": 8,
        "model.backbone_kwargs.depths": (2, 1, 1, 1), "model.backbone_kwargs.num_heads": (1, 1, 2, 2),
        "model.backbone_kwargs.window_size": 4, "model.decoder": "uper",
        "model.decoder_kwargs.channels": 8, "model.decoder_kwargs.pool_scales": (1, 3),
        "model.align_corners": False, "protoseg.embed_dim": 8}, (64, 64)),
    "mit_segformer_linear": ({
        "model.backbone": "mit_b0", "model.backbone_kwargs.embed_dims": (8, 8, 16, 16),
        "model.backbone_kwargs.num_heads": (1, 1, 2, 2), "model.backbone_kwargs.depths": (1, 1, 1, 1),
        "model.backbone_kwargs.sr_ratios": (4, 2, 1, 1), "model.decoder": "segformer",
        "model.decoder_kwargs.channels": 8, "model.head": "linear", "model.align_corners": False,
        "dataset.held_out_class": 2}, (64, 32)),           # outputs: dataset ids 0, 1, 3, 4, 5
}


def random_images(size, n=max(BATCHES), seed=1):
  return np.random.default_rng(seed).integers(0, 256, (n, *size, 3)).astype(np.uint8)


def reference(config, model, variables, images):
  """The project's whole-image logits: the eval preprocessing
  (`augment.preprocess_image`, TensorFlow) and `inference.whole_inference`."""
  opts = input_pipeline.eval_options(config)
  opts = augment.EvalOptions(scale=None, mean=opts.mean, std=opts.std, input_order=opts.input_order)
  x = np.stack([augment.preprocess_image(img, opts) for img in images])
  fn = jax.jit(lambda v, x: inference.whole_inference(
      lambda x: model.apply(v, x, train=False).logits, x,
      align_corners=bool(config.model.align_corners)), compiler_options=FAST)
  return np.asarray(fn(variables, x))


# --------------------------------------------------------------------------
# docs/export.md's loaders, run in a fresh process.


def doc_snippets() -> dict:
  """{"setup", "jax", "saved_model", "onnx"}: the ```python blocks of
  docs/export.md's "Loading and running the artefacts"."""
  text = (ROOT / "docs" / "export.md").read_text()
  section = text[text.index("## Loading and running"):text.index("## Running on a GPU")]
  blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
  found = {"setup": blocks[0]}
  for block in blocks[1:]:
    kind = ("jax" if "export.deserialize" in block else "saved_model" if "tf.saved_model" in block
            else "onnx" if "onnxruntime" in block else None)
    found[kind] = block
  assert set(found) == {"setup", *export.FORMATS}, sorted(found)
  return found


LOADER = textwrap.dedent(r'''
    import json, re, sys, traceback
    import numpy as np

    def load(job, fmt, images, out):
      """Runs docs/export.md's setup and `fmt` snippets at each batch size; the interface."""
      for b in job["batches"]:
        ns = {}
        setup = re.sub(r'export_dir = ".*"', f'export_dir = {job["dir"]!r}', snippets["setup"])
        exec(setup, ns)
        ns["images"] = images[:b]
        exec(snippets[fmt], ns)
        out[f"{fmt}/{b}/logits"] = np.asarray(ns["logits"])
        out[f"{fmt}/{b}/labels"] = np.asarray(ns["labels"])
      if fmt == "jax":
        e = ns["exported"]
        return {"in": [str(a) for a in e.in_avals], "out": [str(a) for a in e.out_avals],
                "platforms": list(e.platforms)}
      if fmt == "saved_model":
        sig = ns["model"].signatures["serving_default"]
        spec = lambda v: [str(v.dtype.name), v.shape.as_list()]
        return {"in": {k: spec(v) for k, v in sig.structured_input_signature[1].items()},
                "out": {k: spec(v) for k, v in sig.structured_outputs.items()}}
      s = ns["session"]
      return {"in": [[i.name, i.type, list(i.shape)] for i in s.get_inputs()],
              "out": [[o.name, o.type, list(o.shape)] for o in s.get_outputs()]}

    snippets = json.loads(sys.stdin.readline())
    for line in sys.stdin:
      job = json.loads(line)
      out, meta = {}, {}
      images = np.load(job["images"])
      for fmt in job["formats"]:
        try:
          meta[fmt] = load(job, fmt, images, out)
        except Exception:
          meta[fmt] = {"error": traceback.format_exc()}
      np.savez(job["out"], **out)
      print("done", json.dumps({"case": job["case"], "meta": meta}), flush=True)
    ''')


class Loader:
  """One subprocess that loads artefacts with docs/export.md's snippets,
  job after job (submitted while this process goes on exporting)."""

  def __init__(self, tmp):
    self.tmp = tmp
    self.proc = subprocess.Popen([sys.executable, "-c", LOADER], cwd=tmp, env=ENV, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    self.proc.stdin.write(json.dumps(doc_snippets()) + "\n")
    self.proc.stdin.flush()
    self.results, self.pending = {}, []

  def submit(self, case, export_dir, images, formats=export.FORMATS):
    path = os.path.join(self.tmp, f"{case}_images.npy")
    np.save(path, images.astype(np.float32))
    job = {"case": case, "dir": str(export_dir), "formats": list(formats),
           "batches": list(BATCHES), "images": path,
           "out": os.path.join(self.tmp, f"{case}_out.npz")}
    self.pending.append(job)
    self.proc.stdin.write(json.dumps(job) + "\n")
    self.proc.stdin.flush()

  def result(self, case, formats=export.FORMATS):
    """({fmt/batch/logits|labels: array}, {fmt: interface}) of a submitted case;
    AssertionError with the loader's traceback for a format it could not run."""
    while case not in self.results:
      line = self.proc.stdout.readline()
      if not line:
        raise RuntimeError(f"the loader process ended (exit {self.proc.wait()}) before {case}")
      if line.startswith("done "):
        done = json.loads(line[5:])
        job = next(j for j in self.pending if j["case"] == done["case"])
        self.results[done["case"]] = (dict(np.load(job["out"])), done["meta"])
    got, meta = self.results[case]
    for fmt in formats:
      if fmt in meta and "error" in meta[fmt]:
        raise AssertionError(f"{case}: {fmt} failed in the loader:\n{meta[fmt]['error']}")
    return got, meta

  def close(self):
    self.proc.stdin.close()
    try:
      self.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
      self.proc.kill()


@pytest.fixture(scope="module")
def loader(tmp_path_factory):
  lo = Loader(str(tmp_path_factory.mktemp("loader")))
  yield lo
  lo.close()


# --------------------------------------------------------------------------
# The models: exported in this process, loaded in the loader.


@pytest.fixture(scope="module")
def cases(tmp_path_factory, loader):
  """case -> dict(config, model, variables, classes, size, images, dir); every
  case exported (all formats) and submitted to the loader before any test
  compares, so that the loader works while the references compile."""
  tmp = tmp_path_factory.mktemp("export")
  out = {}
  for case, (overrides, size) in CASES.items():
    config = make_tiny_config(str(tmp / "tfds"), **overrides)
    classes = runs.classes_of_config(config)
    model = build_model(config, classes.num_outputs, classes.ignore_index)
    variables = random_variables(train.abstract_variables(config, model))
    result = export.export_model(config, model, variables, classes, str(tmp / case), size=size,
                                 source="random variables", step=None)
    assert result.written == export.FORMATS and not result.failed, result
    images = random_images(result.size)
    loader.submit(case, tmp / case, images)
    out[case] = dict(config=config, model=model, variables=variables, classes=classes,
                     size=result.size, images=images, dir=tmp / case)
  return out


@pytest.fixture(scope="module")
def references(cases):
  """case -> (project logits [3, H, W, C], labels as class ids). The demo
  model through `predict.Predictor` (the eval preprocessing and inference,
  with its own jitted step), the others through `reference`."""
  from protoseg_jax import predict
  out = {}
  for case, c in cases.items():
    if case == "demo_hrnet_proto":
      predictor = predict.Predictor.from_variables(c["config"], c["variables"],
                                                   c["classes"].num_outputs,
                                                   classes=c["classes"],
                                                   devices=jax.local_devices()[:1])
      res = predictor.predict_batch(list(c["images"]), return_scores=True,
                                    batch_size=len(c["images"]))
      logits = np.stack([s for _, s in res])
      labels = np.stack([lab for lab, _ in res])
    else:
      logits = reference(c["config"], c["model"], c["variables"], c["images"])
      labels = np.asarray(c["classes"].class_ids)[logits.argmax(-1)]
    out[case] = (logits, labels)
  return out


def check_close(got_logits, got_labels, want_logits, want_labels, what):
  """Logits within REL_TOL of the range; labels equal wherever the top two
  logits are further apart than the tolerance (elsewhere rounding decides)."""
  assert got_logits.shape == want_logits.shape, (what, got_logits.shape, want_logits.shape)
  assert got_logits.dtype == np.float32 and got_labels.dtype == np.int32, what
  span = float(want_logits.max() - want_logits.min())
  assert span > 1e-3, f"{what}: degenerate reference logits (range {span})"
  diff = float(np.abs(got_logits - want_logits).max())
  assert diff <= REL_TOL * span, f"{what}: max |diff| {diff:.3g} > {REL_TOL} x range {span:.3g}"
  top2 = np.sort(want_logits, axis=-1)[..., -2:]
  clear = (top2[..., 1] - top2[..., 0]) > 2 * REL_TOL * span
  np.testing.assert_array_equal(got_labels[clear], want_labels[clear], err_msg=what)
  return diff / span


@pytest.mark.parametrize("fmt", export.FORMATS)
@pytest.mark.parametrize("case", list(CASES))
def test_each_artefact_gives_the_projects_logits_at_two_batch_sizes(case, fmt, cases, references,
                                                                    loader):
  got, meta = loader.result(case, (fmt,))
  want_logits, want_labels = references[case]
  rel = []
  for b in BATCHES:
    rel.append(check_close(got[f"{fmt}/{b}/logits"], got[f"{fmt}/{b}/labels"],
                           want_logits[:b], want_labels[:b], f"{case} {fmt} batch {b}"))
  print(f"{case} {fmt}: max |diff| / range = {max(rel):.2e}")
  h, w = cases[case]["size"]
  c = cases[case]["classes"].num_outputs
  m = meta[fmt]
  if fmt == "jax":   # the batch is symbolic; float32 in, float32 / int32 out
    assert m["in"] == [f"float32[batch,{h},{w},3]"], m
    assert m["out"] == [f"float32[batch,{h},{w},{c}]", f"int32[batch,{h},{w}]"], m
    assert set(m["platforms"]) == set(export.JAX_PLATFORMS)
  elif fmt == "saved_model":
    assert m["in"] == {"images": ["float32", [None, h, w, 3]]}, m
    assert m["out"] == {"logits": ["float32", [None, h, w, c]],
                        "labels": ["int32", [None, h, w]]}, m
  else:
    assert [i[:2] for i in m["in"]] == [["images", "tensor(float)"]], m
    assert [o[:2] for o in m["out"]] == [["logits", "tensor(float)"], ["labels", "tensor(int32)"]]
    assert m["in"][0][2][1:] == [h, w, 3] and not isinstance(m["in"][0][2][0], int), m


def test_labels_are_dataset_ids_for_a_model_without_a_class(cases, loader):
  c = cases["mit_segformer_linear"]
  assert c["classes"].class_ids == (0, 1, 3, 4, 5)
  got, _ = loader.result("mit_segformer_linear")
  for fmt in export.FORMATS:
    assert 2 not in np.unique(got[f"{fmt}/3/labels"])
    assert set(np.unique(got[f"{fmt}/3/labels"])) <= {0, 1, 3, 4, 5}


def test_export_json_describes_the_artefacts_and_the_run(cases):
  c = cases["demo_hrnet_proto"]
  meta = json.loads((c["dir"] / "export.json").read_text())
  assert sorted(os.listdir(c["dir"])) == ["export.json", "model.jax", "model.onnx", "saved_model"]
  assert meta["artefacts"] == {f: export.ARTEFACTS[f] for f in export.FORMATS}
  assert meta["failed"] == {}
  assert meta["input"]["shape"] == ["batch", 96, 96, 3]        # default: config's eval canvas
  assert meta["input"]["dtype"] == "float32" and meta["input"]["range"] == [0, 255]
  assert meta["input"]["normalisation_inside"]["mean"] == list(c["config"].dataset.mean)
  assert [o["name"] for o in meta["outputs"]] == ["logits", "labels"]
  assert meta["classes"]["names"][:2] == ["background", "disc"]
  assert meta["classes"]["ignore_index"] == 255 and len(meta["classes"]["palette"]) == 6
  assert meta["source"] == {"workdir": None, "weights": "random variables",
                            "checkpoint_step": None}
  assert meta["config"]["model"]["backbone"] == "hrnet_tiny"
  assert {"jax", "flax", "protoseg_jax", "tensorflow", "jax2onnx", "onnx"} <= set(meta["versions"])
  assert not [p for p in os.listdir(c["dir"].parent) if ".partial-" in p]   # nothing left over


def test_a_bf16_model_exports_with_a_float32_interface_and_onnx_names_what_it_lacks(tmp_path,
                                                                                      loader):
  config = make_tiny_config(str(tmp_path / "tfds"), **{"model.dtype": "bfloat16"})
  classes = runs.classes_of_config(config)
  model = build_model(config, classes.num_outputs)
  variables = random_variables(train.abstract_variables(config, model))
  out = tmp_path / "bf16"
  result = export.export_model(config, model, variables, classes, str(out), size=(32, 32),
                               formats=("jax", "onnx"))
  assert result.written == ("jax",)
  # ONNX has no bfloat16 Einsum: one line naming the operation and the remedy.
  line = result.failed["onnx"]
  assert "\n" not in line and "'Einsum' on bfloat16" in line, line
  assert "--config.model.dtype=float32" in line
  assert sorted(os.listdir(out)) == ["export.json", "model.jax"]
  meta = json.loads((out / "export.json").read_text())
  assert set(meta["artefacts"]) == {"jax"} and "Einsum" in meta["failed"]["onnx"]
  assert meta["inference"]["compute_dtype"] == "bfloat16"
  images = random_images((32, 32))
  loader.submit("bf16", out, images, formats=("jax",))
  # The project's bf16 logits (with the export's own normalisation: what is
  # compared here is the artefact with the bf16 model).
  fn = export.inference_function(config, model, classes)
  want_logits, want_labels = jax.jit(fn, compiler_options=FAST)(variables,
                                                                images.astype(np.float32))
  got, meta = loader.result("bf16")
  assert meta["jax"]["in"] == ["float32[batch,32,32,3]"]
  assert meta["jax"]["out"] == ["float32[batch,32,32,6]", "int32[batch,32,32]"]
  for b in BATCHES:
    check_close(got[f"jax/{b}/logits"], got[f"jax/{b}/labels"], np.asarray(want_logits)[:b],
                np.asarray(want_labels)[:b], f"bf16 jax {b}")


def test_a_class_chunked_head_exports_to_jax_and_onnx_names_what_it_cannot(tmp_path, loader):
  """The ProtoSeg head with class chunks (config.protoseg.class_chunk: a loop
  over chunks of classes, sized for one image of the symbolic batch):
  model.jax gives the project's logits; jax2onnx cannot express the loop's
  'full' of a symbolic size, which the one line names with the remedy, and
  model.onnx is left out."""
  overrides = dict(CASES["resnet_fcn_linear"][0], **{"model.head": "proto",
                                                     "protoseg.class_chunk": 4})
  config = make_tiny_config(str(tmp_path / "tfds"), **overrides)   # 6 classes in chunks of 4
  classes = runs.classes_of_config(config)
  model = build_model(config, classes.num_outputs)
  variables = random_variables(train.abstract_variables(config, model))
  size = CASES["resnet_fcn_linear"][1]
  result = export.export_model(config, model, variables, classes, str(tmp_path / "out"),
                               size=size, formats=("jax", "onnx"))
  assert result.written == ("jax",)
  line = result.failed["onnx"]
  assert "\n" not in line and "the operation 'full'" in line, line
  assert "--config.protoseg.class_chunk=6 exports them at once" in line
  assert sorted(os.listdir(tmp_path / "out")) == ["export.json", "model.jax"]
  images = random_images(size)
  loader.submit("chunked", tmp_path / "out", images, formats=("jax",))
  want_logits = reference(config, model, variables, images)
  want_labels = np.asarray(classes.class_ids)[want_logits.argmax(-1)]
  got, _ = loader.result("chunked")
  for b in BATCHES:
    check_close(got[f"jax/{b}/logits"], got[f"jax/{b}/labels"], want_logits[:b],
                want_labels[:b], f"chunked jax {b}")


def test_nothing_is_written_when_no_format_can_be(cases, tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise export.ExportFailed("onnx: jax2onnx cannot express the operation 'x'")
  monkeypatch.setattr(export, "write_onnx", fail)
  c = cases["mit_segformer_linear"]
  result = export.export_model(c["config"], c["model"], c["variables"], c["classes"],
                               str(tmp_path / "none"), size=c["size"], formats=("onnx",))
  assert result.written == () and result.failed == {"onnx": "onnx: jax2onnx cannot express "
                                                            "the operation 'x'"}
  assert os.listdir(tmp_path) == []


def test_sizes_formats_and_folders_are_checked():
  assert export.parse_formats("all") == export.FORMATS
  assert export.parse_formats("onnx,jax") == ("jax", "onnx")
  with pytest.raises(export.ArgumentError, match="unknown format tflite"):
    export.parse_formats("jax,tflite")
  assert export.parse_size("64,96") == (64, 96) and export.parse_size("64") == (64, 64)
  with pytest.raises(export.ArgumentError, match="two positive integers"):
    export.parse_size("64,a")
  assert export.check_size((64, 96), 32) == (64, 96)
  with pytest.raises(export.ArgumentError, match="the nearest are 32,96 and 64,96"):
    export.check_size((50, 96), 32)
  with pytest.raises(export.ArgumentError, match="the nearest are 32,32$"):
    export.check_size((20, 20), 32)
  config = make_tiny_config("/nonexistent")
  assert export.model_stride(build_model(config, 6)) == 32         # HRNet
  for case, stride in (("resnet_fcn_linear", 8), ("swin_uper_proto", 32),
                       ("mit_segformer_linear", 32)):
    config = make_tiny_config("/nonexistent", **CASES[case][0])
    assert export.model_stride(build_model(config, 6)) == stride, case


# --------------------------------------------------------------------------
# The command line.


def run_commands(arg_lists, timeout=600):
  """[(exit status, stderr)] of `main.py ARGS` for each ARGS, run as a user runs
  them (tests/tool_runner.py), JAX logging every compilation."""
  out = []
  for args in arg_lists:
    done = tool_runner.run(["main.py", *args], timeout=timeout, log_compiles=True)
    out.append((done.returncode, done.stderr))
  return out


def program(export_dir) -> str:
  """The StableHLO of a model.jax without its source locations."""
  exported = jax.export.deserialize((pathlib.Path(export_dir) / "model.jax").read_bytes())
  text = "\n".join(line for line in exported.mlir_module().splitlines()
                   if not line.startswith("#loc"))
  return re.sub(r"\s*loc\((#loc\d*|\"[^\"]*\"[^)]*)\)", "", text)


def _error_lines(stderr):
  return [line for line in stderr.splitlines() if "error:" in line]


def _checkpointed_workdir(workdir, config, variables, step=2):
  """A workdir as the trainer leaves it (config.json, run.json, a train-state
  checkpoint), holding `variables`."""
  save_train_state(workdir, config, variables, step)
  runs.describe(str(workdir), config, runs.classes_of_config(config))


@pytest.mark.slow       # main.py in subprocesses; the fast set covers every format and family
def test_the_command_exports_a_run_and_converted_weights_and_refuses_bad_input(cases, tmp_path):
  c = cases["demo_hrnet_proto"]
  config = c["config"]
  work = tmp_path / "work"
  _checkpointed_workdir(work, config, c["variables"])
  checkpoints.save_variables(c["variables"], str(tmp_path / "converted"))
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "keep.txt").write_text("not an export")
  replaced = tmp_path / "replaced"
  replaced.mkdir()
  (replaced / "old.txt").write_text("an earlier export")
  base = ["--mode=export", "--config=configs/demo.py:runlocal",
          f"--config.dataset.data_dir={tmp_path / 'tfds'}"]
  results = run_commands([
      [*base, f"--workdir={tmp_path / 'empty'}", f"--export_dir={tmp_path / 'o1'}"],
      [*base, f"--workdir={work}", "--export_size=50,64", f"--export_dir={tmp_path / 'o2'}"],
      [*base, f"--workdir={work}", f"--export_dir={busy}"],
      [*base, f"--workdir={work}", "--export_format=jax,tflite", f"--export_dir={tmp_path / 'o4'}"],
      # A checkpointed workdir, into a non-empty folder with --overwrite; default size.
      [*base, f"--workdir={work}", f"--export_dir={replaced}", "--overwrite",
       "--export_format=jax"],
      # Converted weights, no workdir.
      [*base, f"--config.init_from={tmp_path / 'converted'}", "--config.init_from_scope=all",
       f"--export_dir={tmp_path / 'from_weights'}", "--export_format=jax", "--export_size=32,32"],
      # A format that cannot express the model: one line, exit 1, the others written.
      [*base, f"--workdir={work}", "--config.model.dtype=bfloat16", "--export_format=jax,onnx",
       "--export_size=32,32", f"--export_dir={tmp_path / 'bf16'}"],
  ])
  bad = {
      "no weights": ("config.init_from is empty", tmp_path / "o1"),
      "size": ("--export_size=50,64: the model takes sizes whose sides are multiples of 32 "
               "(its backbone's total stride); the nearest are 32,64 and 64,64", tmp_path / "o2"),
      "busy": (f"--export_dir={busy} exists and is not empty", None),
      "format": ("--export_format=jax,tflite: unknown format tflite", tmp_path / "o4"),
  }
  for (what, (message, never)), (code, err) in zip(bad.items(), results[:4]):
    lines = _error_lines(err)
    assert code == 2 and len(lines) == 1, (what, code, err[-3000:])
    assert lines[0].startswith("main.py: error: ") and message in lines[0], (what, lines)
    assert "Traceback" not in err and "Compiling" not in err, (what, err[-3000:])
    assert never is None or not never.exists(), what
  assert sorted(os.listdir(busy)) == ["keep.txt"]
  assert not [p for p in os.listdir(tmp_path) if ".partial-" in p or ".old-" in p]

  code, err = results[4]
  assert code == 0, err[-4000:]
  assert sorted(os.listdir(replaced)) == ["export.json", "model.jax"]
  meta = json.loads((replaced / "export.json").read_text())
  assert meta["source"]["checkpoint_step"] == 2 and meta["source"]["workdir"] == str(work)
  assert meta["input"]["shape"] == ["batch", 96, 96, 3]
  # The checkpoint's export is the demo model's (whose artefacts are checked
  # above): the same program, weights included, up to source locations.
  assert program(replaced) == program(c["dir"])

  code, err = results[5]
  assert code == 0, err[-4000:]
  meta = json.loads((tmp_path / "from_weights" / "export.json").read_text())
  assert meta["source"]["checkpoint_step"] is None
  assert meta["source"]["weights"].startswith("config.init_from=")
  assert meta["input"]["shape"] == ["batch", 32, 32, 3]
  exported = jax.export.deserialize((tmp_path / "from_weights" / "model.jax").read_bytes())
  assert [str(a) for a in exported.in_avals] == ["float32[batch,32,32,3]"]

  code, err = results[6]
  lines = [line for line in err.splitlines() if line.startswith("main.py: error: ")]
  assert code == 1 and len(lines) == 1, (code, err[-3000:])
  assert lines[0].startswith("main.py: error: onnx: ") and "'Einsum' on bfloat16" in lines[0]
  assert f"model.jax and export.json written to {tmp_path / 'bf16'}" in lines[0]
  assert "Traceback" not in err
  assert sorted(os.listdir(tmp_path / "bf16")) == ["export.json", "model.jax"]
