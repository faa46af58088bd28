"""ADE20K, MiT-B2 + SegFormer all-MLP head + ProtoSeg head.

  python main.py --config=configs/ade20k_mit_b2_proto.py --workdir=DIR

mmsegmentation's segformer_mit-b2_512x512_160k_ade20k recipe: MiT-B2
(drop_path 0.1), SegFormer head, dropout 0.1, AdamW lr 6e-5 betas (0.9, 0.999) wd 0.01, lr x10 on the decode head (and
here also on the ProtoSeg head: optim.HEAD_MODULES), no decay on norms and
position blocks (here also on biases), linear warm-up 1500 iterations from
1e-6 * lr, poly power 1.0 to 0, 160k iterations, batch 16, crop 512x512,
align_corners False. ProtoSeg head on the decoder output: D = decoder width.

Decoder width: 768 for B2-B5 and 256 for B0/B1, as in the official SegFormer
(NVlabs) and the HF checkpoints, whose heads the converter loads; mmseg's
port keeps 256 for every size (add
`--config.model.decoder_kwargs.channels=256 --config.protoseg.embed_dim=256`).
Eval as in ade20k_hrnet48_proto.py (whole image, short side 512).
Variants: "mit_b0" .. "mit_b5" (default here b2), "fsdp" (FSDP sharding), "runlocal".
"""

from configs import datasets, default, models

VARIANTS = (*models.MIT_ARCHS, "distinct", "fsdp", "runlocal")


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = default.get_config()
  datasets.set_ade20k(config)
  models.set_mit_segformer(config, default.choose_one(variants, models.MIT_ARCHS, "mit_b2",
                                                      "MiT size"))
  default.set_segformer_adamw(config)
  default.set_160k_iters(config)
  return default.apply_variants(config, variants)
