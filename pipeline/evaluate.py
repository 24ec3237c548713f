"""evaluate: full ranking over all items on validation and test -> one seed's result.

Writes (the Snakemake rule: in results/{dataset}/runs/{run}/seed{seed}/) result.json (metrics,
efficiency, resolved config, versions), per_user.parquet (one row per user x split x protocol,
for paired significance tests) and topk.parquet (each test user's 10 recommendations, history
excluded); pipeline.aggregate combines the seeds into results/{dataset}/{run}.json. A trained run is read from --model-dir; popularity ranks by
training counts.

Usage: python -m pipeline.evaluate --run JSON --items I --sequences S [--model-dir DIR] --out X.json
"""
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cache import CacheError, open_store, store_bytes
from pipeline.data import DataError, make_splits, read_sequences
from pipeline.files import atomic_path, read_json, write_json
from pipeline.item_table import run_items
from pipeline.methods import method
from pipeline.metrics import PROTOCOLS, Ranking, rank_split
from pipeline.models.build import load_scorer
from pipeline.runtime import device, parse_run_arguments, run_arguments, versions

TOP_K = 10  # recommendations per test user in {run}.topk.parquet

def text_column(tower: dict) -> dict:
    """{"column": ...} for a text tower (title unless it reads a caption), {} for an image tower."""
    modality = tower["settings"]["modality"] if "settings" in tower else open_store(tower["cache"]).attrs["modality"]
    return {"column": tower.get("column", "title")} if modality == "text" else {}


def top_k_table(ranking: Ranking, split, items) -> pa.Table:
    """Each user's best items, history excluded: user_id, rank, item_idx, item_id, title, score."""
    values, indices = ranking.top_scores, ranking.top_items  # [U, k]
    real = np.isfinite(values)  # fewer than k candidates left once a long history is excluded
    item_ids, titles = items.column("item_id").to_pylist(), items.column("title").to_pylist()
    flat = indices[real]
    return pa.table({
        "user_id": np.repeat(split.user_ids, real.sum(1)),
        "rank": np.nonzero(real)[1].astype(np.int32) + 1,
        "item_idx": flat.astype(np.int32),
        "item_id": [item_ids[i - 1] for i in flat],
        "title": [titles[i - 1] for i in flat],
        "score": values[real].astype(np.float32),
    })


def evaluate(run: dict, items_parquet: Path, sequences_parquet: Path, model_dir: Path | None,
             out_json: Path, per_user_parquet: Path, topk_parquet: Path | None = None) -> dict:
    items = run_items(run, items_parquet)
    user_ids, sequences = read_sequences(sequences_parquet)
    splits = make_splits(user_ids, sequences, items.num_rows, run["train"]["max_history"])
    score = load_scorer(run, items, splits.item_counts, model_dir)
    ks, batch = run["evaluate"]["ks"], run["train"]["eval_batch_size"]

    metrics, tables = {p: {} for p in PROTOCOLS}, []
    for name, split in (("valid", splits.valid), ("test", splits.test)):
        top = TOP_K if name == "test" and topk_parquet else 0
        ranking = rank_split(score, split, items.num_rows, ks, PROTOCOLS, batch=batch, top=top, device=device(),
                             progress=f"rank {name} {run['dataset']}/{run['run']}")
        for protocol in PROTOCOLS:
            metrics[protocol][name] = ranking.summary[protocol]
            tables.append(pa.table({
                "user_id": split.user_ids, "split": [name] * len(split.targets),
                "protocol": [protocol] * len(split.targets), "target": split.targets,
                **ranking.per_user[protocol],
            }))

    log = read_json(model_dir / "train_log.json") if model_dir else {}
    result = {
        "dataset": run["dataset"],
        "run": run["run"],
        "method": run["method"],
        "encoders": {name: {"encoder": t["encoder"], **text_column(t), "kept_states": t["kept_states"]}
                     for name, t in run["towers"].items()},
        "missing_items": {name: dict(open_store(t["cache"]).attrs).get("missing_items", {})
                          for name, t in run["towers"].items() if "cache" in t},
        "metrics": metrics["reference"],
        "metrics_repeat_aware": metrics["repeat_aware"],
        "users": len(user_ids),
        "items": items.num_rows,
        "best_epoch": log.get("best_epoch"),
        "epochs": log.get("epochs"),
        "converged": log.get("converged"),
        "seed": run["train"]["seed"],
        "efficiency": {
            "seconds_per_epoch": log.get("seconds_per_epoch"),
            "peak_memory_bytes": log.get("peak_memory_bytes"),
            "trainable_params": log.get("trainable_params", 0),
            "total_params": log.get("total_params", 0),
            "cache_bytes": sum(store_bytes(t["cache"]) for t in run["towers"].values() if "cache" in t),
            "device": log.get("device", "cpu"),
        },
        "config": run,
        "versions": versions(),
    }
    with atomic_path(per_user_parquet) as tmp:
        pq.write_table(pa.concat_tables(tables), tmp)
    if topk_parquet:
        with atomic_path(topk_parquet) as tmp:
            pq.write_table(top_k_table(ranking, splits.test, items), tmp)
    write_json(out_json, result)
    return result


def main(argv=None):
    parser = run_arguments(__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="train output (not for popularity)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-user", type=Path, required=True)
    parser.add_argument("--topk", type=Path, default=None, help="write each test user's 10 recommendations here")
    args = parse_run_arguments(parser, argv)
    run = args.run
    if method(run["method"]).trains and args.model_dir is None:
        parser.error(f"--model-dir is required for method '{run['method']}'")
    try:
        result = evaluate(run, args.items, args.sequences, args.model_dir, args.out, args.per_user, args.topk)
    except (CacheError, DataError) as e:
        raise SystemExit(f"evaluate: {e}")
    for split in ("valid", "test"):
        m = result["metrics"][split]
        print(f"{run['dataset']}/{run['run']} {split}: " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))


if __name__ == "__main__":
    main()
