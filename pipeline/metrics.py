"""Full-ranking metrics: rank of the target among all items, HR@k and NDCG@k per user.

Ties are counted against the target (pessimistic), so a constant scorer earns nothing.
Two protocols for history masking:
- reference: every item in the user's history is excluded; a target that repeats a history
  item is therefore a miss (rank = inf), as in the reference implementation;
- repeat_aware: history items are excluded except the target itself.
"""
from typing import Callable

import numpy as np
import torch

PROTOCOLS = ("reference", "repeat_aware")


def history_mask(histories: list, shape: tuple) -> torch.Tensor:
    """Bool [U, N+1], True where item i is in user u's history."""
    mask = torch.zeros(shape, dtype=torch.bool)
    for u, history in enumerate(histories):
        mask[u, torch.as_tensor(history, dtype=torch.long)] = True
    return mask


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, histories: list, protocol: str) -> torch.Tensor:
    """scores [U, N+1] (column 0 = padding), targets [U] -> 1-based ranks [U] (inf for a miss)."""
    scores = scores.clone().float()
    scores[:, 0] = -torch.inf
    target_scores = scores.gather(1, targets[:, None]).squeeze(1)  # [U]
    hidden = history_mask(histories, scores.shape)
    target_hidden = hidden.gather(1, targets[:, None]).squeeze(1)
    if protocol == "repeat_aware":
        hidden.scatter_(1, targets[:, None], False)
        target_hidden[:] = False
    elif protocol != "reference":
        raise ValueError(f"unknown protocol {protocol!r}")
    scores[hidden] = -torch.inf
    ahead = (scores > target_scores[:, None]).sum(1)
    tied = (scores == target_scores[:, None]).sum(1) - 1  # the target ties with itself
    ranks = (1 + ahead + tied).double()
    ranks[target_hidden | ~torch.isfinite(target_scores)] = torch.inf
    return ranks


def per_user_metrics(ranks: torch.Tensor, ks) -> dict[str, np.ndarray]:
    out = {}
    for k in ks:
        hit = ranks <= k
        out[f"hr@{k}"] = hit.double().numpy()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 1), torch.zeros_like(ranks)).numpy()
    return out


def summarise(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(values.mean()) for name, values in per_user.items()}


def top_k(scores: torch.Tensor, histories: list, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k items per row of scores [U, N+1], excluding padding and each user's history."""
    scores = scores.detach().cpu().float().clone()
    scores[:, 0] = -torch.inf
    scores[history_mask(histories, scores.shape)] = -torch.inf
    return scores.topk(min(k, scores.shape[1] - 1), dim=1)  # values, item indices [U, k]


def ranking_metrics(score_fn: Callable, split, ks, protocols, batch: int = 1024) -> tuple[dict, dict]:
    """Summary and per-user metrics of an evaluation split (pipeline.data.EvalSplit) for every
    protocol; score_fn(inputs [U, L]) -> scores [U, N+1]."""
    per_user = {p: {} for p in protocols}
    for lo in range(0, len(split.targets), batch):
        rows = slice(lo, lo + batch)
        scores = score_fn(split.inputs[rows])
        targets = torch.as_tensor(split.targets[rows])
        for p in protocols:
            ranks = target_ranks(scores, targets, split.histories[rows], p)
            for name, values in per_user_metrics(ranks, ks).items():
                per_user[p].setdefault(name, []).append(values)
    per_user = {p: {k: np.concatenate(v) for k, v in m.items()} for p, m in per_user.items()}
    return {p: summarise(m) for p, m in per_user.items()}, per_user
