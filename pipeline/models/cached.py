"""A tower whose kept states come from its Zarr cache (pipeline/cache.py), held in memory."""
import torch
from torch import nn


class CachedTower(nn.Module):
    """Item ids [B] -> the tower's cached states [B, K, D] (float16 in memory, float32 out).

    The states are a buffer, so they move with the model to its device, but not a parameter nor
    part of the checkpoint: a trained run is saved without its caches."""

    def __init__(self, states: torch.Tensor):
        super().__init__()
        self.register_buffer("states", states, persistent=False)  # [N+1, K, D], row 0 = padding

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [B] -> [B, K, D]
        return self.states[ids].float()
