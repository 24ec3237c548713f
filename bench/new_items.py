"""New items without retraining: hold out the items that appear late, train without them, add
them to the catalogue, and see how often a content model recommends and hits them, against an
ID model, which cannot recommend them at all.

Time is the position in a user's sequence: interaction j of a sequence of n items happens at
j / (n - 1). The new items are those first seen in the last 10% of interactions (their first
occurrence is past the 90th percentile of all positions). The models train on the old
catalogue (the other items, their order kept) and the users' sequences without the new items.
Then the catalogue grows: the new items are appended to items.parquet, their states are
appended to the stores by the encode stage (only their rows are encoded), and both trained
models rank the grown catalogue for the original test split (every user's last item, new items
included in the histories): overall HR@10 / NDCG@10, the hit rate on the users whose test item
is new, and how often new items are recommended (share of users with one in their top 10, and
of top-10 slots).

Usage: python bench/new_items.py --dataset demo --content-run iisan-vs [--id-run sasrec-id]
       [--configfile overlays/shared-data.yaml] [--workdir results/bench/new_items]
(the dataset must be prepared: results/<dataset>/items.parquet and sequences.parquet)
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import write_report  # noqa: E402
from pipeline.config import load_configs, resolve_run  # noqa: E402
from pipeline.data import make_splits, read_sequences  # noqa: E402
from pipeline.encode import encode  # noqa: E402
from pipeline.metrics import rank_split  # noqa: E402
from pipeline.models.build import load_scorer  # noqa: E402
from pipeline.train import train  # noqa: E402

TOP = 10


def new_items(sequences: list[list[int]], late: float = 0.9, seed: int = 0) -> set[int]:
    """Items whose first interaction is among the last (1 - late) of all interactions, ordered by
    position (ties, e.g. every sequence's last item, in a seeded random order)."""
    positions = np.concatenate([np.arange(len(s)) / (len(s) - 1) for s in sequences])
    items = np.concatenate([np.asarray(s) for s in sequences])
    order = np.lexsort((np.random.default_rng(seed).random(len(items)), positions))  # oldest first
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    first = {}
    for item, r in zip(items.tolist(), rank.tolist()):
        first[item] = min(first.get(item, r), r)
    cut = int(late * len(items))
    return {item for item, r in first.items() if r >= cut}


def split_catalogue(items: pa.Table, sequences: pa.Table, new: set[int]):
    """The old catalogue (new items removed, order kept), the grown one (old, then new: old rows
    keep their indices), the sequences for training (new items removed, users with fewer than 3
    left dropped) and all sequences re-indexed to the grown catalogue."""
    idx = items.column("item_idx").to_numpy()
    old_rows = [r for r, i in enumerate(idx) if i not in new]
    new_rows = [r for r, i in enumerate(idx) if i in new]
    grown = items.take(old_rows + new_rows)
    grown = grown.set_column(0, "item_idx", pa.array(range(1, grown.num_rows + 1), pa.int32()))
    remap = {int(idx[r]): n for n, r in enumerate(old_rows + new_rows, start=1)}
    users, seqs = sequences.column("user_id").to_pylist(), sequences.column("items").to_pylist()
    all_seqs = [[remap[i] for i in s] for s in seqs]
    kept = [(u, [i for i in s if i <= len(old_rows)]) for u, s in zip(users, all_seqs)]
    kept = [(u, s) for u, s in kept if len(s) >= 3]
    schema = sequences.schema
    train_seqs = pa.table({"user_id": [u for u, _ in kept], "items": pa.array([s for _, s in kept], schema.field("items").type)})
    all_table = pa.table({"user_id": users, "items": pa.array(all_seqs, schema.field("items").type)})
    return grown.slice(0, len(old_rows)), grown, train_seqs, all_table


def encode_run(run: dict, items: Path) -> None:
    for tower in run["towers"].values():
        encode(items, tower["settings"], tower["kept_states"], Path(tower["cache"]))


def evaluate_grown(run: dict, grown: Path, sequences: Path, model_dir: Path | None, n_old: int) -> dict:
    items = pq.read_table(grown)
    splits = make_splits(*read_sequences(sequences), items.num_rows, run["train"]["max_history"])
    score = load_scorer(run, items, splits.item_counts, model_dir)
    ranking = rank_split(score, splits.test, items.num_rows, [TOP], ["reference"], top=TOP)
    per_user = ranking.per_user["reference"]
    new_target = splits.test.targets > n_old
    new_in_top = (ranking.top_items > n_old) & np.isfinite(ranking.top_scores)  # [U, 10]; -inf slots are no items
    return {"hr@10": float(per_user["hr@10"].mean()), "ndcg@10": float(per_user["ndcg@10"].mean()),
            "users_with_new_target": int(new_target.sum()),
            "hr@10_new_targets": float(per_user["hr@10"][new_target].mean()) if new_target.any() else None,
            "users_with_a_new_item_in_top10": float(new_in_top.any(1).mean()),
            "new_items_share_of_top10": float(new_in_top.mean())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--content-run", required=True, help="a content run of the config, e.g. iisan-vs")
    parser.add_argument("--id-run", default="sasrec-id")
    parser.add_argument("--configfile", type=Path, nargs="*", default=[], help="overlays, as for snakemake")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("results/bench/new_items"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_configs([Path("config.yaml"), *args.configfile])
    prepared = Path("results") / args.dataset
    items, sequences = pq.read_table(prepared / "items.parquet"), pq.read_table(prepared / "sequences.parquet")
    new = new_items(sequences.column("items").to_pylist())
    work = args.workdir / args.dataset
    work.mkdir(parents=True, exist_ok=True)
    old, grown, train_seqs, all_seqs = split_catalogue(items, sequences, new)
    for name, table in (("old_items", old), ("items", grown), ("train_sequences", train_seqs), ("sequences", all_seqs)):
        pq.write_table(table, work / f"{name}.parquet")

    report = {"dataset": args.dataset, "items": items.num_rows, "new_items": len(new), "old_items": old.num_rows,
              "train_users": train_seqs.num_rows, "test_users": all_seqs.num_rows, "runs": {}}
    for name in (args.content_run, args.id_run):
        run = resolve_run(cfg, args.dataset, name)
        for tower in run["towers"].values():
            tower["cache"] = str(work / "cache" / Path(tower["cache"]).name)
        encode_run(run, work / "old_items.parquet")
        model_dir = work / "runs" / name
        log = train(run, work / "old_items.parquet", work / "train_sequences.parquet", model_dir)
        encode_run(run, work / "items.parquet")  # the catalogue grew: only the new items' rows are encoded
        report["runs"][name] = evaluate_grown(run, work / "items.parquet", work / "sequences.parquet", model_dir,
                                              old.num_rows) | {"best_epoch": log["best_epoch"], "epochs": log["epochs"]}
    counts = pc.value_counts(pa.chunked_array([all_seqs.column("items").combine_chunks().flatten()]))
    report["interactions_with_new_items"] = int(sum(c["counts"].as_py() for c in counts
                                                    if c["values"].as_py() > old.num_rows))
    lines = [f"# new items on {args.dataset}: {len(new)} of {items.num_rows} items held out of training, then added",
             "", "| run | HR@10 | NDCG@10 | HR@10 on new-item targets | users with a new item in the top 10 | "
             "new items' share of top-10 slots |", "|---|---|---|---|---|---|"]
    for name, r in report["runs"].items():
        new_hr = "-" if r["hr@10_new_targets"] is None else f"{100 * r['hr@10_new_targets']:.2f}"
        lines.append(f"| `{name}` | {100 * r['hr@10']:.2f} | {100 * r['ndcg@10']:.2f} | {new_hr} "
                     f"({r['users_with_new_target']} users) | {100 * r['users_with_a_new_item_in_top10']:.1f}% | "
                     f"{100 * r['new_items_share_of_top10']:.1f}% |")
    write_report(work, "report", f"{torch.get_num_threads()} threads, torch {torch.__version__}", lines, **report)


if __name__ == "__main__":
    main()
