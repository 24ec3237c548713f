"""Damaged caches, concurrent writers and broken numbers: each stops with a clear error, or is
repaired, and never gives silent results."""
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from conftest import MINILM, REPO, write_sequences

from pipeline.cache import CacheError, CacheMismatch, read_states
from pipeline.config import load_config, resolve_run
from pipeline.encode import encode
from pipeline.evaluate import evaluate
from pipeline.models import cached
from pipeline.train import TrainingError, train


@pytest.fixture
def text_run(tmp_path, item_table, monkeypatch):
    """An IISAN run over MiniLM titles (11 items, 30 users), its store encoded for real."""
    monkeypatch.chdir(tmp_path)
    write_sequences(tmp_path / "sequences.parquet", n_users=30)
    cfg = load_config({"datasets": {"t": {"format": "iisan-split", "users": "u", "items": "i"}},
                       "encoders": {"minilm": MINILM},
                       "runs": {"r": {"method": "iisan", "text": "minilm", "train": {"max_epochs": 2}}}})
    run = resolve_run(cfg, "t", "r")
    tower = run["towers"]["text"]
    encode(item_table, tower["settings"], tower["kept_states"], tmp_path / tower["cache"], chunk_items=4)
    train(run, item_table, tmp_path / "sequences.parquet", tmp_path / "model", progress=False)
    return run, item_table, tmp_path / "sequences.parquet", tmp_path / tower["cache"]


def chunk_file(store, chunk: int):
    return store / "states" / "c" / str(chunk) / "0" / "0"


def evaluate_cli(run, items, sequences, model, out):
    return subprocess.run([sys.executable, "-m", "pipeline.evaluate", "--run", json.dumps(run), "--items", str(items),
                           "--sequences", str(sequences), "--model-dir", str(model), "--out", str(out / "r.json"),
                           "--per-user", str(out / "r.parquet")], capture_output=True, text=True, cwd=out, env=None)


@pytest.mark.parametrize("damage", ["overwrite", "truncate"])
def test_a_damaged_chunk_stops_evaluation_naming_store_and_chunk(text_run, tmp_path, damage):
    run, items, sequences, store = text_run
    path = chunk_file(store, 1)
    data = bytearray(path.read_bytes())
    if damage == "overwrite":
        data[10:74] = bytes(64)  # 64 bytes overwritten inside the chunk
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    done = evaluate_cli(run, items, sequences, tmp_path / "model", tmp_path)
    assert done.returncode != 0 and not (tmp_path / "r.json").exists()
    assert f"{run['towers']['text']['cache']}: rows 4-7 (chunk 1) cannot be read" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_deleted_chunk_is_noticed(text_run, tmp_path):
    run, items, sequences, store = text_run
    chunk_file(store, 2).unlink()  # it read back as zeros: 4 items silently zeroed
    with pytest.raises(CacheError, match="1 of its 3 chunks of states are missing on disk"):
        read_states(run, pq.read_table(items))


def test_readers_require_a_complete_store_with_every_chunk_done(text_run):
    run, items, _, store = text_run
    group = zarr.open_group(str(store), mode="r+")
    group["done"][1] = False
    with pytest.raises(CacheError, match="marked complete but some chunks are not done"):
        read_states(run, pq.read_table(items))
    group["done"][1] = True
    group.attrs["complete"] = False
    with pytest.raises(CacheError, match="is not complete"):
        read_states(run, pq.read_table(items))


@pytest.mark.parametrize("key, value", [("max_length", 12), ("weights_fingerprint", "0" * 16),
                                        ("compute_dtype", "bfloat16"), ("quantization", "bnb-8bit"),
                                        ("format_version", 2)])
def test_a_store_encoded_with_other_settings_is_refused(text_run, key, value):
    run, items, _, store = text_run
    zarr.open_group(str(store), mode="r+").attrs[key] = value
    with pytest.raises(CacheMismatch, match=f"{key}: store has"):
        read_states(run, pq.read_table(items))


def test_a_partial_store_without_metadata_is_started_again(item_table, tmp_path):
    out = tmp_path / "s.zarr"
    partial = tmp_path / "s.zarr.partial"
    (partial / "states").mkdir(parents=True)  # killed while creating the store: no zarr.json
    encode(item_table, MINILM, [0, 6], out, chunk_items=4)
    assert zarr.open_group(str(out), mode="r").attrs["complete"] and not partial.exists()


def test_two_encodes_of_one_store(item_table, tmp_path):
    """A second encode of a store that another process is writing stops at once, naming that
    process, and touches nothing (it used to crash and leave a .partial that no later encode
    could open); once the first is done, the next encode works."""
    import os

    from pipeline.encode import store_lock

    out = tmp_path / "s.zarr"
    command = [sys.executable, "-m", "pipeline.encode", "--items", str(item_table), "--settings", json.dumps(MINILM),
               "--states", "0", "6", "--chunk-items", "4", "--out", str(out)]
    with store_lock(out):  # this process is the first writer
        second = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert second.returncode != 0 and f"is being written by another encode (pid {os.getpid()})" in second.stderr
    assert not out.exists() and not (tmp_path / "s.zarr.partial").exists()
    third = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert third.returncode == 0 and zarr.open_group(str(out), mode="r").attrs["complete"]
    assert not (tmp_path / "s.zarr.lock").exists()


def test_a_loss_that_is_not_a_number_stops_training(text_run, tmp_path, monkeypatch):
    run, items, sequences, _ = text_run
    real = cached.CachedTower.forward
    monkeypatch.setattr(cached.CachedTower, "forward", lambda self, ids: real(self, ids) * torch.nan)
    with pytest.raises(TrainingError, match="epoch 1: the training loss is nan"):
        train(run, items, sequences, tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_scores_that_are_not_numbers_stop_evaluation(text_run, tmp_path, monkeypatch):
    run, items, sequences, _ = text_run
    real = cached.CachedTower.forward
    monkeypatch.setattr(cached.CachedTower, "forward", lambda self, ids: real(self, ids) * torch.inf)
    with pytest.raises(CacheError, match="item embeddings are not finite"):
        evaluate(run, items, sequences, tmp_path / "model", tmp_path / "e.json", tmp_path / "e.parquet")
    assert not (tmp_path / "e.json").exists()


def test_a_decompression_bomb_is_an_unreadable_image_named_in_the_log(tiny_vit, item_table, tmp_path, capfd):
    from PIL import Image

    table = pq.read_table(item_table)
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (14000, 14000)).save(bomb)  # over PIL's limit: DecompressionBombError when opened
    images = table.column("image").to_pylist()
    images[2] = str(bomb)
    import pyarrow as pa
    pq.write_table(table.set_column(3, "image", pa.array(images)), tmp_path / "bomb.parquet")
    encode(tmp_path / "bomb.parquet", tiny_vit, [0, 4], tmp_path / "v.zarr", chunk_items=4)
    store = zarr.open_group(str(tmp_path / "v.zarr"), mode="r")
    assert store.attrs["missing_items"] == {"no_image": 0, "unreadable": 1} and store["missing"][3] == 2
    assert f"item I2: image {bomb} is unreadable" in capfd.readouterr().out
    assert not np.asarray(store["states"][3]).any()
