"""FCNHead: parity with a PyTorch reference laid out like mmseg's FCNHead, shapes, dropout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from protoseg_jax import convert
from protoseg_jax.convert import fcn as fcn_convert
from protoseg_jax.models import fcn
from torch_helpers import randomize_bn

TOL = 1e-4


class TorchConvModule(torch.nn.Module):
  """mmcv ConvModule(conv no bias, BN, ReLU) with mmcv's submodule names."""

  def __init__(self, cin, cout, k, dilation=1):
    super().__init__()
    self.conv = torch.nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation,
                                bias=False)
    self.bn = torch.nn.BatchNorm2d(cout)

  def forward(self, x):
    return torch.relu(self.bn(self.conv(x)))


class TorchFCNHead(torch.nn.Module):
  """mmseg FCNHead forward without cls_seg (key layout `convs.{i}`, `conv_cat`)."""

  def __init__(self, cin, channels, num_convs, k, concat_input, dilation, in_index):
    super().__init__()
    self.in_index, self.concat_input = in_index, concat_input
    self.convs = torch.nn.Sequential(*[
        TorchConvModule(cin if i == 0 else channels, channels, k, dilation)
        for i in range(num_convs)])
    if concat_input:
      self.conv_cat = TorchConvModule(cin + channels, channels, k)
    self.dropout = torch.nn.Dropout2d(0.1)

  def forward(self, feats):
    x = feats[self.in_index]
    y = self.convs(x)
    if self.concat_input:
      y = self.conv_cat(torch.cat([x, y], 1))
    return self.dropout(y)


def features(seed=0, b=2, hw=(9, 11), chans=(8, 16, 24, 32)):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(b, *hw, c)).astype(np.float32) for c in chans]


@pytest.mark.parametrize("cfg", [
    dict(in_index=3, channels=12, num_convs=2, concat_input=True, dilation=1),  # decode head
    dict(in_index=2, channels=6, num_convs=1, concat_input=False, dilation=1),  # auxiliary head
    dict(in_index=-1, channels=10, num_convs=2, concat_input=True, dilation=2),
])
def test_fcn_head_matches_torch(cfg):
  feats = features()
  cin = feats[cfg["in_index"]].shape[-1]
  torch.manual_seed(0)
  ref_head = randomize_bn(TorchFCNHead(cin, cfg["channels"], cfg["num_convs"], 3,
                                       cfg["concat_input"], cfg["dilation"],
                                       cfg["in_index"])).eval()
  sd = {"decode_head." + k: v for k, v in ref_head.state_dict().items()}
  sd["decode_head.conv_seg.weight"] = torch.zeros(5, cfg["channels"], 1, 1)
  reader = convert.StateDictReader(sd, ignore=("conv_seg",))
  params, stats = fcn_convert.convert_fcn_head(reader, "decode_head.", num_convs=cfg["num_convs"],
                                       concat_input=cfg["concat_input"])
  reader.finish()
  head = fcn.FCNHead(in_index=cfg["in_index"], channels=cfg["channels"],
                     num_convs=cfg["num_convs"], concat_input=cfg["concat_input"],
                     dilation=cfg["dilation"])
  variables = {"params": params, "batch_stats": stats}
  got = head.apply(variables, [jnp.asarray(f) for f in feats], train=False)
  with torch.no_grad():
    want = ref_head([torch.from_numpy(f.transpose(0, 3, 1, 2).copy()) for f in feats])
  want = want.numpy().transpose(0, 2, 3, 1)
  assert got.shape == (2, 9, 11, cfg["channels"])
  err = float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())
  assert err < TOL, err


def test_fcn_head_defaults_shapes_and_dropout():
  feats = [jnp.asarray(f) for f in features(chans=(4, 8, 16, 32))]
  head = fcn.FCNHead(channels=16)
  assert (head.in_index, head.num_convs, head.kernel_size, head.concat_input, head.dropout) == (
      3, 2, 3, True, 0.1)
  variables = jax.eval_shape(lambda: head.init(jax.random.key(0), feats, train=False))
  shapes = jax.tree_util.tree_map(lambda a: a.shape, variables["params"])
  assert shapes["convs_0"]["conv"]["kernel"] == (3, 3, 32, 16)
  assert shapes["convs_1"]["conv"]["kernel"] == (3, 3, 16, 16)
  assert shapes["conv_cat"]["conv"]["kernel"] == (3, 3, 48, 16)
  assert "bias" not in shapes["convs_0"]["conv"]
  rng = np.random.default_rng(1)
  variables = jax.tree_util.tree_map(
      lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape) * (0.2 if len(a.shape) == 4 else 1),
                            jnp.float32), variables)

  eval_a = head.apply(variables, feats, train=False)
  eval_b = head.apply(variables, feats, train=False)
  np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))  # no rng, no dropout
  kept, _ = fcn.FCNHead(channels=16, dropout=0.0).apply(variables, feats, train=True,
                                                         mutable=["batch_stats"])
  out, _ = head.apply(variables, feats, train=True, mutable=["batch_stats"],
                      rngs={"dropout": jax.random.key(3)})
  kept, out = np.asarray(kept), np.asarray(out)
  dropped = (out == 0).all(axis=(1, 2))
  assert dropped.any() and not dropped.all()
  mask = ~dropped[:, None, None, :]
  np.testing.assert_allclose(np.where(mask, out, 0), np.where(mask, kept / 0.9, 0),
                             rtol=1e-5, atol=1e-6)

  aux = fcn.FCNHead(in_index=2, channels=8, num_convs=1, concat_input=False)
  out = jax.eval_shape(lambda: aux.init_with_output(jax.random.key(0), feats, train=False))[0]
  assert out.shape == (2, 9, 11, 8)
  with pytest.raises(ValueError, match="in_index"):
    jax.eval_shape(lambda: fcn.FCNHead(in_index=4).init(jax.random.key(0), feats, train=False))
