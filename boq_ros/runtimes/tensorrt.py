"""TensorRT through torch-tensorrt on CUDA: one engine per input shape, batches up to a maximum.

Reduced precisions run a copy whose weights and input are in that dtype (explicit typing, the
torch-tensorrt default); the fidelity check then decides whether the engine is trusted. Engines
are built in the process (tens of seconds per shape) and kept while the extractor lives.
"""
import copy

import torch

from boq_ros.model.resnet import fold_batchnorm
from boq_ros.runtimes.base import Runner, Runtime, RuntimeUnavailable

_DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
MAX_BATCH = 64
"""Largest batch an engine accepts (its optimisation profile: 1 .. max(batch_size, this))."""


class TensorRt(Runtime):
    name = 'tensorrt'
    device_types = ('cuda',)
    package = 'torch_tensorrt'
    install_hint = "pip install torch-tensorrt==2.14.0 'tensorrt-cu13==11.1.*'"

    @property
    def precision(self) -> str:
        return self.requested_precision

    def runner(self, shape: tuple[int, int]) -> Runner:
        import torch_tensorrt  # noqa: PLC0415 (optional package)

        dtype = _DTYPES[self.requested_precision]
        model = copy.deepcopy(self.model).to(self.device)
        if model.config.backbone == 'resnet50':
            model.backbone = fold_batchnorm(model.backbone)
        model = model.to(dtype)

        class Describe(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.model.describe(x)

        largest = max(self.batch_size, MAX_BATCH)
        inputs = [torch_tensorrt.Input(min_shape=(1, 3, *shape),
                                       opt_shape=(self.batch_size, 3, *shape),
                                       max_shape=(largest, 3, *shape), dtype=dtype)]
        try:
            engine = torch_tensorrt.compile(Describe().eval(), ir='dynamo', inputs=inputs)
        except Exception as e:  # noqa: BLE001 (a layer TensorRT cannot build)
            raise RuntimeUnavailable(f'torch-tensorrt could not build an engine for '
                                     f'{shape[0]}x{shape[1]}: {e}') from e

        def run(batch: torch.Tensor) -> torch.Tensor:
            if batch.shape[0] > largest:
                return torch.cat([run(part) for part in batch.split(largest)])
            with torch.inference_mode():
                return engine(batch.to(self.device, dtype)).float()

        return run
