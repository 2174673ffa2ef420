"""The BoQ network, ROS-free: build it from the authors' released checkpoints, unchanged.

Only the torch-free presets are imported here; the names that need torch (``load_boq``,
``BoQModel``, ``CheckpointError``) are imported on first use, so that listing preset names
(``boq-ros --help``) does not pay for importing torch and torchvision.
"""
import importlib

from boq_ros.model.presets import PRESETS, BoQConfig, get_preset

__all__ = ['PRESETS', 'BoQConfig', 'BoQModel', 'CheckpointError', 'get_preset', 'load_boq']

_LAZY = {'BoQModel': 'boq_ros.model.boq', 'CheckpointError': 'boq_ros.model.checkpoint',
         'load_boq': 'boq_ros.model.checkpoint'}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
