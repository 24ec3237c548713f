import math

import numpy as np
import pytest
import torch

from pipeline.data import EvalSplit, seen_matrix
from pipeline.metrics import (PROTOCOLS, per_user_metrics, protocol_ranks, rank_split, summarise, target_ranks, top_k,
                              users_per_block)


def batch_ranks(scores, targets, histories, protocol="reference"):
    seen = torch.as_tensor(seen_matrix([np.array(h, dtype=np.int64) for h in histories]), dtype=torch.int64)
    return protocol_ranks(*target_ranks(torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(targets), seen),
                          protocol)


def ranks(scores, target, history=(), protocol="reference"):
    return batch_ranks([scores], [target], [history], protocol)[0].item()


def test_rank_counts_items_scored_higher():
    # column 0 is padding and never ranked, even with the best score
    assert ranks([9.0, 0.1, 0.5, 0.3, 0.2], target=3) == 2
    assert ranks([9.0, 0.1, 0.5, 0.3, 0.2], target=2) == 1


def test_ties_count_against_the_target():
    assert ranks([0, 1.0, 1.0, 1.0, 0.5], target=2) == 3
    assert ranks([0, 1.0, 1.0, 1.0, 0.5], target=4) == 4


def test_history_items_are_excluded():
    # item 1 scores highest but is in the history: the target moves up to rank 1
    assert ranks([0, 5.0, 1.0, 0.5], target=2, history=[1]) == 1


def test_target_repeated_in_history():
    scores = [0, 5.0, 1.0, 0.5]
    assert math.isinf(ranks(scores, target=1, history=[1, 3], protocol="reference"))  # the reference: a miss
    assert ranks(scores, target=1, history=[1, 3], protocol="repeat_aware") == 1
    # repeat-aware still masks the other history items
    assert ranks([0, 1.0, 5.0, 0.5], target=1, history=[1, 2], protocol="repeat_aware") == 1


def test_hr_and_ndcg_by_hand():
    r = torch.tensor([1.0, 3.0, 11.0, math.inf], dtype=torch.float64)
    m = summarise(per_user_metrics(r, [10]))
    assert m["hr@10"] == pytest.approx(2 / 4)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(4)) / 4)
    m5 = summarise(per_user_metrics(r, [5]))
    assert m5["hr@5"] == pytest.approx(2 / 4)


def test_batch_of_users():
    r = batch_ranks([[0, 3.0, 2.0, 1.0], [0, 1.0, 2.0, 3.0]], [3, 3], [[1], [2]])
    assert r.tolist() == [2.0, 1.0]


def test_unknown_protocol():
    with pytest.raises(ValueError):
        ranks([0, 1.0], target=1, protocol="optimistic")


def test_repeated_history_items_are_excluded_once():
    # item 1 twice in the history, item 2 scores higher than the target too
    assert ranks([0, 5.0, 4.0, 1.0, 0.5], target=3, history=[1, 1, 4]) == 2


def test_non_finite_target_score_is_a_miss():
    assert math.isinf(ranks([0, float("nan"), 1.0], target=1))


def brute_force_ranks(scores, targets, histories, protocol):
    """The definition, one user at a time: 1 + items outside padding and the history (but the
    target, for repeat-aware) scoring at least the target's, other than the target itself."""
    out = []
    for s, t, h in zip(scores.tolist(), targets.tolist(), histories):
        if protocol == "reference" and t in h:
            out.append(math.inf)
            continue
        hidden = {0} | (set(h.tolist()) - {t})
        out.append(1 + sum(1 for j, v in enumerate(s) if j != t and j not in hidden and v >= s[t]))
    return out


@pytest.mark.parametrize("protocol", ["reference", "repeat_aware"])
def test_ranks_equal_the_definition_on_random_data(protocol):
    rng = np.random.default_rng(0)
    scores = torch.as_tensor(rng.integers(0, 6, size=(50, 30)).astype(np.float32))  # many ties
    targets = torch.as_tensor(rng.integers(1, 30, size=50))
    histories = [rng.integers(1, 30, size=rng.integers(0, 12)) for _ in range(50)]
    assert batch_ranks(scores, targets, histories, protocol).tolist() == brute_force_ranks(
        scores, targets, histories, protocol)


def test_top_k_skips_padding_and_history():
    scores = torch.tensor([[9.0, 1.0, 5.0, 3.0, 4.0]])
    values, items = top_k(scores.clone(), torch.tensor([[2, 0]]), 3)
    assert items.tolist() == [[4, 3, 1]] and values.tolist() == [[4.0, 3.0, 1.0]]


def test_cpu_blocks_fit_the_cache_and_rank_as_gpu_blocks():
    assert users_per_block(20825, 1024, "cpu") == 64  # 20,826 x 4 bytes a user: 4 MiB is 50, at least 64
    assert users_per_block(1000, 1024, "cpu") == 1024  # 4 MiB holds them all
    assert users_per_block(20825, 1024, "cuda") == 1024
    assert users_per_block(10**7, 1024, "cuda") == 6  # 256 MiB of scores
    gen = torch.Generator().manual_seed(0)
    U, I = torch.randn(300, 8, generator=gen), torch.randn(20001, 8, generator=gen)
    rng = np.random.default_rng(0)
    split = EvalSplit([str(u) for u in range(300)], np.arange(300)[:, None],
                      [rng.integers(1, 20001, size=rng.integers(1, 9)) for _ in range(300)], rng.integers(1, 20001, size=300))
    score = lambda inputs: U[torch.as_tensor(inputs[:, 0])] @ I.T  # noqa: E731
    a = rank_split(score, split, 20000, [10], PROTOCOLS, top=5, device="cpu")
    b = rank_split(score, split, 20000, [10], PROTOCOLS, top=5, device="cuda")  # blocks only: the scores stay here
    assert users_per_block(20000, 1024, "cpu") < 300 <= users_per_block(20000, 1024, "cuda")
    for p in PROTOCOLS:
        assert all(np.array_equal(a.per_user[p][m], b.per_user[p][m]) for m in a.per_user[p])
    assert np.array_equal(a.top_items, b.top_items)
