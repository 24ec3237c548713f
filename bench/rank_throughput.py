"""Full-ranking throughput: the project's ranking against a bare matmul-and-count floor.

On the same tensors (random user states U [users, 64] and item embeddings I [N+1, 64]) and the
same blocks of users, side by side and interleaved:
- floor: `scores = U_b @ I.T; (scores > scores[target]).sum(1)` per block, nothing else;
- project: pipeline.metrics.rank_split, i.e. the same matmul, then ranks for both protocols
  (history excluded, ties against the target), HR/NDCG@5/10/20 per user;
- project with a GPU's blocks (up to 1,024 users, 256 MiB of scores; what the CPU used
  before its cache-sized blocks), to show what the block size is worth.
Cases: the Amazon Scientific split's validation users, histories and targets (read from
where --overlay says, overlays/shared-data.yaml by default, when present; else synthetic of the
same size), and a
MicroLens-50k-sized split (50,000 users x 19,220 items, synthetic histories of 3-40 items).
Prints users x items ranked per second for both; the last line is `ratio: <project / floor>`
on the Scientific case.

Usage: python bench/rank_throughput.py [--threads 2] [--repeats 3] [--overlay FILE] [--out results/bench]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import SHARED_DATA, split_files, write_report  # noqa: E402
from pipeline.data import EvalSplit, make_splits  # noqa: E402
from pipeline.metrics import PROTOCOLS, rank_split, users_per_block  # noqa: E402
from pipeline.prepare import prepare  # noqa: E402

DIM, BATCH, KS = 64, 1024, [5, 10, 20]


def scientific_split(overlay: Path) -> tuple[EvalSplit, int, str]:
    users, items = split_files(overlay)
    if users.exists() and items.exists():
        item_table, sequences, _ = prepare(users, items, None)
        splits = make_splits(sequences.column("user_id").to_pylist(), sequences.column("items").to_pylist(),
                             item_table.num_rows)
        return splits.valid, item_table.num_rows, f"Scientific validation ({users.parent})"
    return synthetic_split(12076, 20825, 7, seed=1), 20825, "Scientific-sized synthetic (data not found)"


def synthetic_split(users: int, items: int, mean_length: int, seed: int = 0) -> EvalSplit:
    rng = np.random.default_rng(seed)
    histories = [rng.integers(1, items + 1, size=max(2, int(rng.exponential(mean_length))) + 1) for _ in range(users)]
    return EvalSplit(user_ids=[str(u) for u in range(users)], inputs=np.zeros((users, 1), dtype=np.int64),
                     histories=histories, targets=rng.integers(1, items + 1, size=users))


def floor(U: torch.Tensor, I: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    counts, block = [], users_per_block(len(I) - 1, BATCH)  # the project's blocks on a CPU
    for lo in range(0, len(U), block):
        scores = U[lo:lo + block] @ I.T
        t = scores.gather(1, targets[lo:lo + block, None])
        counts.append((scores > t).sum(1))
    return torch.cat(counts)


def dot_scorer(U: torch.Tensor, I: torch.Tensor):
    """rank_split's scorer when the inputs are user rows: the block's states U_b, then U_b @ I[lo:hi].T."""
    def score(inputs):
        states = U[torch.as_tensor(inputs[:, 0])]  # [U_b, DIM]
        return lambda lo, hi: states @ I[lo:hi].T
    return score


def project(U: torch.Tensor, I: torch.Tensor, split: EvalSplit, num_items: int, blocks: str = "cpu"):
    rows = np.arange(len(U))[:, None]
    split = EvalSplit(split.user_ids, rows, split.histories, split.targets)  # inputs = user rows
    return rank_split(dot_scorer(U, I), split, num_items, KS, PROTOCOLS, batch=BATCH, device=blocks)


def measure(split: EvalSplit, num_items: int, repeats: int, label: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    U = torch.randn(len(split.targets), DIM, generator=gen)
    I = torch.randn(num_items + 1, DIM, generator=gen)
    targets = torch.as_tensor(split.targets)
    times = {"floor": [], "project": [], "project_gpu_blocks": []}
    for _ in range(repeats):  # interleaved, so all see the same machine
        for name, fn in (("floor", lambda: floor(U, I, targets)), ("project", lambda: project(U, I, split, num_items)),
                         ("project_gpu_blocks", lambda: project(U, I, split, num_items, blocks="cuda"))):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    cells = len(U) * (num_items + 1)
    row = {"case": label, "users": len(U), "items": num_items,
           **{f"{k}_seconds": round(statistics.median(v), 3) for k, v in times.items()},
           **{f"{k}_cells_per_s": round(cells / statistics.median(v)) for k, v in times.items()}}
    row["ratio"] = round(row["project_cells_per_s"] / row["floor_cells_per_s"], 3)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--overlay", type=Path, default=SHARED_DATA, help="a config overlay naming the Scientific files")
    parser.add_argument("--microlens-users", type=int, default=50000)
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    split, num_items, label = scientific_split(args.overlay)
    rows = [measure(synthetic_split(args.microlens_users, 19220, 9), 19220, max(1, args.repeats - 2),
                    f"MicroLens-50k-sized synthetic ({args.microlens_users} users)"),
            measure(split, num_items, args.repeats, label)]
    machine = f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    lines = [f"# rank_throughput ({machine}; medians of interleaved repeats)", "",
             "| case | users | items | floor s | project s | project, GPU blocks s | floor users x items/s | "
             "project users x items/s | project / floor |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['users']} | {r['items']} | {r['floor_seconds']} | {r['project_seconds']} | "
              f"{r['project_gpu_blocks_seconds']} | {r['floor_cells_per_s']:,} | {r['project_cells_per_s']:,} | "
              f"{r['ratio']} |" for r in rows]
    write_report(args.out, "rank_throughput", machine, lines, rows=rows)
    print(f"ratio: {rows[-1]['ratio']}")


if __name__ == "__main__":
    main()
