"""Paired t-test between two runs over per-user metrics (the paper's significance marks, p < 0.05).

Both runs must be evaluated on the same users and targets (the same dataset): the per-user
tables written by evaluate ({run}.per_user.parquet) are joined on user_id, and a mismatch is an
error rather than a silently smaller test.

Usage: python -m pipeline.significance A.per_user.parquet B.per_user.parquet
       [--metric ndcg@10] [--split test] [--protocol reference] [--alpha 0.05]
"""
import argparse
import json
from pathlib import Path

from pipeline.paired_test import SignificanceError, paired_t_test


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path, help="per-user metrics of run A ({run}.per_user.parquet)")
    parser.add_argument("run_b", type=Path, help="per-user metrics of run B")
    parser.add_argument("--metric", default="ndcg@10")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--protocol", default="reference", choices=["reference", "repeat_aware"])
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args(argv)
    try:
        result = paired_t_test(args.run_a, args.run_b, args.metric, args.split, args.protocol, args.alpha)
    except (SignificanceError, OSError) as e:
        raise SystemExit(f"significance: {e}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
