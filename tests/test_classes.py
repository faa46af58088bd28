"""The two descriptions (protoseg_jax/classes.py): a dataset's (DatasetMeta)
and a run's (ClassMap), each with one JSON form, and the run.json files
written before the two were one type keep loading."""

from __future__ import annotations

import json

import pytest

from protoseg_jax import held_out
from protoseg_jax.classes import ClassMap, DatasetMeta

# DIR/run.json exactly as the code before ClassMap took in RunFacts and
# PreparedDataset wrote it (commit 3d76b8a: RunFacts.to_json of the demo with
# held_out_class=3, then `ClassMap.with_class` twice as add_class does: the
# held-out class re-added, then a class the dataset lacks).
OLD_DEMO_RUN_JSON = """{
 "format": 1, "package_version": "0.1.0",
 "classes": {"dataset": "demo", "class_ids": [0, 1, 2, 4, 5, 3, 6],
  "names": ["background", "disc", "box", "triangle", "bar", "ring", "kite"],
  "palette": [[120, 120, 120], [245, 140, 20], [40, 160, 50], [210, 30, 40], [0, 150, 140],
              [240, 220, 30], [222, 34, 62]],
  "num_dataset_classes": 6, "ignore_index": 255},
 "splits": ["train", "validation"],
 "prepared": {"tfds_name": "protoseg_demo", "builder_config": "tiny", "version": "1.1.0"},
 "held_out_class": 3,
 "added": [{"name": "triangle", "class_id": 3, "support_images": 2, "support_pixels": 40,
            "from": "checkpoint step 4 of /tmp/wd/checkpoints"},
           {"name": "kite", "class_id": 6, "support_images": 1, "support_pixels": 9,
            "from": "variables /tmp/out1"}]
}"""

# The same code's run.json of a new Cityscapes run (release ids; no builder config).
OLD_CITYSCAPES_RUN_JSON = """{"format": 1, "package_version": "0.1.0", "classes": {
 "dataset": "cityscapes", "class_ids": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
  16, 17, 18],
 "names": ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
  "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus",
  "train", "motorcycle", "bicycle"],
 "palette": [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
  [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
  [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
  [0, 80, 100], [0, 0, 230], [119, 11, 32]],
 "num_dataset_classes": 19, "ignore_index": 255,
 "release_ids": [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]},
 "splits": ["train", "validation", "test"],
 "prepared": {"tfds_name": "cityscapes", "builder_config": null, "version": "1.0.0"},
 "held_out_class": -1, "added": []}"""


def test_an_old_run_json_reads_every_field_and_is_written_back_the_same():
  old = json.loads(OLD_DEMO_RUN_JSON)
  c = ClassMap.from_json(old)
  assert c.dataset == "demo" and c.class_ids == (0, 1, 2, 4, 5, 3, 6)
  assert c.names == ("background", "disc", "box", "triangle", "bar", "ring", "kite")
  assert c.palette == tuple(tuple(p) for p in old["classes"]["palette"])
  assert c.num_dataset_classes == 6 and c.num_ids == 7 and c.num_outputs == 7
  assert c.new_names == ("kite",) and c.new_palette == ((222, 34, 62),)
  assert c.ignore_index == 255 and c.release_ids is None
  assert c.output_names == ("background", "disc", "box", "bar", "ring", "triangle", "kite")
  assert c.held_out_class == 3 and c.added == tuple(old["added"])
  m = c.meta
  assert m.class_names == c.names[:6] and m.palette == c.palette[:6]
  assert m.splits == ("train", "validation") and m.split_sizes == ()
  assert (m.tfds_name, m.builder_config, m.version) == ("protoseg_demo", "tiny", "1.1.0")
  # Written back: the same file (and export.json's "classes", which is its "classes").
  assert c.to_json() == old

  city = json.loads(OLD_CITYSCAPES_RUN_JSON)
  c = ClassMap.from_json(city)
  assert c.release_ids == tuple(city["classes"]["release_ids"]) and c.meta.splits[-1] == "test"
  assert (c.meta.tfds_name, c.meta.builder_config, c.meta.version) == ("cityscapes", None,
                                                                        "1.0.0")
  assert c.held_out_class == held_out.NONE and c.added == () and c.is_identity()
  assert c.to_json() == city


def test_an_older_run_json_without_the_later_keys():
  """run.json before held_out_class / added, and one without a prepared place."""
  old = json.loads(OLD_DEMO_RUN_JSON)
  bare = {"format": 1, "classes": dict(old["classes"], class_ids=[0, 1, 2, 4, 5],
                                       names=old["classes"]["names"][:6],
                                       palette=old["classes"]["palette"][:6]),
          "splits": ["train", "validation"], "prepared": None}
  c = ClassMap.from_json(bare)
  assert c.meta.tfds_name is None and c.meta.version is None
  assert c.held_out_class == held_out.NONE and c.added == () and c.missing == (3,)
  written = c.to_json()
  assert written["classes"] == bare["classes"] and written["prepared"] is None


def test_the_run_and_its_dataset_description_agree():
  meta = DatasetMeta(class_names=("a", "b", "c"), palette=((1, 2, 3), (4, 5, 6), (7, 8, 9)),
                     splits=("train",), tfds_name="x", builder_config=None, version="1.0.0")
  assert DatasetMeta.from_metadata(meta.metadata()) == meta      # one JSON form, place included
  c = ClassMap.of_dataset("x", meta, held_out_class=1)
  assert c.class_ids == (0, 2) and c.meta is meta and c.held_out_class == 1
  c = c.with_class("b").with_class("d")
  assert c.class_ids == (0, 2, 1, 3) and c.names == ("a", "b", "c", "d")
  assert ClassMap.from_json(json.loads(json.dumps(c.to_json()))) == c
  with pytest.raises(ValueError, match="already has"):
    c.with_class("d")
