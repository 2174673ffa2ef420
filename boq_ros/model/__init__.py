"""The BoQ network, ROS-free: build it from the authors' released checkpoints, unchanged."""
from collections.abc import Mapping
import os

import torch

from boq_ros.model.boq import BoQModel
from boq_ros.model.checkpoint import (
    CheckpointError,
    default_preset,
    detect_backbone,
    file_sha256,
    read_state_dict,
    resolve_checkpoint,
    validate_state_dict,
)
from boq_ros.model.presets import PRESETS, BoQConfig, get_preset

__all__ = ['PRESETS', 'BoQConfig', 'BoQModel', 'CheckpointError', 'get_preset', 'load_boq']


def load_boq(checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
             backbone: str | None = None, *, preset: str | None = None) -> BoQModel:
    """Build the model a checkpoint was released for and load it strictly, in eval mode.

    `checkpoint` is a file path, a preset name whose file is in the torch hub cache, or an
    in-memory state dict. The preset follows from `preset`, else `backbone`, else the keys.
    """
    if isinstance(checkpoint, Mapping):
        state, checksum = dict(checkpoint), ''
    else:
        path = resolve_checkpoint(checkpoint)
        state, checksum = read_state_dict(path), file_sha256(path)
    if preset is None:
        preset = default_preset(backbone or detect_backbone(state))
    config = get_preset(preset)
    if backbone is not None and backbone != config.backbone:
        raise ValueError(f'preset {preset} uses backbone {config.backbone}, not {backbone}')
    validate_state_dict(state, config)
    with torch.device('meta'):
        model = BoQModel(config, checksum)
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    return model
