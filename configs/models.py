"""Model recipes: config.model (and the ProtoSeg embedding width) per model family.

Each `set_<family>(config, ...)` sets backbone, decoder, auxiliary head and
the upsampling convention of a published recipe, and `protoseg.embed_dim`
= the decoder width (the ProtoSeg head sits on the decoder output). The head
(proto | linear) is the run's choice (configs/default.py: proto;
`default.linear_twin`: linear); the ProtoSeg settings (M = 10, gamma 0.999,
Sinkhorn, lambda_ppc / lambda_ppd) are the official ones of
configs/default.py. Schedules are in configs/default.py.
"""

from configs import default

SWIN_ARCHS = {"swin_t": "swin_tiny_patch4_window7_224",
              "swin_b": "swin_base_patch4_window12_384"}
MIT_ARCHS = ("mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5")


def _set_aux_fcn(m):
  """mmseg's auxiliary FCNHead on stage 3: one conv of 256 channels, loss weight 0.4."""
  m.aux_head = True
  m.aux_weight = 0.4
  m.aux_channels = 256


def set_hrnet48_official(config):
  """HRNetV2-W48 as in the official ProtoSeg / openseg code: bilinear
  align_corners branch fusion and loss, D = 720 (= 48 + 96 + 192 + 384)."""
  m = config.model
  m.backbone = "hrnet_w48"
  m.backbone_kwargs = {"fusion": "bilinear_align_corners"}   # official openseg backbone
  m.decoder = "hrnet"
  m.aux_head = False
  m.align_corners = True
  config.protoseg.embed_dim = 720
  return config


def set_r101_fcn(config):
  """mmseg's fcn_r101-d8: ResNetV1c-101 (`resnet101_v1c`, dilations (1, 1, 2,
  4), output stride 8), FCNHead (2 convs of 512, concat_input, dropout 0.1)
  on stage 4, auxiliary FCNHead on stage 3, align_corners False; D = 512."""
  m = config.model
  m.backbone = "resnet101_v1c"
  m.backbone_kwargs = {"output_stride": 8}
  m.decoder = "fcn"
  m.decoder_kwargs = {"in_index": 3, "channels": 512, "num_convs": 2,
                      "concat_input": True, "dropout": 0.1}
  _set_aux_fcn(m)
  m.align_corners = False
  config.protoseg.embed_dim = 512
  return config


def set_swin_upernet(config, size: str):
  """mmseg's upernet_swin: Swin-{T,B} (a key of SWIN_ARCHS; drop_path 0.3),
  UPerHead (512 channels, pool scales 1/2/3/6, dropout 0.1), auxiliary
  FCNHead on stage 3, align_corners False; D = 512."""
  if size not in SWIN_ARCHS:
    raise ValueError(f"Swin size must be one of {sorted(SWIN_ARCHS)}, got {size!r}")
  m = config.model
  m.backbone = SWIN_ARCHS[size]
  m.backbone_kwargs = {"drop_path_rate": 0.3}
  m.decoder = "uper"
  m.decoder_kwargs = {"channels": 512, "pool_scales": (1, 2, 3, 6), "dropout_rate": 0.1,
                      "align_corners": False}
  _set_aux_fcn(m)
  m.align_corners = False
  config.protoseg.embed_dim = 512
  return config


def swin_size(variants: set) -> str:
  """The Swin size a run's variants name (a key of SWIN_ARCHS); swin_b by default."""
  return default.choose_one(variants, SWIN_ARCHS, "swin_b", "of swin_t / swin_b")


def set_mit_segformer(config, arch: str):
  """MiT-Bx (one of MIT_ARCHS; drop_path 0.1) + SegFormer all-MLP head (dropout
  0.1), no auxiliary head, align_corners False. Decoder width (= D): 768 for
  B2-B5 and 256 for B0/B1, as the official SegFormer and the HF checkpoints
  whose heads the converter loads (mmseg's port keeps 256 for every size)."""
  if arch not in MIT_ARCHS:
    raise ValueError(f"MiT arch must be one of {MIT_ARCHS}, got {arch!r}")
  width = 256 if arch in ("mit_b0", "mit_b1") else 768
  m = config.model
  m.backbone = arch
  m.backbone_kwargs = {"drop_path_rate": 0.1}
  m.decoder = "segformer"
  m.decoder_kwargs = {"channels": width, "dropout_rate": 0.1, "align_corners": False}
  m.aux_head = False
  m.align_corners = False
  config.protoseg.embed_dim = width
  return config
