"""ResNet backbones: parity with timm (random weights), converter strictness, shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch

from protoseg_jax import models
from protoseg_jax.convert import resnet as resnet_convert
from protoseg_jax.models import resnet
from torch_helpers import randomize_bn, rel_errors

# Its module fixtures are built once: every test here runs on one worker.
pytestmark = pytest.mark.xdist_group("resnet")

TOL = 1e-4  # max|a - b| / max|b| per feature, float32


def timm_model(name: str, **kw):
  torch.manual_seed(0)
  return randomize_bn(timm.create_model(name, pretrained=False, **kw).eval())


def timm_features(model, x_nchw: torch.Tensor) -> list[np.ndarray]:
  with torch.no_grad():
    feats = model.forward_intermediates(x_nchw, indices=[1, 2, 3, 4], intermediates_only=True)
  return [f.numpy().transpose(0, 2, 3, 1) for f in feats]


def run_ours(arch, variables, x_nchw, **kw):
  model = models.get_backbone(arch, **kw)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, jnp.asarray(x_nchw.numpy().transpose(0, 2, 3, 1)))


@pytest.fixture(scope="module")
def r50d():
  return timm_model("resnet50d", output_stride=8)


@pytest.mark.parametrize("hw", [(64, 80), (75, 93)])
def test_resnet50d_os8_matches_timm(r50d, hw):
  sd = r50d.state_dict()
  assert "fc.weight" in sd  # the classifier is dropped by the converter
  variables = resnet_convert.convert_state_dict("resnet50d", sd)
  x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(2))
  ours = run_ours("resnet50d", variables, x)
  ref = timm_features(r50d, x)
  # output stride 8: strides 4, 8, 8, 8
  assert ref[1].shape[1:3] == ref[2].shape[1:3] == ref[3].shape[1:3]
  errs = rel_errors(ours, ref)
  print(f"resnet50d os8 {hw} rel err per stage: {errs}")
  assert max(errs) < TOL, errs


def test_resnet50_torchvision_layout_matches():
  # timm's resnet50 has torchvision's exact key layout (conv1/bn1, downsample.0/.1, fc).
  m = timm_model("resnet50", output_stride=8)
  sd = m.state_dict()
  assert "conv1.weight" in sd and "layer2.0.downsample.0.weight" in sd
  variables = resnet_convert.convert_state_dict("resnet50", sd)
  x = torch.randn(2, 3, 75, 93, generator=torch.Generator().manual_seed(3))
  errs = rel_errors(run_ours("resnet50", variables, x), timm_features(m, x))
  print(f"resnet50 (torchvision layout) os8 rel err per stage: {errs}")
  assert max(errs) < TOL, errs


def test_resnet50_v1c_mmseg_layout_matches():
  # timm resnet50c is mmseg's ResNetV1c (deep stem, conv shortcut); rename its
  # stem to mmcv's `stem.0..7` layout and put it under `backbone.`.
  m = timm_model("resnet50c", output_stride=8)
  rename = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4",
            "conv1.6": "stem.6", "bn1": "stem.7"}
  sd = {}
  for k, v in m.state_dict().items():
    head, _, tail = k.rpartition(".")
    sd["backbone." + rename.get(head, head) + "." + tail] = v
  sd["decode_head.conv_seg.weight"] = torch.zeros(3, 512, 1, 1)  # outside the prefix: ignored
  variables = resnet_convert.convert_state_dict("resnet50_v1c", sd, prefix="backbone.")
  x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(4))
  errs = rel_errors(run_ours("resnet50_v1c", variables, x), timm_features(m, x))
  print(f"resnet50_v1c (mmseg layout) os8 rel err per stage: {errs}")
  assert max(errs) < TOL, errs


def test_converter_rejects_unknown_and_missing_keys(r50d):
  sd = dict(r50d.state_dict())
  sd["layer1.0.extra.weight"] = torch.zeros(1)
  with pytest.raises(ValueError, match=r"unknown keys.*layer1\.0\.extra\.weight"):
    resnet_convert.convert_state_dict("resnet50d", sd)
  sd = dict(r50d.state_dict())
  del sd["layer3.2.bn2.running_var"]
  with pytest.raises(ValueError, match=r"missing keys.*layer3\.2\.bn2\.running_var"):
    resnet_convert.convert_state_dict("resnet50d", sd)
  # a conv-shortcut arch must not accept avg-down weights (layouts differ)
  with pytest.raises(ValueError, match="downsample"):
    resnet_convert.convert_state_dict("resnet50_v1c", r50d.state_dict())


def test_stage_plan():
  assert resnet.stage_plan(8) == [(1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4)]
  assert resnet.stage_plan(16) == [(1, 1, 1), (2, 1, 1), (2, 1, 1), (1, 1, 2)]
  assert resnet.stage_plan(32) == [(1, 1, 1), (2, 1, 1), (2, 1, 1), (2, 1, 1)]
  with pytest.raises(ValueError, match="output_stride"):
    resnet.stage_plan(4)


_SIZES = {8: [(19, 24), (10, 12), (10, 12), (10, 12)], 32: [(19, 24), (10, 12), (5, 6), (3, 3)]}


@pytest.mark.parametrize("arch,output_stride",
                         [("resnet101d", 8), ("resnet101_v1c", 8), ("resnet101", 32)])
def test_resnet101_shapes(arch, output_stride):
  x = jax.ShapeDtypeStruct((2, 75, 93, 3), jnp.float32)
  model = models.get_backbone(arch, output_stride=output_stride)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  feats = jax.eval_shape(model.apply, variables, x)
  assert [f.shape for f in feats] == [(2, h, w, c) for (h, w), c in
                                      zip(_SIZES[output_stride], (256, 512, 1024, 2048))]
  assert len([k for k in variables["params"] if k.startswith("layer3_")]) == 23


def test_bf16_dtype_runs():
  model = models.get_backbone("resnet50d", dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(variables))
  feats = jax.eval_shape(model.apply, variables, x)
  assert all(f.dtype == jnp.bfloat16 for f in feats)
