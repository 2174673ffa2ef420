"""ONNX Runtime on the CPU: the exported file, fp32 (its CPU provider has no fast bf16 path)."""
import numpy as np
import torch

from boq_ros.runtimes.base import Runner, Runtime, RuntimeUnavailable
from boq_ros.runtimes.export import export_onnx


class OnnxRuntime(Runtime):
    name = 'onnxruntime'
    device_types = ('cpu',)
    package = 'onnxruntime'
    install_hint = 'pip install onnxruntime onnx onnxscript'

    @classmethod
    def unavailable(cls, device: torch.device, precision: str) -> str | None:
        if precision != 'fp32':
            return f'onnxruntime runs fp32 only on the CPU, not {precision} (openvino runs bf16)'
        return super().unavailable(device, precision)

    @property
    def precision(self) -> str:
        return 'fp32'

    def runner(self, shape: tuple[int, int]) -> Runner:
        import onnxruntime as ort  # noqa: PLC0415 (optional package)

        path = export_onnx(self.model, shape, self.cache_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), options,
                                           providers=['CPUExecutionProvider'])
        except Exception:  # noqa: BLE001 (a damaged cache file: export again, once)
            path = export_onnx(self.model, shape, self.cache_dir, refresh=True)
            try:
                session = ort.InferenceSession(str(path), options,
                                               providers=['CPUExecutionProvider'])
            except Exception as e:  # noqa: BLE001
                raise RuntimeUnavailable(f'onnxruntime cannot load {path}: {e}') from e

        def run(batch: torch.Tensor) -> torch.Tensor:
            x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
            return torch.from_numpy(session.run(None, {'images': x})[0])

        return run
