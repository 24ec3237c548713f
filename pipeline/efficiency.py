"""efficiency: training time per epoch and peak memory of several runs, side by side (RQ4, Figure 5).

For every run and batch size a fresh process builds the run's model and times at least `steps`
training steps, and at least 2 s of them, after `warmup` untimed ones; seconds per epoch = the
mean step time x the steps of an epoch (training windows / batch size), so a slow method is
measured without training it for hours.
Peak memory: torch.cuda.max_memory_allocated on a GPU, else the process's peak resident memory
(which for uncached runs includes their prepared item inputs). Writes, complete or not at all:
- efficiency.csv: run, method, batch_size, seconds_per_epoch, peak_memory_bytes,
  trainable_params, total_params, time_ratio and memory_ratio (to the reference run, cached
  IISAN, at the same batch size), device;
- efficiency.png: time per epoch and peak memory against batch size.

Usage: python -m pipeline.efficiency --runs JSON --reference iisan-vs --items I --sequences S
       --batch-sizes 1 2 4 8 16 32 [--steps 5] [--warmup 2] --out X.csv --plot X.png
(--runs: a list of resolved runs, as the Snakemake rule passes it.)
"""
import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.cache import CacheError, read_states
from pipeline.data import DataError, make_splits, read_sequences
from pipeline.files import atomic_path, write_csv
from pipeline.item_table import run_items
from pipeline.models.build import build_model, count_parameters, make_optimizer
from pipeline.models.loss import log_popularity
from pipeline.models.recommender import train_step
from pipeline.runtime import device, peak_memory_bytes

MIN_SECONDS = 2.0  # timed seconds per measurement, at least: 20 ms steps need many to be steady
MAX_STEPS = 2000
COLUMNS = ["run", "method", "batch_size", "seconds_per_epoch", "peak_memory_bytes", "trainable_params",
           "total_params", "time_ratio", "memory_ratio", "device"]


def measure(run: dict, items_parquet: Path, sequences_parquet: Path, batch_size: int, steps: int,
            warmup: int, min_seconds: float = MIN_SECONDS) -> dict:
    """Time at least `steps` training steps (and `min_seconds`) of `run` at `batch_size` here."""
    t = run["train"]
    torch.manual_seed(t["seed"])
    dev = device()
    items = run_items(run, items_parquet)
    user_ids, sequences = read_sequences(sequences_parquet)
    splits = make_splits(user_ids, sequences, items.num_rows, t["max_history"], t["windows"])
    model = build_model(run, splits.num_items, items, read_states(run, items, t["cache_memory_mb"])).to(dev).train()
    optimizer = make_optimizer(model, t, dev)
    log_pop = log_popularity(splits.item_counts, dev)
    windows = torch.as_tensor(splits.train_windows, device=dev)
    order = torch.as_tensor(np.random.default_rng(t["seed"]).permutation(len(windows)), device=dev)
    def batch(i: int) -> torch.Tensor:  # consecutive shuffled windows, wrapping round: always full
        return windows[order[(torch.arange(batch_size, device=dev) + i * batch_size) % len(windows)]]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(warmup):
        train_step(model, optimizer, batch(i), log_pop)
    sync()
    # At least `steps` steps and `min_seconds` of them: fast steps are timed over many.
    start, timed = time.perf_counter(), 0
    while timed < steps or (time.perf_counter() - start < min_seconds and timed < MAX_STEPS):
        train_step(model, optimizer, batch(warmup + timed), log_pop)
        timed += 1
        if timed >= steps:
            sync()
    step_seconds = (time.perf_counter() - start) / timed
    trainable, total = count_parameters(model)
    return {"run": run["run"], "method": run["method"], "batch_size": batch_size,
            "seconds_per_epoch": step_seconds * math.ceil(len(windows) / batch_size),
            "peak_memory_bytes": peak_memory_bytes(dev), "trainable_params": trainable, "total_params": total,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}


def measure_in_subprocess(run: dict, items: Path, sequences: Path, batch_size: int, steps: int, warmup: int,
                          threads: int) -> dict:
    """measure() in a fresh process, so that each row's peak memory is its own."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.efficiency", "measure", "--run", json.dumps(run), "--items", str(items),
         "--sequences", str(sequences), "--batch-size", str(batch_size), "--steps", str(steps),
         "--warmup", str(warmup), "--threads", str(threads)],
        capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {run['run']} at batch size {batch_size} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def with_ratios(rows: list[dict], reference: str) -> list[dict]:
    """Each row's time and memory as multiples of the reference run's at the same batch size."""
    base = {r["batch_size"]: r for r in rows if r["run"] == reference}
    for r in rows:
        b = base.get(r["batch_size"])
        r["time_ratio"] = round(r["seconds_per_epoch"] / b["seconds_per_epoch"], 3) if b else None
        r["memory_ratio"] = round(r["peak_memory_bytes"] / b["peak_memory_bytes"], 3) if b else None
    return rows


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["run"] for r in rows):
        mine = sorted((r for r in rows if r["run"] == name), key=lambda r: r["batch_size"])
        sizes = [r["batch_size"] for r in mine]
        left.plot(sizes, [r["seconds_per_epoch"] for r in mine], marker="o", label=name)
        right.plot(sizes, [r["peak_memory_bytes"] / 2**30 for r in mine], marker="o", label=name)
    for ax, label in ((left, "training time per epoch (s)"), (right, "peak memory (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    left.set_yscale("log")
    right.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["compare", "measure"], default="compare",
                        help="compare (default): every run and batch size; measure: one, as JSON")
    parser.add_argument("--runs", help="compare: a JSON list of resolved runs")
    parser.add_argument("--run", help="measure: one resolved run as JSON")
    parser.add_argument("--reference", help="compare: the run the ratios divide by (cached IISAN)")
    parser.add_argument("--items", type=Path, required=True)
    parser.add_argument("--sequences", type=Path, required=True)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--batch-size", type=int, help="measure: the batch size")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        if args.mode == "measure":
            print(json.dumps(measure(json.loads(args.run), args.items, args.sequences, args.batch_size,
                                     args.steps, args.warmup)))
            return
        runs = json.loads(args.runs)
        if args.reference not in [run["run"] for run in runs]:
            parser.error(f"--reference {args.reference} is not among the runs")
        rows = []
        jobs = [(run, size) for run in runs for size in args.batch_sizes]
        for run, size in tqdm(jobs, desc="efficiency", unit="measurement"):
            rows.append(measure_in_subprocess(run, args.items, args.sequences, size, args.steps, args.warmup,
                                              args.threads))
            r = rows[-1]
            tqdm.write(f"{r['run']:>16} batch {size:>3}: {r['seconds_per_epoch']:9.2f} s/epoch, "
                       f"{r['peak_memory_bytes'] / 2**20:8.0f} MiB peak")
    except (CacheError, DataError) as e:
        raise SystemExit(f"efficiency: {e}")
    rows = with_ratios(rows, args.reference)
    write_csv(args.out, rows, COLUMNS)
    dataset = runs[0]["dataset"]
    plot(rows, args.plot, f"{dataset}: training cost against batch size ({rows[0]['device']})")


if __name__ == "__main__":
    main()
