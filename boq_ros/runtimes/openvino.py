"""OpenVINO on the CPU: the exported file compiled per input shape, fp32 or bf16/fp16.

OpenVINO silently runs bf16 wherever the CPU has bf16 units unless told otherwise, so the
precision hint is always set, and a reduced precision this CPU lacks runs fp32 (reported).
"""
import functools
import threading

import numpy as np
import torch

from boq_ros.runtimes.base import Runner, Runtime, RuntimeUnavailable
from boq_ros.runtimes.export import export_onnx

_HINTS = {'fp32': 'f32', 'bf16': 'bf16', 'fp16': 'f16'}
_CAPABILITIES = {'bf16': 'BF16', 'fp16': 'FP16'}


@functools.cache
def _core():  # noqa: ANN202 (openvino.Core; optional package)
    import openvino as ov  # noqa: PLC0415

    return ov.Core()


def cpu_capabilities() -> frozenset[str]:
    """Return what the CPU plug-in computes natively ('FP32', 'BF16', 'FP16', ...)."""
    return frozenset(_core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))


class OpenVino(Runtime):
    name = 'openvino'
    device_types = ('cpu',)
    package = 'openvino'
    install_hint = 'pip install openvino onnx onnxscript'

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        wanted = self.requested_precision
        native = wanted == 'fp32' or _CAPABILITIES[wanted] in cpu_capabilities()
        self._precision = wanted if native else 'fp32'

    @property
    def precision(self) -> str:
        return self._precision

    def runner(self, shape: tuple[int, int]) -> Runner:
        core = _core()
        config = {'INFERENCE_PRECISION_HINT': _HINTS[self._precision],
                  'PERFORMANCE_HINT': 'LATENCY',
                  'INFERENCE_NUM_THREADS': torch.get_num_threads()}

        def compile_from(path):  # noqa: ANN001, ANN202
            model = core.read_model(str(path))
            model.reshape({model.inputs[0]: [-1, 3, *shape]})  # static H, W; any batch
            return core.compile_model(model, 'CPU', config)

        path = export_onnx(self.model, shape, self.cache_dir)
        try:
            compiled = compile_from(path)
        except Exception:  # noqa: BLE001 (a damaged cache file: export again, once)
            path = export_onnx(self.model, shape, self.cache_dir, refresh=True)
            try:
                compiled = compile_from(path)
            except Exception as e:  # noqa: BLE001
                raise RuntimeUnavailable(f'openvino cannot compile {path}: {e}') from e
        ran = str(compiled.get_property('INFERENCE_PRECISION_HINT'))
        if 'f32' not in ran and 'float32' not in ran and self._precision == 'fp32':
            raise RuntimeUnavailable(f'openvino ignored the fp32 precision hint (ran {ran})')
        request = compiled.create_infer_request()
        lock = threading.Lock()  # one request: its buffers belong to one call at a time

        def run(batch: torch.Tensor) -> torch.Tensor:
            x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
            with lock:
                result = request.infer({0: x})
                out = np.array(result[compiled.outputs[0]], dtype=np.float32)
            return torch.from_numpy(out)

        return run
