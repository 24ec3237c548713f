"""In-batch debiased cross-entropy (paper eq. 6-7)."""
import torch
from torch.nn import functional as F


def in_batch_debiased_ce(user_states: torch.Tensor, item_embs: torch.Tensor, window: torch.Tensor,
                         log_pop: torch.Tensor) -> torch.Tensor:
    """Mean CE of each real position's next item against every item of the batch.

    user_states [B, L, d]: state after positions 0..L-1 of each window.
    item_embs [B, L+1, d]: embeddings of the window's items; position t+1 is the target of t.
    window [B, L+1] item indices (0 = padding, left padded).
    log_pop [N+1]: log training frequency of each item, subtracted from every logit (debiasing).
    A column whose item occurs in the same user's window is masked, except the positive;
    padding columns are masked and padding rows excluded.
    """
    B, L1, d = item_embs.shape
    L = L1 - 1
    columns = window.reshape(-1)  # [C] with C = B * (L+1)
    logits = user_states.reshape(B * L, d) @ item_embs.reshape(-1, d).T - log_pop[columns]  # [B*L, C]

    labels = (torch.arange(B, device=window.device)[:, None] * L1
              + torch.arange(1, L1, device=window.device)[None, :]).reshape(-1)  # [B*L]
    own = (window[:, :, None] == columns[None, None, :]).any(dim=1)  # [B, C] item in user's window
    masked = own.repeat_interleave(L, dim=0) | (columns == 0)[None, :]  # [B*L, C]
    masked[torch.arange(B * L, device=window.device), labels] = False
    logits = logits.masked_fill(masked, torch.finfo(logits.dtype).min)

    real = (window[:, :-1] != 0).reshape(-1)  # rows whose input position holds an item
    return F.cross_entropy(logits[real], labels[real])
