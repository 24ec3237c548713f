"""evaluate: full ranking over all items on validation and test -> the run's result JSON.

Writes results/{dataset}/{run}.json (metrics, efficiency, resolved config, versions) and
results/{dataset}/{run}.per_user.parquet (one row per user x split x protocol, for paired
significance tests). Methods: a trained model (iisan, frozen, sasrec-id) or popularity (training counts).

Usage: python -m pipeline.evaluate --run JSON --items I --sequences S [--model-dir DIR] --out X.json
"""
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from pipeline.data import DataError, make_splits, read_sequences
from pipeline.encode import EncodeError, items_fingerprint, store_bytes
from pipeline.files import atomic_path, read_json, write_json
from pipeline.metrics import PROTOCOLS
from pipeline.run import (all_item_embeddings, build_model, load_caches, model_scores,
                                  parse_run_arguments, ranking_metrics, run_arguments)

PACKAGES = ("torch", "transformers", "zarr", "numpy", "pyarrow", "snakemake")


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:  # the library also runs without Snakemake
        return None


def scorer(run: dict, items, splits, model_dir: Path | None):
    """A function (split, rows) -> scores [rows, N+1] for the run's method."""
    if run["method"] == "popularity":
        counts = torch.as_tensor(splits.item_counts, dtype=torch.float32)
        return lambda split, rows: counts.expand(len(split.targets[rows]), -1)
    model = build_model(run, splits.num_items)
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    model.eval()
    caches = load_caches(run, items_fingerprint(items))
    item_embs = all_item_embeddings(model, caches, splits.num_items)
    return lambda split, rows: model_scores(model, item_embs, split.inputs[rows])


def evaluate(run: dict, items_parquet: Path, sequences_parquet: Path, model_dir: Path | None,
             out_json: Path, per_user_parquet: Path) -> dict:
    items = pq.read_table(items_parquet)
    user_ids, sequences = read_sequences(sequences_parquet)
    splits = make_splits(user_ids, sequences, items.num_rows, run["train"]["max_history"])
    score = scorer(run, items, splits, model_dir)
    ks = run["evaluate"]["ks"]

    metrics, tables = {p: {} for p in PROTOCOLS}, []
    for name, split in (("valid", splits.valid), ("test", splits.test)):
        summary, per_user = ranking_metrics(lambda rows: score(split, rows), split, ks, PROTOCOLS,
                                            batch=run["train"]["eval_batch_size"])
        for protocol in PROTOCOLS:
            metrics[protocol][name] = summary[protocol]
            tables.append(pa.table({
                "user_id": split.user_ids, "split": [name] * len(split.targets),
                "protocol": [protocol] * len(split.targets), "target": split.targets,
                **per_user[protocol],
            }))

    log = read_json(model_dir / "train_log.json") if model_dir else {}
    result = {
        "dataset": run["dataset"],
        "run": run["run"],
        "method": run["method"],
        "encoders": {name: {"encoder": t["encoder"], "kept_states": t["kept_states"]}
                     for name, t in run["towers"].items()},
        "metrics": metrics["reference"],
        "metrics_repeat_aware": metrics["repeat_aware"],
        "users": len(user_ids),
        "items": items.num_rows,
        "best_epoch": log.get("best_epoch"),
        "epochs": log.get("epochs"),
        "seed": run["train"]["seed"],
        "efficiency": {
            "seconds_per_epoch": log.get("seconds_per_epoch"),
            "peak_memory_bytes": log.get("peak_memory_bytes"),
            "trainable_params": log.get("trainable_params", 0),
            "total_params": log.get("total_params", 0),
            "cache_bytes": sum(store_bytes(t["cache"]) for t in run["towers"].values()),
            "device": log.get("device", "cpu"),
        },
        "config": run,
        "versions": {"python": platform.python_version(), **{p: package_version(p) for p in PACKAGES}},
    }
    with atomic_path(per_user_parquet) as tmp:
        pq.write_table(pa.concat_tables(tables), tmp)
    write_json(out_json, result)
    return result


def main(argv=None):
    parser = run_arguments(__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="train output (not for popularity)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-user", type=Path, required=True)
    args = parse_run_arguments(parser, argv)
    run = args.run
    if run["method"] != "popularity" and args.model_dir is None:
        parser.error(f"--model-dir is required for method '{run['method']}'")
    try:
        result = evaluate(run, args.items, args.sequences, args.model_dir, args.out, args.per_user)
    except (EncodeError, DataError) as e:
        raise SystemExit(f"evaluate: {e}")
    for split in ("valid", "test"):
        m = result["metrics"][split]
        print(f"{run['dataset']}/{run['run']} {split}: " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))


if __name__ == "__main__":
    main()
