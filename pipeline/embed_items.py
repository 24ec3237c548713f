"""embed_items: the item embeddings of every item of the current catalogue, from a trained run.

Usage: python -m pipeline.embed_items --dataset D --run R [--seed S] [--config config.yaml] --out X.parquet

Writes a Parquet table with item_idx, item_id, title and `embedding` (list of float32, the
run's item embedding, the vectors its user states are scored against), or null for an item the
run cannot embed: an ID model knows only the items it was trained with, whereas a content model
embeds items added to the catalogue after training from their cached states (encode appends
them to the stores), without retraining.
"""
import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cache import CacheError
from pipeline.config import ConfigError, load_configs, resolve_run
from pipeline.data import DataError
from pipeline.files import atomic_path
from pipeline.item_table import run_items
from pipeline.methods import method
from pipeline.models.build import load_model, trained_run


def embed_items(run: dict, results: Path, out: Path) -> pa.Table:
    if not method(run["method"]).trains:
        raise DataError(f"method '{run['method']}' has no item embeddings")
    items = run_items(run, results / "items.parquet")
    model, known = load_model(run, items, trained_run(run, results))
    embs = model.item_embeddings(known, progress="embed items")[1:]  # [known, d], row 0 (padding) dropped
    embs = embs.cpu().numpy().astype(np.float32)
    vectors = [e.tolist() for e in embs] + [None] * (items.num_rows - known)
    table = pa.table({"item_idx": items.column("item_idx"), "item_id": items.column("item_id"),
                      "title": items.column("title"), "embedding": pa.array(vectors, pa.list_(pa.float32()))})
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, nargs="+", default=[Path("config.yaml")],
                        help="the workflow's config, then any overlays merged over it, as Snakemake's "
                             "--configfile (default: config.yaml)")
    parser.add_argument("--dataset", required=True, help="a dataset of the config")
    parser.add_argument("--run", required=True, help="a trained run of the config")
    parser.add_argument("--seed", type=int, default=None, help="which of the run's seeds (default: its first)")
    parser.add_argument("--out", type=Path, required=True, help="the Parquet file to write")
    args = parser.parse_args(argv)
    try:
        run = resolve_run(load_configs(args.config), args.dataset, args.run, args.seed)
        table = embed_items(run, Path("results") / args.dataset, args.out)
    except (CacheError, ConfigError, DataError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"embed_items: {e}")
    missing = table.column("embedding").null_count
    print(f"{args.out}: {table.num_rows} items" + (f", {missing} without an embedding (not known to the model)"
                                                  if missing else ""))


if __name__ == "__main__":
    main()
