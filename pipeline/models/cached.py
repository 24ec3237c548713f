"""A tower whose kept states come from its Zarr cache (pipeline/cache.py): held in memory, or
streamed from disk a batch at a time when the caches exceed train.cache_memory_mb."""
import torch
from torch import nn

from pipeline.cache import StreamedStates


class CachedTower(nn.Module):
    """Item ids [B] -> the tower's cached states [B, K, D] (float16 stored, float32 out).

    In memory, the states are a buffer, so they move with the model to its device, but not a
    parameter nor part of the checkpoint: a trained run is saved without its caches. Streamed,
    each batch's rows are read on the host and sent to the ids' device; same values either way."""

    def __init__(self, states: torch.Tensor | StreamedStates):
        super().__init__()
        self.streamed = states if isinstance(states, StreamedStates) else None
        self.register_buffer("states", None if self.streamed else states, persistent=False)  # [N+1, K, D]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [B] -> [B, K, D]
        if self.streamed is None:
            return self.states[ids].float()
        rows = torch.from_numpy(self.streamed[ids.cpu().numpy()])
        return rows.to(ids.device, non_blocking=True).float()
