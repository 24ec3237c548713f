"""The efficiency comparison: measured side by side, ratios computed from the measured numbers."""
import csv
import json

import pytest

from pipeline.config import load_config, resolve_run
from pipeline.efficiency import main as efficiency_main
from pipeline.efficiency import with_ratios
from pipeline.encode import encode

from conftest import write_sequences


def test_ratios_divide_by_the_reference_at_the_same_batch_size():
    rows = [{"run": "iisan", "batch_size": 2, "seconds_per_epoch": 4.0, "peak_memory_bytes": 100},
            {"run": "iisan", "batch_size": 4, "seconds_per_epoch": 2.0, "peak_memory_bytes": 200},
            {"run": "fft", "batch_size": 2, "seconds_per_epoch": 80.0, "peak_memory_bytes": 1500},
            {"run": "fft", "batch_size": 4, "seconds_per_epoch": 50.0, "peak_memory_bytes": 3000},
            {"run": "fft", "batch_size": 8, "seconds_per_epoch": 30.0, "peak_memory_bytes": 6000}]
    out = {(r["run"], r["batch_size"]): (r["time_ratio"], r["memory_ratio"]) for r in with_ratios(rows, "iisan")}
    assert out == {("iisan", 2): (1.0, 1.0), ("iisan", 4): (1.0, 1.0), ("fft", 2): (20.0, 15.0),
                   ("fft", 4): (25.0, 15.0), ("fft", 8): (None, None)}


def test_efficiency_compares_cached_and_uncached_runs(tiny_bert, tiny_vit, item_table, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sequences = write_sequences(tmp_path / "s.parquet", n_users=30)
    encoders = {"bert": tiny_bert, "vit": {k: v for k, v in tiny_vit.items() if k != "build"}}
    cfg = load_config({"datasets": {"t": {"format": "iisan-split", "users": "u", "items": "i"}},
                       "encoders": encoders,
                       "runs": {"iisan": {"method": "iisan", "text": "bert", "image": "vit"},
                                "fft": {"method": "fft", "text": "bert", "image": "vit"},
                                "bitfit": {"method": "bitfit", "text": "bert", "image": "vit"}},
                       "efficiency": {"runs": ["iisan", "fft", "bitfit"], "reference": "iisan"}})
    runs = {name: resolve_run(cfg, "t", name) for name in cfg["runs"]}
    for tower in runs["iisan"]["towers"].values():
        encode(item_table, cfg["encoders"][tower["encoder"]], tower["kept_states"], tmp_path / tower["cache"],
               chunk_items=4)
    efficiency_main(["--runs", json.dumps(list(runs.values())), "--reference", "iisan", "--items", str(item_table),
                     "--sequences", str(sequences), "--batch-sizes", "2", "4", "--steps", "2", "--warmup", "1",
                     "--threads", "1", "--out", str(tmp_path / "e.csv"), "--plot", str(tmp_path / "e.png")])
    with open(tmp_path / "e.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["batch_size"]) for r in rows] == [(n, b) for n in ("iisan", "fft", "bitfit") for b in ("2", "4")]
    by = {(r["run"], int(r["batch_size"])): r for r in rows}
    for (name, size), r in by.items():
        ref = by[("iisan", size)]
        assert float(r["time_ratio"]) == pytest.approx(float(r["seconds_per_epoch"]) / float(ref["seconds_per_epoch"]), abs=1e-3)
        assert float(r["memory_ratio"]) == pytest.approx(int(r["peak_memory_bytes"]) / int(ref["peak_memory_bytes"]), abs=1e-3)
    # FFT trains every backbone weight, BitFit only biases, IISAN only its side networks.
    trainable = {n: int(by[(n, 2)]["trainable_params"]) for n in ("iisan", "fft", "bitfit")}
    assert trainable["fft"] > trainable["bitfit"] and trainable["fft"] > trainable["iisan"]
    assert int(by[("fft", 2)]["total_params"]) > int(by[("iisan", 2)]["total_params"])
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
