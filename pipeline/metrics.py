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


# Scores of one block of users are held at once: [users, columns] float32 within this budget.
# Whole rows ([users, N+1]) while MIN_USERS users' rows fit (every catalogue below 2^20 items);
# beyond, MIN_USERS users (fewer, with wider chunks, when the batch is smaller) against chunks of
# item columns, so that a catalogue of any size is ranked in bounded memory.
BLOCK_BYTES = 256 * 2**20
# On a CPU the comparison passes are memory-bound: a block whose scores stay in the cache
# (a few MiB) ranked Scientific's validation 2.1x faster at 1 thread than blocks of 1,024 users
# (bench/rank_throughput.py). At least MIN_USERS users a block (chunked, on any device), so that
# the item embeddings read for each block's matmul stay a small part of its cost.
CPU_BLOCK_BYTES = 4 * 2**20
MIN_USERS = 64

# A scorer: score_fn(inputs [U, L] numpy) -> columns, where columns(lo, hi) -> a fresh tensor of
# the scores [U, hi - lo] of items lo..hi-1 (column 0 = padding), which the caller may overwrite.
# score_fn computes the users' states once; columns is called once per chunk of items (twice
# when a block is ranked in chunks) and must give the same bits for the same bounds each time.
Columns = Callable[[int, int], torch.Tensor]


def users_per_block(num_items: int, batch: int, device="cpu") -> int:
    """Users scored at once over whole rows: at most `batch` and BLOCK_BYTES of scores; on a CPU
    about CPU_BLOCK_BYTES of scores (at least MIN_USERS users)."""
    row = 4 * (num_items + 1)
    users = BLOCK_BYTES // row
    if torch.device(device).type == "cpu":
        users = min(users, max(MIN_USERS, CPU_BLOCK_BYTES // row))
    return max(1, min(batch, users))


def block_shape(num_items: int, batch: int, device="cpu") -> tuple[int, int]:
    """(users, item columns) scored at once: whole rows of users_per_block users while
    min(batch, MIN_USERS) rows fit in BLOCK_BYTES, else that many users against chunks of columns
    that fit."""
    least = min(batch, MIN_USERS)
    if 4 * least * (num_items + 1) <= BLOCK_BYTES:
        return users_per_block(num_items, batch, device), num_items + 1
    return least, BLOCK_BYTES // (4 * least)


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


def top_k(scores: torch.Tensor, seen: torch.Tensor, k: int, lo: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k items per row of scores [U, C] (items lo..lo+C-1; column 0 = padding) outside
    padding and each user's history (seen [U, H], 0-padded): values and item indices
    [U, min(k, items in the chunk)]. Overwrites `scores`."""
    hi = lo + scores.shape[1]
    inside = (seen >= max(lo, 1)) & (seen < hi)  # [U, H] history items among these columns
    rows = torch.arange(len(seen), device=seen.device)[:, None].expand_as(seen)
    scores[rows[inside], seen[inside] - lo] = -torch.inf
    if lo == 0:
        scores[:, 0] = -torch.inf
    values, items = scores.topk(min(k, hi - max(lo, 1)), dim=1)
    return values, items + lo


def merge_top_k(best, chunk_best, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best k of two (values, items) lists [U, a] and [U, b]; best may be None."""
    if best is None:
        return chunk_best
    values, items = torch.cat([best[0], chunk_best[0]], 1), torch.cat([best[1], chunk_best[1]], 1)
    values, at = values.topk(min(k, values.shape[1]), dim=1)
    return values, items.gather(1, at)


def chunks(num_items: int, columns: int) -> list[tuple[int, int]]:
    """Bounds (lo, hi) of the item column chunks of a catalogue, padding column 0 included."""
    return [(lo, min(lo + columns, num_items + 1)) for lo in range(0, num_items + 1, columns)]


def target_scores(columns: Columns, targets: torch.Tensor, bounds) -> torch.Tensor:
    """Each target's score [U], read from the scores of the chunk holding it; chunks holding no
    target are not scored."""
    t = None
    for lo, hi in bounds:
        rows = ((targets >= lo) & (targets < hi)).nonzero()[:, 0]  # users whose target is here
        if len(rows):
            scores = columns(lo, hi).float()  # [U, hi - lo]
            t = scores.new_full((len(targets),), torch.nan) if t is None else t  # NaN: no chunk holds it
            here, at = rows.to(t.device), (targets[rows] - lo).to(t.device)
            t[here] = scores[here, at]
    return t if t is not None else torch.full((len(targets),), torch.nan)


def chunk_counts(scores: torch.Tensor, lo: int, t: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Of the items in chunk scores [U, C] from column lo: how many score at least the target's
    t [U], padding and the history items other than the target (others [U, H], 0 = none) left
    out -> [U]."""
    hi = lo + scores.shape[1]
    at_least = (scores >= t[:, None]).sum(1)
    inside = (others >= max(lo, 1)) & (others < hi)  # [U, H]
    hidden = ((scores.gather(1, (others - lo).clamp(0, hi - lo - 1)) >= t[:, None]) & inside).sum(1)
    if lo == 0:
        hidden = hidden + (scores[:, 0] >= t)  # padding
    return at_least - hidden


def chunked_ranks(columns: Columns, targets: torch.Tensor, seen: torch.Tensor, bounds, top: int):
    """target_ranks and top_k of a block, its scores held a chunk of item columns at a time:
    ranks [U], whether the target is in the history [U], and with `top` the best (values, items).

    A target's score must come from the same arithmetic as the scores it is compared with: a
    dot product computed apart (another shape, another kernel) can differ in its last bits and
    break a tie. So a first pass reads the targets' scores from their chunks and a second scores
    the same chunks again (same inputs and shapes, so the same bits) to count and pick the top
    items; the first pass skips chunks that hold none of the block's targets."""
    t = target_scores(columns, targets, bounds)  # [U]
    targets, seen = targets.to(t.device), seen.to(t.device)
    target_seen = seen == targets[:, None]  # [U, H]
    others = seen.masked_fill(target_seen, 0)
    at_least, best = torch.zeros_like(targets), None
    for lo, hi in bounds:
        scores = columns(lo, hi).float()  # [U, hi - lo]
        at_least += chunk_counts(scores, lo, t, others)
        if top:
            best = merge_top_k(best, top_k(scores, seen, top, lo), top)
        del scores  # before the next chunk is scored: one chunk's scores at a time
    ranks = at_least.double()
    ranks[~torch.isfinite(t)] = torch.inf
    return ranks, target_seen.any(1), best


def rank_block(columns: Columns, targets: torch.Tensor, seen: torch.Tensor, num_items: int, chunk: int, top: int):
    """A block's ranks [U], whether each target is in its history [U] and with `top` its best
    (values, items) [U, top]: from whole rows of scores when chunk > num_items, else in chunks."""
    if chunk <= num_items:
        return chunked_ranks(columns, targets, seen, chunks(num_items, chunk), top)
    scores = columns(0, num_items + 1).float()  # [U, N+1]
    targets, seen = targets.to(scores.device), seen.to(scores.device)
    ranks, target_seen = target_ranks(scores, targets, seen)
    return ranks, target_seen, top_k(scores, seen, top) if top else None


def best_items(columns: Columns, seen: torch.Tensor, num_items: int, k: int):
    """The best k items (values, items) [U, min(k, N)] outside padding and the history (seen
    [U, H]) of a block of users, a chunk of item columns at a time when their rows do not fit
    BLOCK_BYTES."""
    best, columns_at_once = None, max(1, BLOCK_BYTES // (4 * len(seen)))
    for lo, hi in chunks(num_items, columns_at_once):
        scores = columns(lo, hi).float()
        best = merge_top_k(best, top_k(scores, seen.to(scores.device), k, lo), k)
        del scores  # before the next chunk is scored
    return best


@dataclass
class Ranking:
    summary: dict  # {protocol: {metric: mean over users}}
    per_user: dict  # {protocol: {metric: [U]}}
    top_scores: np.ndarray | None = None  # [U, top]; -inf where fewer items were left
    top_items: np.ndarray | None = None  # [U, top] item indices


def rank_split(score_fn: Callable[[np.ndarray], Columns], split, num_items: int, ks, protocols, batch: int = 1024,
               top: int = 0, progress: str | None = None, device="cpu", chunk_columns: int | None = None) -> Ranking:
    """Rank every user of an evaluation split (pipeline.data.EvalSplit): metrics for each
    protocol and, with `top`, each user's best unseen items.

    score_fn: a scorer (see Columns), called on blocks of users as block_shape says, each block
    ranked from whole rows of scores or in chunks of item columns. chunk_columns: at most this many
    columns at once (tests force chunks with it). progress: a progress bar's label (users/s and
    ETA), or None for none."""
    batch, chunk = block_shape(num_items, batch, device)
    chunk = min(chunk, chunk_columns or chunk)
    ranks, seen_targets, tops = [], [], []
    bar = tqdm(total=len(split.targets), unit="user", desc=progress, disable=progress is None)
    for lo in range(0, len(split.targets), batch):
        targets = torch.as_tensor(split.targets[lo:lo + batch])
        # each block's histories padded to its own longest: one heavy user widens only its block
        seen = torch.as_tensor(seen_matrix(split.histories[lo:lo + batch]), dtype=torch.int64)
        r, s, best = rank_block(score_fn(split.inputs[lo:lo + batch]), targets, seen, num_items, chunk, top)
        ranks.append(r.cpu())
        seen_targets.append(s.cpu())
        if top:
            tops.append((best[0].cpu().numpy(), best[1].cpu().numpy()))
        bar.update(len(r))
    bar.close()
    ranks, seen_targets = torch.cat(ranks), torch.cat(seen_targets)
    per_user = {p: per_user_metrics(protocol_ranks(ranks, seen_targets, p), ks) for p in protocols}
    ranking = Ranking({p: summarise(m) for p, m in per_user.items()}, per_user)
    if top:
        ranking.top_scores = np.concatenate([v for v, _ in tops])
        ranking.top_items = np.concatenate([i for _, i in tops])
    return ranking
