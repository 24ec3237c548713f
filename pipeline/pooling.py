"""Pooling one vector per layer from token states; pluggable by name.

Every pooler maps hidden states [B, T, D] and an attention mask [B, T] (1 = real token,
right padding) to [B, D].
"""
import torch


def cls(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """First token: BERT's [CLS], ViT's class token."""
    return h[:, 0]


def mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only (the sound default for decoder LLMs)."""
    m = mask.unsqueeze(-1).to(h.dtype)  # [B, T, 1]
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


def mean_unmasked(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over all positions, padding included: the reference implementation's behaviour."""
    return h.mean(1)


def last(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last real token of each row (right padding)."""
    lengths = mask.sum(1).long().clamp(min=1)  # [B]
    return h[torch.arange(h.shape[0], device=h.device), lengths - 1]


POOLERS = {"cls": cls, "mean": mean, "mean_unmasked": mean_unmasked, "last": last}
