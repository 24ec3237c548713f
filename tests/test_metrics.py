import math

import numpy as np
import pytest
import torch

from pipeline import metrics
from pipeline.data import EvalSplit, seen_matrix
from pipeline.metrics import (PROTOCOLS, block_shape, per_user_metrics, protocol_ranks, rank_split, summarise,
                              target_ranks, top_k, users_per_block)


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
    target, for repeat-aware) scoring at least the target's, other than the target itself; a
    miss for a non-finite target score."""
    out = []
    for s, t, h in zip(scores.tolist(), targets.tolist(), histories):
        if (protocol == "reference" and t in h) or not math.isfinite(s[t]):
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
    score = lambda inputs: lambda lo, hi: U[torch.as_tensor(inputs[:, 0])] @ I[lo:hi].T  # noqa: E731
    a = rank_split(score, split, 20000, [10], PROTOCOLS, top=5, device="cpu")
    b = rank_split(score, split, 20000, [10], PROTOCOLS, top=5, device="cuda")  # blocks only: the scores stay here
    assert users_per_block(20000, 1024, "cpu") < 300 <= users_per_block(20000, 1024, "cuda")
    for p in PROTOCOLS:
        assert all(np.array_equal(a.per_user[p][m], b.per_user[p][m]) for m in a.per_user[p])
    assert np.array_equal(a.top_items, b.top_items)


def matrix_scorer(scores, calls=None):
    """A scorer reading a fixed score matrix [users, N+1], the inputs [U, 1] being user rows; it
    records each call's bytes of scores in `calls`."""
    def score(inputs):
        rows = torch.as_tensor(inputs[:, 0])

        def columns(lo, hi):
            if calls is not None:
                calls.append(4 * len(rows) * (hi - lo))
            return scores[rows, lo:hi].clone()
        return columns
    return score


def random_case(rng, users: int, items: int, ties: bool):
    """Scores [users, N+1] (small integers: many ties; or normal) whose last 4 items score -inf (an
    ID model's unknown items), and a split of histories of 0-11 items, some holding the target."""
    values = rng.integers(0, 6, size=(users, items + 1)) if ties else rng.standard_normal((users, items + 1))
    scores = torch.as_tensor(values, dtype=torch.float32)
    scores[:, -4:] = -torch.inf
    targets = rng.integers(1, items + 1, size=users)
    histories = [rng.integers(1, items + 1, size=rng.integers(0, 12)) for _ in range(users)]
    return scores, EvalSplit([str(u) for u in range(users)], np.arange(users)[:, None], histories, targets)


def assert_same_ranking(a, b, exact_items: bool):
    """Equal metrics and top-k values; top-k items equal where the values are finite, or (ties
    broken either way) only each item's value checked by the caller."""
    for p in a.per_user:
        assert all(np.array_equal(a.per_user[p][m], b.per_user[p][m]) for m in a.per_user[p])
    assert np.array_equal(a.top_scores, b.top_scores)
    if exact_items:
        finite = np.isfinite(a.top_scores)
        assert np.array_equal(a.top_items[finite], b.top_items[finite])


def assert_top_is_the_definition(ranking, scores, split):
    """Each user's finite top values are their best unseen items' scores, from distinct unseen items."""
    for u, (values, items) in enumerate(zip(ranking.top_scores, ranking.top_items)):
        finite = np.isfinite(values)
        unseen = sorted(set(range(1, scores.shape[1])) - set(split.histories[u].tolist()))
        best = sorted((v for v in scores[u, unseen].tolist() if math.isfinite(v)), reverse=True)
        assert values[finite].tolist() == best[:finite.sum()] and finite.sum() == min(len(best), len(values))
        chosen = items[finite].tolist()
        assert len(set(chosen)) == len(chosen) and set(chosen) <= set(unseen)
        assert scores[u, chosen].tolist() == values[finite].tolist()


@pytest.mark.parametrize("ties", [True, False])
def test_item_chunks_rank_as_whole_rows_and_as_the_definition(ties):
    rng = np.random.default_rng(int(ties))
    items = 29
    scores, split = random_case(rng, 40, items, ties)
    ks = [1, 5, items]  # NDCG@N gives every finite rank exactly
    whole = rank_split(matrix_scorer(scores), split, items, ks, PROTOCOLS, batch=16, top=items)
    for p in PROTOCOLS:
        expected = per_user_metrics(torch.tensor(brute_force_ranks(scores, torch.as_tensor(split.targets),
                                                                   split.histories, p), dtype=torch.float64), ks)
        assert all(np.array_equal(whole.per_user[p][m], expected[m]) for m in expected)
    assert_top_is_the_definition(whole, scores, split)
    for chunk in (1, 2, 7, items):
        chunked = rank_split(matrix_scorer(scores), split, items, ks, PROTOCOLS, batch=16, top=items, chunk_columns=chunk)
        assert_same_ranking(whole, chunked, exact_items=not ties)
        assert_top_is_the_definition(chunked, scores, split)


def test_block_shape_chunks_items_only_when_rows_do_not_fit():
    assert block_shape(20825, 1024, "cpu") == (64, 20826)  # every current catalogue: whole rows, as before
    assert block_shape(10**6, 1024, "cuda") == (67, 10**6 + 1)
    assert block_shape(2**20, 1024, "cuda") == (64, 2**20)  # 64 rows no longer fit: 64 users x 2^20 columns
    assert block_shape(10**9, 1024, "cuda") == (64, 2**20)  # 256 MiB of scores whatever the catalogue
    assert block_shape(10**9, 8, "cpu") == (8, 2**23)


def test_a_catalogue_beyond_the_budget_is_ranked_in_bounded_chunks(monkeypatch):
    rng = np.random.default_rng(2)
    items = 3000
    scores, split = random_case(rng, 100, items, ties=True)
    whole = rank_split(matrix_scorer(scores), split, items, [10], PROTOCOLS, top=10)
    monkeypatch.setattr(metrics, "BLOCK_BYTES", 2**14)  # 16 KiB: 64 users' rows of 3,001 scores are 750 KiB
    calls = []
    chunked = rank_split(matrix_scorer(scores, calls), split, items, [10], PROTOCOLS, top=10)
    assert max(calls) <= 2**14 and len(calls) > 2 * 47  # two blocks of 64 users, 47 chunks of 64 items each
    assert_same_ranking(whole, chunked, exact_items=False)
    assert_top_is_the_definition(chunked, scores, split)
