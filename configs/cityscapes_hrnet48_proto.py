"""Cityscapes, HRNetV2-W48 + ProtoSeg head: the official ProtoSeg recipe.

  python main.py --config=configs/cityscapes_hrnet48_proto.py --workdir=DIR
  python main.py --config=configs/cityscapes_hrnet48_proto.py:runlocal --workdir=DIR

Source: tfzhou/ProtoSeg configs/cityscapes/H_48_D_4_proto.json and
scripts/cityscapes/hrnet/run_h_48_d_4_proto.sh (README: 80.1 mIoU val).
80k iterations, batch 8, SGD lr 0.01 momentum 0.9 wd 5e-4, poly 0.9 (to 0),
crop 1024x512 (w x h), random rescale 0.5-2.0 of 2048x1024, flip,
class-weighted CE (the official `ce_weight`), M=10, D=720, gamma 0.999,
lambda_ppc 0.01, lambda_ppd 0.001, whole-image test at 2048x1024,
bilinear align_corners=True for the branch fusion and the loss.

Input and evaluation as openseg.pytorch (the official code) does them:
  * augmentation="openseg": lib/datasets/tools/cv2_aug_transforms.py with
    the JSON's trans_seq: RandomResize (scale U(0.5, 2.0) of the image,
    aspect U(0.9, 1.1) as w * sqrt(a), h / sqrt(a); bicubic INTER_CUBIC
    image, nearest label) -> RandomCrop 1024x512 (no class-ratio retries)
    -> flip 0.5 -> RandomBrightness (+ randint(-10, 10), every image), then
    normalise and collate's pad to 1024x512 at a random offset (image 0
    after normalisation, label ignore). The bicubic resize here is Keys'
    a = -0.75 (OpenCV's), computed in float and rounded to 0..255.
  * input_order="bgr": openseg reads BGR images (`input_mode: BGR`) and
    normalises channel i with the RGB-listed ImageNet mean[i] / std[i]; the
    ImageNet-pretrained HRNet thus sees BGR input, and so does this run
    (converted official weights for this run: `convert ... --input_order bgr`).
  * eval.resize="bicubic": the README's 80.1 links a training log, i.e.
    openseg's validation during training (segmentor/tools/evaluator/
    standard.py `update_score`): whole 2048x1024 image, 1/4-resolution
    logits resized straight to the label size with cv2 INTER_CUBIC, single
    scale, no flip. openseg's tester (segmentor/tester.py) instead upsamples
    bilinearly with align_corners=True ("bilinear_align_corners"), and its
    ms_test sums raw logits over scales and flips (eval.merge="sum_logits",
    set here; it matters only with several scales or flip).

ProtoSeg head and prototype learning as the official code (configs/default.py
keeps the paper's / clean settings elsewhere):
  * protoseg.proj_norm_axis="width": the official code L2-normalises the
    projection output along image WIDTH (a shadowed import), not channels;
    the official weights and the 80.1 were trained with it. Default
    elsewhere: "channel" (the paper's intent).
  * protoseg.proto_init="timm_trunc_normal": timm's trunc_normal_(std=0.02)
    cuts at +-2 ABSOLUTE, i.e. an untruncated N(0, 0.02^2) in effect, then
    L2-normalised. Default elsewhere: "trunc_normal_2std" (cut at +-2 std).
  * protoseg.pretrain_prototype=True: the official trainer passes
    pretrain_prototype = (iter < warmup_iters): the prototypes (an
    nn.Parameter in the optimizer's head group) are trained by gradient
    through the CE loss, with no clustering and no PPC/PPD (its JSON key
    `pretrain_prototype` is read but unused). Here: the head's optimizer,
    schedule and decay applied to the prototypes during warm-up. The
    official warmup_iters is 0, so this has no effect in this recipe.
  * protoseg.update_prototype=True (official; False is their ablation:
    PPC/PPD against frozen prototypes), assignment="gumbel" (official
    gumbel_softmax(Q, hard=True) draw), use_mask_norm=True, M=10, gamma,
    Sinkhorn 3 iterations, epsilon 0.05: defaults.
  * protoseg.prototype_update="per_device_mean": as the official code,
    each device runs Sinkhorn and the momentum update on its own images,
    then the prototypes are averaged over devices (all_reduce mean). The
    official run had 4 GPUs x 2 images: the same pooling needs 4 devices
    here (on 8 devices each clusters 1 image). Default elsewhere: "global"
    (Sinkhorn sums and update over the global batch, SwAV-style).
  * proto targets of ignored pixels are -1, as in the official code.

Differences from the official training:
  * the official weights were trained with SyncBN over 4 GPUs (2 images
    each); here BN statistics are over the global batch.
  * precision: the official trainer runs fp16 autocast (torch.cuda.amp);
    here float32 (config.model.dtype; "bfloat16" is offered, not fp16 with
    loss scaling).
  * the Gumbel draws of the prototype assignment are JAX's, not PyTorch's
    (same distribution), and each device's draw is fold_in(key, device).
  Not a difference: after warm-up the official prototypes still get an
  optimizer step at the first learning step, but on the replaced
  nn.Parameter the optimizer keeps (prototype_learning swaps in a new one
  with requires_grad=False), so it never reaches the live prototypes; here
  their gradient is stopped.
Variants (comma-separated arg): "fsdp" (FSDP sharding), "runlocal" (a few tiny steps on a laptop).
"""

from configs import datasets, default, models

VARIANTS = ("distinct", "fsdp", "runlocal")


def get_config(arg=None):
  variants = default.parse_variants(arg, VARIANTS)
  config = default.get_config()
  datasets.set_cityscapes(config)
  models.set_hrnet48_official(config)
  default.set_sgd_poly(config, 0.01, weight_decay=5e-4)
  config.loss.class_weights = datasets.CITYSCAPES_CE_WEIGHTS
  # ProtoSeg head as the official code runs it (see the docstring).
  config.protoseg.proj_norm_axis = "width"      # official quirk: L2 along image width
  config.protoseg.proto_init = "timm_trunc_normal"  # timm trunc_normal_(std=0.02), cut at +-2 absolute
  config.protoseg.pretrain_prototype = True     # official trainer (moot: warmup_iters = 0)
  config.protoseg.update_prototype = True       # official (False = their frozen-prototype ablation)
  config.protoseg.prototype_update = "per_device_mean"  # official: per GPU, then mean over GPUs
  config.dataset.augmentation = "openseg"       # official: openseg cv2 transforms
  config.dataset.photometric = False            # openseg: brightness +-10 only
  config.dataset.cat_max_ratio = 1.0            # openseg RandomCrop: no retries
  config.dataset.input_order = "bgr"            # openseg input_mode: BGR
  config.eval.resize = "bicubic"                # openseg validation (the 80.1 log)
  config.eval.merge = "sum_logits"              # openseg ms_test
  default.set_80k_iters(config)
  return default.apply_variants(config, variants)
