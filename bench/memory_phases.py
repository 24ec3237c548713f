"""Where a path of bench/scale.py reaches its peak memory: the process's resident memory sampled
every 50 ms while it reads the caches, trains one epoch, embeds every item and ranks, with the
largest sample of each phase.

Usage: python bench/memory_phases.py [--items 1000000] [--mode stream|memory] [--users 2000]
           [--workdir results/bench/scale]
"""
import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench.scale as scale  # noqa: E402
import pipeline.train as train  # noqa: E402
from pipeline.models.recommender import Recommender  # noqa: E402


def resident_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))


def marked(owner, name: str, marks: list) -> None:
    """Record when owner.name starts and ends."""
    fn = getattr(owner, name)

    def wrapper(*args, **kwargs):
        marks.append((time.perf_counter(), name))
        out = fn(*args, **kwargs)
        marks.append((time.perf_counter(), f"after {name}"))
        return out

    setattr(owner, name, wrapper)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--mode", choices=("stream", "memory"), default="stream")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=Path("results/bench/scale"))
    args = parser.parse_args()

    items, sequences, store = scale.make_catalogue(args.workdir / f"n{args.items}", args.items, "minilm", args.users)
    samples, marks, done = [], [(time.perf_counter(), "start")], threading.Event()

    def sample():
        while not done.is_set():
            samples.append((time.perf_counter(), resident_bytes()))
            time.sleep(0.05)

    for name in ("read_states", "train_step", "rank_split"):
        marked(train, name, marks)
    marked(Recommender, "item_embeddings", marks)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    scale.measure("minilm", items, sequences, store, args.mode, threads=1)
    done.set()
    sampler.join()
    marks.append((time.perf_counter(), "end"))

    # Consecutive marks of one phase (every training step) merge into one span.
    spans = []
    for (start, label), (end, _) in zip(marks, marks[1:]):
        label = "training steps" if label in ("train_step", "after train_step") else label
        if spans and spans[-1][0] == label:
            spans[-1][2] = end
        else:
            spans.append([label, start, end])
    print(f"{args.items:,} items, 4 x 384, {args.mode} path: peak resident memory per phase")
    print("| phase | seconds | peak resident memory |")
    print("|---|---|---|")
    for label, start, end in spans:
        inside = [rss for t, rss in samples if start <= t < end]
        if inside:
            print(f"| {label} | {end - start:.1f} | {max(inside) / 2**30:.2f} GiB |")


if __name__ == "__main__":
    main()
