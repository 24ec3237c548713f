"""Item encoder + SASRec user encoder; score(user, item) = <user state, item embedding>."""
import torch
from torch import nn

from pipeline.models.gru_encoder import GRUUserEncoder
from pipeline.models.user_encoder import UserEncoder, UserEncoderConfig


class Recommender(nn.Module):
    """backbones: towers run in the loop (uncached methods); without them the item encoder reads
    the cached states it is given."""

    def __init__(self, item_encoder: nn.Module, user_cfg: UserEncoderConfig, user_encoder: str = "sasrec",
                 backbones: nn.ModuleDict | None = None):
        super().__init__()
        self.backbones = backbones
        self.item_encoder = item_encoder
        self.user_encoder = {"sasrec": UserEncoder, "gru": GRUUserEncoder}[user_encoder](user_cfg)

    def embed_items(self, ids: torch.Tensor, states: dict[str, torch.Tensor]) -> torch.Tensor:
        # ids [B], states {tower: [B, K, D]} (cached, or computed here by the backbones) -> [B, d]
        if self.backbones is not None:
            states = {name: tower(ids) for name, tower in self.backbones.items()}
        return self.item_encoder(ids, states)

    def user_states(self, item_embs: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        # item_embs [B, L, d] of the left-padded sequence `items` [B, L] -> [B, L, d]
        return self.user_encoder(item_embs, items != 0)
