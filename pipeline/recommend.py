"""recommend: ranked next items for a history of item ids, from a trained run.

Usage: python -m pipeline.recommend --dataset scientific --run minilm --history B00X B00Y [--k 10]

Reads config.yaml (or --config) for the run, results/{dataset}/items.parquet for the catalogue
and, for trained methods, results/{dataset}/runs/{run}/seed{seed}/ and the run's caches. Items
of the history are not recommended again. A content model recommends every item of the current
catalogue, items added after training included (once their states are encoded); an ID model
only the items it was trained with.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from pipeline.cache import CacheError
from pipeline.config import ConfigError, load_configs, resolve_run
from pipeline.data import DataError, left_pad, make_splits, read_sequences, seen_matrix
from pipeline.item_table import run_items
from pipeline.methods import method
from pipeline.metrics import best_items
from pipeline.models.build import load_scorer, trained_run


def recommend(run: dict, results: Path, history: list[str], k: int = 10) -> list[dict]:
    """The k best items after `history` (item ids, oldest first): rank, item_id, title, score."""
    if k < 1:
        raise DataError(f"k must be at least 1, not {k}")
    items = run_items(run, results / "items.parquet")
    index = {item_id: n for n, item_id in enumerate(items.column("item_id").to_pylist(), start=1)}
    unknown = [i for i in history if i not in index]
    if unknown:
        raise DataError(f"unknown item ids {unknown[:5]} (not in {results / 'items.parquet'})")
    counts, model_dir = None, None
    if method(run["method"]).trains:
        model_dir = trained_run(run, results)
    else:  # popularity
        user_ids, sequences = read_sequences(results / "sequences.parquet")
        counts = make_splits(user_ids, sequences, items.num_rows).item_counts
    score = load_scorer(run, items, counts, model_dir)
    idx = [index[i] for i in history]
    columns = score(left_pad(idx, run["train"]["max_history"])[None, :])
    seen = torch.as_tensor(seen_matrix([np.array(idx)]), dtype=torch.int64)
    values, best = (t.cpu() for t in best_items(columns, seen, items.num_rows, k))
    titles, item_ids = items.column("title").to_pylist(), items.column("item_id").to_pylist()
    return [{"rank": r, "item_id": item_ids[i - 1], "title": titles[i - 1], "score": float(v)}
            for r, (v, i) in enumerate(zip(values[0].tolist(), best[0].tolist()), start=1) if np.isfinite(v)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Run it from the repository root, after the run has been trained.")
    parser.add_argument("--config", type=Path, nargs="+", default=[Path("config.yaml")],
                        help="the workflow's config, then any overlays merged over it, as Snakemake's "
                             "--configfile (default: config.yaml)")
    parser.add_argument("--dataset", required=True, help="a dataset of the config, e.g. demo or scientific")
    parser.add_argument("--run", required=True, help="a run of the config, e.g. iisan-vs or minilm")
    parser.add_argument("--history", nargs="+", required=True, metavar="ITEM_ID",
                        help="the user's items (their item_id in items.parquet), oldest first")
    parser.add_argument("--k", type=int, default=10, help="how many items to recommend (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="which of the run's seeds (default: its first)")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"--k must be at least 1, not {args.k}")
    try:
        run = resolve_run(load_configs(args.config), args.dataset, args.run, args.seed)
        ranked = recommend(run, Path("results") / args.dataset, args.history, args.k)
    except (CacheError, ConfigError, DataError, FileNotFoundError) as e:
        raise SystemExit(f"recommend: {e}")
    print(f"top {len(ranked)} of {args.dataset}/{args.run} after {len(args.history)} items:")
    print(f"{'rank':>4}  {'score':>8}  {'item_id':<12}  title")
    for r in ranked:
        print(f"{r['rank']:>4}  {r['score']:8.3f}  {r['item_id']:<12}  {r['title']}")


if __name__ == "__main__":
    main()
