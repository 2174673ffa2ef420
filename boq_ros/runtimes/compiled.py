"""torch.compile (inductor, max-autotune with CUDA graphs) of the descriptor path on CUDA.

Compiles on the first batch of each shape (minutes with max-autotune) and keeps the result for
the process; the autocast precision is the extractor's, as in the eager path.
"""
import copy

import torch

from boq_ros.model.resnet import fold_batchnorm
from boq_ros.runtimes.base import Runner, Runtime

_DTYPES = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


class Compiled(Runtime):
    name = 'compile'
    device_types = ('cuda',)
    package = 'torch'
    install_hint = 'torch.compile is part of torch'

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        model = copy.deepcopy(self.model).to(self.device)
        if model.config.backbone == 'resnet50':
            model.backbone = fold_batchnorm(model.backbone)
        self._compiled = torch.compile(model.describe, mode='max-autotune', dynamic=False)

    @property
    def precision(self) -> str:
        return self.requested_precision

    def runner(self, shape: tuple[int, int]) -> Runner:
        dtype = _DTYPES[self.requested_precision]

        def run(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(
                    'cuda', dtype=dtype, enabled=dtype is not None):
                return self._compiled(batch.to(self.device)).float().clone()

        return run
