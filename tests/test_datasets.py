"""The dataset builders (data/) and protoseg_jax.datasets.

Each builder test writes a few files with the official names, encodings and
raw label ids (zipped like the official release), prepares the dataset with
manual_dir into a tmp data_dir and checks the decoded examples. The
protoseg_jax.datasets tests read the tiny demo and unprepared datasets.
"""

from __future__ import annotations

import io
import os
import zipfile

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import data
from configs import default
from data import coco_stuff
from data import prepare as prepare_lib
from data.common import DatasetMeta
from protoseg_jax.trainer import datasets
from protoseg_jax.trainer import input_pipeline as ip

from conftest import demo_prepare_output, prepare_demo

# Its module fixtures are built once: every test here runs on one worker.
pytestmark = pytest.mark.xdist_group("datasets")


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
  # The same class facts as the builder's constants (data.dataset_meta).
  assert DatasetMeta.from_metadata(meta) == datasets.builder_meta(builder)
  assert datasets.builder_meta(builder) == data.dataset_meta(builder.name)
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
  config = default.get_config()
  config.batch_size, config.eval_batch_size, config.seed = 2, 2, 0
  config.dataset.update(dict(
      name="ade20k", data_dir=str(tmp_path / "tfds"), train_split="train",
      eval_split="validation", crop_size=(16, 16), scale=(64, 32), ratio_range=(0.5, 2.0),
      eval_scale=(64, 32), eval_canvas=(32, 64), eval_label_canvas=(32, 32)))
  info = datasets.get_dataset_info(config)
  assert (info.num_classes, info.examples("train"), info.examples("validation")) == (150, 2, 1)
  assert info.splits == tuple(data.SPLITS["ade20k"])
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
  assert builder.info.metadata["release_ids"] == sorted(table)  # stored with the class facts


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


# --- ADE20K-Full (ADE20K_2021_17_01, 847 classes, 16-bit labels) -------------------

# ADE20K object id -> train id of a few classes (Mask2Former's
# ADE20K_SEM_SEG_FULL_CATEGORIES), 65535 = ignore: 0 is "not annotated", 1 and
# 3688 (the release's last object class) are ADE classes outside the 847.
ADE_FULL_IDS = {0: 65535, 2978: 0, 312: 1, 1857: 255, 3108: 300, 3148: 846, 1: 65535,
                3688: 65535}
ADE_FULL_ROOT = "ADE20K_2021_17_01/images/ADE"


def _seg_png(ids: np.ndarray, r_extra: int = 0, mode: str = "RGB") -> bytes:
  """An ADE20K `_seg.png` of object ids: R = id // 256 * 10 (+ r_extra, which the
  decoding drops), G = id % 256, B = an instance number."""
  ids = np.asarray(ids, np.int64)
  rgb = np.stack([ids // 256 * 10 + r_extra, ids % 256, (np.arange(ids.size) % 7).reshape(
      ids.shape)], -1).astype(np.uint8)
  buf = io.BytesIO()
  img = Image.fromarray(rgb)
  (img if mode == "RGB" else img.convert(mode)).save(buf, format="PNG")
  return buf.getvalue()


def _raw_ids(h, w, values, seed):
  """int [h, w] using every value in `values` (then random ones of them)."""
  rng = np.random.default_rng(seed)
  return np.concatenate([np.asarray(values), rng.choice(values, h * w - len(values))]).reshape(h, w)


def _ade_full_tree():
  """{logical path: bytes} of a tiny release in the official layout, and the raw ids
  of each image: scene folders two deep, the files the builder does not read
  (json, parts, instance masks, the index), a grayscale JPEG, an R channel with
  a residue mod 10, and one image whose short side (520) exceeds 512."""
  values = sorted(ADE_FULL_IDS)
  members, raws = {}, {}
  items = [("training", "urban/street", "ADE_train_00000001", (20, 28), 0, "RGB"),
           ("training", "home_or_hotel/bedroom", "ADE_train_00000002", (24, 18), 3, "L"),
           ("training", "cultural/apse__indoor", "ADE_train_00000003", (520, 700), 9, "RGB"),
           ("validation", "urban/street", "ADE_val_00000001", (16, 20), 0, "RGB")]
  for i, (split, scene, stem, hw, r_extra, mode) in enumerate(items):
    folder = f"{ADE_FULL_ROOT}/{split}/{scene}"
    raws[stem] = _raw_ids(*hw, values, i)
    members[f"{folder}/{stem}.jpg"] = _jpeg(*hw, i, mode=mode)
    members[f"{folder}/{stem}_seg.png"] = _seg_png(raws[stem], r_extra)
    members[f"{folder}/{stem}_parts_1.png"] = _seg_png(np.zeros(hw, int))
    members[f"{folder}/{stem}.json"] = b'{"annotation": {}}'
    members[f"{folder}/{stem}/instance_000_{stem}.png"] = _png_label(np.zeros(hw))
  members["ADE20K_2021_17_01/objects.txt"] = b"unused\n"
  return members, raws


def _ade_full_expected(raw: np.ndarray) -> np.ndarray:
  """uint16 train ids of raw object ids, at Mask2Former's size (independent of the builder:
  short side > 512 -> 512, long side rounded; nearest rows/cols floor(i * in / out))."""
  label = np.vectorize(ADE_FULL_IDS.get)(raw).astype(np.uint16)
  h, w = raw.shape
  if min(h, w) > 512:
    nh, nw = (512, round(w / h * 512)) if w >= h else (round(h / w * 512), 512)
    label = label[(np.arange(nh) * h // nh)[:, None], (np.arange(nw) * w // nw)[None, :]]
  return label


@pytest.fixture(scope="module")
def ade_full(tmp_path_factory):
  """(builder, raws): the tiny release zipped as ADE20K_2021_17_01.zip, prepared."""
  tmp = tmp_path_factory.mktemp("ade_full")
  manual = tmp / "manual"
  manual.mkdir()
  members, raws = _ade_full_tree()
  _write_zip(manual / "ADE20K_2021_17_01.zip", members)
  return _prepare("ade20k_full", manual, tmp / "tfds"), raws


def test_ade20k_full_class_table_is_mask2formers():
  from data.ade20k_full import builder as ade_full  # pylint: disable=g-import-not-at-top
  meta = data.dataset_meta("ade20k_full")
  assert meta.num_classes == 847 and meta.ignore_index == 65535
  # Spot checks of Mask2Former's table (name, ADE id, train id).
  spot_checks = {0: ("wall", 2978), 1: ("building, edifice", 312),
                 11: ("person, individual, someone, somebody, mortal, soul", 1831),
                 255: ("pier", 1857), 846: ("adding machine, totalizer, totaliser", 3148)}
  for train_id, (name, ade_id) in spot_checks.items():
    assert (meta.class_names[train_id], meta.release_ids[train_id]) == (name, ade_id)
    assert ade_full.LUT[ade_id] == train_id
  assert len(set(meta.release_ids)) == 847 and max(meta.release_ids) == 3156
  assert ade_full.LUT.dtype == np.uint16 and ade_full.LUT.shape == (25 * 256 + 256,)
  assert int((ade_full.LUT != 65535).sum()) == 847 and ade_full.LUT[0] == 65535


def test_ade20k_full_decoding_and_mask2former_resize():
  from data.ade20k_full import builder as ade_full  # pylint: disable=g-import-not-at-top
  ids = np.array([[0, 1, 255, 256], [2978, 3148, 3688, 6655]])
  np.testing.assert_array_equal(ade_full.decode_object_ids(_seg_png(ids)), ids)
  low = ids.clip(0, 6399)  # R = 24 * 10 + 9 at most
  np.testing.assert_array_equal(ade_full.decode_object_ids(_seg_png(low, r_extra=9)), low)
  with pytest.raises(ValueError, match="RGB"):
    ade_full.decode_object_ids(_seg_png(ids, mode="L"))
  size = ade_full.mask2former_size
  assert size(512, 683) is None and size(400, 3000) is None and size(512, 512) is None
  assert size(1536, 2048) == (512, 683) and size(2048, 1536) == (683, 512)
  assert size(513, 513) == (512, 512) and size(2000, 600) == (1707, 512)
  assert size(1024, 1025) == (512, 512)  # 512.5: Python's round, as Mask2Former's
  np.testing.assert_array_equal(ade_full.nearest_index(700, 689), np.arange(689) * 700 // 689)
  img = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
  np.testing.assert_array_equal(ade_full.resize_bilinear(img, (8, 12)), img)  # identity
  half = ade_full.resize_bilinear(img, (4, 6)).astype(int)  # 2x: the mean of each 2x2 block
  blocks = img.reshape(4, 2, 6, 2, 3).astype(float).mean((1, 3))
  assert np.abs(half - blocks).max() <= 1


def test_ade20k_full_zip(ade_full):
  builder, raws = ade_full
  meta = builder.info.metadata
  assert meta["num_classes"] == 847 and meta["ignore_index"] == 65535
  assert meta["class_names"][0] == "wall" and meta["release_ids"][846] == 3148
  assert DatasetMeta.from_metadata(meta) == datasets.builder_meta(builder)
  assert datasets.builder_meta(builder) == data.dataset_meta("ade20k_full")
  assert builder.info.features["label"].dtype == np.uint16
  assert builder.info.features["classes"].feature.num_classes == 847
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 3, "validation": 1}
  for split in ("train", "validation"):
    for stem, ex in _examples(builder, split).items():
      expected = _ade_full_expected(raws[stem])
      assert ex["image"].shape == (*expected.shape, 3) and ex["image"].dtype == np.uint8
      assert ex["label"].dtype == np.uint16 and ex["label"].shape == (*expected.shape, 1)
      np.testing.assert_array_equal(ex["label"][..., 0], expected)
      assert ex["classes"].tolist() == [0, 1, 255, 300, 846]  # 255 is a class here
  assert _examples(builder, "train")["ADE_train_00000003"]["label"].shape == (512, 689, 1)
  # The stored label is a 16-bit PNG of the train ids: what the trainer must decode
  # (tf.io.decode_png(..., dtype=tf.uint16); uint8 decoding would scale it).
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = builder.as_dataset(split="validation", decoders={"label": tfds.decode.SkipDecoding()})
  (png,) = [ex["label"].numpy() for ex in ds]
  assert png[24] == 16  # IHDR bit depth
  np.testing.assert_array_equal(tf.io.decode_png(png, channels=1, dtype=tf.uint16)[..., 0].numpy(),
                                _ade_full_expected(raws["ADE_val_00000001"]))


def test_ade20k_full_eval_pipeline_reads_16bit_labels(ade_full):
  builder, raws = ade_full
  config = default.get_config()
  config.batch_size, config.eval_batch_size, config.seed = 2, 2, 0
  config.dataset.update(dict(
      name="ade20k_full", data_dir=str(builder.data_dir_root), eval_split="validation",
      eval_scale=None, eval_canvas=(16, 20), eval_label_canvas=(16, 24)))
  (ev,) = list(ip.make_eval_dataset(config, process_index=0, process_count=1).as_numpy_iterator())
  expected = np.full((16, 24), 65535)
  expected[:, :20] = _ade_full_expected(raws["ADE_val_00000001"])
  np.testing.assert_array_equal(ev["label"][0], expected)


def test_ade20k_full_bad_files_are_named(tmp_path):
  manual = tmp_path / "manual"
  members, _ = _ade_full_tree()
  street = f"{ADE_FULL_ROOT}/training/urban/street"
  members[f"{street}/ADE_train_00000004.jpg"] = _jpeg(8, 10, 4)   # object id 4000: no class
  members[f"{street}/ADE_train_00000004_seg.png"] = _seg_png(np.full((8, 10), 4000))
  members[f"{street}/ADE_train_00000005.jpg"] = _jpeg(8, 10, 5)   # grayscale _seg.png
  members[f"{street}/ADE_train_00000005_seg.png"] = _seg_png(np.zeros((8, 10), int), mode="L")
  members[f"{street}/ADE_train_00000006.jpg"] = _jpeg(8, 10, 6)   # no _seg.png
  members[f"{street}/ADE_train_00000007.jpg"] = _jpeg(8, 10, 7)   # label of another size
  members[f"{street}/ADE_train_00000007_seg.png"] = _seg_png(np.zeros((8, 12), int))
  for path, payload in members.items():  # extracted this time
    (manual / path).parent.mkdir(parents=True, exist_ok=True)
    (manual / path).write_bytes(payload)
  with pytest.raises(data.common.BadFilesError) as e:
    _prepare("ade20k_full", manual, tmp_path / "tfds")
  msg = str(e.value)
  assert "4 bad file(s)" in msg
  assert ("ADE_train_00000004_seg.png: label ids 4000 are not ADE20K object ids "
          "(expected 0..3688)") in msg
  assert "ADE_train_00000005_seg.png: unreadable label" in msg and "mode L" in msg
  assert "ADE_train_00000006_seg.png: missing" in msg
  assert "ADE_train_00000007_seg.png: label is 8x12" in msg
  builder = prepare_lib.prepare("ade20k_full", str(manual), str(tmp_path / "tfds"),
                                on_bad_file="skip")
  assert builder.info.splits["train"].num_examples == 3
  assert len(builder.info.metadata["skipped_files"]) == 4


def test_ade20k_full_missing_files_say_what_to_download(tmp_path):
  (tmp_path / "manual").mkdir()
  with pytest.raises(FileNotFoundError, match="ADE20K_2021_17_01.zip") as e:
    _prepare("ade20k_full", tmp_path / "manual", tmp_path / "tfds")
  assert "python -m data.prepare ade20k_full" in str(e.value)
  # A release folder without the images of a split: the folder is named.
  (tmp_path / "manual2" / ADE_FULL_ROOT / "training").mkdir(parents=True)
  (tmp_path / "manual2" / ADE_FULL_ROOT / "validation" / "x").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=f"{ADE_FULL_ROOT}/training") as e:
    _prepare("ade20k_full", tmp_path / "manual2", tmp_path / "tfds")
  assert "is empty" in str(e.value) and "ADE20K_2021_17_01.zip" in str(e.value)
  # The trainer on an unprepared ADE20K-Full.
  config = demo_config(tmp_path / "tfds_none", name="ade20k_full", builder_config=None)
  with pytest.raises(datasets.DatasetNotPreparedError) as e:
    datasets.check_prepared(config)
  msg = str(e.value)
  assert "ADE20K_2021_17_01.zip" in msg and "python -m data.prepare ade20k_full" in msg
  assert "https://ade20k.csail.mit.edu/request_data/" in msg and str(tmp_path / "tfds_none") in msg


def test_ade20k_full_run_configs():
  import importlib  # pylint: disable=g-import-not-at-top
  proto = importlib.import_module("configs.ade20k_full_swin_proto").get_config()
  linear = importlib.import_module("configs.ade20k_full_swin_linear").get_config()
  ade20k = importlib.import_module("configs.ade20k_swin_proto").get_config()
  assert (proto.dataset.name, proto.model.head, linear.model.head) == ("ade20k_full", "proto",
                                                                       "linear")
  assert (proto.model.backbone, proto.num_train_steps, proto.batch_size,
          tuple(proto.dataset.crop_size)) == (
              "swin_base_patch4_window12_384", 160_000, 16, (512, 512))
  # The ADE20K Swin run on another dataset: only the name differs.
  a, b = proto.to_dict(), ade20k.to_dict()
  assert a["dataset"].pop("name") == "ade20k_full" and b["dataset"].pop("name") == "ade20k"
  assert a == b


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


def test_demo_appearance_map_marks_each_look_and_leaves_scenes_unchanged():
  """The appearance map (version 1.1.0): 255 exactly on the label's ignore band,
  each pixel's look within its class's APPEARANCES elsewhere, and `render`'s
  images and labels (version 1.0.0's) are render_with_appearance's."""
  from data.demo import builder as demo  # pylint: disable=g-import-not-at-top
  seen = set()
  for i in range(12):
    image, label, look = demo.render_with_appearance(0, 1, i)
    image0, label0 = demo.render(0, 1, i)
    np.testing.assert_array_equal(image, image0)
    np.testing.assert_array_equal(label, label0)
    assert look.dtype == np.uint8 and look.shape == label.shape
    np.testing.assert_array_equal(look == 255, label == 255)
    for c in np.unique(label[label != 255]):
      looks = np.unique(look[label == c])
      assert looks.max() < max(1, len(demo.APPEARANCES.get(int(c), ()))), (i, c, looks)
      seen.update((int(c), int(a)) for a in looks)
  assert {(2, 1), (2, 2), (1, 1)} <= seen          # other looks than the first occur
  assert demo.Builder.VERSION == "1.1.0"


# --- protoseg_jax.datasets ------------------------------------------------------


def demo_config(data_dir, **dataset_overrides):
  """configs/default.py's config on the tiny demo (24 train / 10 validation) in `data_dir`."""
  config = default.get_config()
  config.dataset.update(dict(name="demo", builder_config="tiny", data_dir=str(data_dir)))
  config.dataset.update(dataset_overrides)
  return config


def test_prepare_command_without_a_terminal_and_again(demo_dir):
  """Piped output has no progress-bar escape codes; a second run says it reused the data.
  (The session's demo data was prepared by the same command: conftest.demo_dir.)"""
  first = demo_prepare_output(demo_dir)
  assert "\x1b[" not in first["stdout"] + first["stderr"]
  assert first["stdout"].strip().splitlines()[-1].startswith("Prepared protoseg_demo in ")
  datasets.check_prepared(demo_config(demo_dir))
  again = prepare_demo(demo_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  (line,) = again.stdout.strip().splitlines()
  assert line.startswith(f"Reused protoseg_demo: already prepared in {demo_dir}"), line
  assert "\x1b[" not in again.stdout + again.stderr


def test_dataset_info(demo_dir):
  num_classes = data.dataset_meta("demo").num_classes
  info = datasets.get_dataset_info(demo_config(demo_dir))
  assert info.num_classes == num_classes == 6 and info.ignore_index == 255
  assert info.class_names[0] == "background" and len(info.class_names) == num_classes
  assert len(info.palette) == num_classes and all(len(c) == 3 for c in info.palette)
  assert (info.examples("train"), info.examples("validation")) == (24, 10)
  assert DatasetMeta.from_metadata(info.metadata()) == info    # one JSON form, sizes included
  meta = data.dataset_meta("demo")
  assert (info.class_names, info.palette, info.ignore_index) == (
      meta.class_names, meta.palette, meta.ignore_index)


def test_dataset_meta_needs_no_preparation():
  for name in data.DATASETS:
    meta = data.dataset_meta(name)
    assert meta.num_classes == len(meta.class_names) == len(meta.palette) > 0
    # 8-bit label datasets ignore 255; ADE20K-Full (847 classes, 16-bit labels) 65535.
    assert meta.ignore_index == (65535 if name == "ade20k_full" else 255)
    assert DatasetMeta.from_metadata(meta.metadata()) == meta
  assert data.dataset_meta("ade20k").num_classes == 150
  assert data.dataset_meta("cityscapes").num_classes == 19
  assert data.dataset_meta("coco_stuff164k").num_classes == 171
  assert data.dataset_meta("ade20k_full").num_classes == 847
  with pytest.raises(ValueError, match="Unknown dataset"):
    data.dataset_meta("nope")


def test_cityscapes_release_ids_are_the_label_ids_of_its_train_ids():
  from data.cityscapes import builder as cityscapes  # pylint: disable=g-import-not-at-top
  release_ids = data.dataset_meta("cityscapes").release_ids
  assert release_ids == (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
  for train_id, label_id in enumerate(release_ids):  # the inverse of the builder's table
    assert cityscapes.LABEL_ID_TO_TRAIN_ID[label_id] == train_id == cityscapes.LUT[label_id]
  assert DatasetMeta.from_metadata(data.dataset_meta("cityscapes").metadata()).release_ids == (
      release_ids)
  # ADE20K-Full: the ADE20K object id of each train id.
  assert data.dataset_meta("ade20k_full").release_ids[:2] == (2978, 312)
  # The others' labels are train ids (after the LUT).
  for name in set(data.DATASETS) - {"cityscapes", "ade20k_full"}:
    assert data.dataset_meta(name).release_ids is None


def test_splits_are_the_builders_splits():
  assert data.SPLITS == {name: tuple(data.builder_class(name).SPLITS) for name in data.DATASETS}
  assert data.SPLITS["cityscapes"] == ("train", "validation", "test")
  assert data.SPLITS["coco_stuff10k"] == ("train", "test")
  assert data.SPLITS["demo"] == ("train", "validation")
  assert data.SPLITS["ade20k_full"] == ("train", "validation")


def test_missing_dataset_says_what_to_download(tmp_path):
  config = demo_config(tmp_path, name="ade20k", builder_config=None)
  with pytest.raises(datasets.DatasetNotPreparedError) as e:
    datasets.get_dataset_info(config)
  msg = str(e.value)
  assert "ADEChallengeData2016.zip" in msg and "python -m data.prepare ade20k" in msg
  assert str(tmp_path) in msg
  config.dataset.name = "cityscapes"
  with pytest.raises(datasets.DatasetNotPreparedError, match="gtFine_trainvaltest.zip"):
    datasets.check_prepared(config)
  config.dataset.name = "pascal_context59"
  with pytest.raises(ValueError, match="docs/datasets.md"):
    datasets.check_prepared(config)
  config.dataset.name = "nope"
  with pytest.raises(ValueError, match="Unknown dataset"):
    datasets.check_prepared(config)


def test_an_empty_data_dir_is_tfds_default_not_the_current_directory(tmp_path, monkeypatch):
  """--config.dataset.data_dir= (empty) means TFDS's default directory, as
  unset does: the builder and the prepared path agree, nothing relative to
  the current directory (a run prepared the demo into the checkout once)."""
  monkeypatch.chdir(tmp_path)
  config = demo_config("unused")
  config.dataset.data_dir = None
  want = datasets._builder(config, "demo").data_dir
  config.dataset.data_dir = ""
  got = datasets._builder(config, "demo").data_dir
  assert got == want and os.path.isabs(got)
  meta = datasets.prepared(config)
  assert datasets.prepared_dir(meta, "") == datasets.prepared_dir(meta, None)
