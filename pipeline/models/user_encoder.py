"""SASRec-style user encoder: learned positions, post-LN transformer blocks, causal + padding mask."""
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class UserEncoderConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 10
    dropout: float = 0.1


class Block(nn.Module):
    def __init__(self, cfg: UserEncoderConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(), nn.Linear(4 * cfg.dim, cfg.dim))
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.attn_dropout = cfg.dropout

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # x [B, L, d]; bias [B, 1, L, L] additive attention mask
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # [B, H, L, d/H]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        a = a.transpose(1, 2).reshape(B, L, d)
        x = self.norm1(x + self.dropout(self.proj(a)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class UserEncoder(nn.Module):
    """Maps left-padded sequences of item embeddings to one state per position."""

    def __init__(self, cfg: UserEncoderConfig):
        super().__init__()
        self.positions = nn.Embedding(cfg.max_len, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # items [B, L, d] item embeddings; mask [B, L] True for real items -> [B, L, d]
        B, L, _ = items.shape
        x = self.dropout(self.norm(items + self.positions(torch.arange(L, device=items.device))))
        causal = torch.ones(L, L, dtype=torch.bool, device=items.device).tril()
        allowed = causal & mask[:, None, None, :]  # [B, 1, L, L]
        # A finite large negative (not -inf) keeps fully padded rows free of NaN.
        bias = torch.zeros(allowed.shape, dtype=items.dtype, device=items.device).masked_fill(~allowed, -1e9)
        for block in self.blocks:
            x = block(x, bias)
        return x
