"""UPerHead and SegFormer all-MLP decoder: pooling bins, shapes, PyTorch parity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F

from protoseg_jax.convert import mit as mit_convert
from protoseg_jax.convert import segformer as segformer_convert
from protoseg_jax.convert import uper as uper_convert
from protoseg_jax.models import mit, segformer, uper
from torch_helpers import max_rel_err

# Its module fixtures are built once: every test here runs on one worker.
pytestmark = pytest.mark.xdist_group("decoders")


def nhwc(t):
  return jnp.asarray(t.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("size", [(7, 11), (13, 5), (4, 9)])
def test_adaptive_avg_pool_matches_torch(size):
  x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
  for s in (1, 2, 3, 6):
    ref = tnn.AdaptiveAvgPool2d(s)(x).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(uper.adaptive_avg_pool(nhwc(x), s), ref, rtol=1e-6, atol=1e-6)


# --- UPerHead ------------------------------------------------------------------

class _TorchConvModule(tnn.Module):
  def __init__(self, cin, cout, k):
    super().__init__()
    self.conv = tnn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
    self.bn = tnn.BatchNorm2d(cout)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class _TorchUPerHead(tnn.Module):
  """The mmseg UPerHead forward (eval), with its module names, written out in torch."""

  def __init__(self, in_channels, channels, pool_scales=(1, 2, 3, 6)):
    super().__init__()
    self.psp_modules = tnn.ModuleList(
        tnn.Sequential(tnn.AdaptiveAvgPool2d(s), _TorchConvModule(in_channels[-1], channels, 1))
        for s in pool_scales)
    self.bottleneck = _TorchConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3)
    self.lateral_convs = tnn.ModuleList(_TorchConvModule(c, channels, 1) for c in in_channels[:-1])
    self.fpn_convs = tnn.ModuleList(_TorchConvModule(channels, channels, 3) for _ in in_channels[:-1])
    self.fpn_bottleneck = _TorchConvModule(len(in_channels) * channels, channels, 3)
    self.conv_seg = tnn.Conv2d(channels, 5, 1)

  def forward(self, inputs):
    up = lambda y, size: F.interpolate(y, size=size, mode="bilinear", align_corners=False)
    x = inputs[-1]
    psp = [x] + [up(m(x), x.shape[2:]) for m in self.psp_modules]
    laterals = [c(inputs[i]) for i, c in enumerate(self.lateral_convs)]
    laterals.append(self.bottleneck(torch.cat(psp, 1)))
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + up(laterals[i], laterals[i - 1].shape[2:])
    outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals) - 1)] + [laterals[-1]]
    outs = [outs[0]] + [up(o, outs[0].shape[2:]) for o in outs[1:]]
    return self.fpn_bottleneck(torch.cat(outs, 1))


def _randomize_bn(m, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for mod in m.modules():
      if isinstance(mod, tnn.BatchNorm2d):
        mod.weight.copy_(1 + 0.2 * torch.randn(mod.weight.shape, generator=g))
        mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=g))
        mod.running_mean.copy_(0.2 * torch.randn(mod.running_mean.shape, generator=g))
        mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g))


def _features(chans, sizes, seed):
  g = torch.Generator().manual_seed(seed)
  return [torch.randn(1, c, h, w, generator=g) for c, (h, w) in zip(chans, sizes)]


def test_uper_head_parity_with_torch_reference():
  torch.manual_seed(0)
  chans, channels = (8, 16, 24, 32), 16
  ref_head = _TorchUPerHead(chans, channels).eval()
  _randomize_bn(ref_head, 1)
  # Swin-like sizes of a 97x130 image (not divisible anywhere).
  feats = _features(chans, [(25, 33), (13, 17), (7, 9), (4, 5)], 2)
  with torch.no_grad():
    ref = ref_head(feats).permute(0, 2, 3, 1).numpy()
  sd = {f"decode_head.{k}": v for k, v in ref_head.state_dict().items()}
  sd["backbone.patch_embed.proj.weight"] = torch.zeros(1)  # other converters' keys are left alone
  variables = uper_convert.convert_state_dict(sd)
  head = uper.UPerHead(channels=channels)
  out = jax.jit(lambda v, f: head.apply(v, f, train=False))(variables, [nhwc(f) for f in feats])
  assert out.shape == (1, 25, 33, channels)
  err = max_rel_err(out, ref)
  print("UPerHead vs torch reference max rel err:", err)
  assert err < 1e-5
  # unknown / missing keys are named
  bad = dict(sd)
  bad["decode_head.fpn_convs.0.extra"] = torch.zeros(1)
  with pytest.raises(ValueError, match=r"fpn_convs\.0\.extra"):
    uper_convert.convert_state_dict(bad)
  bad = dict(sd)
  del bad["decode_head.bottleneck.bn.running_var"]
  with pytest.raises(ValueError, match=r"bottleneck\.bn\.running_var"):
    uper_convert.convert_state_dict(bad)


def test_uper_head_shapes_and_train_mode():
  head = uper.UPerHead(channels=512)
  feats = [jnp.zeros((2, 25, 33, 96)), jnp.zeros((2, 13, 17, 192)), jnp.zeros((2, 7, 9, 384)),
           jnp.zeros((2, 4, 5, 768))]
  out, shapes = jax.eval_shape(lambda: head.init_with_output(
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, feats, train=True))
  assert out.shape == (2, 25, 33, 512)
  assert shapes["params"]["bottleneck"]["conv"]["kernel"].shape == (3, 3, 768 + 4 * 512, 512)
  assert shapes["params"]["fpn_bottleneck"]["conv"]["kernel"].shape == (3, 3, 4 * 512, 512)
  assert set(shapes["batch_stats"]) == set(shapes["params"])
  # Dropout2d: whole channels are dropped in training (kept ones scaled by 2).
  f = [jax.random.normal(jax.random.PRNGKey(i), (1, 8 // 2 ** i + 1, 8 // 2 ** i + 2, 4)) for i in range(4)]
  drop, keep = uper.UPerHead(channels=32, dropout_rate=0.5), uper.UPerHead(channels=32, dropout_rate=0.0)
  # Random variables from shapes (the initialisers are slow to compile on CPU).
  rng = np.random.default_rng(0)
  v = jax.tree_util.tree_map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype),
                             jax.eval_shape(lambda: drop.init(jax.random.PRNGKey(0), f, train=False)))
  run = lambda m: jax.jit(lambda v, f: m.apply(v, f, train=True, rngs={"dropout": jax.random.PRNGKey(3)},
                                               mutable=["batch_stats"])[0])(v, f)
  y, y0 = np.asarray(run(drop)), np.asarray(run(keep))
  dropped = np.all(y == 0, axis=(0, 1, 2))
  assert 0 < dropped.sum() < 32
  np.testing.assert_allclose(y[..., ~dropped], 2 * y0[..., ~dropped], rtol=1e-5, atol=1e-6)


# --- SegFormer head ----------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_seg():
  from transformers import SegformerConfig, SegformerForSemanticSegmentation
  torch.manual_seed(0)
  cfg = SegformerConfig(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8],
                        decoder_hidden_size=64, num_labels=7)
  m = SegformerForSemanticSegmentation(cfg).eval()
  _randomize_bn(m, 3)
  with torch.no_grad():
    for name, p in m.named_parameters():
      if name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  return m


def test_segformer_head_parity_with_hf(hf_seg):
  """Full SegFormer (MiT-B0 layout, decoder width 64) on a 97x130 image: HF logits
  = classifier(decode features) in eval mode; compare through the converted classifier."""
  x = torch.randn(1, 3, 97, 130, generator=torch.Generator().manual_seed(5))
  with torch.no_grad():
    logits = hf_seg(pixel_values=x).logits.permute(0, 2, 3, 1).numpy()
  sd = hf_seg.state_dict()
  backbone = mit.ARCHS["mit_b0"](norm_eps=1e-5)
  head = segformer.SegFormerHead(channels=64)
  bvars = mit_convert.convert_state_dict("mit_b0", sd)
  hvars = segformer_convert.convert_state_dict(sd)
  cls = segformer_convert.convert_classifier(sd)

  @jax.jit
  def fwd(bv, hv, c, im):
    feats = backbone.apply(bv, im, train=False)
    y = head.apply(hv, feats, train=False)
    return y, y @ c["kernel"] + c["bias"]

  feats, out = fwd(bvars, hvars, cls, nhwc(x))
  assert feats.shape == (1, 25, 33, 64) and out.shape == logits.shape
  err = max_rel_err(out, logits)
  print("SegFormer (MiT-B0 + all-MLP head) vs HF logits max rel err:", err)
  assert err < 1e-4


def _hf_head_to_layout(sd, layout):
  out = {}
  for k, v in sd.items():
    if not k.startswith("decode_head."):
      continue
    k = k[len("decode_head."):]
    if layout == "hub":
      k = k.replace("linear_projections.", "linear_c.")
    else:  # NVlabs
      if k.startswith("linear_projections."):
        i = int(k.split(".")[1])
        k = f"linear_c{i + 1}." + k.split(".", 2)[2]
      k = k.replace("linear_fuse.weight", "linear_fuse.conv.weight")
      k = k.replace("batch_norm.", "linear_fuse.bn.").replace("classifier.", "linear_pred.")
    out["decode_head." + k] = v
  return out


def test_segformer_head_layouts_convert_identically(hf_seg):
  sd = hf_seg.state_dict()
  ref = segformer_convert.convert_state_dict(sd)
  for layout in ("hub", "nvlabs"):
    other = _hf_head_to_layout(sd, layout)
    assert ("decode_head.linear_c.2.proj.weight" in other) == (layout == "hub")
    jax.tree_util.tree_map(np.testing.assert_array_equal, ref, segformer_convert.convert_state_dict(other))
    jax.tree_util.tree_map(np.testing.assert_array_equal, segformer_convert.convert_classifier(sd),
                           segformer_convert.convert_classifier(other))
  bad = dict(sd)
  bad["decode_head.linear_projections.1.extra"] = torch.zeros(1)
  with pytest.raises(ValueError, match=r"linear_projections\.1\.extra"):
    segformer_convert.convert_state_dict(bad)
  bad = {k: v for k, v in sd.items() if k != "decode_head.linear_projections.3.proj.weight"}
  with pytest.raises(ValueError, match=r"linear_projections\.3\.proj\.weight"):
    segformer_convert.convert_state_dict(bad)


def test_segformer_head_shapes():
  for arch, c in mit.DECODER_CHANNELS.items():
    dims = mit._CFGS[arch]["embed_dims"]
    feats = [jnp.zeros((2, 25, 33, dims[0])), jnp.zeros((2, 13, 17, dims[1])),
             jnp.zeros((2, 7, 9, dims[2])), jnp.zeros((2, 4, 5, dims[3]))]
    head = segformer.SegFormerHead(channels=c)
    out, shapes = jax.eval_shape(lambda: head.init_with_output(jax.random.PRNGKey(0), feats, train=False))
    assert out.shape == (2, 25, 33, c), arch
    assert shapes["params"]["linear_fuse"]["kernel"].shape == (1, 1, 4 * c, c)
