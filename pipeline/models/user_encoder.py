"""SASRec-style user encoder: learned positions, post-LN transformer blocks, causal + padding mask.

Follows the reference implementation (GAIR-Lab/IISAN, Code_Cached/model/modules.py and
encoders.py, User_Encoder): LayerNorm(items + positions) then dropout; each block is
post-LN multi-head attention with bias-free Q/K/V/output projections and dropout on the
attention weights and the output, then a ReLU feed-forward of width 4d with dropout; every
LayerNorm has eps 1e-6. Initialisation (`init`):
- xavier: the reference's `_init_weights`: xavier_normal_ on every Linear and Embedding of the
  user encoder (the position table included), biases 0;
- normal: RecBole's SASRec: N(0, 0.02) on every Linear and Embedding, biases 0 (the ID
  baselines' recipe).
Either way the position table starts at the scale of the item embeddings; left at
nn.Embedding's default N(0, 1) it was ~100x the ID item embeddings and ~6x IISAN's, and the
encoder learnt little from the history.
"""
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

LAYER_NORM_EPS = 1e-6  # the reference's


@dataclass
class UserEncoderConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 10
    dropout: float = 0.1
    init: str = "xavier"  # xavier (the reference's) | normal (N(0, 0.02), RecBole's)


def init_weight(w: torch.Tensor, init: str) -> None:
    if init == "xavier":
        nn.init.xavier_normal_(w)
    elif init == "normal":
        nn.init.normal_(w, std=0.02)
    else:
        raise ValueError(f"unknown init {init!r}")


def init_weights(module: nn.Module, init: str) -> None:
    """Every Linear and Embedding inside `module` initialised as `init` says, biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            init_weight(m.weight.data, init)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


class Block(nn.Module):
    def __init__(self, cfg: UserEncoderConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, 4 * cfg.dim), nn.ReLU(), nn.Linear(4 * cfg.dim, cfg.dim))
        self.norm1 = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)
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
        self.norm = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        init_weights(self, cfg.init)
        for block in self.blocks:  # Q, K and V are three d x d projections in the reference: each its own fan
            for w in block.qkv.weight.data.chunk(3):
                init_weight(w, cfg.init)

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
