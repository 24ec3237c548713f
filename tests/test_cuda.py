"""Encode and train on a CUDA device (skipped where torch sees no GPU)."""
import numpy as np
import pytest
import torch
import zarr
from conftest import write_sequences

from pipeline.config import load_config, resolve_run
from pipeline.encode import encode
from pipeline.evaluate import evaluate
from pipeline.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_cuda_encode_matches_cpu(tiny_vit, item_table, tmp_path, monkeypatch):
    encode(item_table, tiny_vit, [0, 2, 4], tmp_path / "gpu.zarr", chunk_items=4)
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: False)
        encode(item_table, tiny_vit, [0, 2, 4], tmp_path / "cpu.zarr", chunk_items=4)
    gpu, cpu = (zarr.open_group(str(tmp_path / f), mode="r")["states"][:].astype(np.float32)
                for f in ("gpu.zarr", "cpu.zarr"))
    np.testing.assert_allclose(gpu, cpu, atol=1e-2, rtol=1e-2)


def test_cuda_train_and_evaluate(tiny_vit, item_table, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_sequences(tmp_path / "sequences.parquet", n_users=40)
    cfg = load_config({
        "datasets": {"t": {"format": "iisan-split", "users": "u", "items": "i"}},
        "encoders": {"vit": {k: v for k, v in tiny_vit.items() if k != "build"}},
        "runs": {"img": {"method": "iisan", "image": "vit", "train": {"max_epochs": 2, "batch_size": 8}}},
    })
    run = resolve_run(cfg, "t", "img")
    encode(item_table, tiny_vit, run["towers"]["image"]["kept_states"], tmp_path / run["towers"]["image"]["cache"])
    log = train(run, item_table, tmp_path / "sequences.parquet", tmp_path / "img", progress=False)
    assert "cpu" not in log["device"] and log["peak_memory_bytes"] > 0
    result = evaluate(run, item_table, tmp_path / "sequences.parquet", tmp_path / "img", tmp_path / "img.json",
                      tmp_path / "img.parquet")
    assert 0 <= result["metrics"]["test"]["hr@10"] <= 1
