"""HRNet (`protoseg_jax.models.hrnet`) from timm / official HRNetV2 / openseg state_dicts,
and the official segmentation head `HRNetHead` (`convert_hrnet_head`)."""

from __future__ import annotations

from typing import Any, Mapping

from protoseg_jax.convert.layers import conv_bn, convert_block
from protoseg_jax.convert.state_dict import (StateDictReader, VariableBuilder, finalize,
                                             sub_state_dict)
from protoseg_jax.models import hrnet

# Classification-only parts of timm / official ImageNet HRNet checkpoints.
_DROPPED = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")


def convert_state_dict(arch: str, state_dict: Mapping[str, Any], *, prefix: str = "",
                       check: bool = True) -> dict:
  """Flax variables for HRNet `arch` from a PyTorch state_dict.

  Accepts timm `hrnet_w*`, the official HRNetV2 ImageNet checkpoints and the
  openseg/ProtoSeg `HighResolutionNet` backbone (identical key layout). Keys of
  the ImageNet classification head (incre_modules, downsamp_modules,
  final_layer, classifier) are dropped; any other unused key or a missing one
  raises, listing the keys. `prefix="backbone."` reads the backbone out of an
  openseg/ProtoSeg full-model checkpoint (keys outside the prefix are ignored).
  The result does not depend on `fusion`.
  """
  if arch not in hrnet.CONFIGS:
    raise ValueError(f"unknown HRNet arch {arch!r}; known: {sorted(hrnet.CONFIGS)}")
  cfg = hrnet.CONFIGS[arch]
  sd, prefix = sub_state_dict(state_dict, prefix)
  r = StateDictReader(sd, prefix=prefix)
  r.drop(prefixes=_DROPPED)
  vb = VariableBuilder(r)
  for n in ("1", "2"):
    vb.conv((f"conv{n}",), f"conv{n}")
    vb.bn((f"bn{n}",), f"bn{n}")

  def seq_conv_bn(path, torch_prefix):  # torch Sequential(conv, BN[, ReLU])
    conv_bn(vb, path, f"{torch_prefix}.0", f"{torch_prefix}.1")

  s1 = cfg.stages[0]
  cin = cfg.stem_out
  for b in range(s1.num_blocks[0]):
    convert_block(vb, (f"layer1_{b}",), f"layer1.{b}.", bottleneck=s1.block == "bottleneck",
                  downsample="conv" if (b == 0 and cin != s1.out_channels[0]) else None)
    cin = s1.out_channels[0]
  pre = list(s1.out_channels)
  for s, scfg in enumerate(cfg.stages[1:], start=2):
    cur = scfg.out_channels
    t = s - 1
    for i, c in enumerate(cur):
      if i < len(pre):
        if c != pre[i]:
          seq_conv_bn((f"transition{t}_{i}",), f"transition{t}.{i}")
      else:
        for k in range(i + 1 - len(pre)):
          seq_conv_bn((f"transition{t}_{i}_{k}",), f"transition{t}.{i}.{k}")
    in_ch = tuple(cur)
    for m in range(scfg.num_modules):
      mp, tp = (f"stage{s}_{m}",), f"stage{s}.{m}."
      for i in range(len(cur)):
        for b in range(scfg.num_blocks[i]):
          cin = in_ch[i] if b == 0 else cur[i]
          convert_block(vb, mp + (f"branch{i}_{b}",), f"{tp}branches.{i}.{b}.",
                        bottleneck=scfg.block == "bottleneck",
                        downsample="conv" if (b == 0 and cin != cur[i]) else None)
      n = len(cur)
      if n > 1:
        for i in range(n):
          for j in range(n):
            if j > i:
              seq_conv_bn(mp + (f"fuse{i}_{j}",), f"{tp}fuse_layers.{i}.{j}")
            elif j < i:
              for k in range(i - j):
                seq_conv_bn(mp + (f"fuse{i}_{j}_{k}",), f"{tp}fuse_layers.{i}.{j}.{k}")
      in_ch = cur
    pre = list(cur)
  return finalize(r, vb.variables(), hrnet.ARCHS[arch]() if check else None)


def convert_hrnet_head(reader: StateDictReader, torch_prefix: str) -> tuple[dict, dict]:
  """(params, batch_stats) of `hrnet.HRNetHead` from official keys `{torch_prefix}0.*` (conv,
  bias) and `{torch_prefix}1.0.*` (BN inside openseg's BNReLU Sequential) or `{torch_prefix}1.*`
  (inplace-ABN builds). E.g. torch_prefix="cls_head."; the classifier `cls_head.3` of the
  softmax baseline is not read (the caller maps or drops it).
  """
  vb = VariableBuilder(reader)
  vb.conv(("conv",), f"{torch_prefix}0", bias=True)
  bn = f"{torch_prefix}1.0" if reader.has(f"{torch_prefix}1.0.weight") else f"{torch_prefix}1"
  vb.bn(("bn",), bn)
  return vb.params, vb.stats
