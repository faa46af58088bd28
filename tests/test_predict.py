"""protoseg_jax.predict and `main.py --mode=predict`: images of any size and
kind in, label maps / colour maps / overlays out, equal to the eval path."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

import tool_runner
from conftest import make_tiny_config, random_variables
import data
from protoseg_jax import predict as P
from protoseg_jax.models.segmentor import build_model

# Its module fixture is built once: every test here runs on one worker, the
# worker of the session's trained run, which test_main_predict_... uses.
pytestmark = pytest.mark.xdist_group("trained_run")


def _fresh_variables(config):
  """(model, random variables of its shapes, DatasetMeta): nothing trained or compiled."""
  from protoseg_jax import train
  meta = data.dataset_meta(config.dataset.name)
  model = build_model(config, meta.num_classes, meta.ignore_index)
  return model, random_variables(train.abstract_variables(config, model)), meta


@pytest.fixture(scope="module")
def setup(demo_dir):
  config = make_tiny_config(demo_dir)
  model, variables, meta = _fresh_variables(config)
  predictor = P.Predictor.from_variables(config, variables, meta.num_classes)
  return config, model, variables, meta, predictor


def _rng_image(h, w, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


# ---------------------------------------------------------------------------
# Reading.


def test_read_image_converts_every_kind_to_rgb_uint8(tmp_path):
  rgb = _rng_image(9, 7)
  gray = rgb[..., 0]
  Image.fromarray(gray, "L").save(tmp_path / "gray.png")
  rgba = np.concatenate([rgb, np.full((9, 7, 1), 17, np.uint8)], -1)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
  pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=8)
  pal.save(tmp_path / "pal.png")
  g16 = (np.arange(63, dtype=np.uint16).reshape(9, 7) * 1000).astype(np.uint16)
  Image.fromarray(g16).save(tmp_path / "g16.png")

  out = P.read_image(str(tmp_path / "gray.png"))
  assert out.dtype == np.uint8 and out.shape == (9, 7, 3)
  np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))
  np.testing.assert_array_equal(P.read_image(str(tmp_path / "rgba.png")), rgb)
  np.testing.assert_array_equal(P.read_image(str(tmp_path / "pal.png")),
                                np.asarray(pal.convert("RGB")))
  assert Image.open(tmp_path / "g16.png").mode.startswith("I")   # really 16-bit
  out = P.read_image(str(tmp_path / "g16.png"))
  want = np.round(g16.astype(np.float64) * 255 / 65535).astype(np.uint8)
  np.testing.assert_array_equal(out, np.repeat(want[..., None], 3, -1))


def _exif_rotated_jpeg(path, h, w):
  img = Image.fromarray(_rng_image(h, w, 3))
  exif = Image.Exif()
  exif[0x0112] = 6   # orientation: rotate 90 CW to display
  img.save(path, exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_applied(tmp_path):
  _exif_rotated_jpeg(tmp_path / "r.jpg", 20, 30)
  assert P.read_image(str(tmp_path / "r.jpg")).shape == (30, 20, 3)


def test_list_images_dir_glob_file_keep_relative_paths(tmp_path):
  (tmp_path / "in" / "sub").mkdir(parents=True)
  for rel in ("a.png", "sub/b.jpg"):
    Image.fromarray(_rng_image(4, 4)).save(tmp_path / "in" / rel)
  (tmp_path / "in" / "notes.txt").write_text("x")
  assert [r for _, r in P.list_images(str(tmp_path / "in"))] == ["a.png", os.path.join("sub", "b.jpg")]
  got = P.list_images(str(tmp_path / "in" / "**" / "*.jpg"))
  assert [r for _, r in got] == [os.path.join("sub", "b.jpg")]
  assert [r for _, r in P.list_images(str(tmp_path / "in" / "sub" / "b.jpg"))] == ["b.jpg"]
  with pytest.raises(FileNotFoundError):
    P.list_images(str(tmp_path / "missing"))


# ---------------------------------------------------------------------------
# Prediction.


def test_predict_paths_any_size_and_kind(setup, tmp_path):
  config, _, _, meta, predictor = setup
  src = tmp_path / "in"
  (src / "sub").mkdir(parents=True)
  Image.fromarray(_rng_image(37, 61, 1)).save(src / "odd.png")
  Image.fromarray(_rng_image(50, 30, 2)).save(src / "sub" / "tall.png")
  Image.fromarray(_rng_image(33, 40, 4)[..., 0], "L").save(src / "gray.png")
  Image.fromarray(np.concatenate([_rng_image(21, 22, 5), np.zeros((21, 22, 1), np.uint8)], -1),
                  "RGBA").save(src / "rgba.png")
  Image.fromarray(_rng_image(25, 26, 6)).convert("P", palette=Image.ADAPTIVE).save(src / "pal.png")
  Image.fromarray((np.arange(24 * 31).reshape(24, 31) * 80).astype(np.uint16)).save(src / "g16.png")
  _exif_rotated_jpeg(src / "sub" / "rot.jpg", 20, 30)
  Image.fromarray(_rng_image(150, 70, 7)).save(src / "big.png")   # past the 96x96 eval canvas
  want_hw = {"odd": (37, 61), "sub/tall": (50, 30), "gray": (33, 40), "rgba": (21, 22),
             "pal": (25, 26), "g16": (24, 31), "sub/rot": (30, 20), "big": (150, 70)}
  out = tmp_path / "out"
  summary = predictor.predict_paths(P.list_images(str(src)), str(out))
  assert summary["images"] == len(want_hw) and summary["images_per_sec"] > 0
  for name, hw in want_hw.items():
    stem = out / name
    ids = np.asarray(Image.open(f"{stem}.png"))
    assert ids.shape == hw and ids.dtype == np.uint8, name
    assert ids.max() < meta.num_classes
    color = np.asarray(Image.open(f"{stem}_color.png"))
    np.testing.assert_array_equal(color, np.asarray(meta.palette, np.uint8)[ids])
    assert np.asarray(Image.open(f"{stem}_overlay.png")).shape == hw + (3,)
  # Two canvases at most: the eval canvas and the bucket of the big image.
  assert len(predictor._steps) <= 2


def test_one_batch_of_odd_sizes_equals_one_at_a_time(setup):
  *_, predictor = setup
  images = [_rng_image(37, 61, 1), _rng_image(50, 30, 2)]
  together = predictor.predict_batch(images)
  for img, pred in zip(images, together):
    assert pred.shape == img.shape[:2]
    np.testing.assert_array_equal(pred, predictor.predict(img))
  labels, scores = predictor.predict(images[0], return_scores=True)
  assert scores.shape == (37, 61, predictor.num_classes)
  np.testing.assert_array_equal(labels, scores.argmax(-1))


def test_predict_equals_the_eval_path(setup):
  """Images of the demo's validation split: Predictor vs the eval batch + inference.predict."""
  config, model, variables, _, predictor = setup
  import tensorflow_datasets as tfds
  from protoseg_jax import inference
  from protoseg_jax.trainer import datasets, input_pipeline
  builder = datasets.check_prepared(config)
  batch = next(input_pipeline.make_eval_dataset(config, process_index=0,
                                                process_count=1).as_numpy_iterator())
  pred = jax.jit(lambda v, b: inference.predict(
      lambda x: model.apply(v, x, train=False).logits, b, inference.inference_options(config)))(
          variables, {k: jnp.asarray(v) for k, v in batch.items()})
  pred = np.asarray(pred)
  ds = builder.as_dataset(split=config.dataset.eval_split, shuffle_files=False)
  images = [ex["image"] for ex in tfds.as_numpy(ds.take(len(pred)))]
  mine = predictor.predict_batch(images)
  for i, (img, p) in enumerate(zip(images, mine)):
    h, w = batch["label_hw"][i]
    assert p.shape == (h, w) == img.shape[:2]
    np.testing.assert_array_equal(p, pred[i, :h, :w])


def test_slide_equals_whole_when_the_window_covers_the_image(setup):
  config, _, variables, meta, whole = setup
  slide_config = make_tiny_config(config.dataset.data_dir, **{
      "eval.mode": "slide", "eval.slide_crop": (128, 128), "eval.stride": (64, 64)})
  slide = P.Predictor.from_variables(slide_config, variables, meta.num_classes)
  images = [_rng_image(37, 61, 1), _rng_image(50, 30, 2)]
  for a, b in zip(whole.predict_batch(images, return_scores=True),
                  slide.predict_batch(images, return_scores=True)):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# Cityscapes output.


CITYSCAPES_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def test_cityscapes_format_writes_label_ids(tmp_path):
  from data.cityscapes import builder
  release = data.dataset_meta("cityscapes").release_ids
  ids = np.random.RandomState(0).randint(0, 19, (5, 6))
  paths = P.write_outputs(str(tmp_path / "o" / "x"), _rng_image(5, 6), ids, (), "cityscapes",
                          release)
  assert paths == [str(tmp_path / "o" / "x_labelIds.png")]
  got = np.asarray(Image.open(paths[0]))
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got, np.asarray(CITYSCAPES_LABEL_IDS)[ids])
  np.testing.assert_array_equal(builder.LUT[got], ids)   # the round trip
  with pytest.raises(ValueError, match="release ids"):
    P.write_outputs(str(tmp_path / "o" / "y"), _rng_image(5, 6), ids, (), "cityscapes")


# ---------------------------------------------------------------------------
# main.py --mode=predict on a trained workdir.


@pytest.mark.slow
def test_main_predict_on_a_trained_held_out_workdir(tmp_path, trained_run, demo_dir):
  """The session's run trained without class 3 (conftest.trained_run:
  config.dataset.held_out_class) predicts DATASET ids through main.py
  --mode=predict (given only the workdir and the config file without the
  held-out override) and Predictor.from_workdir (given only the workdir):
  its 5 outputs are the classes 0, 1, 2, 4, 5."""
  workdir = trained_run.copy_to(tmp_path / "work")
  src = tmp_path / "in" / "sub"
  src.mkdir(parents=True)
  imgs = [_rng_image(37, 61, 1), _rng_image(96, 96, 2)]
  for i, img in enumerate(imgs):
    Image.fromarray(img).save(src / f"a{i}.png")
  out = tmp_path / "out"
  done = tool_runner.run(
      ["main.py", "--config=tests/tiny_runs.py:plumbing", f"--config.dataset.data_dir={demo_dir}",
       f"--workdir={workdir}", "--mode=predict", f"--input={tmp_path / 'in'}",
       f"--output={out}"])
  assert done.returncode == 0, done.stderr[-4000:]
  assert "images/s" in done.stderr
  predictor = P.Predictor.from_workdir(workdir=str(workdir))   # no config: config.json, run.json
  assert predictor.classes.class_ids == (0, 1, 2, 4, 5)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(predictor.variables),
               trained_run.variables)
  for i, img in enumerate(imgs):
    ids = np.asarray(Image.open(out / "sub" / f"a{i}.png"))
    labels, scores = predictor.predict(img, return_scores=True)
    assert scores.shape == img.shape[:2] + (5,)
    # The argmax over the 5 outputs, mapped to dataset ids (output 3 is class 4, ...).
    np.testing.assert_array_equal(labels, np.asarray([0, 1, 2, 4, 5])[scores.argmax(-1)])
    np.testing.assert_array_equal(ids, labels)
    assert 3 not in np.unique(ids)
    for suffix in ("_color.png", "_overlay.png"):
      assert (out / "sub" / f"a{i}{suffix}").is_file()


@pytest.mark.slow
def test_cityscapes_output_scores_like_the_official_evaluator(tmp_path):
  """Predictor -> <name>_labelIds.png -> cityscapesScripts' evaluator: its mIoU
  equals protoseg_jax.metrics' on the same predictions (train ids)."""
  ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
  import copy
  from data.cityscapes import builder
  from protoseg_jax import metrics
  config = make_tiny_config(str(tmp_path / "tfds"), **{"dataset.name": "cityscapes"})
  _, variables, meta = _fresh_variables(config)
  assert meta.num_classes == 19
  predictor = P.Predictor.from_variables(config, variables, 19)
  rng = np.random.RandomState(0)
  gts, ins, sizes = [], [], [(24, 40), (30, 30), (17, 45)]
  for i, (h, w) in enumerate(sizes):
    city = "aachen" if i < 2 else "bremen"
    stem = f"{city}_{i:06d}_000019"
    for d in ("in", "gtFine/val"):
      (tmp_path / d / city).mkdir(parents=True, exist_ok=True)
    ins.append(tmp_path / "in" / city / f"{stem}_leftImg8bit.png")
    Image.fromarray(_rng_image(h, w, 10 + i)).save(ins[-1])
    gt = rng.randint(0, 34, (h, w)).astype(np.uint8)   # every labelId, the ignored ones too
    gt.flat[:19] = sorted(builder.LABEL_ID_TO_TRAIN_ID)  # every evaluated class present
    path = tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png"
    Image.fromarray(gt).save(path)
    gts.append(str(path))
  predictor.predict_paths(P.list_images(str(tmp_path / "in")), str(tmp_path / "out"),
                          output_format="cityscapes")
  assert sorted(os.listdir(tmp_path / "out" / "aachen")) == [
      "aachen_000000_000019_leftImg8bit_labelIds.png", "aachen_000001_000019_leftImg8bit_labelIds.png"]

  args = copy.copy(ev.args)
  args.predictionPath, args.predictionWalk = str(tmp_path / "out"), None
  args.quiet, args.JSONOutput, args.evalInstLevelScore = True, False, False
  preds = [ev.getPrediction(args, g) for g in gts]
  official = ev.evaluateImgLists(preds, gts, args)["averageScoreClasses"] * 100

  cm = 0
  for src, g in zip(ins, gts):
    train_pred = predictor.predict(P.read_image(str(src)))    # in memory, train ids
    cm = cm + np.asarray(metrics.confusion_matrix(
        jnp.asarray(train_pred, jnp.int32)[None], jnp.asarray(builder.LUT[np.asarray(Image.open(g))],
                                                               jnp.int32)[None], 19, ignore_index=255))
  ours = metrics.metrics_from_confusion(cm)["mIoU"]
  assert abs(official - ours) < 0.01, (official, ours)


# ---------------------------------------------------------------------------
# Untrusted inputs: unreadable files, the pixel budget, output paths.


def _png_header(w, h):
  """A PNG claiming w x h RGB pixels with 16 bytes of pixel data: only its
  header can be read."""
  import struct
  import zlib

  def chunk(kind, payload):
    return (struct.pack(">I", len(payload)) + kind + payload +
            struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
          chunk(b"IDAT", zlib.compress(bytes(16))))


def test_unreadable_and_oversized_inputs_are_skipped_by_name(setup, tmp_path, monkeypatch):
  *_, predictor = setup
  src, out = tmp_path / "in", tmp_path / "out"
  src.mkdir()
  Image.fromarray(_rng_image(20, 24, 1)).save(src / "good.png")
  Image.fromarray(_rng_image(20, 24, 2)).save(src / "truncated.jpg", quality=90)
  jpeg = (src / "truncated.jpg").read_bytes()
  (src / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
  (src / "notes.png").write_text("not an image")
  (src / "empty.png").write_bytes(b"")
  Image.fromarray(_rng_image(25, 25, 3)).save(src / "big.png")           # 625 pixels
  (src / "huge.png").write_bytes(_png_header(5000, 5000))               # refused before decoding
  (src / "bomb.png").write_bytes(_png_header(20000, 20000))             # PIL's limit
  monkeypatch.setattr(predictor, "max_pixels", 600)
  summary = predictor.predict_paths(P.list_images(str(src)), str(out))
  assert summary["images"] == 1
  assert sorted(os.listdir(out)) == ["good.png", "good_color.png", "good_overlay.png"]
  failed = {os.path.basename(p): reason for p, reason in summary["failed"]}
  assert sorted(failed) == ["big.png", "bomb.png", "empty.png", "huge.png", "notes.png",
                            "truncated.jpg"]
  assert "Truncated" in failed["truncated.jpg"] and "unreadable" in failed["notes.png"]
  assert "unreadable" in failed["empty.png"]
  assert "25x25 = 625 pixels" in failed["big.png"] and "max_pixels=600" in failed["big.png"]
  assert "refused: 5000x5000" in failed["huge.png"]
  assert "refused" in failed["bomb.png"] and "400000000 pixels" in failed["bomb.png"]
  with pytest.raises(P.ImageTooLarge):
    P.read_image(str(src / "bomb.png"), max_pixels=10**9)  # over PIL's bomb limit too
  # The budget is the config's.
  config, _, variables, meta, _ = setup
  config = make_tiny_config(config.dataset.data_dir, **{"predict.max_pixels": 1234})
  assert P.Predictor.from_variables(config, variables, meta.num_classes).max_pixels == 1234


def test_outputs_never_leave_the_output_folder(setup, tmp_path):
  *_, predictor = setup
  src, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
  for d in (src / "sub", out, elsewhere, tmp_path / "secret"):
    d.mkdir(parents=True)
  for rel in ("a.png", "sub/b.png", "c.png", "../secret/s.png"):
    Image.fromarray(_rng_image(20, 24, 4)).save(src / rel)
  (src / "link.png").symlink_to(tmp_path / "secret" / "s.png")  # input symlink out of the tree
  (out / "sub").symlink_to(elsewhere)                             # OUT/sub -> elsewhere
  (elsewhere / "target.png").write_bytes(b"keep")
  (out / "c.png").symlink_to(elsewhere / "target.png")            # an output file is a symlink
  refused = []
  items = P.list_images(str(src), refused=refused)
  assert [r for _, r in items] == ["a.png", "c.png", os.path.join("sub", "b.png")]
  assert [os.path.basename(p) for p, _ in refused] == ["link.png"]
  items.append((str(src / "a.png"), os.path.join("..", "escape.png")))  # `..` in a relative path
  summary = predictor.predict_paths(items, str(out), refused=refused)
  assert summary["images"] == 1 and (out / "a_color.png").is_file()
  failed = [(os.path.basename(p), reason) for p, reason in summary["failed"]]
  assert [name for name, _ in failed] == ["link.png", "c.png", "b.png", "a.png"]
  assert "outside the input folder" in failed[0][1]
  assert "is a symlink" in failed[1][1]
  assert "outside the output folder" in failed[2][1] and str(elsewhere) in failed[2][1]
  assert "'../escape.png'" in failed[3][1]
  assert sorted(os.listdir(elsewhere)) == ["target.png"]
  assert (elsewhere / "target.png").read_bytes() == b"keep"
  assert not (tmp_path / "escape.png").exists() and not (tmp_path / "escape_color.png").exists()
  # write_outputs itself does not follow a symlink at an output file.
  with pytest.raises(OSError):
    P.write_outputs(str(out / "c"), _rng_image(2, 2), np.zeros((2, 2), np.int32), meta_palette(setup))
  assert (elsewhere / "target.png").read_bytes() == b"keep"


def meta_palette(setup):  # noqa: D103
  return setup[3].palette


def test_same_stem_inputs_and_output_in_the_input(setup, tmp_path):
  """a.jpg beside a.png: the first is written, the other skipped by name (the run goes
  on); --output equal to --input, or every image under --output: one clear error."""
  *_, predictor = setup
  src, out = tmp_path / "in", tmp_path / "out"
  src.mkdir()
  Image.fromarray(_rng_image(20, 24, 1)).save(src / "a.png")
  Image.fromarray(_rng_image(20, 24, 2)).save(src / "a.jpg")
  Image.fromarray(_rng_image(20, 24, 3)).save(src / "b.png")
  summary = predictor.predict_paths(P.list_images(str(src), exclude=str(out)), str(out))
  assert summary["images"] == 2
  assert sorted(os.listdir(out)) == ["a.png", "a_color.png", "a_overlay.png", "b.png",
                                     "b_color.png", "b_overlay.png"]
  ((path, reason),) = summary["failed"]
  assert os.path.basename(path) == "a.png" and "skipped: " in reason
  assert "a.jpg writes the same outputs" in reason
  with pytest.raises(P.ArgumentError, match="is the --input folder"):
    P.check_output_dir(str(src), str(src))
  with pytest.raises(P.NoInputImages, match="all lie under --output="):
    P.list_images(str(out), exclude=str(out))
