"""DINOv2 ViT-B/14 as BoQ uses it: all 12 blocks, CLS dropped, no final norm."""
import math

import torch
from torch import nn
import torch.nn.functional as F

from boq_ros.model.inference import InferenceOnly


class PatchEmbed(nn.Module):
    """14x14 stride-14 patches; named `patch_embed.proj` as in the released keys."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a packed qkv projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Feed-forward with exact (erf) GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scale (`gamma` in the released keys)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale, LayerNorm eps 1e-6."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoViT(nn.Module):
    """ViT-B/14 holding every released tensor, including the unused `mask_token` and `norm`."""

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, patch: int = 14,
                 grid: int = 37) -> None:
        super().__init__()
        self.patch = patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchEmbed(patch, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._resized: dict[tuple, torch.Tensor] = {}

    def position_embedding(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        """Positional embedding for an h x w patch grid, resized as the authors' model does.

        The stored 37x37 grid is used unchanged for a square 37x37 input; any other grid is
        resized bicubically with ``scale_factor=(h + 0.1) / 37`` (not ``size=``), which moves
        the sampling positions and therefore the numbers. The resize is slow (a CUDA kernel
        with one thread per output position), so results are kept per grid and weight version.
        """
        pos = self.pos_embed
        # In-place updates (load_state_dict) bump the version; inference tensors have none.
        version = -1 if pos.is_inference() else pos._version
        key = (h, w, dtype, pos.device, pos.data_ptr(), version)
        cached = self._resized.get(key)
        if cached is None:
            with torch.inference_mode(False), torch.no_grad():
                cached = self._resize(h, w).to(dtype)
            self._resized = {k: v for k, v in self._resized.items() if k[3:] == key[3:]}
            self._resized[key] = cached
        return cached

    def _resize(self, h: int, w: int) -> torch.Tensor:
        pos = self.pos_embed
        n = pos.shape[1] - 1
        if h * w == n and h == w:
            return pos.detach()
        grid = math.isqrt(n)
        dim = pos.shape[-1]
        patch_pos = pos[:, 1:].float().reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos, scale_factor=((h + 0.1) / grid, (w + 0.1) / grid), mode='bicubic',
            align_corners=False, antialias=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, dim)
        return torch.cat((pos[:, :1].float(), patch_pos), dim=1)


class DinoV2Backbone(InferenceOnly):
    """Patch tokens of the last block as a [B, 768, H/14, W/14] map (row-major)."""

    channels = 768
    stride = 14

    def __init__(self) -> None:
        super().__init__()
        self.dino = DinoViT()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        if height % self.stride or width % self.stride:
            raise ValueError(
                f'DINOv2 input height and width must be multiples of {self.stride}, '
                f'got {height}x{width}')
        h, w = height // self.stride, width // self.stride
        dino = self.dino
        tokens = dino.patch_embed(x)
        tokens = torch.cat((dino.cls_token.expand(b, -1, -1), tokens), dim=1)
        tokens = tokens + dino.position_embedding(h, w, tokens.dtype)
        for block in dino.blocks:
            tokens = block(tokens)
        return tokens[:, 1:].transpose(1, 2).reshape(b, -1, h, w)
