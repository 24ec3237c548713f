"""Training losses: in-batch debiased cross-entropy (paper eq. 6-7) and the full softmax over
the catalogue (RecBole's CE), computed in chunks of items."""
import numpy as np
import torch
from torch.nn import functional as F


def log_popularity(item_counts, device=None) -> torch.Tensor:
    """log of each item's training count [N+1] (at least 1): the in-batch loss's debiasing term."""
    return torch.log(torch.as_tensor(np.maximum(item_counts, 1), dtype=torch.float32, device=device))


def in_batch_debiased_ce(user_states: torch.Tensor, item_embs: torch.Tensor, window: torch.Tensor,
                         log_pop: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Mean CE of each real position's next item against every item of the batch.

    user_states [B, L, d]: state after positions 0..L-1 of each window.
    item_embs [B, L+1, d]: embeddings of the window's items; position t+1 is the target of t.
    window [B, L+1] item indices (0 = padding, left padded).
    log_pop [N+1]: log training frequency of each item, subtracted from every logit (debiasing).
    rows [B, L] bool: the positions that count (default: every real one).
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

    real = (window[:, :-1] != 0) if rows is None else rows & (window[:, :-1] != 0)
    real = real.reshape(-1)  # rows whose input position holds an item
    return F.cross_entropy(logits[real], labels[real])


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Mean over rows of logsumexp_j(s . e_j) - s . e_target over items j >= 1 (column 0 is
    padding), the [R, N+1] logits made and dropped `chunk` columns at a time, in the forward
    pass and again in the backward pass: memory O(R x chunk) whatever the catalogue's size."""

    @staticmethod
    def forward(ctx, states, items, targets, chunk):
        lse = torch.full((states.shape[0],), -torch.inf, dtype=states.dtype, device=states.device)
        for lo in range(0, items.shape[0], chunk):
            logits = states @ items[lo:lo + chunk].T  # [R, c]
            if lo == 0:
                logits[:, 0] = -torch.inf
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
        ctx.save_for_backward(states, items, targets, lse)
        ctx.chunk = chunk
        return (lse - (states * items[targets]).sum(1)).mean()

    @staticmethod
    def backward(ctx, grad):
        states, items, targets, lse = ctx.saved_tensors
        scale = grad / states.shape[0]
        d_states, d_items = torch.zeros_like(states), torch.zeros_like(items)
        for lo in range(0, items.shape[0], ctx.chunk):
            logits = states @ items[lo:lo + ctx.chunk].T
            if lo == 0:
                logits[:, 0] = -torch.inf
            p = torch.exp(logits - lse[:, None]) * scale  # softmax, scaled: [R, c]
            d_states += p @ items[lo:lo + ctx.chunk]
            d_items[lo:lo + ctx.chunk] += p.T @ states
        d_states -= scale * items[targets]
        d_items.index_add_(0, targets, -scale * states)
        return d_states, d_items, None, None


def full_softmax_ce(states: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """CE of states [R, d] against every item embedding items [N+1, d] (row 0 = padding, never a
    candidate), targets [R] in 1..N; not debiased, nothing masked (RecBole's CE loss)."""
    return _ChunkedSoftmaxCE.apply(states, items, targets, chunk)
