import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from conftest import MINILM
from PIL import Image
from transformers import AutoModel, AutoTokenizer, ViTImageProcessor

from pipeline.backbone import model_path
from pipeline.cache import CacheMismatch
from pipeline.encode import encode
from pipeline.encode import main as encode_main
from pipeline.pooling import POOLERS


class Interrupt(Exception):
    pass


def states(path):
    return zarr.open_group(str(path), mode="r")["states"][:]


def test_stored_states_equal_the_models_hidden_states(tiny_vit, item_table, tmp_path):
    out = tmp_path / "vit.zarr"
    attrs = encode(item_table, tiny_vit, [0, 2, 4], out, chunk_items=4)
    stored = states(out)
    assert stored.shape == (12, 3, 32) and stored.dtype == np.float16
    assert not stored[0].any()  # row 0 is padding
    model = AutoModel.from_pretrained(tiny_vit["path"]).eval()
    processor = ViTImageProcessor.from_pretrained(tiny_vit["path"])
    images = [Image.open(p).convert("RGB") for p in pq.read_table(item_table).column("image").to_pylist()]
    with torch.no_grad():
        hidden = model(**processor(images=images, return_tensors="pt"), output_hidden_states=True).hidden_states
    expected = torch.stack([hidden[i][:, 0] for i in (0, 2, 4)], dim=1).half().numpy()
    np.testing.assert_allclose(stored[1:].astype(np.float32), expected.astype(np.float32), atol=2e-3, rtol=1e-2)
    assert attrs["kept_states"] == [0, 2, 4] and attrs["pooling"] == "cls"
    assert dict(zarr.open_group(str(out), mode="r").attrs)["complete"] is True


def test_text_states_match_minilm_and_batches_do_not_matter(item_table, tmp_path):
    a = encode(item_table, MINILM | {"batch_size": 2}, [0, 6], tmp_path / "a.zarr", chunk_items=5)
    encode(item_table, MINILM | {"batch_size": 16}, [0, 6], tmp_path / "b.zarr", chunk_items=5)
    np.testing.assert_allclose(states(tmp_path / "a.zarr").astype(np.float32),
                               states(tmp_path / "b.zarr").astype(np.float32), atol=2e-3)
    path = model_path(MINILM)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    title = pq.read_table(item_table).column("title").to_pylist()[3]
    with torch.no_grad():
        hidden = model(**tok([title], return_tensors="pt"), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(states(tmp_path / "a.zarr")[4, 1].astype(np.float32), hidden[6][0, 0].numpy(),
                               atol=5e-3, rtol=1e-2)
    assert a["max_length"] == 30


def test_unmasked_mean_pads_every_title_to_max_length(item_table, tmp_path):
    settings = MINILM | {"pooling": "mean_unmasked", "max_length": 12}
    encode(item_table, settings | {"batch_size": 1}, [6], tmp_path / "a.zarr", chunk_items=5)
    encode(item_table, settings | {"batch_size": 16}, [6], tmp_path / "b.zarr", chunk_items=5)
    a, b = states(tmp_path / "a.zarr"), states(tmp_path / "b.zarr")
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)
    path = model_path(MINILM)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    title = pq.read_table(item_table).column("title").to_pylist()[0]
    batch = tok([title], padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[6]  # [1, 12, 384]
    np.testing.assert_allclose(a[1, 0].astype(np.float32), hidden[0].mean(0).numpy(), atol=5e-3)


def test_missing_and_unreadable_images(tiny_vit, item_table, tmp_path):
    table = pq.read_table(item_table)
    images = table.column("image").to_pylist()
    images[3] = None  # item I3 has no image
    (tmp_path / "broken.png").write_bytes(b"not a png")
    images[5] = str(tmp_path / "broken.png")  # item I5's image cannot be read
    holes = tmp_path / "holes.parquet"
    pq.write_table(table.set_column(3, "image", pa.array(images, pa.string())), holes)

    out = tmp_path / "zeros.zarr"
    encode(holes, tiny_vit, [0, 4], out, chunk_items=4)
    store = zarr.open_group(str(out), mode="r")
    assert dict(store.attrs)["missing_items"] == {"no_image": 1, "unreadable": 1}
    assert store["missing"][:].tolist() == [0, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0, 0]  # rows are item_idx
    assert not store["states"][4].any() and not store["states"][6].any() and store["states"][5].any()
    encode(item_table, tiny_vit, [0, 4], tmp_path / "full.zarr", chunk_items=4)
    full = states(tmp_path / "full.zarr")
    keep = [r for r in range(12) if r not in (4, 6)]
    assert np.array_equal(store["states"][:][keep], full[keep])  # the other items are unaffected

    with pytest.raises(SystemExit, match=r"encode: item I3: no image \(None\); set encode.missing_image: zeros"):
        encode_main(["--items", str(holes), "--settings", json.dumps(tiny_vit), "--states", "0", "4",
                     "--missing-image", "error", "--out", str(tmp_path / "x.zarr")])
    with pytest.raises(SystemExit, match=r"kept states \[0, 9\] must increase within 0..4"):
        encode_main(["--items", str(item_table), "--settings", json.dumps(tiny_vit),
                     "--states", "0", "9", "--out", str(tmp_path / "y.zarr")])


def test_resume_after_interruption_gives_the_same_store(tiny_vit, item_table, tmp_path):
    reference = tmp_path / "ref.zarr"
    encode(item_table, tiny_vit, [0, 4], reference, chunk_items=4, sort_chunks=1)

    out = tmp_path / "resumed.zarr"
    seen = []

    def stop_after_two(chunk):
        seen.append(chunk)
        if len(seen) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        encode(item_table, tiny_vit, [0, 4], out, chunk_items=4, sort_chunks=1, on_chunk_done=stop_after_two)
    assert not out.exists() and out.with_name("resumed.zarr.partial").exists()

    resumed = []
    encode(item_table, tiny_vit, [0, 4], out, chunk_items=4, sort_chunks=1, on_chunk_done=resumed.append)
    assert resumed == [2]  # only the missing chunk was computed
    assert np.array_equal(states(out), states(reference))
    assert not out.with_name("resumed.zarr.partial").exists()


def test_mismatching_store_is_refused(tiny_vit, item_table, tmp_path):
    out = tmp_path / "vit.zarr"
    encode(item_table, tiny_vit, [0, 4], out, chunk_items=4)
    with pytest.raises(CacheMismatch, match=r"kept_states: store has \[0, 4\], request is \[0, 2, 4\]"):
        encode(item_table, tiny_vit, [0, 2, 4], out, chunk_items=4)
    with pytest.raises(CacheMismatch, match="pooling"):
        encode(item_table, tiny_vit | {"pooling": "mean"}, [0, 4], out, chunk_items=4)
    # a half-written store for another request is refused too, not silently continued
    partial = tmp_path / "other.zarr"
    with pytest.raises(Interrupt):
        encode(item_table, tiny_vit, [0, 4], partial, chunk_items=4,
               on_chunk_done=lambda c: (_ for _ in ()).throw(Interrupt()))
    with pytest.raises(CacheMismatch, match="other.zarr.partial"):
        encode(item_table, tiny_vit, [0, 2], partial, chunk_items=4)


def test_wrong_architecture_facts_are_refused(tiny_vit, item_table, tmp_path):
    with pytest.raises(ValueError, match="the model has 4 layers x 32, the config says 12 x 32"):
        encode(item_table, tiny_vit | {"layers": 12}, [0, 4], tmp_path / "x.zarr")


def test_pooling_on_a_padded_batch():
    h = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)  # [B=2, T=3, D=2]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(POOLERS["cls"](h, mask), h[:, 0])
    assert torch.allclose(POOLERS["mean"](h, mask)[0], h[0, :2].mean(0))
    assert torch.allclose(POOLERS["mean"](h, mask)[1], h[1].mean(0))
    assert torch.allclose(POOLERS["mean_unmasked"](h, mask)[0], h[0].mean(0))
    assert torch.equal(POOLERS["last"](h, mask), torch.stack([h[0, 1], h[1, 2]]))


def test_sharded_encode_equals_the_unsharded_store(tiny_vit, item_table, tmp_path):
    """12 rows in chunks of 4: 3 shards hold one chunk each; 5 shards leave two of them empty."""
    from pipeline.encode import EncodeError, gather, shard_rows

    whole = tmp_path / "whole.zarr"
    encode(item_table, tiny_vit, [0, 2, 4], whole, chunk_items=4, sort_chunks=1)
    for shards in (3, 5):
        parts = [tmp_path / f"part{i}of{shards}.zarr" for i in range(shards)]
        for i, part in enumerate(parts):
            if i == 1:  # interrupted after its first chunk, then resumed
                with pytest.raises(Interrupt):
                    encode(item_table, tiny_vit, [0, 2, 4], part, chunk_items=4, sort_chunks=1, shard=(i, shards),
                           on_chunk_done=lambda c: (_ for _ in ()).throw(Interrupt()))
            encode(item_table, tiny_vit, [0, 2, 4], part, chunk_items=4, sort_chunks=1, shard=(i, shards))
        assert [shard_rows(12, 4, i, shards) for i in range(shards)] == (
            [(0, 4), (4, 8), (8, 12)] if shards == 3 else [(0, 0), (0, 4), (4, 4), (4, 8), (8, 12)])
        out = tmp_path / f"gathered{shards}.zarr"
        with pytest.raises(EncodeError, match=f"gather needs each of the {shards} shards once; missing: \\[{shards - 1}\\]"):
            gather(item_table, tiny_vit, [0, 2, 4], parts[:-1], out, chunk_items=4, sort_chunks=1)
        gather(item_table, tiny_vit, [0, 2, 4], parts[::-1], out, chunk_items=4, sort_chunks=1)
        a, b = zarr.open_group(str(whole), mode="r"), zarr.open_group(str(out), mode="r")
        for name in ("states", "missing", "done"):  # bit for bit
            assert a[name][:].tobytes() == b[name][:].tobytes()
        same = {k: v for k, v in dict(a.attrs).items() if k not in ("encode_seconds",)}
        assert {k: v for k, v in dict(b.attrs).items() if k in same} == same and b.attrs["shards"] == shards

    # A part written for another request (other kept states) is refused, naming the key.
    other = tmp_path / "other.zarr"
    encode(item_table, tiny_vit, [0, 4], other, chunk_items=4, sort_chunks=1, shard=(0, 1))
    with pytest.raises(CacheMismatch, match="kept_states"):
        gather(item_table, tiny_vit, [0, 2, 4], [other], tmp_path / "x.zarr", chunk_items=4, sort_chunks=1)


def test_text_windows_resume_and_shard_to_the_same_store(item_table, tmp_path):
    """Windows of 2 chunks (8 rows) sorted by token length: an interrupted window is encoded
    again whole, so resumed and sharded stores equal the uninterrupted one bit for bit; and the
    window's batches differ from per-chunk batches only by float16 rounding."""
    from pipeline.encode import gather

    settings = MINILM | {"batch_size": 3}
    whole = tmp_path / "whole.zarr"
    encode(item_table, settings, [0, 3, 6], whole, chunk_items=4, sort_chunks=2)
    for stop_after in (1, 2):  # inside the first window, and just after it
        out, seen = tmp_path / f"resumed{stop_after}.zarr", []

        def stop(chunk):
            seen.append(chunk)
            if len(seen) == stop_after:
                raise Interrupt

        with pytest.raises(Interrupt):
            encode(item_table, settings, [0, 3, 6], out, chunk_items=4, sort_chunks=2, on_chunk_done=stop)
        resumed = []
        encode(item_table, settings, [0, 3, 6], out, chunk_items=4, sort_chunks=2, on_chunk_done=resumed.append)
        assert resumed == ([0, 1, 2] if stop_after == 1 else [2])  # a window is redone whole
        assert states(out).tobytes() == states(whole).tobytes()
    parts = [tmp_path / f"part{i}.zarr" for i in range(2)]
    for i, part in enumerate(parts):
        encode(item_table, settings, [0, 3, 6], part, chunk_items=4, sort_chunks=2, shard=(i, 2))
    assert [dict(zarr.open_group(str(p), mode="r").attrs)["rows"] for p in parts] == [[0, 8], [8, 12]]
    gather(item_table, settings, [0, 3, 6], parts, tmp_path / "gathered.zarr", chunk_items=4, sort_chunks=2)
    assert states(tmp_path / "gathered.zarr").tobytes() == states(whole).tobytes()

    per_chunk = tmp_path / "per_chunk.zarr"  # the batching of earlier releases: sorted within a chunk
    encode(item_table, settings, [0, 3, 6], per_chunk, chunk_items=4, sort_chunks=1)
    a, b = states(whole).astype(np.float32), states(per_chunk).astype(np.float32)
    assert np.abs(a - b).max() <= 2 * np.abs(b).max() * 2.0 ** -10  # float16 rounding
