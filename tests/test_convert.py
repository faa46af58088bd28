"""Whole official ProtoSeg / HRNet checkpoints -> Segmentor variables; converter CLI; init_from.

The reference is the official HRNet_W48_Proto forward (tfzhou/ProtoSeg
lib/models/nets/hrnet.py) written out in PyTorch on a small timm HRNet whose
fuse step is patched to openseg's bilinear align_corners=True (test_hrnet's
openseg_module_forward), with random weights, BN statistics and norms.
"""

from __future__ import annotations

import functools
import json
import os
import textwrap
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.hrnet import HighResolutionModule

from protoseg_jax import convert, ops, sharding, train
from protoseg_jax.trainer import checkpoints, cli
from protoseg_jax.convert import cli as convert_cli
from protoseg_jax.convert import hrnet as hrnet_convert
from protoseg_jax.models import get_backbone, hrnet
from protoseg_jax.models.segmentor import Segmentor, build_model
from test_hrnet import numpy_variables, openseg_module_forward
from torch_helpers import max_rel_err as rel_err, nhwc, randomize_bn

import tool_runner

# Its module fixtures are built once: every test here runs on one worker.
pytestmark = pytest.mark.xdist_group("convert")

ARCH = "hrnet_w18_small"   # 16-32-64-128 branches: D = 240 instead of W48's 720
C, M = 5, 3
TOL = 1e-4                 # max|ours - ref| / max|ref|, float32


class OfficialProjectionHead(torch.nn.Module):
  """lib/models/modules/contrast.py ProjectionHead: `proj` and `mlp2` name ONE Sequential."""

  def __init__(self, dim_in: int, proj_dim: int):
    super().__init__()
    self.proj = self.mlp2 = torch.nn.Sequential(
        torch.nn.Conv2d(dim_in, dim_in, 1), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(dim_in, proj_dim, 1))

  def forward(self, x):
    return F.normalize(self.proj(x), p=2, dim=-1)  # dim=-1 of NCHW: along WIDTH (official quirk)


class OfficialHRNet(torch.nn.Module):
  """HRNet_W48_Proto (proto=True) or the softmax HRNet_W48 (proto=False), eval forward,
  returning the class logits at feature resolution, NHWC [B, h, w, C]."""

  def __init__(self, arch: str, num_classes: int, num_prototypes: int, proto: bool = True):
    super().__init__()
    self.proto = proto
    self.backbone = timm.create_model(arch, pretrained=False)
    for mod in self.backbone.modules():  # openseg fusion: bilinear, align_corners=True
      if isinstance(mod, HighResolutionModule):
        mod.forward = types.MethodType(openseg_module_forward, mod)
    d = sum(hrnet.branch_channels(arch))
    layers = [torch.nn.Conv2d(d, d, 3, padding=1),
              torch.nn.Sequential(torch.nn.BatchNorm2d(d), torch.nn.ReLU()),  # openseg BNReLU
              torch.nn.Dropout2d(0.1)]
    if proto:
      self.cls_head = torch.nn.Sequential(*layers)
      self.prototypes = torch.nn.Parameter(torch.randn(num_classes, num_prototypes, d))
      self.proj_head = OfficialProjectionHead(d, d)
      self.feat_norm = torch.nn.LayerNorm(d)
      self.mask_norm = torch.nn.LayerNorm(num_classes)
    else:
      self.cls_head = torch.nn.Sequential(*layers, torch.nn.Conv2d(d, num_classes, 1, bias=False))
    self.eval()
    randomize_bn(self)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
      for m in self.modules():
        if isinstance(m, torch.nn.LayerNorm):
          m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
          m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)

  def official_state_dict(self) -> dict:
    """The openseg checkpoint layout: the timm model's ImageNet head is not part of it."""
    return {k: v for k, v in self.state_dict().items()
            if not k.startswith(tuple("backbone." + p for p in hrnet_convert._DROPPED))}

  def forward(self, images):
    b = self.backbone
    x = b.act1(b.bn1(b.conv1(images)))
    x = b.act2(b.bn2(b.conv2(x)))
    x = b.stages(x)
    h, w = x[0].shape[-2:]
    feats = torch.cat([x[0]] + [F.interpolate(f, size=(h, w), mode="bilinear", align_corners=True)
                                for f in x[1:]], 1)
    c = self.cls_head(feats)
    if not self.proto:
      return c.permute(0, 2, 3, 1)
    c = self.proj_head(c)
    _c = c.permute(0, 2, 3, 1).reshape(-1, c.shape[1])          # (b h w) d
    _c = F.normalize(self.feat_norm(_c), p=2, dim=-1)
    protos = F.normalize(self.prototypes, p=2, dim=-1)
    masks = torch.einsum("nd,kmd->nmk", _c, protos)
    out = self.mask_norm(torch.amax(masks, dim=1))
    return out.reshape(images.shape[0], h, w, -1)


def official_input(rgb: np.ndarray) -> torch.Tensor:
  """openseg's network input for RGB uint8-valued images [B, H, W, 3]: cv2's BGR order,
  channel i normalised with the RGB-listed ImageNet statistics (x / 255 - mean[i]) / std[i]."""
  bgr = rgb[..., ::-1] / 255.0
  x = (bgr - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  return torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32).copy())


def our_input(rgb: np.ndarray, mean, std) -> jnp.ndarray:
  """This project's input: RGB, normalised with config.dataset.mean / std (0..255 units)."""
  return jnp.asarray(((rgb - np.asarray(mean)) / np.asarray(std)).astype(np.float32))


OURS_MEAN, OURS_STD = (103.53, 116.28, 123.675), (57.375, 57.12, 58.395)  # input_order="rgb"


@pytest.fixture(scope="module")
def official():
  """(torch model, official state_dict, RGB images [B, H, W, 3] in 0..255, ref logits NHWC)."""
  torch.manual_seed(0)
  model = OfficialHRNet(ARCH, C, M)
  sd = model.official_state_dict()
  rgb = np.random.default_rng(2).uniform(0, 255, (2, 64, 96, 3))
  with torch.no_grad():
    ref = model(official_input(rgb)).numpy()
  return model, sd, rgb, ref


@pytest.fixture(scope="module")
def converted(official):
  return convert.convert_protoseg_checkpoint(official[1], arch=ARCH)


@functools.lru_cache(maxsize=None)
def _logits_fn(model):
  return jax.jit(lambda v, a: model.apply(v, a, train=False).logits)


def run_logits(model, variables, x) -> np.ndarray:
  return np.asarray(_logits_fn(model)(variables, x))


def test_state_dict_has_the_official_layout(official):
  _, sd, _, _ = official
  assert "proj_head.mlp2.0.weight" in sd and "proj_head.proj.2.bias" in sd
  assert sd["proj_head.mlp2.2.weight"].data_ptr() == sd["proj_head.proj.2.weight"].data_ptr()
  assert {"cls_head.0.weight", "cls_head.1.0.running_var", "feat_norm.weight", "mask_norm.bias",
          "prototypes", "backbone.stage4.0.fuse_layers.0.3.0.weight"} <= set(sd)
  assert not any(k.startswith(("backbone.incre_modules.", "backbone.classifier.")) for k in sd)


def test_protoseg_checkpoint_matches_official_forward(official, converted):
  _, sd, rgb, ref = official
  x = our_input(rgb, OURS_MEAN, OURS_STD)
  assert ref.shape == (2, 16, 24, C)
  v = converted
  assert set(v) == {"params", "batch_stats", "prototypes"}
  assert set(v["params"]) == {"backbone", "decoder", "head"}
  assert set(v["params"]["head"]) == {"proj_conv1", "proj_conv2", "feat_norm", "mask_norm"}
  assert v["params"]["head"]["proj_conv2"]["kernel"].shape == (1, 1, 240, 240)
  np.testing.assert_array_equal(v["prototypes"]["head"]["prototypes"], sd["prototypes"].numpy())

  compat = Segmentor(num_classes=C, backbone=ARCH, decoder="hrnet", head="proto",
                     backbone_kwargs=(("fusion", "bilinear_align_corners"),),
                     head_kwargs=(("num_prototypes", M), ("proj_norm_axis", "width"),
                                  ("use_mask_norm", True)))
  ours = run_logits(compat, v, x)
  err = rel_err(ours, ref)
  print(f"ProtoSeg {ARCH} C={C} M={M} logits rel err: {err:.3g}")
  assert err < TOL, err
  assert (ours.argmax(-1) == ref.argmax(-1)).mean() > 0.99

  # The switches matter: channel-wise normalisation (the paper's intent) differs clearly.
  paper = compat.clone(head_kwargs=(("num_prototypes", M), ("proj_norm_axis", "channel")))
  diff = rel_err(run_logits(paper, v, x), ref)
  print(f"  with proj_norm_axis='channel' instead: rel diff {diff:.3g}")
  assert diff > 1e-2, diff

  # input_order="bgr": the stem as stored, fed openseg's own (BGR) input
  bgr = convert.convert_protoseg_checkpoint(sd, arch=ARCH, input_order="bgr", check=False)
  stem, stem_bgr = v["params"]["backbone"]["conv1"]["kernel"], bgr["params"]["backbone"]["conv1"]["kernel"]
  np.testing.assert_array_equal(stem, stem_bgr[:, :, ::-1, :])
  assert not np.array_equal(stem, stem_bgr)
  err = rel_err(run_logits(compat, bgr, jnp.asarray(nhwc(official_input(rgb)))), ref)
  print(f"  input_order='bgr' with openseg's input: rel err {err:.3g}")
  assert err < TOL, err
  # ... which is what the input pipeline makes under the bgr compat overrides
  over = convert.protoseg_compat_overrides(bgr, arch=ARCH, input_order="bgr")
  pipeline_x = ops.normalize_pixels(rgb.astype(np.float32), over["dataset.mean"],
                                    over["dataset.std"], over["dataset.input_order"])
  err = rel_err(run_logits(compat, bgr, jnp.asarray(pipeline_x)), ref)
  print(f"  input_order='bgr' through ops.normalize_pixels: rel err {err:.3g}")
  assert err < TOL, err
  # and the channel order matters: RGB input to the stored weights is clearly off
  diff = rel_err(run_logits(compat, bgr, x), ref)
  print(f"  stored (BGR) weights given RGB input: rel diff {diff:.3g}")
  assert diff > 1e-2, diff


def test_compat_overrides_build_the_matching_model(official, converted, tmp_path, tiny_config):
  _, _, rgb, ref = official
  overrides = convert.protoseg_compat_overrides(converted, arch=ARCH)
  assert overrides == {
      "dataset.input_order": "rgb", "dataset.mean": OURS_MEAN, "dataset.std": OURS_STD,
      "model.backbone": ARCH, "model.backbone_kwargs.fusion": "bilinear_align_corners",
      "model.decoder": "hrnet", "model.head": "proto", "model.aux_head": False,
      "model.align_corners": True, "protoseg.num_prototypes": M, "protoseg.embed_dim": 240,
      "protoseg.proj_norm_axis": "width", "protoseg.use_mask_norm": True}
  assert convert.checkpoint_num_classes(converted) == C
  config = tiny_config(str(tmp_path))  # demo config: hrnet_tiny, channel norm, M=2, D=16
  config.lock()
  convert.apply_overrides(config, overrides)
  model = build_model(config, C)
  x = our_input(rgb, config.dataset.mean, config.dataset.std)
  err = rel_err(run_logits(model, converted, x), ref)
  print(f"build_model(config + protoseg_compat_overrides) logits rel err: {err:.3g}")
  assert err < TOL, err


def test_softmax_baseline_checkpoint(official):
  model = OfficialHRNet(ARCH, C, M, proto=False)
  sd = model.official_state_dict()
  assert "cls_head.3.weight" in sd and "cls_head.3.bias" not in sd
  rgb = official[2]
  with torch.no_grad():
    ref = model(official_input(rgb)).numpy()
  x = our_input(rgb, OURS_MEAN, OURS_STD)
  v = convert.convert_protoseg_checkpoint(sd, arch=ARCH)
  assert "prototypes" not in v
  np.testing.assert_array_equal(v["params"]["head"]["classifier"]["bias"], np.zeros(C))
  overrides = convert.protoseg_compat_overrides(v, arch=ARCH)
  assert overrides["model.head"] == "linear" and "protoseg.proj_norm_axis" not in overrides
  assert overrides["dataset.mean"] == OURS_MEAN
  bgr = convert.protoseg_compat_overrides(v, arch=ARCH, input_order="bgr")
  assert bgr["dataset.input_order"] == "bgr" and overrides["dataset.input_order"] == "rgb"
  assert bgr["dataset.mean"] == (123.675, 116.28, 103.53)   # openseg's list, on BGR channels
  assert bgr["dataset.std"] == (58.395, 57.12, 57.375)
  seg = Segmentor(num_classes=C, backbone=ARCH, decoder="hrnet", head="linear",
                  backbone_kwargs=(("fusion", "bilinear_align_corners"),))
  err = rel_err(run_logits(seg, v, x), ref)
  print(f"softmax HRNet {ARCH} logits rel err: {err:.3g}")
  assert err < TOL, err


def test_module_prefix_and_inplace_abn_layout(official, converted):
  _, sd, _, _ = official
  wrapped = {"module." + k: v for k, v in sd.items()}  # DataParallel / DDP
  got = convert.convert_protoseg_checkpoint(wrapped, arch=ARCH, check=False)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, converted)
  abn = {k.replace("cls_head.1.0.", "cls_head.1."): v for k, v in sd.items()}  # bn_type inplace_abn
  got = convert.convert_protoseg_checkpoint(abn, arch=ARCH, check=False)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, converted)


def test_errors_name_the_keys(official):
  _, sd, _, _ = official
  conv = lambda d, **kw: convert.convert_protoseg_checkpoint(d, arch=kw.get("arch", ARCH), check=False)
  bad = dict(sd, **{"proj_head.extra.weight": torch.zeros(3)})
  with pytest.raises(ValueError, match=r"unknown keys.*proj_head\.extra\.weight"):
    conv(bad)
  bad = {k: v for k, v in sd.items() if k != "mask_norm.bias"}
  with pytest.raises(ValueError, match=r"missing keys.*mask_norm\.bias"):
    conv(bad)
  bad = {k: v for k, v in sd.items() if k not in ("proj_head.proj.0.bias", "proj_head.mlp2.0.bias")}
  with pytest.raises(ValueError, match=r"missing keys.*proj_head\.proj\.0\.bias"):
    conv(bad)
  bad = {k: v for k, v in sd.items() if k != "backbone.stage3.0.fuse_layers.2.0.0.0.weight"}
  with pytest.raises(ValueError, match=r"missing keys.*stage3\.0\.fuse_layers\.2\.0\.0\.0\.weight"):
    conv(bad)
  bad = dict(sd, **{"proj_head.mlp2.2.weight": sd["proj_head.proj.2.weight"] + 1e-3})
  with pytest.raises(ValueError, match=r"proj_head\.mlp2\.2\.weight.*differs.*proj_head\.proj\.2\.weight"):
    conv(bad)
  bad = dict(sd, **{"prototypes": sd["prototypes"][:, :, :100]})
  with pytest.raises(ValueError, match=r"proj_conv|proj_head\.proj\.2\.weight.*expected"):
    conv(bad)
  with pytest.raises(ValueError, match=r"cls_head\.0\.weight.*hrnet_tiny.*arch"):
    conv(sd, arch="hrnet_tiny")
  with pytest.raises(ValueError, match="not an HRNet"):
    conv(sd, arch="resnet50")
  with pytest.raises(ValueError, match="input_order='RGB'"):
    convert.convert_protoseg_checkpoint(sd, arch=ARCH, input_order="RGB")
  with pytest.raises(ValueError, match="not an official ProtoSeg"):
    conv({k: v for k, v in sd.items() if k.startswith("backbone.")})
  # a dict holding only the aliases (no `proj`) converts to the same thing
  only_mlp2 = {k: v for k, v in sd.items() if not k.startswith("proj_head.proj.")}
  a = conv(only_mlp2)["params"]["head"]
  b = conv(sd)["params"]["head"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_cli_backbone_pth_and_safetensors(tmp_path):
  from safetensors.torch import save_file
  torch.manual_seed(0)
  sd = randomize_bn(timm.create_model(ARCH, pretrained=False)).state_dict()
  want = convert.convert_state_dict(ARCH, sd)
  torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "b.pth")
  save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "b.safetensors"))
  for src in ("b.pth", "b.safetensors"):
    dst = str(tmp_path / (src + ".out"))
    convert_cli.convert_file(ARCH, str(tmp_path / src), dst)
    got = checkpoints.load_variables(dst)
    assert jax.tree.structure(got) == jax.tree.structure(want), src
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
    assert not os.path.exists(os.path.join(dst, "config_overrides.json"))
  with pytest.raises(cli.ArgumentError, match="--arch=hrnet_w99: unknown arch; backbones: .*hrnet_w48"):
    convert_cli.convert_file("hrnet_w99", str(tmp_path / "b.pth"), dst)
  with pytest.raises(cli.ArgumentError, match="--src=.*nope.pth: no such file"):
    convert_cli.convert_file(ARCH, str(tmp_path / "nope.pth"), dst)
  with pytest.raises(cli.ArgumentError, match="--dst=.*b.pth: a file, not a directory"):
    convert_cli.convert_file(ARCH, str(tmp_path / "b.pth"), str(tmp_path / "b.pth"))
  with pytest.raises(cli.UserError, match=r"b.pth does not fit --arch=resnet50: .*missing keys "
                     r"\(\d+\): \[.*\] \(\+\d+ more\); unknown keys"):
    convert_cli.convert_file("resnet50", str(tmp_path / "b.pth"), dst)
  (tmp_path / "notes.pth").write_text("not a checkpoint")
  with pytest.raises(cli.UserError, match="notes.pth: not a PyTorch checkpoint"):
    convert_cli.convert_file(ARCH, str(tmp_path / "notes.pth"), dst)


def test_cli_full_official_checkpoint(official, converted, tmp_path, capsys):
  _, sd, _, _ = official
  src, dst = str(tmp_path / "hrnet_proto_latest.pth"), str(tmp_path / "out")
  torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "iters": 80000}, src)
  convert_cli.convert_file(f"protoseg_{ARCH}", src, dst)
  got = checkpoints.load_variables(dst)
  assert jax.tree.structure(got) == jax.tree.structure(converted)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, converted)
  with open(os.path.join(dst, "config_overrides.json")) as f:
    meta = json.load(f)
  assert meta == {"num_classes": C, "input_order": "rgb", "overrides": json.loads(json.dumps(
      convert.protoseg_compat_overrides(converted, arch=ARCH)))}
  assert meta["overrides"]["dataset.mean"] == list(OURS_MEAN)
  out = capsys.readouterr().out
  assert "config.protoseg.proj_norm_axis = 'width'" in out
  assert "config.model.backbone_kwargs.fusion = 'bilinear_align_corners'" in out
  # only the backbone, as stored (the stem keeps openseg's BGR input order)
  convert_cli.convert_file(ARCH, src, dst + "_bb", prefix="backbone.")
  got = checkpoints.load_variables(dst + "_bb")
  stored = convert.convert_protoseg_checkpoint(sd, arch=ARCH, input_order="bgr", check=False)
  for col in ("params", "batch_stats"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, got[col], stored[col]["backbone"])
  with pytest.raises(cli.ArgumentError, match="--prefix is for backbones"):
    convert_cli.convert_file(f"protoseg_{ARCH}", src, dst, prefix="backbone.")
  with pytest.raises(cli.ArgumentError, match="--input_order is for protoseg_"):
    convert_cli.convert_file(ARCH, src, dst, input_order="bgr")
  convert_cli.convert_file(f"protoseg_{ARCH}", src, dst + "_bgr", input_order="bgr")
  got = checkpoints.load_variables(dst + "_bgr")
  np.testing.assert_array_equal(got["params"]["backbone"]["conv1"]["kernel"],
                                converted["params"]["backbone"]["conv1"]["kernel"][:, :, ::-1, :])


def _random_backbone_variables(arch: str, seed: int) -> dict:
  return numpy_variables(get_backbone(arch), jnp.zeros((1, 64, 64, 3)), seed=seed)


def test_init_from_loads_backbone_through_create_train_state(tmp_path, tiny_config):
  config = tiny_config(str(tmp_path / "tfds"))  # hrnet_tiny; the dataset is never read
  model = build_model(config, num_classes=4)
  wanted = _random_backbone_variables("hrnet_tiny", seed=3)
  checkpoints.save_variables(wanted, str(tmp_path / "bb"))
  config.init_from = str(tmp_path / "bb")
  mesh = sharding.create_mesh(jax.devices()[:1])
  with pytest.raises(ValueError, match="load_weights"):   # the library loads no files itself
    train.create_train_state(config, model, mesh, (1, 64, 64, 3))
  state, _, _ = train.create_train_state(
      config, model, mesh, (1, 64, 64, 3), load_weights=lambda v: checkpoints.init_from(config, v))
  for col in ("params", "batch_stats"):
    got = jax.device_get(getattr(state, col)["backbone"])
    assert jax.tree.structure(got) == jax.tree.structure(wanted[col])
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, wanted[col])
  # the rest is the model's own initialisation (the head still has its prototypes)
  assert set(state.params) == {"backbone", "decoder", "head"}
  assert state.prototypes["head"]["prototypes"].shape == (4, 2, 16)


def _abstract_variables(model) -> dict:
  return flax.core.unfreeze(jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)},
      jnp.zeros((1, 64, 64, 3)), train=False)))


def test_init_from_wrong_arch_and_full_model_dir(converted, tmp_path, tiny_config):
  config = tiny_config(str(tmp_path / "tfds"))  # hrnet_tiny
  abstract = _abstract_variables(build_model(config, num_classes=4))
  checkpoints.save_variables(_random_backbone_variables(ARCH, seed=1), str(tmp_path / "w18s"))
  config.init_from = str(tmp_path / "w18s")
  with pytest.raises(ValueError, match=r"vs backbone 'hrnet_tiny' does not fit"):
    checkpoints.init_from(config, abstract)
  tiny = _random_backbone_variables("hrnet_tiny", seed=2)
  tiny["params"]["conv1"]["kernel"] = jnp.zeros((3, 3, 3, 8))  # same tree, one wrong width
  checkpoints.save_variables(tiny, str(tmp_path / "narrow"))
  config.init_from = str(tmp_path / "narrow")
  with pytest.raises(ValueError, match=r"conv1.*kernel.*\(3, 3, 3, 8\), \(3, 3, 3, 16\)"):
    checkpoints.init_from(config, abstract)
  config.init_from = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    checkpoints.init_from(config, abstract)

  # A whole converted official checkpoint also initialises the backbone (only the backbone:
  # the decoder, head and prototypes keep the model's own initialisation).
  checkpoints.save_variables(converted, str(tmp_path / "full"))
  config = convert.apply_overrides(tiny_config(str(tmp_path / "tfds")),
                                   convert.protoseg_compat_overrides(converted, arch=ARCH))
  config.init_from = str(tmp_path / "full")
  abstract = _abstract_variables(build_model(config, num_classes=C))
  out = checkpoints.init_from(config, abstract)
  for col in ("params", "batch_stats"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(out[col]["backbone"]),
                           converted[col]["backbone"])
  assert isinstance(out["params"]["head"]["proj_conv1"]["kernel"], jax.ShapeDtypeStruct)

  # init_from_scope='all': the whole converted model (e.g. to evaluate official weights).
  config.init_from_scope = "all"
  out = checkpoints.init_from(config, abstract)
  for col in ("params", "batch_stats", "prototypes"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(out[col]), converted[col])
  config.init_from = str(tmp_path / "w18s")
  with pytest.raises(ValueError, match="init_from_scope='all' needs a whole model"):
    checkpoints.init_from(config, abstract)


def _convert_subprocess(args, tmp_path, block=()):
  """`python -m protoseg_jax.convert ARGS` (tests/tool_runner.py: a forked child of an
  interpreter that never imported torch) where importing `block` fails."""
  code = textwrap.dedent(f"""
      import runpy, sys
      class _Blocker:
        def find_spec(self, name, path=None, target=None):
          if name.split(".")[0] in {tuple(block)!r}:
            raise ImportError(f"{{name}} is blocked in this test")
      sys.meta_path.insert(0, _Blocker())
      sys.argv = ["python -m protoseg_jax.convert", *{list(args)!r}]
      runpy.run_module("protoseg_jax.convert", run_name="__main__", alter_sys=True)
      """)
  return tool_runner.run(["-c", code])


def test_cli_converts_a_pth_without_torch(tmp_path):
  """The README's conversion after `pip install -r requirements.txt` (no torch): the
  .pth is read by convert.torch_file, and the result is the one torch's tensors give."""
  torch.manual_seed(0)
  sd = randomize_bn(timm.create_model(ARCH, pretrained=False)).state_dict()
  src, dst = tmp_path / "imagenet.pth", tmp_path / "out"
  torch.save({"model": sd}, src)
  done = _convert_subprocess(["--arch", ARCH, "--src", str(src), "--dst", str(dst)], tmp_path,
                             block=("torch", "timm", "torchvision"))
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"converted {src} ({ARCH})" in done.stdout
  jax.tree_util.tree_map(np.testing.assert_array_equal, checkpoints.load_variables(str(dst)),
                         convert.convert_state_dict(ARCH, sd))


class _Shell:
  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


@pytest.mark.parametrize("case", ["malicious", "wrong_layout", "missing"])
def test_cli_user_errors_are_one_line(tmp_path, case):
  src, marker = tmp_path / "ckpt.pth", tmp_path / "ran"
  args = ["--arch", ARCH, "--src", str(src), "--dst", str(tmp_path / "out")]
  if case == "malicious":
    torch.save({"w": torch.ones(2), "x": _Shell(f"touch {marker}")}, src)
    code, want = 1, [f"{src}: refused: its pickle names posix.system"]
  elif case == "wrong_layout":
    torch.save({"fc.weight": torch.ones(2, 2)}, src)
    code, want = 1, [f"{src} does not fit --arch={ARCH}: state_dict does not match the model: "
                     "missing keys ("]
  else:
    args = args[:4]                        # no --dst, and --src does not exist
    code, want = 2, ["flag error: --dst is required"]
  done = _convert_subprocess(args, tmp_path)
  assert done.returncode == code, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  lines = [line for line in done.stderr.splitlines() if "error:" in line]
  assert len(lines) == len(want), lines
  for line, w in zip(lines, want):
    assert line.startswith("python -m protoseg_jax.convert: ") and w in line, line
  assert not marker.exists() and not (tmp_path / "out").exists()
