"""aggregate: a run's per-seed evaluations -> its result, the mean and spread over seeds.

Reads each seed's result.json, per_user.parquet and topk.parquet (evaluate's outputs in
results/{dataset}/runs/{run}/seed{seed}/) and writes
- results/{dataset}/{run}.json: the first seed's result with `metrics` and
  `metrics_repeat_aware` replaced by the means over seeds (and `efficiency.seconds_per_epoch`
  by its mean), `metrics_std` and
  `metrics_repeat_aware_std` (sample standard deviation; 0 for one seed), `seeds`, `per_seed`
  (seed, test and valid metrics, best epoch, epochs, converged, seconds per epoch) and
  `converged` (every seed converged);
- {run}.per_user.parquet: each user's metrics averaged over the seeds (the paired t-tests'
  input), same rows as one seed's;
- {run}.topk.parquet: every seed's recommendations, with a `seed` column.

Usage: python -m pipeline.aggregate --results R1.json [R2.json ...] --out X.json --per-user X.parquet --topk X.parquet
(each result.json's per_user.parquet and topk.parquet are read from beside it)
"""
import argparse
import statistics
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data import DataError
from pipeline.files import atomic_path, read_json, write_json

KEYS = ("user_id", "split", "protocol", "target")


def _mean_std(values: list[dict]) -> tuple[dict, dict]:
    """{split: {metric: mean}}, {split: {metric: std}} over seeds' {split: {metric: value}}."""
    means, stds = {}, {}
    for split in values[0]:
        means[split], stds[split] = {}, {}
        for metric in values[0][split]:
            xs = [v[split][metric] for v in values]
            means[split][metric] = float(np.mean(xs))
            stds[split][metric] = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return means, stds


def aggregate(results: list[Path], out_json: Path, per_user_out: Path, topk_out: Path) -> dict:
    found = [read_json(p) for p in results]
    seeds = [r["seed"] for r in found]
    if len(set(seeds)) != len(seeds):
        raise DataError(f"the same seed appears twice among {', '.join(map(str, results))}")
    runs = {(r["dataset"], r["run"]) for r in found}
    if len(runs) != 1:
        raise DataError(f"results of different runs cannot be aggregated: {sorted(runs)}")
    result = dict(found[0])
    for key in ("metrics", "metrics_repeat_aware"):
        result[key], result[f"{key}_std"] = _mean_std([r[key] for r in found])
    result["seeds"] = seeds
    result["per_seed"] = [{"seed": r["seed"], "metrics": r["metrics"], "best_epoch": r.get("best_epoch"),
                           "epochs": r.get("epochs"), "converged": r.get("converged"),
                           "seconds_per_epoch": r["efficiency"].get("seconds_per_epoch")} for r in found]
    trained = [r for r in found if r.get("epochs") is not None]
    if trained:  # a typical seed's, so that one-seed results read as before
        result["best_epoch"] = statistics.median_low(r["best_epoch"] for r in trained)
        result["epochs"] = statistics.median_low(r["epochs"] for r in trained)
        result["converged"] = all(r.get("converged") for r in trained)
        result["efficiency"] = dict(result["efficiency"], seconds_per_epoch=float(np.mean(
            [r["efficiency"]["seconds_per_epoch"] for r in trained])))  # the mean over seeds

    tables = [pq.read_table(Path(p).parent / "per_user.parquet") for p in results]
    first = tables[0].select(KEYS)
    for path, table in zip(results, tables[1:]):
        if not table.select(KEYS).equals(first):
            raise DataError(f"{path}: its per-user rows differ from {results[0]}'s (other users or targets)")
    metrics = [c for c in tables[0].column_names if c not in KEYS]
    per_user = first
    for m in metrics:
        per_user = per_user.append_column(m, pa.array(np.mean([t.column(m).to_numpy() for t in tables], axis=0)))
    topk = [pq.read_table(Path(p).parent / "topk.parquet") for p in results]
    topk = pa.concat_tables([t.append_column("seed", pa.array([s] * t.num_rows, pa.int64()))
                             for s, t in zip(seeds, topk)])
    with atomic_path(per_user_out) as tmp:
        pq.write_table(per_user, tmp)
    with atomic_path(topk_out) as tmp:
        pq.write_table(topk, tmp)
    write_json(out_json, result)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, nargs="+", required=True, help="each seed's result.json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-user", type=Path, required=True)
    parser.add_argument("--topk", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        result = aggregate(args.results, args.out, args.per_user, args.topk)
    except (DataError, OSError) as e:
        raise SystemExit(f"aggregate: {e}")
    test, std = result["metrics"]["test"], result["metrics_std"]["test"]
    print(f"{result['dataset']}/{result['run']} over seeds {result['seeds']}: "
          + "  ".join(f"{k} {v:.4f} +- {std[k]:.4f}" for k, v in test.items()))


if __name__ == "__main__":
    main()
