"""Swin backbone: parity with timm (random weights), padding semantics of the
segmentation Swin, official-layout conversion, key errors."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protoseg_jax.convert import swin as swin_convert
from protoseg_jax.models import get_backbone, layers, swin
from torch_helpers import max_rel_err

# Its module fixtures are built once: every test here runs on one worker.
pytestmark = pytest.mark.xdist_group("swin")

ARCH = "swin_tiny_patch4_window7_224"


@pytest.fixture(scope="module")
def timm_model():
  import timm
  torch.manual_seed(0)
  # always_partition: keep window 7 / shift 3 in every stage, as the segmentation
  # Swin does (timm would otherwise turn off the shift where a map is one window).
  m = timm.create_model(ARCH, pretrained=False, num_classes=0, dynamic_img_size=True,
                        always_partition=True, drop_path_rate=0.0)
  m.eval()
  # Non-trivial LayerNorm affine params (timm initialises them to 1/0).
  with torch.no_grad():
    for name, p in m.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return m


@pytest.fixture(scope="module")
def variables(timm_model):
  return swin_convert.convert_state_dict(ARCH, timm_model.state_dict(), out_norms=False)


def _ref_block(blk, x, ws, shift):
  """One block with the segmentation-Swin semantics (pad, then roll, mask for
  the padded size), computed with timm's own submodules. x: [B, H, W, C]."""
  b, h, w, c = x.shape
  y = blk.norm1(x)
  pad_b, pad_r = (-h) % ws, (-w) % ws
  y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
  hp, wp = h + pad_b, w + pad_r
  mask = None
  if shift:
    y = torch.roll(y, (-shift, -shift), dims=(1, 2))
    mask = torch.from_numpy(swin.shifted_window_mask(hp, wp, ws, shift))
  win = y.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
  win = blk.attn(win, mask=mask)
  y = win.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
  if shift:
    y = torch.roll(y, (shift, shift), dims=(1, 2))
  x = x + y[:, :h, :w]
  return x + blk.mlp(blk.norm2(x))


def _ref_forward(m, images_nchw, ws=7):
  """Stage outputs (NHWC) of the segmentation Swin for any input size."""
  _, _, h, w = images_nchw.shape
  x = F.pad(images_nchw, (0, (-w) % 4, 0, (-h) % 4))
  x = m.patch_embed(x)  # NHWC
  outs = []
  for i, stage in enumerate(m.layers):
    x = stage.downsample(x)
    for j, blk in enumerate(stage.blocks):
      x = _ref_block(blk, x, ws, 0 if j % 2 == 0 else ws // 2)
    outs.append(x)
  return outs


def test_mask_matches_timm():
  import timm.models.swin_transformer as ts
  blk = ts.SwinTransformerBlock(dim=8, input_resolution=(14, 21), num_heads=2, window_size=7,
                                shift_size=3, always_partition=True)
  np.testing.assert_array_equal(blk.attn_mask.numpy(), swin.shifted_window_mask(14, 21, 7, 3))
  np.testing.assert_array_equal(ts.get_relative_position_index(7, 7).numpy(),
                                swin.relative_position_index(7))


def test_parity_with_timm_224(timm_model, variables):
  """Unmodified timm forward (stage outputs, NHWC) on a 224x224 input."""
  x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    ref = timm_model.forward_intermediates(x, intermediates_only=True)  # NCHW
  model = get_backbone(ARCH, out_norms=False)
  feats = jax.jit(lambda v, im: model.apply(v, im, train=False))(
      variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
  errs = []
  for i, (a, b) in enumerate(zip(feats, ref)):
    b = b.permute(0, 2, 3, 1).numpy()
    assert a.shape == b.shape, (i, a.shape, b.shape)
    errs.append(max_rel_err(a, b))
  print("swin vs timm 224x224 max rel err per stage:", errs)
  assert max(errs) < 1e-4, errs


def test_parity_non_divisible_input(timm_model, variables):
  """97x130: padding to the patch size and, per stage, to the window size."""
  x = torch.randn(1, 3, 97, 130, generator=torch.Generator().manual_seed(2))
  with torch.no_grad():
    ref = _ref_forward(timm_model, x)
  model = get_backbone(ARCH, out_norms=False)
  feats = jax.jit(lambda v, im: model.apply(v, im, train=False))(
      variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
  assert [f.shape[1:3] for f in feats] == [(25, 33), (13, 17), (7, 9), (4, 5)]
  errs = [max_rel_err(a, b.numpy()) for a, b in zip(feats, ref)]
  print("swin vs reference 97x130 max rel err per stage:", errs)
  assert max(errs) < 1e-4, errs


def test_reference_agrees_with_timm_on_divisible_input(timm_model):
  """The padding-aware reference above is timm's forward where no padding occurs."""
  x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    ref = timm_model.forward_intermediates(x, intermediates_only=True)
    mine = _ref_forward(timm_model, x)
  for a, b in zip(mine, ref):
    assert max_rel_err(a.numpy(), b.permute(0, 2, 3, 1).numpy()) < 1e-5


def _to_official(sd: dict) -> dict:
  """timm layout -> the official Microsoft checkpoint layout."""
  out = {}
  for k, v in sd.items():
    k = re.sub(r"^layers\.(\d+)\.downsample\.",
               lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k)
    k = k.replace("head.fc.", "head.")
    out[k] = v
  for i, depth in enumerate((2, 2, 6, 2)):
    for j in range(depth):
      out[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
      if j % 2:
        out[f"layers.{i}.blocks.{j}.attn_mask"] = torch.zeros(4, 49, 49)
  out["norm.weight"], out["norm.bias"] = torch.ones(768), torch.zeros(768)
  out["head.weight"], out["head.bias"] = torch.zeros(10, 768), torch.zeros(10)
  return out


def test_official_layout_converts_identically(timm_model, variables):
  sd = {k: v.clone() for k, v in timm_model.state_dict().items()}
  off = _to_official(sd)
  assert "layers.0.downsample.reduction.weight" in off and "layers.3.downsample.norm.weight" not in off
  v2 = swin_convert.convert_state_dict(ARCH, off, out_norms=False)
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, v2)
  # Segmentation checkpoint: backbone.* with norm0..3, decoder keys left alone.
  seg = {f"backbone.{k}": v for k, v in off.items()}
  for i in range(4):
    seg[f"backbone.norm{i}.weight"] = torch.full((96 * 2 ** i,), 2.0)
    seg[f"backbone.norm{i}.bias"] = torch.full((96 * 2 ** i,), 0.5)
  seg["decode_head.conv_seg.weight"] = torch.zeros(3, 512, 1, 1)
  partial = {k: v for k, v in seg.items() if not k.startswith("backbone.norm1.")}
  with pytest.raises(ValueError, match=r"norm1\.weight"):
    swin_convert.convert_state_dict(ARCH, partial)
  v3 = swin_convert.convert_state_dict(ARCH, seg)
  np.testing.assert_array_equal(v3["params"]["norm2"]["scale"], np.full((384,), 2.0, np.float32))
  # ImageNet checkpoint: fresh out norms.
  v4 = swin_convert.convert_state_dict(ARCH, sd)
  np.testing.assert_array_equal(v4["params"]["norm3"]["scale"], np.ones((768,), np.float32))
  np.testing.assert_array_equal(v4["params"]["norm3"]["bias"], np.zeros((768,), np.float32))


def test_unknown_and_missing_keys_error(timm_model):
  sd = dict(timm_model.state_dict())
  sd["layers.1.blocks.0.attn.extra"] = torch.zeros(3)
  with pytest.raises(ValueError, match=r"layers\.1\.blocks\.0\.attn\.extra"):
    swin_convert.convert_state_dict(ARCH, sd)
  sd = dict(timm_model.state_dict())
  del sd["layers.2.blocks.3.mlp.fc1.bias"]
  with pytest.raises(ValueError, match=r"layers\.2\.blocks\.3\.mlp\.fc1\.bias"):
    swin_convert.convert_state_dict(ARCH, sd)
  sd = dict(timm_model.state_dict())
  sd["patch_embed.proj.weight"] = torch.zeros(96, 3, 4, 5)
  with pytest.raises(ValueError, match=r"wrong shapes.*patch_embed_proj"):
    swin_convert.convert_state_dict(ARCH, sd)


def test_shapes_all_archs():
  for arch in swin.ARCHS:
    model = get_backbone(arch)
    out = jax.eval_shape(lambda: model.init_with_output(
        jax.random.PRNGKey(0), jnp.zeros((2, 97, 130, 3)), train=False)[0])
    c = swin._CFGS[arch]["embed_dim"]
    assert [o.shape for o in out] == [(2, 25, 33, c), (2, 13, 17, 2 * c), (2, 7, 9, 4 * c),
                                      (2, 4, 5, 8 * c)], arch


def test_drop_path():
  dp = layers.DropPath(0.5)
  x = jnp.ones((64, 3, 2))
  y = dp.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
  per_sample = np.asarray(y)[:, 0, 0]
  assert set(np.unique(per_sample)) == {0.0, 2.0}
  assert np.all(np.asarray(y) == per_sample[:, None, None])
  np.testing.assert_array_equal(dp.apply({}, x, deterministic=True), x)


def test_block_train_mode_uses_dropout_rng():
  blk = swin.SwinBlock(dim=8, num_heads=2, window_size=7, shift=3, drop_path=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 9, 10, 8))
  rng = np.random.default_rng(0)
  v = jax.tree_util.tree_map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype),
                             jax.eval_shape(lambda: blk.init(jax.random.PRNGKey(1), x, train=False)))
  run = jax.jit(lambda v, k: blk.apply(v, x, train=True, rngs={"dropout": k}))
  a, b = run(v, jax.random.PRNGKey(1)), run(v, jax.random.PRNGKey(2))
  assert not np.allclose(a, b)
