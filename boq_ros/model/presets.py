"""The shape of a BoQ model, and the two configurations the authors released weights for."""
from dataclasses import asdict, dataclass
from typing import Literal

Backbone = Literal['resnet50', 'dinov2']
BACKBONES: tuple[str, ...] = ('resnet50', 'dinov2')

_RELEASE_URL = 'https://github.com/amaralibey/Bag-of-Queries/releases/download/v1.0/'


@dataclass(frozen=True)
class BoQConfig:
    """Every size that shapes a checkpoint's tensors, so a model can be rebuilt from it."""

    name: str
    backbone: Backbone
    backbone_channels: int
    stride: int
    proj_dim: int
    num_queries: int = 64
    num_blocks: int = 2
    num_heads: int = 8
    ff_dim: int = 2048
    out_rows: int = 32
    weights_file: str = ''
    url: str = ''
    keys_file: str = ''

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f'unknown backbone {self.backbone!r}; expected one of {BACKBONES}')
        for field in ('proj_dim', 'num_queries', 'num_blocks', 'num_heads', 'ff_dim', 'out_rows'):
            if getattr(self, field) < 1:
                raise ValueError(f'{field} must be positive, got {getattr(self, field)}')
        if self.proj_dim % self.num_heads:
            raise ValueError(
                f'proj_dim {self.proj_dim} is not divisible by num_heads {self.num_heads}')

    @property
    def descriptor_dim(self) -> int:
        """Length of the descriptor: projection width times output rows."""
        return self.proj_dim * self.out_rows

    def to_dict(self) -> dict:
        """Plain values for map metadata and reports."""
        return asdict(self)


PRESETS: dict[str, BoQConfig] = {
    'resnet50-16384': BoQConfig(
        name='resnet50-16384', backbone='resnet50', backbone_channels=1024, stride=16,
        proj_dim=512, num_heads=8, ff_dim=2048,
        weights_file='resnet50_16384.pth', url=_RELEASE_URL + 'resnet50_16384.pth',
        keys_file='boq_resnet50_16384.keys.tsv'),
    'dinov2-12288': BoQConfig(
        name='dinov2-12288', backbone='dinov2', backbone_channels=768, stride=14,
        proj_dim=384, num_heads=6, ff_dim=1536,
        weights_file='dinov2_12288.pth', url=_RELEASE_URL + 'dinov2_12288.pth',
        keys_file='boq_dinov2_12288.keys.tsv'),
}

# The released preset of each backbone (one each), used when only the backbone is known.
DEFAULT_PRESET: dict[str, str] = {'resnet50': 'resnet50-16384', 'dinov2': 'dinov2-12288'}


def get_preset(name: str) -> BoQConfig:
    """Look up a released configuration by name, with the valid names in the error."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f'unknown preset {name!r}; expected one of {sorted(PRESETS)}') from None
