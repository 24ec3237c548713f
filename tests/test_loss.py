import math

import torch

from pipeline.models.loss import in_batch_debiased_ce


def reference_loss(states, embs, window, log_pop):
    """Eq. 6-7 written out row by row: mean over real rows of -log softmax over kept columns."""
    B, L1, d = embs.shape
    columns, flat = window.reshape(-1), embs.reshape(-1, d)
    terms = []
    for u in range(B):
        for t in range(L1 - 1):
            if window[u, t] == 0:
                continue  # padding row
            label = u * L1 + t + 1
            logits = flat @ states[u, t] - log_pop[columns]
            keep = [c for c in range(B * L1)
                    if c == label or (columns[c] != 0 and columns[c].item() not in window[u].tolist())]
            terms.append(-(logits[label] - torch.logsumexp(logits[keep], 0)))
    return torch.stack(terms).mean()


def test_loss_by_hand_with_own_items_masked():
    # Two users, windows of 3 (inputs 2, targets 2). User 0 has a padded first slot, and item 1
    # is in both windows: user 0's rows must mask user 1's copy of it (column 4) and vice versa.
    window = torch.tensor([[0, 1, 2], [3, 1, 4]])
    torch.manual_seed(0)
    states, embs = torch.randn(2, 2, 2), torch.randn(2, 3, 2)
    log_pop = torch.log(torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0]))
    assert torch.allclose(in_batch_debiased_ce(states, embs, window, log_pop),
                          reference_loss(states, embs, window, log_pop), atol=1e-6)


def test_padding_rows_and_columns_are_excluded():
    window = torch.tensor([[0, 0, 7], [0, 2, 3], [4, 5, 6]])
    torch.manual_seed(1)
    states, embs = torch.randn(3, 2, 4), torch.randn(3, 3, 4)
    log_pop = torch.zeros(8)
    loss = in_batch_debiased_ce(states, embs, window, log_pop)
    assert torch.allclose(loss, reference_loss(states, embs, window, log_pop), atol=1e-6)
    # what a padding row or column holds does not matter
    states2, embs2 = states.clone(), embs.clone()
    states2[0] = 100.0
    embs2[0, :2] = -100.0
    assert torch.allclose(in_batch_debiased_ce(states2, embs2, window, log_pop), loss, atol=1e-6)
    assert math.isfinite(loss.item())
