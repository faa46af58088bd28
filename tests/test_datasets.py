"""The real-dataset builders on tiny copies of the official on-disk layouts.

Each test writes a few files with the official names, encodings and raw
label ids (zipped like the official release), prepares the dataset with
manual_dir into a tmp data_dir and checks the decoded examples.
"""

from __future__ import annotations

import io
import zipfile

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import data
from data import coco_stuff
from data import prepare as prepare_lib
from protoseg_jax import input_pipeline as ip


def _jpeg(h, w, seed, mode="RGB"):
  rng = np.random.default_rng(seed)
  arr = rng.integers(0, 255, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr, mode=mode).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def _png_rgb(h, w, seed):
  arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="PNG")
  return buf.getvalue()


def _png_label(raw: np.ndarray):
  buf = io.BytesIO()
  Image.fromarray(raw.astype(np.uint8), mode="L").save(buf, format="PNG")
  return buf.getvalue()


def _raw_label(h, w, values, seed):
  """uint8 [h, w] using every value in `values` (then random ones of them)."""
  rng = np.random.default_rng(seed)
  flat = np.concatenate([np.asarray(values), rng.choice(values, h * w - len(values))])
  return flat.astype(np.uint8).reshape(h, w)


def _write_zip(path, members: dict[str, bytes]):
  with zipfile.ZipFile(path, "w") as zf:
    for name, payload in members.items():
      zf.writestr(name, payload)


def _prepare(name, manual_dir, data_dir):
  builder = prepare_lib.prepare(name, str(manual_dir), str(data_dir))
  assert builder.is_prepared()
  return builder


def _examples(builder, split):
  return {ex["file_name"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def _check_info(builder, num_classes):
  meta = builder.info.metadata
  assert meta["num_classes"] == num_classes and meta["ignore_index"] == 255
  assert len(meta["class_names"]) == num_classes and len(meta["palette"]) == num_classes
  assert builder.info.features["classes"].feature.num_classes == num_classes
  # Metadata survives a reload from disk.
  again = data.get_builder(builder.name, data_dir=builder.data_dir_root)
  assert again.info.metadata["class_names"] == meta["class_names"]


def _check_example(ex, raw, expected_label, num_classes):
  h, w = raw.shape
  assert ex["image"].shape == (h, w, 3) and ex["image"].dtype == np.uint8
  assert ex["label"].shape == (h, w, 1)
  np.testing.assert_array_equal(ex["label"][..., 0], expected_label)
  present = sorted(int(v) for v in np.unique(expected_label) if v != 255)
  assert ex["classes"].tolist() == present and max(present) < num_classes


def test_ade20k_zip(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  root = "ADEChallengeData2016"
  values = [0, 1, 2, 75, 149, 150]
  raws, members = {}, {}
  for i, (folder, stem, hw) in enumerate([
      ("training", "ADE_train_00000001", (24, 32)), ("training", "ADE_train_00000002", (30, 20)),
      ("validation", "ADE_val_00000001", (16, 28))]):
    raws[stem] = _raw_label(*hw, values, i)
    gray = stem.endswith("2")  # ADE has a few grayscale JPEGs
    members[f"{root}/images/{folder}/{stem}.jpg"] = _jpeg(*hw, i, mode="L" if gray else "RGB")
    members[f"{root}/annotations/{folder}/{stem}.png"] = _png_label(raws[stem])
  members[f"{root}/objectInfo150.txt"] = b"Idx\tRatio\tTrain\tVal\tName\n"
  _write_zip(manual / "ADEChallengeData2016.zip", members)

  builder = _prepare("ade20k", manual, tmp_path / "tfds")
  _check_info(builder, 150)
  assert builder.info.metadata["class_names"][0] == "wall"
  assert builder.info.metadata["class_names"][149] == "flag"
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 2, "validation": 1}
  for split in ("train", "validation"):
    for stem, ex in _examples(builder, split).items():
      raw = raws[stem]
      expected = np.where(raw == 0, 255, raw.astype(int) - 1)  # reduce_zero_label
      _check_example(ex, raw, expected, 150)
  assert 149 in np.unique(_examples(builder, "validation")["ADE_val_00000001"]["label"])

  # The trainer's pipeline reads it.
  config = ml_collections.ConfigDict()
  config.batch_size, config.eval_batch_size, config.seed = 2, 2, 0
  config.dataset = ml_collections.ConfigDict(dict(
      name="ade20k", data_dir=str(tmp_path / "tfds"), train_split="train",
      eval_split="validation", crop_size=(16, 16), scale=(64, 32), ratio_range=(0.5, 2.0),
      eval_scale=(64, 32), eval_canvas=(32, 64), eval_label_canvas=(32, 32)))
  info = ip.get_dataset_info(config)
  assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (150, 2, 1)
  batch = next(ip.make_train_dataset(config, process_index=0, process_count=1).as_numpy_iterator())
  assert batch["image"].shape == (2, 16, 16, 3)
  assert set(np.unique(batch["label"]).tolist()) <= set(range(150)) | {255}
  assert ip.scan_eval_sizes(config) == {"eval_canvas": (32, 56), "eval_label_canvas": (16, 28)}
  (ev,) = list(ip.make_eval_dataset(config, process_index=0, process_count=1).as_numpy_iterator())
  assert ev["mask"].tolist() == [True, False]
  assert ev["label_hw"][0].tolist() == [16, 28] and ev["image_hw"][0].tolist() == [32, 56]


def test_ade20k_extracted_folder(tmp_path):
  manual = tmp_path / "manual"
  for folder, stem in [("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")]:
    (manual / "ADEChallengeData2016/images" / folder).mkdir(parents=True)
    (manual / "ADEChallengeData2016/annotations" / folder).mkdir(parents=True)
    (manual / f"ADEChallengeData2016/images/{folder}/{stem}.jpg").write_bytes(_jpeg(8, 12, 0))
    (manual / f"ADEChallengeData2016/annotations/{folder}/{stem}.png").write_bytes(
        _png_label(_raw_label(8, 12, [0, 5], 0)))
  builder = _prepare("ade20k", manual, tmp_path / "tfds")
  (ex,) = _examples(builder, "train").values()
  assert set(np.unique(ex["label"]).tolist()) == {4, 255}


def test_ade20k_missing_files_say_what_to_download(tmp_path):
  (tmp_path / "manual").mkdir()
  with pytest.raises(Exception, match="ADEChallengeData2016.zip"):
    _prepare("ade20k", tmp_path / "manual", tmp_path / "tfds")


def test_cityscapes_zips(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  images, labels, raws = {}, {}, {}
  values = list(range(34))
  for i, (split, city, stem) in enumerate([
      ("train", "aachen", "aachen_000000_000019"), ("train", "zurich", "zurich_000121_000019"),
      ("val", "frankfurt", "frankfurt_000000_000294"), ("test", "berlin", "berlin_000000_000019")]):
    raws[stem] = _raw_label(16, 32, values, i) if split != "test" else np.zeros((16, 32), np.uint8)
    images[f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"] = _png_rgb(16, 32, i)
    prefix = f"gtFine/{split}/{city}/{stem}_gtFine"
    labels[f"{prefix}_labelIds.png"] = _png_label(raws[stem])
    labels[f"{prefix}_color.png"] = _png_rgb(16, 32, 99)  # present in the release, unused
    labels[f"{prefix}_instanceIds.png"] = _png_label(np.ones((16, 32)))
    labels[f"{prefix}_polygons.json"] = b"{}"
  images["README"] = b"readme"
  images["license.txt"] = b"license"
  _write_zip(manual / "leftImg8bit_trainvaltest.zip", images)
  _write_zip(manual / "gtFine_trainvaltest.zip", labels)

  builder = _prepare("cityscapes", manual, tmp_path / "tfds")
  _check_info(builder, 19)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 2, "validation": 1, "test": 1}
  table = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
           25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
  for split in ("train", "validation"):
    for stem, ex in _examples(builder, split).items():
      raw = raws[stem]
      expected = np.vectorize(lambda v: table.get(int(v), 255))(raw)
      _check_example(ex, raw, expected, 19)
      np.testing.assert_array_equal(
          ex["image"], np.random.default_rng(list(raws).index(stem)).integers(
              0, 255, (16, 32, 3), dtype=np.uint8))  # PNG images are lossless
  (test_ex,) = _examples(builder, "test").values()
  assert np.all(test_ex["label"] == 255)


def test_coco_stuff164k_zips(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  values = [0, 10, 11, 12, 25, 90, 91, 181, 255]
  raws, labels, images = {}, {}, {"train": {}, "val": {}}
  for i, (split, stem) in enumerate([("train", "000000000009"), ("train", "000000000025"),
                                     ("val", "000000000139")]):
    raws[stem] = _raw_label(20, 24, values, i)
    labels[f"{split}2017/{stem}.png"] = _png_label(raws[stem])
    images[split][f"{split}2017/{stem}.jpg"] = _jpeg(20, 24, i)
  _write_zip(manual / "stuffthingmaps_trainval2017.zip", labels)
  _write_zip(manual / "train2017.zip", images["train"])
  _write_zip(manual / "val2017.zip", images["val"])

  builder = _prepare("coco_stuff164k", manual, tmp_path / "tfds")
  _check_info(builder, 171)
  names = builder.info.metadata["class_names"]
  assert names[11] == "stop sign" and names[80] == "banner" and names[170] == "wood"
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 2, "validation": 1}
  expected_map = {0: 0, 10: 10, 11: 255, 12: 11, 25: 255, 90: 255, 91: 80, 181: 170, 255: 255}
  for split in ("train", "validation"):
    for stem, ex in _examples(builder, split).items():
      raw = raws[stem]
      _check_example(ex, raw, np.vectorize(expected_map.get)(raw), 171)


def test_coco_stuff_mapping_matches_mmseg_table():
  # mmseg's coco_stuff164k converter: 0-based raw id -> train id (every
  # listed raw id maps to its rank; these are the jumps of that table).
  spot_checks = {10: 10, 12: 11, 24: 23, 26: 24, 27: 25, 30: 26, 43: 39, 45: 40, 64: 59, 66: 60,
                 69: 61, 71: 62, 81: 72, 83: 73, 89: 79, 91: 80, 181: 170}
  for raw, train in spot_checks.items():
    assert coco_stuff.RAW_TO_TRAIN[raw] == train
  for raw in coco_stuff.UNUSED_IDS:
    assert coco_stuff.LUT_164K[raw] == 255 and coco_stuff.LUT_10K[raw + 1] == 255
  assert coco_stuff.LUT_10K[0] == 255 and coco_stuff.LUT_164K[255] == 255
  np.testing.assert_array_equal(coco_stuff.LUT_10K[1:183], coco_stuff.LUT_164K[:182])


def test_coco_stuff10k_zip(tmp_path):
  sio = pytest.importorskip("scipy.io", reason="coco_stuff10k reads .mat labels with scipy")
  manual = tmp_path / "manual"
  manual.mkdir()
  values = [0, 1, 11, 12, 13, 92, 182]  # 1-based, 0 = unlabelled
  members, raws = {}, {}
  stems = {"train": ["COCO_train2014_000000000077", "COCO_train2014_000000000078"],
           "test": ["COCO_train2014_000000000081"]}
  for i, stem in enumerate(stems["train"] + stems["test"]):
    raws[stem] = _raw_label(18, 22, values, i)
    buf = io.BytesIO()
    sio.savemat(buf, {"S": raws[stem].astype(np.uint16), "names": np.array(["x"], object),
                      "captions": np.array(["a caption"], object)})
    members[f"annotations/{stem}.mat"] = buf.getvalue()
    members[f"images/{stem}.jpg"] = _jpeg(18, 22, i)
  members["imageLists/train.txt"] = ("\n".join(stems["train"]) + "\n").encode()
  members["imageLists/test.txt"] = ("\n".join(stems["test"]) + "\n").encode()
  members["imageLists/all.txt"] = ("\n".join(stems["train"] + stems["test"]) + "\n").encode()
  _write_zip(manual / "cocostuff-10k-v1.1.zip", members)

  builder = _prepare("coco_stuff10k", manual, tmp_path / "tfds")
  _check_info(builder, 171)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 2, "test": 1}
  expected_map = {0: 255, 1: 0, 11: 10, 12: 255, 13: 11, 92: 80, 182: 170}
  for split in ("train", "test"):
    exs = _examples(builder, split)
    assert sorted(exs) == sorted(stems[split])
    for stem, ex in exs.items():
      raw = raws[stem]
      _check_example(ex, raw, np.vectorize(expected_map.get)(raw), 171)


def test_demo_scenes_are_deterministic_with_ignore_band():
  from data.demo import builder as demo  # pylint: disable=g-import-not-at-top
  for i in range(6):
    image, label = demo.render(0, 0, i)
    image2, label2 = demo.render(0, 0, i)
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(label, label2)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and label.shape == (96, 96)
    assert set(np.unique(label).tolist()) <= set(range(6)) | {255}
    # Every class change between labelled neighbours is separated by the band:
    # no two adjacent labelled pixels have different classes.
    right = (label[:, :-1] != 255) & (label[:, 1:] != 255)
    down = (label[:-1] != 255) & (label[1:] != 255)
    assert np.all(label[:, :-1][right] == label[:, 1:][right])
    assert np.all(label[:-1][down] == label[1:][down])
    assert 0 < np.mean(label == 255) < 0.2
  assert not np.array_equal(demo.render(0, 0, 1)[0], demo.render(0, 1, 1)[0])  # splits differ
  assert sum(len(a) > 1 for a in demo.APPEARANCES.values()) >= 2
