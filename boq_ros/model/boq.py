"""Backbone + aggregator: the complete BoQ network, always in eval mode."""
import torch

from boq_ros.model.aggregator import BoQAggregator
from boq_ros.model.dinov2 import DinoV2Backbone
from boq_ros.model.inference import InferenceOnly
from boq_ros.model.presets import BoQConfig
from boq_ros.model.resnet import ResNetBackbone


class BoQModel(InferenceOnly):
    """The network plus what identifies its weights (config, file checksum) in maps and logs."""

    def __init__(self, config: BoQConfig, checksum: str = '') -> None:
        super().__init__()
        self.config = config
        self.checksum = checksum
        backbone = ResNetBackbone() if config.backbone == 'resnet50' else DinoV2Backbone()
        if backbone.channels != config.backbone_channels or backbone.stride != config.stride:
            raise ValueError(
                f'config {config.name!r} expects {config.backbone_channels} channels at stride '
                f'{config.stride}; the {config.backbone} backbone gives {backbone.channels} '
                f'at stride {backbone.stride}')
        self.backbone = backbone
        self.aggregator = BoQAggregator(
            config.backbone_channels, config.proj_dim, config.num_queries, config.num_blocks,
            config.num_heads, config.ff_dim, config.out_rows)
        self.requires_grad_(False)
        self.eval()

    @property
    def model_id(self) -> str:
        """Preset and weights in one short string, e.g. 'resnet50-16384@1a2b3c4d'."""
        return f'{self.config.name}@{self.checksum[:8] or "unsaved"}'

    @property
    def descriptor_dim(self) -> int:
        return self.config.descriptor_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalised images [B, 3, H, W] -> (descriptors [B, D], attention [B, Q, H'*W'] each)."""
        return self.aggregator(self.backbone(x))

    def describe(self, x: torch.Tensor) -> torch.Tensor:
        """Descriptors only; skips the attention weights so fused attention kernels can run."""
        return self.aggregator(self.backbone(x), need_attention=False)[0]
