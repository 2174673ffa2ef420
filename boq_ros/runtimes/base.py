"""What every inference runtime shares: its contract, the fidelity rule, and the export cache.

A runtime turns normalised batches [B, 3, H, W] of one input shape into BoQ descriptors. It is
only trusted after it reproduced the torch fp32 descriptors of a probe batch at that shape
(``check_fidelity``): fp32 runtimes to ``FP32_MAX_ABS``, reduced precisions to
``REDUCED_MIN_COSINE``.
"""
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
import hashlib
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from boq_ros.model import BoQModel

FP32_MAX_ABS = 1e-4
"""Largest |difference| to the torch fp32 descriptors an fp32 runtime may show."""
REDUCED_MIN_COSINE = 0.9999
"""Smallest cosine to the torch fp32 descriptor a fp16/bf16 runtime may show, per image."""
PROBE_BATCH = 2
"""Images in the probe batch of the fidelity check (>= 2: batched paths are exercised)."""


class RuntimeUnavailable(ValueError):
    """The runtime cannot run here (package missing, wrong device, unsupported precision)."""


class FidelityError(ValueError):
    """The runtime's descriptors differ from torch fp32 beyond the allowed tolerance."""


@dataclass(frozen=True)
class Fidelity:
    """How a runtime's probe descriptors compare with torch fp32 at one input shape."""

    shape: tuple[int, int]
    precision: str
    max_abs: float
    min_cosine: float

    @property
    def ok(self) -> bool:
        if self.precision == 'fp32':
            return self.max_abs <= FP32_MAX_ABS
        return self.min_cosine >= REDUCED_MIN_COSINE

    def describe(self) -> str:
        rule = (f'max abs <= {FP32_MAX_ABS:g}' if self.precision == 'fp32'
                else f'cosine >= {REDUCED_MIN_COSINE}')
        return (f'{self.precision}, max abs {self.max_abs:.2e}, min cosine '
                f'{self.min_cosine:.6f} to torch fp32 (needs {rule})')


def compare(reference: np.ndarray, got: np.ndarray, shape: tuple[int, int], precision: str
            ) -> Fidelity:
    """Fidelity of `got` to `reference` (both [B, D] descriptors of the same images)."""
    got = np.asarray(got, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if got.shape != reference.shape or not np.isfinite(got).all():
        return Fidelity(shape, precision, float('inf'), -1.0)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = (got * reference).sum(axis=1) / np.maximum(norms, 1e-30)
    return Fidelity(shape, precision, float(np.abs(got - reference).max()),
                    float(cosine.min()))


def probe_batch(shape: tuple[int, int]) -> torch.Tensor:
    """Make a deterministic normalised batch of `shape`: smooth image-like patterns."""
    h, w = shape
    ys = torch.linspace(0, 1, h).view(1, h, 1)
    xs = torch.linspace(0, 1, w).view(1, 1, w)
    images = []
    for k in range(PROBE_BATCH):
        phase = torch.tensor([0.0, 2.1, 4.2]).view(3, 1, 1) + k
        pattern = torch.sin(6.3 * (k + 1) * xs + phase) * torch.cos(4.1 * (k + 2) * ys - phase)
        images.append(pattern + 0.5 * (xs - ys))
    return torch.stack(images).float()


def weights_key(model: BoQModel) -> str:
    """Identify the weights: the checkpoint file's sha256, else a sha256 of the tensors."""
    if model.checksum:
        return model.checksum
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/boq_ros/runtimes`` (``~/.cache`` when unset)."""
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'boq_ros' / 'runtimes'


Runner = Callable[[torch.Tensor], torch.Tensor]
"""A prepared forward for one input shape: normalised batch -> float32 descriptors [B, D]."""


class Runtime(ABC):
    """One way to run the descriptor path of a BoQ model; `runner` prepares it per shape."""

    name: ClassVar[str]
    device_types: ClassVar[tuple[str, ...]]
    package: ClassVar[str]
    """The module the runtime imports (its absence makes it unavailable)."""
    install_hint: ClassVar[str]

    def __init__(self, model: BoQModel, device: torch.device, precision: str,
                 batch_size: int, cache_dir: Path) -> None:
        self.model = model
        self.device = device
        self.requested_precision = precision
        self.batch_size = batch_size
        self.cache_dir = cache_dir

    @classmethod
    def unavailable(cls, device: torch.device, precision: str) -> str | None:
        """Why this runtime cannot run `precision` on `device` here, or None when it can."""
        if device.type not in cls.device_types:
            return f'{cls.name} runs on {"/".join(cls.device_types)}, not {device.type}'
        try:
            __import__(cls.package)
        except ImportError as e:
            return f'{cls.name} is not installed ({e}); {cls.install_hint}'
        return None

    @property
    @abstractmethod
    def precision(self) -> str:
        """The precision that actually runs (a CPU without bf16 units runs fp32)."""

    @abstractmethod
    def runner(self, shape: tuple[int, int]) -> Runner:
        """Prepare (build or load from the cache) the forward for inputs of `shape`."""
