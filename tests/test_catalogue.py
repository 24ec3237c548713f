"""Catalogues that outgrow memory and grow after training: streamed caches, appended stores,
new items recommended without retraining."""
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from conftest import MINILM
from safetensors.torch import load_file

from pipeline.cache import CacheError, read_states
from pipeline.embed_items import embed_items
from pipeline.encode import EncodeError, encode, store_lock
from pipeline.evaluate import evaluate
from pipeline.recommend import recommend
from pipeline.train import train
from test_train_evaluate import tiny_run  # noqa: F401 (fixture)


def states(path):
    return zarr.open_group(str(path), mode="r")["states"][:]


def test_streamed_caches_give_the_in_memory_results_bit_for_bit(tiny_run, tmp_path):  # noqa: F811
    runs, items, sequences = tiny_run
    run = runs["va"]
    streamed = run | {"train": run["train"] | {"cache_memory_mb": 1e-3}}  # a 1 KB budget: every store streams
    a = train(run, items, sequences, tmp_path / "memory", progress=False)
    b = train(streamed, items, sequences, tmp_path / "streamed", progress=False)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    wa, wb = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("memory", "streamed"))
    assert all((wa[k] == wb[k]).all() for k in wa)
    ra = evaluate(run, items, sequences, tmp_path / "memory", tmp_path / "a.json", tmp_path / "a.parquet")
    rb = evaluate(streamed, items, sequences, tmp_path / "memory", tmp_path / "b.json", tmp_path / "b.parquet")
    assert ra["metrics"] == rb["metrics"] and ra["metrics_repeat_aware"] == rb["metrics_repeat_aware"]
    cache = tmp_path / run["towers"]["text"]["cache"]
    raws = list(cache.parent.glob(cache.name + ".*.f16"))
    assert len(raws) == 1 and raws[0].stat().st_size == states(cache).nbytes  # the raw copy: float16, whole
    table = pq.read_table(items)
    s = read_states(streamed, table, 1e-3)["text"]
    ids = np.array([5, 3, 3, 11, 0, 4])  # unordered, repeated, padding
    assert np.array_equal(s[ids], states(cache)[ids])


def test_a_grown_catalogue_is_appended_without_touching_earlier_rows(item_table, tmp_path):
    table = pq.read_table(item_table)
    settings = MINILM | {"batch_size": 3}
    for old, label in ((7, "aligned"), (5, "mid-window")):  # 8 rows = 2 chunks of 4; 6 rows end inside a chunk
        prefix = tmp_path / f"prefix{old}.parquet"
        pq.write_table(table.slice(0, old), prefix)
        store = tmp_path / f"{label}.zarr"
        encode(prefix, settings, [0, 6], store, chunk_items=4, sort_chunks=1)
        before = states(store)
        written = []
        encode(item_table, settings, [0, 6], store, chunk_items=4, sort_chunks=1, on_chunk_done=written.append)
        after = states(store)
        assert after.shape[0] == 12 and np.array_equal(after[:old + 1], before)  # earlier rows untouched
        assert written == list(range((old + 1) // 4, 3))  # only the chunks holding new rows
        attrs = dict(zarr.open_group(str(store), mode="r").attrs)
        assert attrs["items"] == 11 and attrs["complete"] and attrs["extends"][0]["items"] == old
        fresh = tmp_path / f"fresh-{label}.zarr"
        encode(item_table, settings, [0, 6], fresh, chunk_items=4, sort_chunks=1)
        if label == "aligned":  # every window is batched as in a fresh encode
            assert after.tobytes() == states(fresh).tobytes()
        else:  # the window shared by old and new rows is batched differently: float16 rounding apart
            boundary = slice(4, 8)
            outside = np.r_[0:4, 8:12]
            assert np.array_equal(after[outside], states(fresh)[outside])
            a, b = after[boundary].astype(np.float32), states(fresh)[boundary].astype(np.float32)
            assert np.abs(a - b).max() <= 2 * np.abs(b).max() * 2.0 ** -10
        again = []
        encode(item_table, settings, [0, 6], store, chunk_items=4, sort_chunks=1, on_chunk_done=again.append)
        assert again == []  # complete: nothing to do


def test_a_store_for_other_settings_is_replaced_only_when_asked(item_table, tmp_path):
    store = tmp_path / "s.zarr"
    encode(item_table, MINILM, [0, 6], store, chunk_items=4)
    with pytest.raises(CacheError, match="pooling"):
        encode(item_table, MINILM | {"pooling": "mean"}, [0, 6], store, chunk_items=4)
    encode(item_table, MINILM | {"pooling": "mean"}, [0, 6], store, chunk_items=4, replace=True)
    assert zarr.open_group(str(store), mode="r").attrs["pooling"] == "mean"
    assert not list(tmp_path.glob("s.zarr.*"))  # no partial, replaced copy or lock left behind


def test_a_second_writer_is_refused_while_the_first_holds_the_store(item_table, tmp_path):
    store = tmp_path / "s.zarr"
    with store_lock(store):
        with pytest.raises(EncodeError, match=r"s.zarr is being written by another encode \(pid \d+\)"):
            encode(item_table, MINILM, [0, 6], store, chunk_items=4)
    encode(item_table, MINILM, [0, 6], store, chunk_items=4)  # released: the next one works
    assert zarr.open_group(str(store), mode="r").attrs["complete"]


def test_items_added_after_training_are_embedded_and_recommended(tiny_run, tmp_path):  # noqa: F811
    """Train on 8 items, grow the catalogue to 11 and append their states: the content model
    embeds and recommends the new items without retraining; the ID model cannot."""
    runs, items, sequences = tiny_run
    full = pq.read_table(items)
    results = tmp_path / "results" / "t"
    shutil.rmtree(results / "cache")  # the fixture's stores hold all 11 items
    pq.write_table(full.slice(0, 8), results / "items.parquet")
    seqs = pq.read_table(sequences).to_pylist()
    old = [{"user_id": r["user_id"], "items": [i for i in r["items"] if i <= 8]} for r in seqs]
    old = [r for r in old if len(r["items"]) >= 3]
    pq.write_table(pa.Table.from_pylist(old, schema=pq.read_table(sequences).schema), results / "sequences.parquet")
    run = runs["va"]
    for tower in ("text", "image"):
        t = run["towers"][tower]
        encode(results / "items.parquet", t["settings"], t["kept_states"], tmp_path / t["cache"], chunk_items=4)
    for name in ("va", "sasrec-id"):
        train(runs[name], results / "items.parquet", results / "sequences.parquet",
              results / "runs" / name / "seed12345", progress=False)

    pq.write_table(full, results / "items.parquet")  # three new items
    for tower in ("text", "image"):
        t = run["towers"][tower]
        encode(results / "items.parquet", t["settings"], t["kept_states"], tmp_path / t["cache"], chunk_items=4)
    table = embed_items(run, results, tmp_path / "va.embeddings.parquet")
    assert table.num_rows == 11 and table.column("embedding").null_count == 0
    ids = embed_items(runs["sasrec-id"], results, tmp_path / "id.embeddings.parquet")
    assert ids.column("embedding").null_count == 3  # I8, I9, I10: unknown to the ID model
    new = {"I8", "I9", "I10"}
    content = {r["item_id"] for r in recommend(run, results, ["I0", "I1"], k=10)}
    assert content & new  # 10 of the 9 unseen items: the new ones among them
    assert not {r["item_id"] for r in recommend(runs["sasrec-id"], results, ["I0", "I1"], k=10)} & new
