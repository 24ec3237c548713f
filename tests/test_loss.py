import math

import torch

from pipeline.models.loss import in_batch_debiased_ce


def test_loss_by_hand_with_own_items_masked():
    # Two users, windows of 3 (inputs 2, targets 2). User 0 has a padded first slot, and item 1
    # is in both windows: user 0's rows must mask user 1's copy of it (column 4) and vice versa.
    window = torch.tensor([[0, 1, 2], [3, 1, 4]])
    d = 2
    torch.manual_seed(0)
    states = torch.randn(2, 2, d)
    embs = torch.randn(2, 3, d)
    log_pop = torch.log(torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0]))
    loss = in_batch_debiased_ce(states, embs, window, log_pop)

    columns = window.reshape(-1)
    flat = embs.reshape(-1, d)
    expected = []
    for u in range(2):
        for t in range(2):
            if window[u, t] == 0:
                continue  # padding row
            label = u * 3 + t + 1
            logits = flat @ states[u, t] - log_pop[columns]
            keep = [c for c in range(6)
                    if c == label or (columns[c] != 0 and columns[c].item() not in window[u].tolist())]
            expected.append(-(logits[label] - torch.logsumexp(logits[keep], 0)))
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-6)


def test_all_padding_rows_are_excluded():
    window = torch.tensor([[0, 0, 7], [0, 2, 3]])
    embs, states = torch.randn(2, 3, 4), torch.randn(2, 2, 4)
    loss = in_batch_debiased_ce(states, embs, window, torch.zeros(8))
    assert math.isfinite(loss.item())
