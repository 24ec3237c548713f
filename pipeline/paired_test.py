"""The paired t-test of two runs over the same users' metrics (pipeline.significance's command
line, and the tables' significance tests in pipeline.report)."""
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy import stats


class SignificanceError(ValueError):
    pass


def _per_user(path: Path, metric: str, split: str, protocol: str) -> dict[str, tuple[int, float]]:
    table = pq.read_table(path)
    if metric not in table.column_names:
        known = [c for c in table.column_names if "@" in c]
        raise SignificanceError(f"{path}: no metric '{metric}' (has {', '.join(known)})")
    rows = table.filter(pc.and_(pc.equal(table["split"], split), pc.equal(table["protocol"], protocol)))
    if rows.num_rows == 0:
        raise SignificanceError(f"{path}: no rows for split '{split}' and protocol '{protocol}'")
    return dict(zip(rows["user_id"].to_pylist(), zip(rows["target"].to_pylist(), rows[metric].to_pylist())))


def paired_t_test(run_a: Path, run_b: Path, metric: str = "ndcg@10", split: str = "test",
                  protocol: str = "reference", alpha: float = 0.05) -> dict:
    """Two-sided paired t-test of run A against run B over the same users."""
    a, b = (_per_user(p, metric, split, protocol) for p in (run_a, run_b))
    if a.keys() != b.keys():
        raise SignificanceError(f"{run_a} and {run_b} rank different users ({len(a)} and {len(b)}; "
                                f"{len(a.keys() ^ b.keys())} not in both): evaluate them on the same dataset")
    users = sorted(a)
    if any(a[u][0] != b[u][0] for u in users):
        raise SignificanceError(f"{run_a} and {run_b} have different targets for the same users")
    x = np.array([a[u][1] for u in users])
    y = np.array([b[u][1] for u in users])
    if np.array_equal(x, y):  # ttest_rel is undefined for identical samples: no evidence of a difference
        t, p = 0.0, 1.0
    else:
        t, p = (float(v) for v in stats.ttest_rel(x, y))
    return {"metric": metric, "split": split, "protocol": protocol, "users": len(users),
            "mean_a": float(x.mean()), "mean_b": float(y.mean()), "t": t, "p": p, "alpha": alpha,
            "significant": bool(p < alpha)}

