"""The descriptor path of a BoQ model as an ONNX file, exported once and cached by weights.

The cache key is the weights' sha256, the torch version (the exporter) and, for DINOv2, the
input shape: its positional embedding is resized per patch grid, so each shape is its own file
with that table precomputed. ResNet-50 files take any batch, height and width. Files are
written aside and renamed into place, so a crash or a concurrent export never leaves half a
file under the final name; a cached file that no longer loads is exported again.
"""
import contextlib
import copy
import io
import logging
import os
from pathlib import Path
import tempfile
import warnings

import torch

from boq_ros.model import BoQModel
from boq_ros.model.resnet import fold_batchnorm
from boq_ros.runtimes.base import RuntimeUnavailable, weights_key
from boq_ros.settings import MIN_INPUT_SIZE

OPSET = 18
RESNET_EXAMPLE = (64, 64)
"""The traced input of the ResNet-50 file, whatever shape asked first: its height and width
are symbolic (MIN_INPUT_SIZE to 8192), so the file does not depend on the first camera."""

_log = logging.getLogger(__name__)


class _Descriptors(torch.nn.Module):
    """forward = model.describe: what the runtimes compute (no attention maps)."""

    def __init__(self, model: BoQModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.describe(x)


def _export_copy(model: BoQModel, shape: tuple[int, int]) -> BoQModel:
    """Copy `model` for torch.export: BatchNorm folded (ResNet), positions fixed (DINOv2)."""
    fixed = copy.deepcopy(model).cpu()
    if model.config.backbone == 'resnet50':
        fixed.backbone = fold_batchnorm(fixed.backbone)
    else:  # the per-grid cache keyed on data_ptr() cannot be traced: one table per file
        dino = fixed.backbone.dino
        stride = fixed.backbone.stride
        table = dino.position_embedding(shape[0] // stride, shape[1] // stride, torch.float32)
        dino.register_buffer('export_position', table.detach().clone(), persistent=False)
        dino.position_embedding = lambda h, w, dtype: dino.export_position.to(dtype)
    return fixed


@contextlib.contextmanager
def _quiet():
    """Silence the exporter: it prints progress and its passes log every rewrite."""
    loggers = [logging.getLogger(name) for name in ('onnxscript', 'onnx_ir', 'torch.onnx')]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter('ignore')
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def onnx_path(model: BoQModel, shape: tuple[int, int], cache_dir: Path) -> Path:
    """Where the file for `model` at `shape` lives in the cache (exported or not)."""
    version = torch.__version__.split('+')[0]
    size = 'any' if model.config.backbone == 'resnet50' else f'{shape[0]}x{shape[1]}'
    return (cache_dir / weights_key(model)[:16]
            / f'{model.config.name}-{size}-torch{version}-opset{OPSET}.onnx')


def export_onnx(model: BoQModel, shape: tuple[int, int], cache_dir: Path,
                refresh: bool = False) -> Path:
    """Return the cached ONNX file for `model` at `shape`, exporting it first when needed."""
    path = onnx_path(model, shape, cache_dir)
    if path.exists() and not refresh:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _log.info('exporting %s to ONNX (%s); cached for later runs', model.model_id, path)
        _export(model, shape, path)
    except OSError as e:
        raise RuntimeUnavailable(f'cannot write the ONNX export to {path.parent}: {e}') from e
    except Exception as e:  # noqa: BLE001 (the exporter's errors have no common type)
        raise RuntimeUnavailable(f'ONNX export of {model.model_id} failed: {e}') from e
    return path


def _export(model: BoQModel, shape: tuple[int, int], path: Path) -> None:
    module = _Descriptors(_export_copy(model, shape)).eval()
    dims = {0: torch.export.Dim('batch', min=1, max=4096)}
    if model.config.backbone == 'resnet50':
        shape = RESNET_EXAMPLE
        dims |= {2: torch.export.Dim('height', min=MIN_INPUT_SIZE, max=8192),
                 3: torch.export.Dim('width', min=MIN_INPUT_SIZE, max=8192)}
    example = torch.zeros(2, 3, *shape)  # batch >= 2, else the exporter fixes it at 1
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix='.tmp')
    os.close(fd)
    try:
        with _quiet(), torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(module, (example,), tmp, dynamo=True, opset_version=OPSET,
                              input_names=['images'], output_names=['descriptors'],
                              dynamic_shapes={'x': dims}, external_data=False, verbose=False,
                              report=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
