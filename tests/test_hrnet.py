"""HRNet backbones and head: parity with timm / an openseg-style reference (random weights)."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.hrnet import HighResolutionModule

from protoseg_jax import convert, models
from protoseg_jax.convert import hrnet as hrnet_convert
from protoseg_jax.models import hrnet
from conftest import random_variables
from torch_helpers import nchw, nhwc, randomize_bn, rel_errors

# Its module fixtures are built once: every test here runs on one worker.
pytestmark = pytest.mark.xdist_group("hrnet")

TOL = 1e-4  # max|a - b| / max|b| per feature, float32


def branch_features(model, x: torch.Tensor) -> list[np.ndarray]:
  """timm HRNet's raw last-stage branch outputs (no incre modules), NHWC."""
  with torch.no_grad():
    x = model.act1(model.bn1(model.conv1(x)))
    x = model.act2(model.bn2(model.conv2(x)))
    return [nhwc(f) for f in model.stages(x)]


def openseg_module_forward(self, x):
  """openseg/ProtoSeg HighResolutionModule.forward: bilinear align_corners=True fusion."""
  if self.num_branches == 1:
    return [self.branches[0](x[0])]
  x = [branch(xi) for branch, xi in zip(self.branches, x)]
  out = []
  for i, layers in enumerate(self.fuse_layers):
    y = None
    for j in range(self.num_branches):
      if j == i:
        t = x[j]
      elif j > i:  # conv + BN (timm's trailing nn.Upsample is skipped), then resize by size
        t = layers[j][1](layers[j][0](x[j]))
        t = F.interpolate(t, size=x[i].shape[-2:], mode="bilinear", align_corners=True)
      else:
        t = layers[j](x[j])
      y = t if y is None else y + t
    out.append(self.fuse_act(y))
  return out


def numpy_variables(model, *args, seed: int = 0, **kw) -> dict:
  """Random variables with `model.init`'s tree (`conftest.random_variables`: drawn
  with NumPy; `model.init` of a whole backbone compiles for a minute)."""
  return random_variables(jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kw)),
                          seed=seed)


def run_ours(arch, variables, x: torch.Tensor, **kw):
  model = models.get_backbone(arch, **kw)
  return jax.jit(lambda v, a: model.apply(v, a, train=False))(variables, jnp.asarray(nhwc(x)))


@pytest.fixture(scope="module")
def w18s():
  torch.manual_seed(0)
  m = randomize_bn(timm.create_model("hrnet_w18_small", pretrained=False).eval())
  sd = m.state_dict()
  # the full classification model: the converter must drop its head explicitly
  assert any(k.startswith("incre_modules.") for k in sd) and "classifier.weight" in sd
  return m, hrnet_convert.convert_state_dict("hrnet_w18_small", sd)


# timm's nearest fusion needs every branch exactly twice the next one:
# ceil(H/4), ceil(W/4) multiples of 8. 62x93 is such a size without being a multiple of 32.
@pytest.mark.parametrize("hw", [(64, 96), (62, 93)])
def test_hrnet_w18_small_matches_timm(w18s, hw):
  m, variables = w18s
  x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(2))
  ours = run_ours("hrnet_w18_small", variables, x)
  ref = branch_features(m, x)
  h4, w4 = -(-hw[0] // 4), -(-hw[1] // 4)
  assert [f.shape[1:] for f in ours] == [(h4, w4, 16), (h4 // 2, w4 // 2, 32),
                                         (h4 // 4, w4 // 4, 64), (h4 // 8, w4 // 8, 128)]
  errs = rel_errors(ours, ref)
  print(f"hrnet_w18_small nearest {hw} rel err per branch: {errs}")
  assert max(errs) < TOL, errs


def test_bilinear_fusion_matches_openseg_reference(w18s):
  m, variables = w18s
  # 75x93: branch sizes 19x24, 10x12, 5x6, 3x3 (not exact halves; timm's nearest fails here)
  x = torch.randn(2, 3, 75, 93, generator=torch.Generator().manual_seed(3))
  patched = []
  for mod in m.modules():
    if isinstance(mod, HighResolutionModule):
      mod.forward = types.MethodType(openseg_module_forward, mod)
      patched.append(mod)
  try:
    ref = branch_features(m, x)
  finally:
    for mod in patched:
      del mod.forward
  ours = run_ours("hrnet_w18_small", variables, x, fusion="bilinear_align_corners")
  errs = rel_errors(ours, ref)
  print(f"hrnet_w18_small bilinear_align_corners (75, 93) rel err per branch: {errs}")
  assert max(errs) < TOL, errs
  # the fusion mode matters: nearest gives a clearly different result
  near = run_ours("hrnet_w18_small", variables, x, fusion="nearest")
  diffs = rel_errors(near, ref)
  assert min(diffs[:3]) > 1e-2, diffs


def test_one_fuse_step_upsampling_matches_torch():
  x = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(4))
  want = F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=True)
  got = hrnet.upsample_to(jnp.asarray(nhwc(x)), (5, 7), "bilinear_align_corners")
  np.testing.assert_allclose(np.asarray(got), nhwc(want), rtol=1e-5, atol=1e-6)
  want = torch.nn.Upsample(scale_factor=4, mode="nearest")(x)  # timm's fuse upsampling
  got = hrnet.upsample_to(jnp.asarray(nhwc(x)), (12, 16), "nearest")
  np.testing.assert_array_equal(np.asarray(got), nhwc(want))
  with pytest.raises(ValueError, match="fusion"):
    hrnet.upsample_to(jnp.asarray(nhwc(x)), (12, 16), "bicubic")
  with pytest.raises(ValueError, match="fusion"):
    models.get_backbone("hrnet_tiny", fusion="bilinear")


def test_converter_prefix_and_errors(w18s):
  m, variables = w18s
  sd = {k: v for k, v in m.state_dict().items() if not k.startswith(hrnet_convert._DROPPED)}
  # openseg / ProtoSeg full-model checkpoint: backbone under `backbone.`, other parts beside it
  full = {"backbone." + k: v for k, v in sd.items()}
  full["cls_head.0.weight"] = torch.zeros(4, 4, 3, 3)
  full["prototypes"] = torch.zeros(2, 3, 4)
  got = hrnet_convert.convert_state_dict("hrnet_w18_small", full, prefix="backbone.")
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, variables)

  bad = dict(sd)
  bad["stage3.0.branches.0.0.extra.weight"] = torch.zeros(1)
  with pytest.raises(ValueError, match=r"unknown keys.*stage3\.0\.branches\.0\.0\.extra\.weight"):
    hrnet_convert.convert_state_dict("hrnet_w18_small", bad)
  bad = dict(sd)
  del bad["stage4.0.fuse_layers.3.0.2.0.weight"]
  with pytest.raises(ValueError, match=r"missing keys.*stage4\.0\.fuse_layers\.3\.0\.2\.0\.weight"):
    hrnet_convert.convert_state_dict("hrnet_w18_small", bad)
  with pytest.raises(ValueError, match="prefix"):
    hrnet_convert.convert_state_dict("hrnet_w18_small", sd, prefix="backbone.")


@pytest.mark.parametrize("arch", ["hrnet_w48", "hrnet_w18_small_v2"])
def test_configs_match_timm_key_layout(arch):
  # Every timm key is consumed and every converted array has the Flax model's shape
  # (convert_state_dict checks against jax.eval_shape(model.init)).
  torch.manual_seed(0)
  sd = timm.create_model(arch, pretrained=False).state_dict()
  variables = hrnet_convert.convert_state_dict(arch, sd)
  n_ours = sum(v.size for v in jax.tree_util.tree_leaves(variables))
  n_timm = sum(v.numel() for k, v in sd.items()
               if not k.startswith(hrnet_convert._DROPPED) and not k.endswith("num_batches_tracked"))
  assert n_ours == n_timm


def test_hrnet_tiny_shapes_train_and_dtype():
  model = models.get_backbone("hrnet_tiny")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 75, 93, 3)), jnp.float32)
  variables = numpy_variables(model, x)
  feats, updates = jax.jit(lambda v, a: model.apply(v, a, train=True, mutable=["batch_stats"]))(
      variables, x)
  assert [f.shape for f in feats] == [(2, 19, 24, 8), (2, 10, 12, 16), (2, 5, 6, 32),
                                      (2, 3, 3, 64)]
  changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                   updates["batch_stats"], variables["batch_stats"])
  assert all(jax.tree_util.tree_leaves(changed))
  assert hrnet.branch_channels("hrnet_w48") == (48, 96, 192, 384)
  bf = models.get_backbone("hrnet_tiny", dtype=jnp.bfloat16)
  out = jax.eval_shape(bf.apply, variables, x)
  assert all(f.dtype == jnp.bfloat16 for f in out)


def test_hrnet_head_matches_torch_and_dropout():
  model = models.get_backbone("hrnet_tiny", fusion="bilinear_align_corners")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 62, 70, 3)), jnp.float32)
  feats = jax.jit(model.apply)(numpy_variables(model, x), x)
  d = sum(hrnet.branch_channels("hrnet_tiny"))
  assert d == 120

  # official cls_head (minus classifier) with random weights and BN stats
  torch.manual_seed(0)
  cls_head = torch.nn.Sequential(
      torch.nn.Conv2d(d, d, 3, padding=1),
      torch.nn.Sequential(torch.nn.BatchNorm2d(d), torch.nn.ReLU()),
      torch.nn.Dropout2d(0.1)).eval()
  randomize_bn(cls_head)
  sd = {"cls_head." + k: v for k, v in cls_head.state_dict().items()}
  reader = convert.StateDictReader(sd)
  params, stats = hrnet_convert.convert_hrnet_head(reader, "cls_head.")
  reader.finish()
  head = hrnet.HRNetHead()
  hv = {"params": params, "batch_stats": stats}

  t = [nchw(f) for f in feats]
  h, w = t[0].shape[-2:]
  cat = torch.cat([t[0]] + [F.interpolate(f, size=(h, w), mode="bilinear", align_corners=True)
                            for f in t[1:]], 1)
  with torch.no_grad():
    want = nhwc(cls_head(cat))
  got = head.apply(hv, feats, train=False)
  assert got.shape == (2, 16, 18, d)
  err = float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())
  assert err < TOL, err

  # eval: deterministic, no rng needed; train: whole channels dropped
  np.testing.assert_array_equal(np.asarray(head.apply(hv, feats, train=False)), np.asarray(got))
  kept, _ = hrnet.HRNetHead(dropout=0.0).apply(hv, feats, train=True, mutable=["batch_stats"])
  out, _ = head.apply(hv, feats, train=True, mutable=["batch_stats"],
                      rngs={"dropout": jax.random.key(5)})
  kept, out = np.asarray(kept), np.asarray(out)
  dropped = (out == 0).all(axis=(1, 2))  # [B, C]: whole channels
  assert 0 < dropped.mean() < 0.3, dropped.mean()
  mask = ~dropped[:, None, None, :]
  np.testing.assert_allclose(np.where(mask, out, 0), np.where(mask, kept / 0.9, 0),
                             rtol=1e-5, atol=1e-6)
