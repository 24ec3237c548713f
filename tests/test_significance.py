"""The paired t-test behind the tables' significance marks, on fixed per-user inputs."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from pipeline.paired_test import SignificanceError, paired_t_test


def per_user(path, values, users=None, targets=None):
    users = users or [f"u{i}" for i in range(len(values))]
    targets = targets or list(range(1, len(values) + 1))
    rows = len(values)
    table = pa.table({"user_id": users * 2, "split": ["test"] * rows + ["valid"] * rows,
                      "protocol": ["reference"] * 2 * rows, "target": targets * 2,
                      "ndcg@10": list(values) + [0.0] * rows})
    pq.write_table(table, path)
    return path


A = [0.9, 0.8, 0.7, 1.0, 0.6, 0.9, 0.8, 0.7]
B = [0.1, 0.2, 0.0, 0.3, 0.1, 0.2, 0.0, 0.1]
NEAR = [0.88, 0.82, 0.69, 0.97, 0.63, 0.91, 0.78, 0.72]


def test_clear_and_unclear_differences(tmp_path):
    a, b, near = (per_user(tmp_path / f"{n}.parquet", v) for n, v in (("a", A), ("b", B), ("near", NEAR)))
    clear = paired_t_test(a, b)
    expected = stats.ttest_rel(A, B)
    assert clear["users"] == 8 and clear["p"] == pytest.approx(expected.pvalue) and clear["t"] == pytest.approx(expected.statistic)
    assert clear["p"] < 1e-5 and clear["significant"]
    assert clear["mean_a"] == pytest.approx(sum(A) / 8)
    unclear = paired_t_test(a, near)
    assert unclear["p"] > 0.05 and not unclear["significant"]
    same = paired_t_test(a, a)
    assert same["p"] == 1.0 and not same["significant"]


def test_pairs_users_by_id_not_by_row(tmp_path):
    a = per_user(tmp_path / "a.parquet", A)
    users = [f"u{i}" for i in range(8)]
    shuffled = per_user(tmp_path / "s.parquet", A[::-1], users=users[::-1], targets=list(range(8, 0, -1)))
    assert paired_t_test(a, shuffled)["p"] == 1.0  # the same values per user, rows reversed


def test_different_users_or_targets_are_refused(tmp_path):
    a = per_user(tmp_path / "a.parquet", A)
    other_users = per_user(tmp_path / "o.parquet", B, users=[f"v{i}" for i in range(8)])
    with pytest.raises(SignificanceError, match="rank different users"):
        paired_t_test(a, other_users)
    other_targets = per_user(tmp_path / "t.parquet", B, targets=[9] * 8)
    with pytest.raises(SignificanceError, match="different targets"):
        paired_t_test(a, other_targets)
    with pytest.raises(SignificanceError, match="no metric 'hr@10'"):
        paired_t_test(a, a, metric="hr@10")
