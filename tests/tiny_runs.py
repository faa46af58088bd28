"""The tests' tiny runs, one config file for the tests in this process
(`conftest.make_tiny_config`) and for main.py in a subprocess:

  --config=tests/tiny_runs.py            configs/demo.py:runlocal: hrnet_tiny + the
                                         ProtoSeg head, 2 steps of batch 8, 64x64 crops
                                         of the demo's "tiny" scenes, M=2, D=16
  --config=tests/tiny_runs.py:plumbing   the same run with the plumbing model below

The plumbing model is a ResNet-D of one bottleneck per stage, 8 channels wide,
with an FCN decoder (output stride 8) and the same ProtoSeg head: every piece
of the train step (SyncBN, dropout, the head's clustering and momentum update,
PPC/PPD, the optimizer) at a fraction of hrnet_tiny's compile time (about 7 s
instead of 25 s for the 8-device train step at XLA -O0 on this CI's kind of
machine). Tests of the trainer's plumbing (resume, skipped steps, sharding,
FSDP, chunking, preemption, several processes) train it; tests of the demo
model itself (the end-to-end run, bf16, export) keep hrnet_tiny. Its channel
counts are multiples of 8 so that FSDP over 8 devices shards most of it.
"""

from configs import demo
from protoseg_jax.convert import apply_overrides

PLUMBING_MODEL = {
    "model.backbone": "resnet50d", "model.backbone_kwargs.layers": (1, 1, 1, 1),
    "model.backbone_kwargs.base_width": 8, "model.backbone_kwargs.stem_width": 8,
    "model.backbone_kwargs.output_stride": 8, "model.decoder": "fcn",
    "model.decoder_kwargs.in_index": 3, "model.decoder_kwargs.channels": 16,
    "model.decoder_kwargs.num_convs": 1, "model.decoder_kwargs.concat_input": True,
    "model.decoder_kwargs.dropout": 0.1, "model.align_corners": False,
}
VARIANTS = ("plumbing",)


def get_config(arg=None):
  if arg not in (None, "", *VARIANTS):
    raise ValueError(f"tests/tiny_runs.py:{arg}: the variants are {', '.join(VARIANTS)}")
  config = demo.get_config("runlocal")
  if arg == "plumbing":
    apply_overrides(config, PLUMBING_MODEL)
  return config
