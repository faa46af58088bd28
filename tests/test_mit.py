"""MiT (SegFormer encoder): parity with HF transformers SegformerModel (random
weights), the three state_dict layouts, key errors."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from protoseg_jax.convert import mit as mit_convert
from protoseg_jax.models import get_backbone, mit
from torch_helpers import max_rel_err

# Its module fixtures are built once: every test here runs on one worker.
pytestmark = pytest.mark.xdist_group("mit")

ARCH = "mit_b0"


@pytest.fixture(scope="module")
def hf_model():
  from transformers import SegformerConfig, SegformerModel
  torch.manual_seed(0)
  cfg = SegformerConfig(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8],
                        sr_ratios=[8, 4, 2, 1], drop_path_rate=0.1)
  m = SegformerModel(cfg).eval()
  with torch.no_grad():  # non-trivial LayerNorm affine params and biases
    for name, p in m.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  return m


def _hf_features(m, x):
  with torch.no_grad():
    out = m(pixel_values=x, output_hidden_states=True)
  return [h.permute(0, 2, 3, 1).numpy() for h in out.hidden_states]


@pytest.mark.parametrize("hw", [(97, 130)])
def test_parity_with_hf(hf_model, hw):
  x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(1))
  ref = _hf_features(hf_model, x)
  assert len(ref) == 4
  variables = mit_convert.convert_state_dict(ARCH, hf_model.state_dict())
  xj = jnp.asarray(x.permute(0, 2, 3, 1).numpy())
  errs = {}
  for eps in (1e-5, 1e-6):  # 1e-5 = HF exactly; 1e-6 = NVlabs default
    model = get_backbone(ARCH, norm_eps=eps)
    feats = jax.jit(lambda v, im: model.apply(v, im, train=False))(variables, xj)
    for a, b in zip(feats, ref):
      assert a.shape == b.shape, (a.shape, b.shape)
    errs[eps] = [max_rel_err(a, b) for a, b in zip(feats, ref)]
  print(f"mit_b0 vs HF {hw} max rel err per stage (norm_eps=1e-5):", errs[1e-5])
  print(f"mit_b0 vs HF {hw} max rel err per stage (norm_eps=1e-6):", errs[1e-6])
  assert max(errs[1e-5]) < 1e-4, errs
  assert max(errs[1e-6]) < 1e-3, errs


def _to_hf_hub(sd):
  """transformers 5 names -> HF hub (transformers 4) names."""
  out = {}
  for k, v in sd.items():
    k = re.sub(r"^stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1.", k)
    k = re.sub(r"^stages\.(\d+)\.blocks\.", r"encoder.block.\1.", k)
    k = re.sub(r"^stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1.", k)
    for a, b in (("attention.q_proj.", "attention.self.query."), ("attention.k_proj.", "attention.self.key."),
                 ("attention.v_proj.", "attention.self.value."),
                 ("attention.sequence_reduction.sequence_reduction.", "attention.self.sr."),
                 ("attention.sequence_reduction.layer_norm.", "attention.self.layer_norm."),
                 ("attention.o_proj.", "attention.output.dense."), ("mlp.fc1.", "mlp.dense1."),
                 ("mlp.fc2.", "mlp.dense2."), ("layernorm_before.", "layer_norm_1."),
                 ("layernorm_after.", "layer_norm_2.")):
      k = k.replace(a, b)
    out["segformer." + k] = v
  return out


def _to_nvlabs(sd):
  """transformers 5 names -> NVlabs MiT names (key/value fused into kv)."""
  out = {}
  for k, v in sd.items():
    m = re.match(r"^stages\.(\d+)\.(.*)$", k)
    i, rest = int(m.group(1)) + 1, m.group(2)
    if rest.startswith("patch_embeddings."):
      rest = rest.replace("layer_norm.", "norm.")
      out[f"patch_embed{i}." + rest[len("patch_embeddings."):]] = v
    elif rest.startswith("layer_norm."):
      out[f"norm{i}." + rest[len("layer_norm."):]] = v
    else:
      mb = re.match(r"^blocks\.(\d+)\.(.*)$", rest)
      j, r = mb.group(1), mb.group(2)
      if r.startswith("attention.v_proj."):
        continue
      if r.startswith("attention.k_proj."):
        n = r[len("attention.k_proj."):]
        out[f"block{i}.{j}.attn.kv.{n}"] = torch.cat([v, sd[k.replace("k_proj", "v_proj")]], 0)
        continue
      for a, b in (("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."),
                   ("attention.q_proj.", "attn.q."), ("attention.o_proj.", "attn.proj."),
                   ("attention.sequence_reduction.sequence_reduction.", "attn.sr."),
                   ("attention.sequence_reduction.layer_norm.", "attn.norm.")):
        r = r.replace(a, b)
      out[f"block{i}.{j}.{r}"] = v
  out["head.weight"], out["head.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
  return out


def test_layouts_convert_identically(hf_model):
  sd = dict(hf_model.state_dict())
  v5 = mit_convert.convert_state_dict(ARCH, sd)
  hub = _to_hf_hub(sd)
  assert "segformer.encoder.block.0.1.attention.self.sr.weight" in hub
  assert "segformer.encoder.layer_norm.3.weight" in hub
  hub["decode_head.linear_c.0.proj.weight"] = torch.zeros(256, 32)
  jax.tree_util.tree_map(np.testing.assert_array_equal, v5, mit_convert.convert_state_dict(ARCH, hub))
  nv = _to_nvlabs(sd)
  assert "block1.0.attn.kv.weight" in nv and nv["block1.0.attn.kv.weight"].shape == (64, 32)
  jax.tree_util.tree_map(np.testing.assert_array_equal, v5, mit_convert.convert_state_dict(ARCH, nv))
  jax.tree_util.tree_map(np.testing.assert_array_equal, v5,
                         mit_convert.convert_state_dict(ARCH, {"backbone." + k: v for k, v in nv.items()}))


def test_unknown_and_missing_keys_error(hf_model):
  sd = dict(hf_model.state_dict())
  sd["stages.1.blocks.0.attention.extra"] = torch.zeros(2)
  with pytest.raises(ValueError, match=r"stages\.1\.blocks\.0\.attention\.extra"):
    mit_convert.convert_state_dict(ARCH, sd)
  sd = dict(hf_model.state_dict())
  del sd["stages.2.blocks.1.mlp.dwconv.dwconv.weight"]
  with pytest.raises(ValueError, match=r"stages\.2\.blocks\.1\.mlp\.dwconv\.dwconv\.weight"):
    mit_convert.convert_state_dict(ARCH, sd)
  with pytest.raises(ValueError, match="missing keys"):  # b1 has the same depths but wider stages
    mit_convert.convert_state_dict("mit_b2", hf_model.state_dict())
  with pytest.raises(ValueError, match="wrong shapes"):
    mit_convert.convert_state_dict("mit_b1", hf_model.state_dict())


def test_shapes_all_archs():
  for arch in mit.ARCHS:
    model = get_backbone(arch)
    out = jax.eval_shape(lambda: model.init_with_output(
        jax.random.PRNGKey(0), jnp.zeros((2, 97, 130, 3)), train=False)[0])
    c = mit._CFGS[arch]["embed_dims"]
    assert [o.shape for o in out] == [(2, 25, 33, c[0]), (2, 13, 17, c[1]), (2, 7, 9, c[2]),
                                      (2, 4, 5, c[3])], arch
