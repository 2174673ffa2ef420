"""A module base that refuses train mode: BoQ's BatchNorm must always use running statistics."""
from torch import nn


class InferenceOnly(nn.Module):
    """Stays in eval mode; the authors' hub model silently ran BatchNorm in train mode."""

    def train(self, mode: bool = True) -> nn.Module:
        if mode:
            raise RuntimeError(
                f'{type(self).__name__} is inference-only: train mode would make BatchNorm use '
                'batch statistics and change the descriptors')
        return super().train(False)
