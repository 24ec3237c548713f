"""Full ranking: rank of the target among all items, HR@k and NDCG@k per user, top-k lists.

Ties are counted against the target (pessimistic), so a constant scorer earns nothing.
Two protocols for history masking:
- reference: every item in the user's history is excluded; a target that repeats a history
  item is therefore a miss (rank = inf), as in the reference implementation;
- repeat_aware: history items are excluded except the target itself.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data import seen_matrix

PROTOCOLS = ("reference", "repeat_aware")


# Scores of one block of users are held at once: [users, N+1] float32 within this budget, so a
# large catalogue is ranked in smaller blocks of users (at least one).
BLOCK_BYTES = 256 * 2**20
# On a CPU the comparison passes are memory-bound: a block whose scores stay in the cache
# (a few MiB) ranked Scientific's validation 2.1x faster at 1 thread than blocks of 1,024 users
# (bench/rank_throughput.py). At least CPU_MIN_USERS users a block, so that the item embeddings
# read for each block's matmul stay a small part of its cost.
CPU_BLOCK_BYTES = 4 * 2**20
CPU_MIN_USERS = 64


def users_per_block(num_items: int, batch: int, device="cpu") -> int:
    """Users scored at once: at most `batch` and BLOCK_BYTES of scores; on a CPU about
    CPU_BLOCK_BYTES of scores (at least CPU_MIN_USERS users)."""
    row = 4 * (num_items + 1)
    users = BLOCK_BYTES // row
    if torch.device(device).type == "cpu":
        users = min(users, max(CPU_MIN_USERS, CPU_BLOCK_BYTES // row))
    return max(1, min(batch, users))


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [U, N+1] (column 0 = padding), targets [U], seen [U, H] (each user's distinct
    history items, 0-padded) -> the target's 1-based rank [U] (float64, inf for a non-finite
    target score) among the items outside the history, and whether the target is in it [U].

    One comparison pass over the scores: every item scoring at least the target's (the target
    included, ties against it) is counted, then padding and the history items other than the
    target, gathered, are taken back out. Both protocols share these ranks."""
    t = scores.gather(1, targets[:, None])  # [U, 1]
    at_least = (scores >= t).sum(1)  # the target itself, ties and items ahead
    target_seen = seen == targets[:, None]  # [U, H]
    others = seen.masked_fill(target_seen, 0)  # history items other than the target, 0 = none
    hidden = ((scores.gather(1, others) >= t) & (others != 0)).sum(1) + (scores[:, 0] >= t[:, 0])
    ranks = (at_least - hidden).double()
    ranks[~torch.isfinite(t[:, 0])] = torch.inf
    return ranks, target_seen.any(1)


def protocol_ranks(ranks: torch.Tensor, target_seen: torch.Tensor, protocol: str) -> torch.Tensor:
    """reference: a target that repeats a history item is a miss; repeat_aware: ranked as is."""
    if protocol == "reference":
        return ranks.masked_fill(target_seen, torch.inf)
    if protocol == "repeat_aware":
        return ranks
    raise ValueError(f"unknown protocol {protocol!r}")


def per_user_metrics(ranks: torch.Tensor, ks) -> dict[str, np.ndarray]:
    out = {}
    for k in ks:
        hit = ranks <= k
        out[f"hr@{k}"] = hit.double().numpy()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 1), torch.zeros_like(ranks)).numpy()
    return out


def summarise(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(values.mean()) for name, values in per_user.items()}


def top_k(scores: torch.Tensor, seen: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k items per row of scores [U, N+1] outside padding and each user's history (seen
    [U, H], 0-padded): values and item indices [U, k]. Overwrites `scores`."""
    scores.scatter_(1, seen, -torch.inf)  # the history; its 0-padding hides column 0 as well
    scores[:, 0] = -torch.inf
    return scores.topk(min(k, scores.shape[1] - 1), dim=1)


@dataclass
class Ranking:
    summary: dict  # {protocol: {metric: mean over users}}
    per_user: dict  # {protocol: {metric: [U]}}
    top_scores: np.ndarray | None = None  # [U, top]; -inf where fewer items were left
    top_items: np.ndarray | None = None  # [U, top] item indices


def rank_split(score_fn: Callable, split, num_items: int, ks, protocols, batch: int = 1024,
               top: int = 0, progress: str | None = None, device="cpu") -> Ranking:
    """Rank every user of an evaluation split (pipeline.data.EvalSplit) in one scoring pass:
    metrics for each protocol and, with `top`, each user's best unseen items.

    score_fn(inputs [U, L] numpy) -> scores [U, N+1] on `device`, in blocks of users_per_block
    users. progress: a progress bar's label (users/s and ETA), or None for none."""
    batch = users_per_block(num_items, batch, device)
    ranks, seen_targets, tops = [], [], []
    bar = tqdm(total=len(split.targets), unit="user", desc=progress, disable=progress is None)
    for lo in range(0, len(split.targets), batch):
        scores = score_fn(split.inputs[lo:lo + batch]).float()
        dev = scores.device
        targets = torch.as_tensor(split.targets[lo:lo + batch], device=dev)
        # each block's histories padded to its own longest: one heavy user widens only its block
        seen = torch.as_tensor(seen_matrix(split.histories[lo:lo + batch]), dtype=torch.int64, device=dev)
        r, s = target_ranks(scores, targets, seen)
        ranks.append(r.cpu())
        seen_targets.append(s.cpu())
        if top:
            values, items = top_k(scores, seen, top)
            tops.append((values.cpu().numpy(), items.cpu().numpy()))
        bar.update(len(r))
    bar.close()
    ranks, seen_targets = torch.cat(ranks), torch.cat(seen_targets)
    per_user = {p: per_user_metrics(protocol_ranks(ranks, seen_targets, p), ks) for p in protocols}
    ranking = Ranking({p: summarise(m) for p, m in per_user.items()}, per_user)
    if top:
        ranking.top_scores = np.concatenate([v for v, _ in tops])
        ranking.top_items = np.concatenate([i for _, i in tops])
    return ranking
