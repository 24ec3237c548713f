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


def test_cuda_llm_bfloat16_over_a_device_map(item_table, tmp_path, monkeypatch):
    """A tiny Llama in bfloat16 spread by device_map="auto" agrees with the CPU's float32."""
    from pipeline.backbone import Backbone
    from pipeline.build_encoder import build_llm

    settings = {"path": str(tmp_path / "llm"), "modality": "text", "causal": True, "layers": 4, "hidden_size": 64,
                "pooling": "mean", "max_length": 12, "batch_size": 4, "dtype": "bfloat16", "device_map": "auto",
                "build": {"architecture": "llama", "num_attention_heads": 4, "intermediate_size": 128, "seed": 0}}
    build_llm(settings, tmp_path / "llm")
    backbone = Backbone(settings, [0, 2])
    assert backbone.device.type == "cuda" and backbone.model.dtype == torch.bfloat16
    encode(item_table, settings, [0, 2], tmp_path / "gpu.zarr", chunk_items=4)
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: False)
        encode(item_table, settings | {"dtype": "float32", "device_map": None}, [0, 2], tmp_path / "cpu.zarr",
               chunk_items=4)
    gpu, cpu = (zarr.open_group(str(tmp_path / f), mode="r")["states"][:].astype(np.float32)
                for f in ("gpu.zarr", "cpu.zarr"))
    assert np.abs(gpu - cpu).max() < 0.05 * np.abs(cpu).max()
