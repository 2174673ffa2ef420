"""The Bag-of-Queries aggregator: learned queries cross-attend to the backbone's tokens."""
import torch
from torch import nn
import torch.nn.functional as F

from boq_ros.model.inference import InferenceOnly


class BoQBlock(nn.Module):
    """One BoQ block: refine the tokens, then let the learned queries read them."""

    def __init__(self, dim: int, num_queries: int, num_heads: int, ff_dim: int) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            d_model=dim, nhead=num_heads, dim_feedforward=ff_dim, dropout=0.0, batch_first=True)
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim))
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, need_attention: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Return refined tokens, query outputs [B, Q, D] and the head-averaged attention."""
        tokens = self.encoder(tokens)
        # The queries do not depend on the image: attend among them once, then share.
        q = self.queries
        q = self.norm_q(q + self.self_attn(q, q, q, need_weights=False)[0])
        q = q.expand(tokens.shape[0], -1, -1)
        out, attn = self.cross_attn(q, tokens, tokens, need_weights=need_attention)
        return tokens, self.norm_out(out), attn


class BoQAggregator(InferenceOnly):
    """Backbone feature map [B, C, H', W'] -> L2-normalised descriptor [B, D * out_rows]."""

    def __init__(self, in_channels: int, proj_dim: int, num_queries: int, num_blocks: int,
                 num_heads: int, ff_dim: int, out_rows: int) -> None:
        super().__init__()
        self.proj_c = nn.Conv2d(in_channels, proj_dim, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(proj_dim)
        self.boqs = nn.ModuleList(
            BoQBlock(proj_dim, num_queries, num_heads, ff_dim) for _ in range(num_blocks))
        self.fc = nn.Linear(num_blocks * num_queries, out_rows)
        self.eval()

    def forward(self, features: torch.Tensor, need_attention: bool = True
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return (descriptors [B, D * out_rows] float32, attention [B, Q, H'*W'] per block)."""
        tokens = self.norm_input(self.proj_c(features).flatten(2).transpose(1, 2))
        outs, attns = [], []
        for block in self.boqs:
            tokens, out, attn = block(tokens, need_attention)
            outs.append(out)
            if attn is not None:
                attns.append(attn)
        # fc mixes the query axis: [B, D, 2Q] -> [B, D, rows]; element d * rows + r.
        rows = self.fc(torch.cat(outs, dim=1).transpose(1, 2))
        return F.normalize(rows.flatten(1).float(), p=2.0, dim=-1), attns
