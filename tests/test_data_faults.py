"""Bad files of a release (data.prepare / the builders) and bad stored records
(the tf.data pipelines).

Tiny copies of the official layouts hold a truncated JPEG and PNG, labels of
the wrong size, with ids the dataset does not define, a missing label, and
images that are fine but need converting (grayscale, CMYK, palette, RGBA,
16-bit). Preparing stops naming every bad file, or skips them (counted,
logged, listed in the metadata) and keeps the good examples intact. The
training and eval pipelines drop records that fail to decode.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import data
from configs import default
from data import common
from data import prepare as prepare_lib
from protoseg_jax.trainer import input_pipeline as ip
from test_datasets import _jpeg, _png_label, _raw_label, _write_zip

ADE = "ADEChallengeData2016"


def _encode(arr, mode=None, fmt="PNG", **kw):
  buf = io.BytesIO()
  Image.fromarray(arr, mode=mode).save(buf, format=fmt, **kw)
  return buf.getvalue()


def _rgb(h, w, seed):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _ade_manual(root):
  """An extracted ADE20K folder with 6 bad and 4 good examples.

  Returns ({stem: (image bytes, raw label)} of the good ones, [bad names]).
  """
  images, labels = root / ADE / "images", root / ADE / "annotations"
  for folder in ("training", "validation"):
    (images / folder).mkdir(parents=True)
    (labels / folder).mkdir(parents=True)
  good, bad = {}, []

  def add(folder, stem, image, label, is_bad=None):
    (images / folder / f"{stem}.jpg").write_bytes(image)
    if label is not None:
      (labels / folder / f"{stem}.png").write_bytes(
          label if isinstance(label, bytes) else _png_label(label))
    if is_bad:
      bad.append(str((images if is_bad == "image" else labels) / folder /
                     f"{stem}.{'jpg' if is_bad == 'image' else 'png'}"))
    else:
      good[stem] = (image, label)

  raw = lambda seed, h=24, w=32: _raw_label(h, w, [0, 1, 75, 150], seed)  # noqa: E731
  add("training", "ADE_train_00000001", _jpeg(24, 32, 1), raw(1))
  add("training", "ADE_train_00000002", _jpeg(20, 28, 2, mode="L"), raw(2, 20, 28))  # grayscale
  yy, xx = np.mgrid[0:24, 0:32]
  smooth = np.stack([yy * 10, xx * 8, 255 - xx * 8], -1).astype(np.uint8)
  cmyk = Image.fromarray(smooth).convert("CMYK")
  buf = io.BytesIO()
  cmyk.save(buf, format="JPEG", quality=95)
  add("training", "ADE_train_00000003", buf.getvalue(), raw(3))                      # CMYK
  truncated = _jpeg(24, 32, 4)
  add("training", "ADE_train_00000004", truncated[:len(truncated) // 2], raw(4), "image")
  add("training", "ADE_train_00000005", _jpeg(24, 32, 5), raw(5, 20, 32), "label")   # 20 rows
  out_of_set = raw(6)
  out_of_set[3, 4] = 200                                                           # ADE: 0..150
  add("training", "ADE_train_00000006", _jpeg(24, 32, 6), out_of_set, "label")
  add("training", "ADE_train_00000007", _jpeg(24, 32, 7), None, "label")             # no label
  label_png = _png_label(raw(8))
  add("training", "ADE_train_00000008", _jpeg(24, 32, 8), label_png[:len(label_png) // 2],
      "label")
  add("validation", "ADE_val_00000001", _jpeg(16, 28, 9), raw(9, 16, 28))
  add("validation", "ADE_val_00000002", _jpeg(16, 28, 10)[:200], raw(10, 16, 28), "image")
  return good, bad


def test_stop_names_every_bad_file_and_prepares_nothing(tmp_path):
  manual, data_dir = tmp_path / "manual", tmp_path / "tfds"
  _, bad = _ade_manual(manual)
  with pytest.raises(common.BadFilesError) as e:
    prepare_lib.prepare("ade20k", str(manual), str(data_dir))
  msg = str(e.value)
  assert sorted(name for name, _ in e.value.bad_files) == sorted(bad)
  for name in bad:
    assert name in msg
  assert "6 bad file(s)" in msg and "--on_bad_file=skip" in msg
  reasons = dict(e.value.bad_files)
  assert "truncated" in reasons[bad[0]] and "JPEG" in reasons[bad[0]]
  assert "20x32" in reasons[bad[1]] and "24x32" in reasons[bad[1]]
  assert "200" in reasons[bad[2]] and "0..150" in reasons[bad[2]]
  assert "missing" in reasons[bad[3]]
  assert not data.get_builder("ade20k", data_dir=str(data_dir)).is_prepared()
  # The command line says the same and exits with an error.
  with pytest.raises(SystemExit) as e:
    prepare_lib.main(["ade20k", f"--manual_dir={manual}", f"--data_dir={data_dir}"])
  assert bad[3] in str(e.value.code) and "--on_bad_file=skip" in str(e.value.code)


def test_skip_prepares_the_rest_intact(tmp_path):
  manual, data_dir = tmp_path / "manual", tmp_path / "tfds"
  good, bad = _ade_manual(manual)
  builder = prepare_lib.prepare("ade20k", str(manual), str(data_dir), on_bad_file="skip")
  assert sorted(name for _, name, _ in builder.bad_files) == sorted(bad)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 3, "validation": 1}
  again = data.get_builder("ade20k", data_dir=str(data_dir))  # reloaded from disk
  assert sorted(again.info.metadata["skipped_files"]) == sorted(bad)
  stored = builder.as_dataset(split="train+validation", decoders={
      "image": tfds.decode.SkipDecoding()})
  seen = set()
  for ex in tfds.as_numpy(stored):
    stem = ex["file_name"].decode()
    seen.add(stem)
    image_bytes, raw = good[stem]
    expected = np.where(raw == 0, 255, raw.astype(int) - 1)
    np.testing.assert_array_equal(ex["label"][..., 0], expected)
    if stem == "ADE_train_00000003":  # CMYK: converted to RGB and re-encoded
      rgb = tf.io.decode_image(ex["image"], channels=3).numpy()
      want = np.asarray(Image.open(io.BytesIO(image_bytes)).convert("RGB"), np.int32)
      assert np.abs(rgb.astype(np.int32) - want).max() <= 8
    else:  # RGB and grayscale JPEGs are stored as released
      assert ex["image"] == image_bytes
  assert seen == set(good)


def _cityscapes_zips(root):
  """Cityscapes zips whose PNGs need converting (RGBA, 16-bit, palette) or are bad.

  Returns ({stem: expected uint8 RGB image}, [bad names]).
  """
  root.mkdir()
  rng = np.random.default_rng(0)
  images, labels, expect, bad = {}, {}, {}, []
  izip, lzip = str(root / "leftImg8bit_trainvaltest.zip"), str(root / "gtFine_trainvaltest.zip")

  def add(split, city, i, image_png, rgb, label=None, bad_member=None):
    stem = f"{city}_{i:06d}_000019"
    images[f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"] = image_png
    lmember = f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png"
    labels[lmember] = label if label is not None else _png_label(
        rng.integers(0, 34, (12, 16)).astype(np.uint8))
    if bad_member == "image":
      bad.append(f"{izip}:leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png")
    elif bad_member == "label":
      bad.append(f"{lzip}:{lmember}")
    else:
      expect[stem] = rgb

  rgb = _rgb(12, 16, 1)
  add("train", "aachen", 0, _encode(rgb), rgb)
  rgba = np.concatenate([_rgb(12, 16, 2), np.full((12, 16, 1), 9, np.uint8)], -1)
  add("train", "aachen", 1, _encode(rgba, "RGBA"), rgba[..., :3])               # alpha dropped
  g16 = rng.integers(0, 65536, (12, 16)).astype(np.uint16)
  g16_png = _encode(g16)
  assert Image.open(io.BytesIO(g16_png)).mode == "I;16"
  g8 = np.round(g16 * 255.0 / 65535.0).astype(np.uint8)
  add("train", "aachen", 2, g16_png, np.repeat(g8[..., None], 3, -1))           # 16-bit gray
  rgb16 = rng.integers(0, 65536, (12, 16, 3)).astype(np.uint16)
  rgb16_png = tf.io.encode_png(rgb16).numpy()
  add("train", "aachen", 3, rgb16_png, (rgb16 >> 8).astype(np.uint8))            # 16-bit RGB
  gray = _rgb(12, 16, 4)[..., 0]
  add("train", "aachen", 4, _encode(gray, "L"), np.repeat(gray[..., None], 3, -1))
  pal = Image.fromarray(_rgb(12, 16, 5)).convert("P", palette=Image.ADAPTIVE, colors=8)
  buf = io.BytesIO()
  pal.save(buf, format="PNG")
  add("train", "bochum", 5, buf.getvalue(), np.asarray(pal.convert("RGB")))      # palette
  label16 = rng.integers(0, 34, (12, 16)).astype(np.uint16)
  add("train", "bochum", 6, _encode(rgb), rgb, label=_encode(label16))          # 16-bit label
  png = _encode(_rgb(12, 16, 7))
  add("train", "bochum", 7, png[:len(png) // 2], None, bad_member="image")     # truncated PNG
  out_of_set = rng.integers(0, 34, (12, 16)).astype(np.uint8)
  out_of_set[0, 0] = 40                                                       # labelIds: 0..33
  add("train", "bochum", 8, _encode(rgb), None, _png_label(out_of_set), "label")
  add("train", "bochum", 9, _encode(rgb), None, _encode(_rgb(12, 16, 9)), "label")  # colour mask
  add("val", "frankfurt", 0, _encode(rgb), rgb)
  add("test", "berlin", 0, _encode(rgb), rgb, _png_label(np.zeros((12, 16))))
  _write_zip(izip, images)
  _write_zip(lzip, labels)
  return expect, bad


def test_skip_converts_rgba_16bit_palette_pngs_exactly(tmp_path):
  expect, bad = _cityscapes_zips(tmp_path / "manual")
  builder = prepare_lib.prepare("cityscapes", str(tmp_path / "manual"), str(tmp_path / "tfds"),
                                on_bad_file="skip")
  assert sorted(name for _, name, _ in builder.bad_files) == sorted(bad)
  reasons = {name: reason for _, name, reason in builder.bad_files}
  assert "truncated" in reasons[bad[0]]
  assert "40" in reasons[bad[1]] and "0..33" in reasons[bad[1]]
  assert "mode RGB" in reasons[bad[2]]
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 7, "validation": 1, "test": 1}
  stored = tfds.as_numpy(builder.as_dataset(split="train+validation+test"))
  got = {ex["file_name"].decode(): ex["image"] for ex in stored}
  assert sorted(got) == sorted(expect)
  for stem, want in expect.items():
    np.testing.assert_array_equal(got[stem], want, err_msg=stem)  # PNG: lossless


def test_missing_or_empty_folders_name_the_folder(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match=f"(?s){missing} does not exist.*{ADE}.zip"):
    prepare_lib.prepare("ade20k", str(missing), str(tmp_path / "tfds"))
  manual = tmp_path / "manual"
  (manual / ADE / "images" / "training").mkdir(parents=True)
  (manual / ADE / "images" / "training" / "x.txt").write_text("not an image")
  with pytest.raises(FileNotFoundError) as e:
    prepare_lib.prepare("ade20k", str(manual), str(tmp_path / "tfds"))
  assert f"{ADE}/images/training/*.jpg" in str(e.value)
  assert f"{manual / ADE / 'images' / 'training'} holds no *.jpg" in str(e.value)
  (manual / ADE / "images" / "training" / "x.jpg").write_bytes(_jpeg(8, 8, 0))
  with pytest.raises(FileNotFoundError) as e:
    prepare_lib.prepare("ade20k", str(manual), str(tmp_path / "tfds"))
  assert f"there is no folder {manual / ADE / 'annotations' / 'training'}" in str(e.value)
  (manual / ADE / "annotations" / "training").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="(?s)annotations/training.* is empty"):
    prepare_lib.prepare("ade20k", str(manual), str(tmp_path / "tfds"))
  (tmp_path / "cs").mkdir()
  _write_zip(tmp_path / "cs" / "gtFine_trainvaltest.zip", {"README": b"x"})
  with pytest.raises(FileNotFoundError, match="(?s)leftImg8bit/train/<city>/.*gtFine_trainvaltest"):
    prepare_lib.prepare("cityscapes", str(tmp_path / "cs"), str(tmp_path / "tfds"))


# --- stored records that fail in the tf.data pipelines ---------------------------


def test_pipelines_drop_records_that_fail_to_decode(tmp_path, monkeypatch):
  """A dataset holding a truncated JPEG and an image/label size mismatch (as an
  older version could have prepared it): training and evaluation drop both,
  keep the good examples in their order and do not stop."""
  manual = tmp_path / "manual"
  raws, members = {}, {}
  for i in range(6):
    stem = f"ADE_train_{i + 1:08d}"
    raws[stem] = _raw_label(24, 32, [0, 1, 2, 3], i)
    members[f"{ADE}/images/training/{stem}.jpg"] = _jpeg(24, 32, i)
    members[f"{ADE}/annotations/training/{stem}.png"] = _png_label(raws[stem])
  members[f"{ADE}/images/validation/ADE_val_00000001.jpg"] = _jpeg(24, 32, 9)
  members[f"{ADE}/annotations/validation/ADE_val_00000001.png"] = _png_label(raws[stem])
  manual.mkdir()
  _write_zip(manual / f"{ADE}.zip", members)
  bad = {"ADE_train_00000002": "truncated", "ADE_train_00000005": "size"}
  real_load = common.load_example

  def unchecked_load(files, stem, image_path, label_path, **kw):
    example = real_load(files, stem, image_path, label_path, **kw)
    if bad.get(stem) == "truncated":  # the JPEG bytes cut short, unchecked
      example["image"] = files.read(image_path)[:400]
    elif bad.get(stem) == "size":     # a label 4 rows short
      example["label"] = common.encode_label_png(raws[stem][:20] - 1)
    return example

  monkeypatch.setattr(common, "load_example", unchecked_load)
  builder = prepare_lib.prepare("ade20k", str(manual), str(tmp_path / "tfds"))
  monkeypatch.undo()
  order = [ex["file_name"].decode() for ex in tfds.as_numpy(builder.as_dataset(
      split="train", shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}))]
  good = [stem for stem in order if stem not in bad]
  assert len(order) == 6 and len(good) == 4
  want = [np.where(raws[s] == 0, 255, raws[s].astype(np.int32) - 1) for s in good]

  config = default.get_config()
  config.batch_size, config.eval_batch_size, config.seed = 1, 4, 0
  config.dataset.update(dict(
      name="ade20k", data_dir=str(tmp_path / "tfds"), train_split="train", eval_split="train",
      crop_size=(24, 32), scale=(32, 24), ratio_range=(1.0, 1.0), cat_max_ratio=1.0,
      flip_prob=0.0, photometric=False, shuffle_buffer=1, eval_scale=None,
      eval_canvas=(24, 32), eval_label_canvas=(24, 32), num_parallel_calls=2))
  train = ip.make_train_dataset(config, process_index=0, process_count=1)
  labels = [b["label"][0] for b in train.take(2 * len(good)).as_numpy_iterator()]
  for got, expected in zip(labels, want + want):  # two epochs, the good examples in order
    np.testing.assert_array_equal(got, expected)

  batches = list(ip.make_eval_dataset(config, process_index=0, process_count=1)
                 .as_numpy_iterator())
  assert len(batches) == 2  # as without the bad records: ceil(6 / 4)
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.tolist() == [True] * 4 + [False] * 4
  for got, expected in zip(np.concatenate([b["label"] for b in batches]), want):
    np.testing.assert_array_equal(got, expected)
