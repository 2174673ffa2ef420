"""Lists of camera images -> BoQ descriptors, batched on the best available device.

The fast path (``optimize=True``) skips the attention weights when only descriptors are wanted
and folds the ResNet's BatchNorm into its convolutions; on CUDA it also stores the matmul and
convolution weights in the autocast dtype (fp16/bf16, with channels-last convolutions) and
replays CUDA graphs, one per padded batch shape. Each keeps fp32 results within 1e-4 of the
plain model (tested on CPU; benchmarks/gpu_suite.py checks the GPU).

Other runtimes (``runtime``: OpenVINO and ONNX Runtime on the CPU, TensorRT and torch.compile
on CUDA, or ``auto``; boq_ros.runtimes) take over the descriptor path once they reproduced the
torch fp32 descriptors of a probe batch at the input shape; attention maps always come from
torch.
"""
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
import copy
import logging
import os
from pathlib import Path
import threading
import warnings

import numpy as np
import torch

from boq_ros import runtimes, settings
from boq_ros.model import BoQModel, load_boq
from boq_ros.model.resnet import fold_batchnorm
from boq_ros.preprocess import PreprocessConfig, check_image, preprocess_batch
from boq_ros.settings import ModelSettings as ModelSettings  # re-exported

PRECISIONS: dict[str, torch.dtype | None] = dict(zip(
    settings.PRECISIONS, (None, torch.float16, torch.bfloat16), strict=True))
"""The autocast dtype of each precision setting (fp32: none)."""

_log = logging.getLogger(__name__)


class DescriptorError(ValueError):
    """The model produced non-finite descriptors (e.g. fp16 overflow); nothing is returned."""


def resolve_device(device: str | torch.device) -> torch.device:
    """Map 'auto' to CUDA when present, else CPU; check that an explicit CUDA device exists."""
    if str(device) == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f'invalid device {device!r}: {e}') from None
    if resolved.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'device {device!r} requested but CUDA is not available')
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f'device {device!r} requested but only '
                             f'{torch.cuda.device_count()} CUDA device(s) exist')
    return resolved


def optimized_copy(model: BoQModel, device: torch.device, precision: str
                   ) -> tuple[BoQModel, bool]:
    """Return a faster equivalent of `model` and whether it wants channels-last input.

    Folding BatchNorm pays everywhere. On CUDA with fp16/bf16, weights stored in that dtype
    spare autocast a cast kernel per layer and call (same arithmetic), and channels-last feeds
    the tensor cores; fp32 convolutions are faster in NCHW there and on the CPU.
    """
    dtype = PRECISIONS[precision] if device.type == 'cuda' else None
    resnet = model.config.backbone == 'resnet50'
    if not resnet and dtype is None:
        return model, False  # nothing to change: no copy
    fast = copy.deepcopy(model)
    if resnet:
        fast.backbone = fold_batchnorm(fast.backbone)
    if dtype is None:
        return fast, False
    for module in fast.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            module.to(dtype)
        elif isinstance(module, torch.nn.MultiheadAttention):
            module.in_proj_weight.data = module.in_proj_weight.data.to(dtype)
            module.in_proj_bias.data = module.in_proj_bias.data.to(dtype)
    if resnet:
        fast = fast.to(memory_format=torch.channels_last)
    return fast, resnet


class _GraphCache:
    """CUDA graphs of a forward, one per (padded batch, input shape): no per-launch overhead.

    Batches are padded to the next power of two (at most `max_batch`) so that a stream of
    varying batch sizes needs only a few graphs; samples are independent, so padding rows
    never change the others' results.
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], max_batch: int,
                 capacity: int = 8) -> None:
        self._forward = forward
        self._max_batch = max_batch
        self._capacity = capacity
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def _capture(self, static_in: torch.Tensor) -> tuple:
        device = static_in.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm up (cuDNN autotuning, allocations) off-graph
            for _ in range(2):
                self._forward(static_in)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode='thread_local'):
            static_out = self._forward(static_in)
        return static_in, graph, static_out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        bucket = min(1 << (b - 1).bit_length(), max(b, self._max_batch))
        key = (bucket, *x.shape[1:], x.dtype, x.is_contiguous())
        with self._lock:
            if key not in self._graphs:
                static_in = torch.zeros((bucket, *x.shape[1:]), dtype=x.dtype, device=x.device)
                if not x.is_contiguous():
                    static_in = static_in.contiguous(memory_format=torch.channels_last)
                self._graphs[key] = self._capture(static_in)
                if len(self._graphs) > self._capacity:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            static_in, graph, static_out = self._graphs[key]
            static_in[:b].copy_(x)
            graph.replay()
            return static_out[:b].clone()


class Extractor:
    """Descriptor extraction with the device, precision and batching decided once.

    The model is moved to the device; with ``optimize`` a private faster copy does the work.
    With another ``runtime`` than torch, each input shape gets its runner on first use (export
    and compile, cached in ``cache_dir``), trusted only after the fidelity check; under
    ``auto`` a runtime that fails it is skipped with a warning, an explicit one raises.
    """

    def __init__(self, model: BoQModel, *, device: str | torch.device = 'auto',
                 precision: str = 'fp32', preprocess: PreprocessConfig | None = None,
                 batch_size: int = 32, optimize: bool = True, cuda_graphs: bool = True,
                 runtime: str = 'torch', cache_dir: str | os.PathLike | None = None
                 ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(
                f'unknown precision {precision!r}; expected one of {list(PRECISIONS)}')
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}')
        config = preprocess or PreprocessConfig.default_for(model.config.name)
        stride = model.config.stride
        if model.config.backbone == 'dinov2' and config.multiple % stride:
            raise ValueError(f'DINOv2 needs image sides that are multiples of {stride}; '
                             f'preprocess multiple is {config.multiple}')
        self._device = resolve_device(device)
        self._precision = precision
        self._preprocess = config
        self._batch_size = batch_size
        self._model = model.to(self._device)
        if optimize:
            self._fast, self._channels_last = optimized_copy(
                self._model, self._device, precision)
        else:
            self._fast, self._channels_last = self._model, False
        self._graphs = None
        if optimize and cuda_graphs and self._device.type == 'cuda':
            self._graphs = _GraphCache(self._eager_describe, batch_size)
        self._runtime = runtime
        self._candidates, skipped = runtimes.candidates(runtime, self._device, precision)
        for name, reason in skipped.items():
            _log.info('runtime %s skipped: %s', name, reason)
        self._cache_dir = Path(cache_dir) if cache_dir else runtimes.default_cache_dir()
        self._instances: dict[str, runtimes.Runtime] = {}
        self._runners: dict[tuple[int, int], tuple[str, runtimes.Runner | None]] = {}
        self._fidelity: dict[tuple[int, int], runtimes.Fidelity] = {}
        self._runner_lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor], *,
                        preset: str | None = None, backbone: str | None = None,
                        **kwargs) -> 'Extractor':
        """Load a checkpoint (path, cached preset or state dict) and wrap it."""
        return cls(load_boq(checkpoint, backbone, preset=preset), **kwargs)

    @property
    def model(self) -> BoQModel:
        return self._model

    @property
    def dim(self) -> int:
        return self._model.config.descriptor_dim

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def model_id(self) -> str:
        return self._model.model_id

    @property
    def preset(self) -> str:
        return self._model.config.name

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self._preprocess

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def runtime(self) -> str:
        """The runtime setting ('auto' or one name); `runtime_status` says what runs."""
        return self._runtime

    def runtime_status(self) -> dict[str, str]:
        """Per input shape prepared so far: the runtime and precision running it, and why."""
        status = {}
        for (h, w), (name, _) in dict(self._runners).items():  # a copy: prepare may add one
            fidelity = self._fidelity.get((h, w))
            status[f'{h}x{w}'] = (f'{name} {fidelity.describe()}' if fidelity else
                                  f'torch {self._precision}')
        return status

    def prepare(self, shape: tuple[int, int]) -> str:
        """Choose (export, compile, check) the runtime for inputs of `shape`; returns its name."""
        shape = (int(shape[0]), int(shape[1]))
        with self._runner_lock:
            if shape not in self._runners:
                self._runners[shape] = self._choose(shape)
            return self._runners[shape][0]

    def _choose(self, shape: tuple[int, int]) -> tuple[str, runtimes.Runner | None]:
        """Take the first candidate that builds and passes the fidelity check (torch: always)."""
        reference = None
        for name in self._candidates:
            if name == 'torch':
                return name, None
            try:
                instance = self._instances.get(name)
                if instance is None:
                    instance = runtimes.RUNTIMES[name](
                        self._model, self._device, self._precision, self._batch_size,
                        self._cache_dir)
                    self._instances[name] = instance
                runner = instance.runner(shape)
                probe = runtimes.probe_batch(shape)
                if reference is None:
                    with torch.inference_mode():
                        reference = self._model.describe(probe.to(self._device)).cpu().numpy()
                with torch.inference_mode():
                    got = runner(probe.to(self._device)).float().cpu().numpy()
                fidelity = runtimes.compare(reference, got, shape, instance.precision)
                if not fidelity.ok:
                    raise runtimes.FidelityError(
                        f'{name} does not reproduce the torch fp32 descriptors of '
                        f'{self.model_id} at {shape[0]}x{shape[1]}: {fidelity.describe()}')
            except (runtimes.RuntimeUnavailable, runtimes.FidelityError) as e:
                if self._runtime != 'auto':
                    raise
                warnings.warn(f'runtime {name} not used for {shape[0]}x{shape[1]}: {e}',
                              stacklevel=3)
                continue
            self._fidelity[shape] = fidelity
            _log.info('runtime %s for %s at %dx%d: %s', name, self.model_id, *shape,
                      fidelity.describe())
            return name, runner
        raise runtimes.RuntimeUnavailable(  # unreachable under auto: torch is the last one
            f'no runtime could run {shape[0]}x{shape[1]}')

    def _autocast(self) -> torch.autocast:
        dtype = PRECISIONS[self._precision]
        # No weight-cast cache: it would outlive a CUDA graph capture; weights are pre-cast.
        return torch.autocast(self._device.type, dtype=dtype, enabled=dtype is not None,
                              cache_enabled=False)

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        if self._channels_last:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch

    def _eager_describe(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._autocast():
            return self._fast.describe(batch)

    def describe_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """Descriptors [B, D] float32 on the device for an already normalised batch."""
        shape = (int(batch.shape[-2]), int(batch.shape[-1]))
        entry = self._runners.get(shape)
        if entry is None and self._candidates != ['torch']:
            self.prepare(shape)
            entry = self._runners[shape]
        if entry is not None and entry[1] is not None:
            return entry[1](batch).to(self._device)
        batch = self._prepare(batch.to(self._device))
        if self._graphs is not None:
            try:
                with torch.inference_mode():
                    return self._graphs(batch)
            except RuntimeError as e:  # an op that cannot be captured: stay eager from now on
                warnings.warn(f'CUDA graphs disabled for this extractor: {e}', stacklevel=2)
                self._graphs = None
        return self._eager_describe(batch)

    def _groups(self, images: Sequence[np.ndarray], encodings: str | Sequence[str]
                ) -> tuple[list[str], list[list[int]]]:
        """Validate every image first, then group indices by output size into batches."""
        if isinstance(encodings, str):
            encodings = [encodings] * len(images)
        if len(encodings) != len(images):
            raise ValueError(f'{len(images)} images but {len(encodings)} encodings')
        names = [check_image(im, enc) for im, enc in zip(images, encodings)]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(self._preprocess.output_size(*image.shape[:2]), []).append(i)
        batches = [idx[s:s + self._batch_size] for idx in by_size.values()
                   for s in range(0, len(idx), self._batch_size)]
        return names, batches

    def _check_finite(self, descriptors: np.ndarray) -> np.ndarray:
        bad = np.flatnonzero(~np.isfinite(descriptors).all(axis=1))
        if bad.size:
            raise DescriptorError(
                f'non-finite descriptors for {bad.size} of {len(descriptors)} images '
                f'(first index {bad[0]}, precision {self._precision})')
        return descriptors

    def extract(self, images: Sequence[np.ndarray], encodings: str | Sequence[str] = 'rgb8'
                ) -> np.ndarray:
        """Describe camera images: [N, D] float32, L2-normalised, in the input order."""
        names, batches = self._groups(images, encodings)
        results = []
        for idx in batches:  # launch every batch before the first copy back synchronises
            batch = preprocess_batch([images[i] for i in idx], [names[i] for i in idx],
                                     self._preprocess, self._device)
            results.append(self.describe_tensor(batch))
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for idx, desc in zip(batches, results):
            out[idx] = desc.cpu().numpy()
        return self._check_finite(out)

    def extract_with_attention(self, images: Sequence[np.ndarray],
                               encodings: str | Sequence[str] = 'rgb8'
                               ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Describe images and return each one's attention maps [blocks, queries, h', w']."""
        names, batches = self._groups(images, encodings)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        maps: list[np.ndarray | None] = [None] * len(images)
        for idx in batches:
            batch = preprocess_batch([images[i] for i in idx], [names[i] for i in idx],
                                     self._preprocess, self._device)
            with torch.inference_mode(), self._autocast():
                features = self._fast.backbone(self._prepare(batch))
                desc, attns = self._fast.aggregator(features)
            h, w = features.shape[-2:]
            stacked = torch.stack(attns, dim=1).float()  # [B, blocks, Q, h*w]
            stacked = stacked.reshape(*stacked.shape[:3], h, w).cpu().numpy()
            out[idx] = desc.cpu().numpy()
            for j, i in enumerate(idx):
                maps[i] = stacked[j]
        return self._check_finite(out), maps
