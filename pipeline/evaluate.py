"""evaluate: full ranking over all items on validation and test -> the run's result JSON.

Writes results/{dataset}/{run}.json (metrics, efficiency, resolved config, versions),
results/{dataset}/{run}.per_user.parquet (one row per user x split x protocol, for paired
significance tests) and results/{dataset}/{run}.topk.parquet (each test user's 10
recommendations, history excluded). Methods: a trained model (iisan, frozen, sasrec-id) or popularity (training counts).

Usage: python -m pipeline.evaluate --run JSON --items I --sequences S [--model-dir DIR] --out X.json
"""
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from pipeline.cache import CacheError, open_store, store_bytes
from pipeline.data import DataError, make_splits, read_sequences
from pipeline.files import atomic_path, read_json, write_json
from pipeline.metrics import PROTOCOLS
from pipeline.train import device
from pipeline.run import (
    all_item_embeddings,
    build_model,
    load_caches,
    model_scores,
    parse_run_arguments,
    ranking_metrics,
    run_arguments,
    run_items,
    top_k,
)

PACKAGES = ("torch", "transformers", "zarr", "numpy", "pyarrow", "snakemake")


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:  # the library also runs without Snakemake
        return None


def text_column(tower: dict) -> dict:
    """{"column": ...} for a text tower (title unless it reads a caption), {} for an image tower."""
    modality = tower["settings"]["modality"] if "settings" in tower else open_store(tower["cache"]).attrs["modality"]
    return {"column": tower.get("column", "title")} if modality == "text" else {}


def scorer(run: dict, items, item_counts: np.ndarray, model_dir: Path | None):
    """A function: left-padded histories [U, L] -> scores [U, N+1], for the run's method."""
    num_items = items.num_rows
    if run["method"] == "popularity":
        counts = torch.as_tensor(item_counts, dtype=torch.float32)
        return lambda inputs: counts.expand(len(inputs), -1)
    dev = device()
    model = build_model(run, num_items, items).to(dev)  # uncached backbones already sit on the GPU
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    model.eval()
    caches = {k: v.to(dev) for k, v in load_caches(run, items).items()}
    item_embs = all_item_embeddings(model, caches, num_items)
    return lambda inputs: model_scores(model, item_embs, inputs).cpu()


def top_k_table(score, split, items, k: int, batch: int) -> pa.Table:
    """The k best items per user, history excluded: user_id, rank, item_idx, item_id, title, score."""
    rows = []
    for lo in range(0, len(split.targets), batch):
        values, indices = top_k(score(split.inputs[lo:lo + batch]), split.histories[lo:lo + batch], k)
        rows.append((values.numpy(), indices.numpy()))
    values = np.concatenate([v for v, _ in rows])  # [U, k]
    indices = np.concatenate([i for _, i in rows])
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
    score = scorer(run, items, splits.item_counts, model_dir)
    ks, batch = run["evaluate"]["ks"], run["train"]["eval_batch_size"]

    metrics, tables = {p: {} for p in PROTOCOLS}, []
    for name, split in (("valid", splits.valid), ("test", splits.test)):
        summary, per_user = ranking_metrics(lambda rows: score(split.inputs[rows]), split, ks, PROTOCOLS,
                                            batch=batch)
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
        "versions": {"python": platform.python_version(), **{p: package_version(p) for p in PACKAGES}},
    }
    with atomic_path(per_user_parquet) as tmp:
        pq.write_table(pa.concat_tables(tables), tmp)
    if topk_parquet:
        with atomic_path(topk_parquet) as tmp:
            pq.write_table(top_k_table(score, splits.test, items, 10, batch), tmp)
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
    if run["method"] != "popularity" and args.model_dir is None:
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
