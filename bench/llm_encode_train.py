"""Benchmark: LLM encoding throughput, and cached IISAN-VA training with 70B-shaped caches.

Random-initialised weights of the real shapes, so nothing is downloaded:
1. encode: a Llama-3-8B-shaped model (32 blocks x 4096, GQA 32/8 heads, MLP 14336) over the
   Scientific titles through pipeline.encode (early exit, length-sorted batches, bfloat16 on a
   GPU): items/s, and the fraction of the GPU's dense bf16 FLOP/s limit reached, counting
   2 x (block parameters) FLOPs per real token (attention over <= 30 tokens is left out);
2. train: cached IISAN-VA on the Scientific sequences with Llama-3-70B-shaped text caches
   (7 kept states x 8192) and ViT-base-shaped image caches (7 x 768), against IISAN-VS with
   BERT-base-shaped caches (7 x 768): seconds per epoch, peak memory (GPU:
   torch.cuda.max_memory_allocated; CPU: the training process's peak resident memory), cache bytes.
   Each training runs in its own process (python -m pipeline.train), so peaks do not mix.

Scales: `gpu` (the shapes above; needs CUDA), `cpu` (the same data, widths and depths cut down so a
laptop finishes in minutes), `smoke` (tiny; what the test suite runs). Without the Scientific files
where overlays/shared-data.yaml says, the data is the synthetic demo generator's.

Usage: python bench/llm_encode_train.py [--scale gpu|cpu|smoke] [--out DIR]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
import zarr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import random_store, split_files, write_report
from pipeline import layerdrop
from pipeline.build_encoder import build_llm
from pipeline.cache import store_bytes
from pipeline.config import load_config, resolve_run
from pipeline.encode import encode
from pipeline.prepare import prepare
from pipeline.synth import SynthConfig, generate

SCALES = {
    "gpu": {"llm": {"layers": 32, "hidden_size": 4096, "heads": 32, "kv_heads": 8, "mlp": 14336},
            "dtype": "bfloat16", "batch_size": 256, "encode_items": None, "text_width": 8192,
            "bert_width": 768, "image_width": 768, "epochs": 3},
    "cpu": {"llm": {"layers": 12, "hidden_size": 256, "heads": 4, "kv_heads": 2, "mlp": 688},
            "dtype": "float32", "batch_size": 64, "encode_items": 2000, "text_width": 2048,
            "bert_width": 192, "image_width": 192, "epochs": 3},
    "smoke": {"llm": {"layers": 6, "hidden_size": 64, "heads": 4, "kv_heads": 2, "mlp": 128},
              "dtype": "float32", "batch_size": 32, "encode_items": 200, "text_width": 256,
              "bert_width": 32, "image_width": 32, "epochs": 1},
}
# Dense bf16 tensor-core FLOP/s by device name (vendor data sheets).
PEAK_BF16 = {"H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
             "H200": 989e12, "A100": 312e12, "A6000": 154.8e12, "L40S": 362e12, "L4": 121e12}


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpuinfo = Path("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")), None) if cpuinfo.exists() else None
    return f"CPU: {model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def peak_flops() -> float | None:
    name = device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None) if torch.cuda.is_available() else None


def tables(work: Path, scale: str, images: bool = False) -> tuple[Path, Path, str]:
    """items.parquet and sequences.parquet: Scientific when present (not at smoke scale, nor when
    images are needed: it has none offline), else the synthetic demo generator's, with covers."""
    users, items = split_files()
    if scale != "smoke" and users.exists() and items.exists() and not images:
        name = "Amazon Scientific"
    else:
        n = 300 if scale == "smoke" else 2000
        users, items = work / "users.tsv", work / "items.tsv"
        generate(SynthConfig(n_items=n, n_users=int(n * 1.5), image_size=16 if scale == "smoke" else 64),
                 users, items, work / "images")
        name = f"synthetic ({n} items)"
    item_table, sequences, _ = prepare(users, items, work / "images" if images else None)
    pq.write_table(item_table, work / "items.parquet")
    pq.write_table(sequences, work / "sequences.parquet")
    return work / "items.parquet", work / "sequences.parquet", name


def bench_encode(work: Path, items: Path, s: dict) -> dict:
    llm = s["llm"]
    settings = {"path": str(work / "llm"), "modality": "text", "causal": True, "layers": llm["layers"],
                "hidden_size": llm["hidden_size"], "pooling": "mean", "max_length": 30,
                "batch_size": s["batch_size"], "dtype": s["dtype"], "quantization": None, "device_map": None,
                "model_class": "AutoModel",
                "build": {"architecture": "llama", "num_attention_heads": llm["heads"],
                          "num_key_value_heads": llm["kv_heads"], "intermediate_size": llm["mlp"],
                          "vocab_size": 8000, "seed": 0}}
    table = pq.read_table(items)
    if s["encode_items"]:
        table = table.slice(0, s["encode_items"])
        pq.write_table(table, work / "encode_items.parquet")
        items = work / "encode_items.parquet"
    titles = table.column("title").to_pylist()
    build_llm(settings, work / "llm", corpus=titles, device="cuda" if torch.cuda.is_available() else "cpu",
              dtype=getattr(torch, s["dtype"]))
    states = layerdrop.group(llm["layers"], 12)  # aligned to a ViT-base, as IISAN-VA keeps them
    encode(items, settings, states, work / "llm.zarr", chunk_items=1024)
    seconds = zarr.open_group(str(work / "llm.zarr"), mode="r").attrs["encode_seconds"]

    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(work / "llm")
    tokens = sum(len(ids) for ids in tokenizer(titles, truncation=True, max_length=30)["input_ids"])
    h, blocks = llm["hidden_size"], max(states)
    kv = h * llm["kv_heads"] // llm["heads"]
    block_params = 2 * h * h + 2 * h * kv + 3 * h * llm["mlp"]  # q, o, k, v, gate/up/down
    flops = 2 * block_params * blocks * tokens
    peak = peak_flops()
    return {"model": f"Llama-3-8B-shaped ({llm['layers']} x {h}, MLP {llm['mlp']})" if h == 4096
            else f"Llama-shaped {llm['layers']} x {h}, MLP {llm['mlp']}",
            "dtype": s["dtype"], "items": table.num_rows, "tokens": tokens, "kept_states": states,
            "blocks_run": blocks, "seconds": seconds, "items_per_s": table.num_rows / seconds,
            "tflops_per_s": flops / seconds / 1e12, "flop_fraction": flops / seconds / peak if peak else None}


def bench_train(work: Path, items: Path, sequences: Path, s: dict) -> list[dict]:
    enc = {"modality": "text", "pooling": "mean", "causal": True}
    cfg = load_config({
        "datasets": {"bench": {"format": "iisan-split", "users": "u", "items": "i"}},
        "encoders": {
            "llama3-70b-shaped": enc | {"path": "random", "layers": 80, "hidden_size": s["text_width"]},
            "bert-base-shaped": {"path": "random", "modality": "text", "layers": 12, "hidden_size": s["bert_width"]},
            "vit-base-shaped": {"path": "random", "modality": "image", "layers": 12, "hidden_size": s["image_width"]},
        },
        "runs": {
            "iisan-va-70b": {"method": "iisan", "text": "llama3-70b-shaped", "image": "vit-base-shaped",
                             "layerdrop": "group"},
            "iisan-vs-bert": {"method": "iisan", "text": "bert-base-shaped", "image": "vit-base-shaped",
                              "layerdrop": "symmetric"},
        },
        "train": {"max_epochs": s["epochs"], "patience": s["epochs"]},
    })
    results = []
    for name in ("iisan-vs-bert", "iisan-va-70b"):
        run = resolve_run(cfg, "bench", name)
        for i, tower in enumerate(run["towers"].values()):
            tower["cache"] = str(work / Path(tower["cache"]).name)
            if not Path(tower["cache"]).exists():
                random_store(Path(tower["cache"]), tower, pq.read_table(items), chunk_items=1024, seed=i)
        out = work / "runs" / name
        subprocess.run([sys.executable, "-m", "pipeline.train", "--run", json.dumps(run), "--items", str(items),
                        "--sequences", str(sequences), "--out-dir", str(out), "--threads", str(torch.get_num_threads())],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        log = json.loads((out / "train_log.json").read_text())
        results.append({"run": name, "towers": {t: f"{len(v['kept_states'])} x {v['hidden_size']}"
                                                for t, v in run["towers"].items()},
                        "seconds_per_epoch": log["seconds_per_epoch"], "epochs": log["epochs"],
                        "peak_memory_bytes": log["peak_memory_bytes"], "trainable_params": log["trainable_params"],
                        "cache_bytes": sum(store_bytes(t["cache"]) for t in run["towers"].values())})
    return results


def markdown(report: dict) -> str:
    e = report["encode"]
    frac = f"{e['flop_fraction']:.1%}" if e["flop_fraction"] is not None else "n/a (no bf16 peak for a CPU)"
    lines = [f"Device: {report['device']}; data: {report['data']}; scale: {report['scale']}; "
             f"command: `{report['command']}`", "",
             "| encode | dtype | items | blocks run | items/s | TFLOP/s | fraction of peak |",
             "|---|---|---|---|---|---|---|",
             f"| {e['model']} | {e['dtype']} | {e['items']} | {e['blocks_run']} | {e['items_per_s']:.1f} | "
             f"{e['tflops_per_s']:.3f} | {frac} |", "",
             "| train (cached) | kept states x width | s/epoch | peak memory | trainable params | cache |",
             "|---|---|---|---|---|---|"]
    for t in report["train"]:
        towers = ", ".join(f"{k} {v}" for k, v in t["towers"].items())
        lines.append(f"| {t['run']} | {towers} | {t['seconds_per_epoch']:.2f} | "
                     f"{t['peak_memory_bytes'] / 2**20:.0f} MiB | {t['trainable_params']:,} | "
                     f"{t['cache_bytes'] / 2**20:.0f} MiB |")
    base, big = report["train"]
    lines += ["", f"70B-shaped / BERT-base-shaped: {big['seconds_per_epoch'] / base['seconds_per_epoch']:.2f}x time "
                  f"per epoch, {big['peak_memory_bytes'] / base['peak_memory_bytes']:.2f}x peak memory, "
                  f"{big['cache_bytes'] / base['cache_bytes']:.1f}x cache bytes"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=SCALES, default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args(argv)
    if args.scale == "gpu" and not torch.cuda.is_available():
        parser.error("--scale gpu needs a CUDA device; use --scale cpu")
    s = SCALES[args.scale]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        work = Path(tmp)
        items, sequences, data = tables(work, args.scale)
        report = {"device": device_name(), "scale": args.scale, "data": data,
                  "command": f"python bench/llm_encode_train.py --scale {args.scale}",
                  "encode": bench_encode(work, items, s), "train": bench_train(work, items, sequences, s)}
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    write_report(args.out, f"llm_encode_train.{args.scale}", report["device"], markdown(report).splitlines(), **report)


if __name__ == "__main__":
    main()
