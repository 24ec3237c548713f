import math

import numpy as np
import pytest
import torch

from pipeline.metrics import per_user_metrics, summarise, target_ranks


def ranks(scores, target, history=(), protocol="reference"):
    return target_ranks(torch.tensor([scores], dtype=torch.float32), torch.tensor([target]),
                        [np.array(history, dtype=np.int64)], protocol)[0].item()


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
    scores = torch.tensor([[0, 3.0, 2.0, 1.0], [0, 1.0, 2.0, 3.0]])
    r = target_ranks(scores, torch.tensor([3, 3]), [np.array([1]), np.array([2])], "reference")
    assert r.tolist() == [2.0, 1.0]


def test_unknown_protocol():
    with pytest.raises(ValueError):
        ranks([0, 1.0], target=1, protocol="optimistic")
