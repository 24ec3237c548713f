"""Scale: one training epoch and one full ranking over synthetic catalogues of 10^4-10^6 items,
with the cached states held in memory against streamed from disk, side by side.

For each catalogue size a Zarr store of random float16 states is written once (4 kept states x
384, MiniLM's shape; and 7 x 8192, Llama-3-70B's, at 10^4 items), in the encode stage's format.
Each path then runs in its own process (so that its peak memory is its own): read the caches
(in memory: the whole store; streamed: a raw float16 copy beside it, made on first use: the set-up time), train
IISAN for one epoch on a fixed set of users (random histories of 5-15 items), and rank every item
for each of those users (the validation pass). It prints seconds for reading, the epoch and the
ranking, and the peak resident memory of the process, for both paths, and checks that both
gave the same loss, validation metrics and trained weights, bit for bit.

Also measured: how a training step's items are best read when the store does not fit: chunks
decoded from the Zarr store with an LRU cache of decoded chunks, against rows read from the raw
float16 copy (what the pipeline does), for the same random batches.

Usage: python bench/scale.py [--sizes 10000 100000 1000000] [--users 2000] [--workdir results/bench/scale]
"""
import argparse
import functools
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import zarr
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import random_store, write_report  # noqa: E402
from pipeline.cache import RAW_SUFFIX, StreamedStates  # noqa: E402
from pipeline.config import load_config, resolve_run  # noqa: E402

CHUNK = 256
AGREE = ("loss", "valid_hr@10", "valid_ndcg@10", "weights_sha256")  # equal on both paths, bit for bit
SHAPES = {"minilm": (4, 384, 6), "llama3-70b": (7, 8192, 80)}  # kept states, width, layers


def entry(shape: str) -> dict:
    states, width, layers = SHAPES[shape]
    return {"path": f"synthetic-{shape}", "modality": "text", "layers": layers, "hidden_size": width}


def resolved(shape: str, store: Path, cache_memory_mb: float) -> dict:
    states, _, layers = SHAPES[shape]
    kept = list(np.linspace(0, layers, states).round().astype(int))
    cfg = load_config({"datasets": {"scale": {"format": "iisan-split", "users": "u", "items": "i"}},
                       "encoders": {"enc": entry(shape)},
                       "runs": {"r": {"method": "iisan", "text": "enc", "layerdrop": {"text": [int(k) for k in kept]},
                                      "train": {"max_epochs": 1, "cache_memory_mb": cache_memory_mb}}}})
    run = resolve_run(cfg, "scale", "r")
    run["towers"]["text"]["cache"] = str(store)
    return run


def make_catalogue(folder: Path, n: int, shape: str, users: int) -> tuple[Path, Path, Path]:
    """items.parquet, sequences.parquet and the store, written once per size and shape."""
    folder.mkdir(parents=True, exist_ok=True)
    items, sequences, store = folder / "items.parquet", folder / "sequences.parquet", folder / f"{shape}.zarr"
    if not items.exists():
        pq.write_table(pa.table({"item_idx": pa.array(range(1, n + 1), pa.int32()),
                                 "item_id": [f"i{i}" for i in range(n)], "title": [""] * n,
                                 "image": pa.array([None] * n, pa.string())}), items)
        rng = np.random.default_rng(0)
        seqs = [rng.integers(1, n + 1, size=rng.integers(5, 16)).tolist() for _ in range(users)]
        pq.write_table(pa.table({"user_id": [f"u{u}" for u in range(users)],
                                 "items": pa.array(seqs, pa.list_(pa.int32()))}), sequences)
    if not store.exists():
        random_store(store, resolved(shape, store, 1.0)["towers"]["text"], pq.read_table(items), CHUNK, seed=1)
    return items, sequences, store


def weights_sha256(model_file: Path) -> str:
    """A digest of a checkpoint's tensors (names, shapes, bytes), independent of the file's layout."""
    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(model_file)).items()):
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def measure(shape: str, items: Path, sequences: Path, store: Path, mode: str, threads: int) -> dict:
    """One path in this process: read, one epoch, one ranking; seconds and peak memory, and the
    epoch's loss, validation metrics and trained weights, which both paths must give alike."""
    from pipeline.train import train

    torch.set_num_threads(threads)
    run = resolved(shape, store, 1e-3 if mode == "stream" else 1e9)
    model_dir = store.parent / f"model-{shape}-{mode}"
    start = time.perf_counter()
    log = train(run, items, sequences, model_dir, progress=False)
    total = time.perf_counter() - start
    epoch = log["history"][0]
    return {"epoch_seconds": epoch["seconds"], "ranking_seconds": epoch["valid_seconds"],
            "setup_seconds": round(total - epoch["seconds"] - epoch["valid_seconds"], 2),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "loss": epoch["loss"], "valid_hr@10": epoch["valid_hr@10"], "valid_ndcg@10": epoch["valid_ndcg@10"],
            "weights_sha256": weights_sha256(model_dir / "model.safetensors")}


def gather_step_timings(store: Path, steps: int = 20, batch_rows: int = 704, lru_chunks: int = 512) -> dict:
    """ms per training step's rows: Zarr chunks through an LRU of decoded chunks vs the raw copy."""
    group = zarr.open_group(str(store), mode="r")
    states = group["states"]

    @functools.lru_cache(maxsize=lru_chunks)
    def chunk(c: int) -> np.ndarray:
        return states[c * CHUNK:(c + 1) * CHUNK]

    raws = sorted(store.parent.glob(f"{store.name}.*.{RAW_SUFFIX}"))
    streamed = StreamedStates(raws[-1], states.shape)
    rng = np.random.default_rng(2)
    batches = [np.unique(rng.integers(1, states.shape[0], size=batch_rows)) for _ in range(steps)]
    out = {}
    for name, gather in (("zarr_chunk_lru", lambda ids: np.stack([chunk(i // CHUNK)[i % CHUNK] for i in ids])),
                         ("raw_copy_pread", lambda ids: streamed[ids])):
        start = time.perf_counter()
        for ids in batches:
            gather(ids)
        out[name] = round(1000 * (time.perf_counter() - start) / steps, 1)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("results/bench/scale"))
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--measure", nargs=5, metavar=("SHAPE", "ITEMS", "SEQUENCES", "STORE", "MODE"),
                        help=argparse.SUPPRESS)  # one path, in a fresh process
    args = parser.parse_args()
    if args.measure:
        shape, items, sequences, store, mode = args.measure
        print(json.dumps(measure(shape, Path(items), Path(sequences), Path(store), mode, args.threads)))
        return

    cases = [(n, "minilm") for n in args.sizes] + [(min(args.sizes), "llama3-70b")]
    rows, gathers = [], {}
    for n, shape in cases:
        items, sequences, store = make_catalogue(args.workdir / f"n{n}", n, shape, args.users)
        row = {"items": n, "shape": f"{SHAPES[shape][0]} x {SHAPES[shape][1]}", "store_bytes":
               sum(f.stat().st_size for f in store.rglob("*") if f.is_file())}
        for mode in ("memory", "stream"):
            done = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--measure", shape,
                                   str(items), str(sequences), str(store), mode], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{mode} at {n} items failed:\n{done.stderr[-3000:]}")
            row[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{n} items, {shape}, {mode}: {row[mode]}", file=sys.stderr)
        assert all(row["memory"][k] == row["stream"][k] for k in AGREE), f"the two paths disagree at {n} items"
        rows.append(row)
        if shape == "minilm" and n == max(args.sizes):
            gathers = gather_step_timings(store)

    machine = f"{args.threads} threads, torch {torch.__version__}, {args.users} users"
    lines = [f"# scale: one epoch and one full ranking, in memory against streamed ({machine})", "",
             "| items | states | store | path | set-up s | epoch s | ranking s | peak memory |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for mode in ("memory", "stream"):
            m = r[mode]
            lines.append(f"| {r['items']:,} | {r['shape']} | {r['store_bytes'] / 2**30:.2f} GiB | {mode} | "
                         f"{m['setup_seconds']} | {m['epoch_seconds']} | {m['ranking_seconds']} | "
                         f"{m['peak_rss_bytes'] / 2**30:.2f} GiB |")
    lines += ["", f"A training step's items (704 random rows) at {max(args.sizes):,} items: "
              f"Zarr chunks with an LRU of 512 decoded chunks {gathers.get('zarr_chunk_lru')} ms, "
              f"the raw float16 copy {gathers.get('raw_copy_pread')} ms."]
    write_report(args.out, "scale", machine, lines, rows=rows, gather_ms=gathers)


if __name__ == "__main__":
    main()
