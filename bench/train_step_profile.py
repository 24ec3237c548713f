"""Where a training step goes: item encoder (SANs) forward, user encoder forward, loss, backward
and Adam, in wall time per phase over a number of steps after 10 untimed ones.

Runs a dataset's run with its resolved settings on its prepared items, sequences and caches
(build them first, e.g. `make run T=results/scientific/minilm.json` with the shared-data overlay,
or only up to the encode with `--until encode`). Phases are timed by wrapping the model's
methods; the backward pass is one call, so it is reported whole.

Usage: python bench/train_step_profile.py [--dataset scientific] [--run minilm] [--steps 200]
           [--threads 1] [--configfile config.yaml overlays/shared-data.yaml]
"""
import argparse
import collections
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.cache import read_states  # noqa: E402
from pipeline.config import load_configs, resolve_run  # noqa: E402
from pipeline.data import make_splits, read_sequences  # noqa: E402
from pipeline.item_table import run_items  # noqa: E402
from pipeline.models import recommender  # noqa: E402
from pipeline.models.build import build_model, make_optimizer  # noqa: E402
from pipeline.models.loss import log_popularity  # noqa: E402

PHASES = ("item encoder forward (cache reads and SANs)", "user encoder forward", "loss", "rest of the forward", "backward", "Adam")


def timed(owner, name: str, key: str, totals: dict) -> None:
    """Replace owner.name by a wrapper adding its wall time to totals[key]."""
    fn = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        totals[key] += time.perf_counter() - start
        return out

    setattr(owner, name, wrapper)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="scientific")
    parser.add_argument("--run", default="minilm")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configfile", nargs="+", default=["config.yaml", "overlays/shared-data.yaml"])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    run = resolve_run(load_configs(args.configfile), args.dataset, args.run)
    t, results = run["train"], Path("results") / args.dataset
    items = run_items(run, results / "items.parquet")
    user_ids, sequences = read_sequences(results / "sequences.parquet")
    splits = make_splits(user_ids, sequences, items.num_rows, t["max_history"], t["windows"])
    model = build_model(run, splits.num_items, items, read_states(run, items, t["cache_memory_mb"]))
    optimizer = make_optimizer(model, t, torch.device("cpu"))
    log_pop = log_popularity(splits.item_counts)
    windows = torch.as_tensor(splits.train_windows)  # [W, L+1]
    order = torch.as_tensor(np.random.default_rng(t["seed"]).permutation(len(windows)))

    totals = collections.defaultdict(float)
    timed(model, "embed_items", PHASES[0], totals)
    timed(model, "user_states", PHASES[1], totals)
    timed(recommender, "in_batch_debiased_ce", PHASES[2], totals)  # loss: in-batch
    timed(recommender, "full_softmax_ce", PHASES[2], totals)  # loss: full (the ID baselines)
    model.train()
    batch = t["batch_size"]
    for step in range(10 + args.steps):
        if step == 10:
            totals.clear()  # the first steps warm up the allocator and kernels
        lo = (step * batch) % len(windows)
        start = time.perf_counter()
        loss = model.calculate_loss(windows[order[lo:lo + batch]], log_pop)
        forward = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backward = time.perf_counter()
        optimizer.step()
        totals["forward"] += forward - start
        totals[PHASES[4]] += backward - forward
        totals[PHASES[5]] += time.perf_counter() - backward
    totals[PHASES[3]] = totals["forward"] - sum(totals[p] for p in PHASES[:3])
    step_seconds = totals["forward"] + totals[PHASES[4]] + totals[PHASES[5]]
    print(f"{args.run} on {args.dataset}: {args.steps} steps of {batch} windows at {args.threads} thread(s), "
          f"{math.ceil(len(windows) / batch)} steps an epoch; {1000 * step_seconds / args.steps:.1f} ms a step")
    print("| phase | ms a step | share of the step |")
    print("|---|---|---|")
    for phase in PHASES:
        print(f"| {phase} | {1000 * totals[phase] / args.steps:.2f} | {100 * totals[phase] / step_seconds:.0f} % |")


if __name__ == "__main__":
    main()
