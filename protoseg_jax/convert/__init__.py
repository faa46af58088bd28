"""PyTorch state_dict -> Flax variables (`python -m protoseg_jax.convert`, docs/convert.md).

  convert_state_dict(arch, state_dict, **kw)        a backbone (dispatch by arch to its family)
  convert_protoseg_checkpoint(state_dict, arch=...) a whole official ProtoSeg / HRNet segmentor
  protoseg_compat_overrides, checkpoint_num_classes, apply_overrides   ... and its config
  load_torch_file(path)                             a state_dict from .pth/.bin (`torch_file`: no
                                                    torch, no pickled code run) / .safetensors

The command line (`python -m protoseg_jax.convert`, `cli.py`) writes the
variables with the trainer's orbax I/O (`protoseg_jax.trainer.checkpoints.
save_variables` / `load_variables`); the converters themselves need only
NumPy and the models.

Modules: `torch_file` (torch.save files as NumPy), `state_dict` (reader,
layouts, layer readers, the prefix handling, the shape check), `layers` (key
maps of models.layers), one per model family with its key map (`resnet`,
`hrnet`, `swin`, `mit`, `fcn`, `uper`, `segformer`), `dispatch`, `official`
(whole official checkpoints) and `cli`. The converters
import the models (to read their configuration and check shapes); the models
never import the converters.
"""

from protoseg_jax.convert.dispatch import convert_state_dict
from protoseg_jax.convert.official import (FULL_MODEL_PREFIX, INPUT_ORDERS, OFFICIAL_MEAN_BGR_INPUT,
                                           OFFICIAL_STD_BGR_INPUT, apply_overrides,
                                           checkpoint_num_classes, convert_protoseg_checkpoint,
                                           protoseg_compat_overrides)
from protoseg_jax.convert.state_dict import StateDictReader, load_torch_file

__all__ = [
    "FULL_MODEL_PREFIX", "INPUT_ORDERS", "OFFICIAL_MEAN_BGR_INPUT", "OFFICIAL_STD_BGR_INPUT",
    "StateDictReader", "apply_overrides", "checkpoint_num_classes", "convert_protoseg_checkpoint",
    "convert_state_dict", "load_torch_file", "protoseg_compat_overrides",
]
