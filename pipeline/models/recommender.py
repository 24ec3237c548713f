"""Item encoder + SASRec user encoder; score(user, item) = <user state, item embedding>."""
import torch
from torch import nn

from pipeline.models.gru_encoder import GRUUserEncoder
from pipeline.models.user_encoder import UserEncoder, UserEncoderConfig


class Recommender(nn.Module):
    def __init__(self, item_encoder: nn.Module, user_cfg: UserEncoderConfig, user_encoder: str = "sasrec"):
        super().__init__()
        self.item_encoder = item_encoder
        self.user_encoder = {"sasrec": UserEncoder, "gru": GRUUserEncoder}[user_encoder](user_cfg)

    def embed_items(self, ids: torch.Tensor, states: dict[str, torch.Tensor]) -> torch.Tensor:
        # ids [B], cached states {tower: [B, K, D]} -> [B, d]
        return self.item_encoder(ids, states)

    def user_states(self, item_embs: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        # item_embs [B, L, d] of the left-padded sequence `items` [B, L] -> [B, L, d]
        return self.user_encoder(item_embs, items != 0)
