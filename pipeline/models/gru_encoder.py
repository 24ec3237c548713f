"""GRU4Rec-style user encoder: a GRU over the item embeddings of the history (Table V's IDRec).

As RecBole's GRU4Rec: dropout on the item embeddings, one bias-free GRU layer, its weights
xavier_uniform_."""
import torch
from torch import nn

from pipeline.models.user_encoder import UserEncoderConfig


class GRUUserEncoder(nn.Module):
    """Maps left-padded sequences of item embeddings to one state per position, like UserEncoder."""

    def __init__(self, cfg: UserEncoderConfig):
        super().__init__()
        self.dropout = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.dim, cfg.dim, num_layers=1, bias=False, batch_first=True)
        nn.init.xavier_uniform_(self.gru.weight_ih_l0)
        nn.init.xavier_uniform_(self.gru.weight_hh_l0)

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # items [B, L, d]; mask [B, L] True for real items (left padded) -> [B, L, d]
        B, L, _ = items.shape
        lengths = mask.sum(1)  # [B]
        # Left padding -> right padding, so the GRU starts at each user's first real item.
        shift = (torch.arange(L, device=items.device)[None, :] + (L - lengths)[:, None]) % L  # [B, L]
        right = items.gather(1, shift[..., None].expand_as(items))
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(right), lengths.clamp(min=1).cpu(),
                                                   batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=L)  # [B, L, d]
        unshift = (torch.arange(L, device=items.device)[None, :] - (L - lengths)[:, None]) % L
        return out.gather(1, unshift[..., None].expand_as(out))  # back to left padding
