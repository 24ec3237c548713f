"""Damaged caches, concurrent writers, broken numbers and oversized images: each stops with a
clear error, or is repaired or handled, and never gives silent results."""
import json
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from conftest import MINILM, REPO, write_sequences

from pipeline.backbone import LOAD_SIDE, Backbone
from pipeline.cache import CacheError, CacheMismatch, StreamedStates, read_states
from pipeline.config import load_config, resolve_run
from pipeline.encode import EncodeError, encode
from pipeline.evaluate import evaluate
from pipeline.models import cached
from pipeline.train import TrainingError, train


@pytest.fixture
def encoded_run(tmp_path, item_table, monkeypatch):
    """An IISAN run over MiniLM titles (11 items, 30 users), its store encoded for real."""
    monkeypatch.chdir(tmp_path)
    write_sequences(tmp_path / "sequences.parquet", n_users=30)
    cfg = load_config({"datasets": {"t": {"format": "iisan-split", "users": "u", "items": "i"}},
                       "encoders": {"minilm": MINILM},
                       "runs": {"r": {"method": "iisan", "text": "minilm", "train": {"max_epochs": 2}}}})
    run = resolve_run(cfg, "t", "r")
    tower = run["towers"]["text"]
    encode(item_table, tower["settings"], tower["kept_states"], tmp_path / tower["cache"], chunk_items=4)
    return run, item_table, tmp_path / "sequences.parquet", tmp_path / tower["cache"]


@pytest.fixture
def text_run(encoded_run, tmp_path):
    """encoded_run, trained into tmp_path / model."""
    run, items, sequences, _ = encoded_run
    train(run, items, sequences, tmp_path / "model", progress=False)
    return encoded_run


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


def test_a_damaged_chunk_stops_training_naming_store_and_chunk(encoded_run, tmp_path):
    run, items, sequences, store = encoded_run
    path = chunk_file(store, 1)
    data = bytearray(path.read_bytes())
    data[10:74] = bytes(64)  # 64 bytes overwritten inside the chunk
    path.write_bytes(bytes(data))
    cache = re.escape(run["towers"]["text"]["cache"])
    for cache_memory_mb in (None, 0):  # read into memory, or streamed from a raw copy
        with pytest.raises(CacheError, match=rf"{cache}: rows 4-7 \(chunk 1\) cannot be read.*delete it and encode"):
            train(run | {"train": run["train"] | {"cache_memory_mb": cache_memory_mb}}, items, sequences,
                  tmp_path / "damaged", progress=False)
    assert not (tmp_path / "damaged").exists()
    assert not list(store.parent.glob("*f16crc*"))  # no raw copy made from a damaged store, no temporary left


def test_a_damaged_raw_copy_is_refused_naming_file_and_row(encoded_run, tmp_path):
    run, items, sequences, store = encoded_run
    states = read_states(run, pq.read_table(items), 0)["text"]  # makes the raw copy
    raw = next(store.parent.glob("*.f16crc"))
    with raw.open("r+b") as f:  # 8 bytes overwritten inside row 5
        f.seek(5 * states.row_bytes + 100)
        f.write(b"\x7b" * 8)
    with pytest.raises(CacheError, match=rf"{re.escape(raw.name)}: row 5 does not match its CRC-32 .*delete it"):
        train(run | {"train": run["train"] | {"cache_memory_mb": 0}}, items, sequences, tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()
    with raw.open("r+b") as f:
        f.truncate(raw.stat().st_size - 2)
    with pytest.raises(CacheError, match=rf"{re.escape(raw.name)} has \d+ bytes, not the"):
        StreamedStates(raw, states.shape)
    raw.unlink()  # as the message says: the next run makes it again, equal to the store
    remade = read_states(run, pq.read_table(items), 0)["text"]
    assert np.array_equal(remade[np.arange(12)], read_states(run, pq.read_table(items))["text"].numpy())


def test_a_deleted_chunk_is_noticed(encoded_run, tmp_path):
    run, items, sequences, store = encoded_run
    chunk_file(store, 2).unlink()  # it read back as zeros: 4 items silently zeroed
    with pytest.raises(CacheError, match="1 of its 3 chunks of states are missing on disk"):
        read_states(run, pq.read_table(items))


def test_readers_require_a_complete_store_with_every_chunk_done(encoded_run):
    run, items, _, store = encoded_run
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
def test_a_store_encoded_with_other_settings_is_refused(encoded_run, key, value):
    run, items, _, store = encoded_run
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


def test_a_loss_that_is_not_a_number_stops_training(encoded_run, tmp_path, monkeypatch):
    run, items, sequences, _ = encoded_run
    real = cached.CachedTower.forward
    monkeypatch.setattr(cached.CachedTower, "forward", lambda self, ids: real(self, ids) * torch.nan)
    with pytest.raises(TrainingError, match="epoch 1: the training loss is nan"):
        train(run, items, sequences, tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_item_embeddings_that_are_not_numbers_stop_training(encoded_run, tmp_path, monkeypatch):
    """NaN only in evaluation mode: the training loss stays finite, validation would rank NaN."""
    run, items, sequences, _ = encoded_run
    real = cached.CachedTower.forward
    monkeypatch.setattr(cached.CachedTower, "forward",
                        lambda self, ids: real(self, ids) * (1.0 if self.training else torch.nan))
    with pytest.raises(CacheError, match="epoch 1: 11 item embeddings are not finite"):
        train(run, items, sequences, tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan").exists()


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



def test_states_that_overflow_float16_stop_encode(tiny_bert, item_table, tmp_path, monkeypatch):
    """A kept state beyond float16's range (large LLM activations) would be stored as inf."""
    real = Backbone.forward

    def huge(self, inputs):  # [B, K, D]: the second kept state (2) scaled out of float16's range
        states = real(self, inputs)
        return states * torch.tensor([1.0, 1e6], device=states.device).view(1, 2, 1)

    monkeypatch.setattr(Backbone, "forward", huge)
    with pytest.raises(EncodeError, match=r"items I\d+, .* and 6 more: pooled state\(s\) \[2\] are not finite"):
        encode(item_table, tiny_bert | {"pooling": "cls", "max_length": 30}, [0, 2], tmp_path / "s.zarr", chunk_items=4)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_a_large_image_is_loaded_shrunk(tmp_path, suffix):
    """A 6000 x 4000 cover comes back at most LOAD_SIDE a side, its aspect and colour kept (a JPEG
    is decoded at a reduced scale; a PNG whole, once)."""
    from PIL import Image

    path = tmp_path / f"large.{suffix}"
    Image.new("RGB", (6000, 4000), (200, 40, 90)).save(path)
    image, status = Backbone.load_image({"item_id": "big", "image": str(path)})
    assert status == "ok" and image.mode == "RGB" and image.size == (LOAD_SIDE, round(LOAD_SIDE * 2 / 3))
    assert np.abs(np.asarray(image, dtype=int) - [200, 40, 90]).max() <= 3
