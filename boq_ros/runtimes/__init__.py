"""Inference runtimes for the descriptor path: which exist, and which `auto` tries first.

A new runtime is one module with a :class:`~boq_ros.runtimes.base.Runtime` subclass, added to
``RUNTIMES`` (and to ``AUTO_ORDER`` where it should be tried by default). ``torch`` (the
Extractor's own eager path) needs no entry: it is always available and always last.
"""
import torch

from boq_ros.runtimes.base import (
    FP32_MAX_ABS,
    REDUCED_MIN_COSINE,
    Fidelity,
    FidelityError,
    Runner,
    Runtime,
    RuntimeUnavailable,
    compare,
    default_cache_dir,
    probe_batch,
)
from boq_ros.runtimes.compiled import Compiled
from boq_ros.runtimes.onnxruntime import OnnxRuntime
from boq_ros.runtimes.openvino import OpenVino
from boq_ros.runtimes.tensorrt import TensorRt
from boq_ros.settings import RUNTIMES as RUNTIME_NAMES

RUNTIMES: dict[str, type[Runtime]] = {
    cls.name: cls for cls in (OpenVino, OnnxRuntime, TensorRt, Compiled)}
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    'cpu': ('openvino', 'onnxruntime', 'torch'),
    'cuda': ('tensorrt', 'torch'),
}
"""`auto` per device type, fastest first as benchmarks/bench_model.py measured them.
``compile`` is explicit only: it compiles for minutes and is not measured against torch's own
CUDA-graph path yet."""

assert set(RUNTIMES) | {'torch', 'auto'} == set(RUNTIME_NAMES)


def candidates(runtime: str, device: torch.device, precision: str
               ) -> tuple[list[str], dict[str, str]]:
    """Return the runtimes to try in order, and why each skipped one cannot run here.

    An explicit runtime that cannot run raises RuntimeUnavailable with the reason.
    """
    if runtime not in RUNTIME_NAMES:
        raise ValueError(f'unknown runtime {runtime!r}; expected one of {list(RUNTIME_NAMES)}')
    names = list(AUTO_ORDER.get(device.type, ('torch',))) if runtime == 'auto' else [runtime]
    usable, skipped = [], {}
    for name in names:
        reason = None if name == 'torch' else RUNTIMES[name].unavailable(device, precision)
        if reason is None:
            usable.append(name)
        elif runtime != 'auto':
            raise RuntimeUnavailable(reason)
        else:
            skipped[name] = reason
    return usable, skipped


__all__ = ['AUTO_ORDER', 'FP32_MAX_ABS', 'REDUCED_MIN_COSINE', 'RUNTIMES', 'RUNTIME_NAMES',
           'Fidelity', 'FidelityError', 'Runner', 'Runtime', 'RuntimeUnavailable', 'candidates',
           'compare', 'default_cache_dir', 'probe_batch']
