"""Catalogues that outgrow memory and grow after training: streamed caches, appended stores,
new items recommended without retraining."""
import importlib.util
import itertools
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
import zarr
from conftest import MINILM, REPO
from safetensors.torch import load_file

from pipeline.cache import CacheError, read_states
from pipeline.config import load_configs, resolve_run
from pipeline.data import left_pad, make_splits, read_sequences
from pipeline.embed_items import embed_items
from pipeline.embed_items import main as embed_items_main
from pipeline.encode import EncodeError, encode, store_lock
from pipeline.evaluate import evaluate
from pipeline.metrics import PROTOCOLS, rank_split
from pipeline.models.build import build_model, load_scorer
from pipeline.prepare import prepare
from pipeline.recommend import recommend
from pipeline.synth import SynthConfig, generate
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
    raws = list(cache.parent.glob(cache.name + ".*.f16crc"))
    whole = states(cache)
    assert len(raws) == 1 and raws[0].stat().st_size == whole.nbytes + 4 * len(whole)  # float16 rows, a CRC-32 each
    table = pq.read_table(items)
    s = read_states(streamed, table, 1e-3)["text"]
    ids = np.array([5, 3, 3, 11, 0, 4])  # unordered, repeated, padding
    assert np.array_equal(s[ids], states(cache)[ids])


def test_the_demo_trains_and_ranks_alike_streamed_and_in_memory(tmp_path, monkeypatch):
    """The demo's catalogue and users (config.yaml's synthetic settings) and its iisan-vs run for
    2 epochs, with random states in its caches' shapes in place of the encoders' (encoding the demo
    takes minutes): streamed and in memory, the same losses, weights and metrics, bit for bit. At
    1 thread: at 2, training the demo twice the same way differs in the last bits already."""
    monkeypatch.chdir(tmp_path)
    cfg = load_configs([REPO / "config.yaml", {"train": {"max_epochs": 2}}])
    run = resolve_run(cfg, "demo", "iisan-vs")
    raw = tmp_path / "raw"
    generate(SynthConfig(**cfg["datasets"]["demo"]["synthetic"]), raw / "users.tsv", raw / "items.tsv", raw / "images")
    items, sequences, _ = prepare(raw / "users.tsv", raw / "items.tsv", raw / "images")
    pq.write_table(items, tmp_path / "items.parquet")
    pq.write_table(sequences, tmp_path / "sequences.parquet")
    for tower in run["towers"].values():
        (tmp_path / tower["cache"]).parent.mkdir(parents=True, exist_ok=True)
        bench_module("common").random_store(tmp_path / tower["cache"], tower, items)
    streamed = run | {"train": run["train"] | {"cache_memory_mb": 1e-3}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    paths = ((run, "memory"), (streamed, "streamed"))
    try:
        logs = [train(r, tmp_path / "items.parquet", tmp_path / "sequences.parquet", tmp_path / d, progress=False)
                for r, d in paths]
        results = [evaluate(r, tmp_path / "items.parquet", tmp_path / "sequences.parquet", tmp_path / d,
                            tmp_path / f"{d}.json", tmp_path / f"{d}.parquet") for r, d in paths]
    finally:
        torch.set_num_threads(threads)
    assert (items.num_rows, sequences.num_rows) == (1940, 3000) and len(logs[0]["history"]) == 2  # as make demo
    assert [h["loss"] for h in logs[0]["history"]] == [h["loss"] for h in logs[1]["history"]]
    wa, wb = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("memory", "streamed"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert results[0]["metrics"] == results[1]["metrics"] and results[0]["metrics"]["test"]["hr@20"] > 0
    assert pq.read_table(tmp_path / "memory.parquet").equals(pq.read_table(tmp_path / "streamed.parquet"))


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


def grown_catalogue(runs: dict, items, sequences, tmp_path):
    """Train `va` and `sasrec-id` on the first 8 of the 11 items, then grow the catalogue to all
    11 and append their states to the stores: results/t, as a catalogue grows after training."""
    full = pq.read_table(items)
    results = tmp_path / "results" / "t"
    shutil.rmtree(results / "cache")  # the fixture's stores hold all 11 items
    pq.write_table(full.slice(0, 8), results / "items.parquet")
    seqs = pq.read_table(sequences).to_pylist()
    old = [{"user_id": r["user_id"], "items": [i for i in r["items"] if i <= 8]} for r in seqs]
    old = [r for r in old if len(r["items"]) >= 3]
    pq.write_table(pa.Table.from_pylist(old, schema=pq.read_table(sequences).schema), results / "sequences.parquet")
    towers = runs["va"]["towers"].values()
    for t in towers:
        encode(results / "items.parquet", t["settings"], t["kept_states"], tmp_path / t["cache"], chunk_items=4)
    for name in ("va", "sasrec-id"):
        train(runs[name], results / "items.parquet", results / "sequences.parquet",
              results / "runs" / name / "seed12345", progress=False)
    pq.write_table(full, results / "items.parquet")  # three new items: I8, I9, I10
    for t in towers:
        encode(results / "items.parquet", t["settings"], t["kept_states"], tmp_path / t["cache"], chunk_items=4)
    return results


def trained_model(run: dict, results):
    """The run's trained model without its caches, in eval mode."""
    model = build_model(run, 8)
    model.load_state_dict(load_file(str(results / "runs" / run["run"] / "seed12345" / "model.safetensors")))
    return model.eval()


def stored_embeddings(model, run: dict, tmp_path) -> torch.Tensor:
    """Every item's embedding [12, d] by the trained item encoder from the stores' rows, read here."""
    stores = {name: torch.from_numpy(states(tmp_path / t["cache"])).float() for name, t in run["towers"].items()}
    with torch.no_grad():
        return model.item_encoder(torch.arange(12), stores)


def user_scores(model, embs: torch.Tensor, inputs) -> torch.Tensor:
    """Scores [U, N+1] of left-padded histories [U, L] against item embeddings [N+1, d]."""
    inputs = torch.as_tensor(inputs)
    with torch.no_grad():
        return model.user_states(embs[inputs], inputs)[:, -1] @ embs.T


NEW = {"I8", "I9", "I10"}


def test_items_added_after_training_are_embedded_and_recommended(tiny_run, tiny_vit, tmp_path, capsys):  # noqa: F811
    """The content model embeds the new items with its trained encoder from their appended states
    and recommends them by their scores, without retraining; the ID model cannot."""
    runs, items, sequences = tiny_run
    results = grown_catalogue(runs, items, sequences, tmp_path)
    run = runs["va"]
    table = embed_items(run, results, tmp_path / "va.embeddings.parquet")
    model = trained_model(run, results)
    expected = stored_embeddings(model, run, tmp_path)  # [12, d]
    embs = torch.tensor(table.column("embedding").to_pylist())  # [11, d]
    assert torch.equal(embs, expected[1:])
    assert len({tuple(e) for e in embs[8:].tolist()} | {tuple(expected[0].tolist())}) == 4  # neither padding nor alike
    assert embs[8:].abs().sum(1).min() > 0
    ids = embed_items(runs["sasrec-id"], results, tmp_path / "id.embeddings.parquet")
    assert ids.column("embedding").null_count == 3  # I8, I9, I10: unknown to the ID model

    # a history after which a new item is among the 3 best of the 9 unseen items, by the scores
    # of those embeddings; recommend(k=3) must give exactly those 3, in that order
    all_ids = [f"I{i}" for i in range(11)]
    for history in itertools.combinations(range(1, 9), 2):
        scores = user_scores(model, expected, left_pad(history, run["train"]["max_history"])[None, :])[0]
        unseen = [i for i in range(1, 12) if i not in history]
        best = sorted(unseen, key=lambda i: -scores[i].item())[:3]
        if any(i > 8 for i in best):
            break
    assert any(i > 8 for i in best)
    ranked = recommend(run, results, [all_ids[i - 1] for i in history], k=3)
    assert [r["item_id"] for r in ranked] == [all_ids[i - 1] for i in best]
    assert [r["score"] for r in ranked] == pytest.approx([scores[i].item() for i in best], rel=1e-5)
    id_ranked = recommend(runs["sasrec-id"], results, [all_ids[i - 1] for i in history], k=9)
    assert len(id_ranked) == 6 and not {r["item_id"] for r in id_ranked} & NEW  # new items score -inf: left out

    config = tmp_path / "config.yaml"  # the fixture's config, for the command line
    config.write_text(yaml.safe_dump({
        "datasets": {"t": {"format": "iisan-split", "users": "u", "items": "i"}},
        "encoders": {"minilm": MINILM, "vit": {k: v for k, v in tiny_vit.items() if k != "build"}},
        "runs": {"va": {"method": "iisan", "text": "minilm", "image": "vit", "layerdrop": "group",
                        "train": {"max_epochs": 3, "batch_size": 8}}}}))
    embed_items_main(["--config", str(config), "--dataset", "t", "--run", "va", "--out", str(tmp_path / "cli.parquet")])
    assert pq.read_table(tmp_path / "cli.parquet").equals(table)
    assert capsys.readouterr().out.strip() == f"{tmp_path / 'cli.parquet'}: 11 items"


def test_a_grown_catalogue_is_evaluated_with_its_new_items(tiny_run, tmp_path):  # noqa: F811
    """evaluate on the grown catalogue: the content model ranks the new items by their scores
    (ranks as computed here from the trained model), the ID model misses every new target."""
    runs, items, sequences = tiny_run
    results = grown_catalogue(runs, items, sequences, tmp_path)
    grown = results / "items.parquet"
    splits = make_splits(*read_sequences(sequences), 11, runs["va"]["train"]["max_history"])
    new_target = splits.test.targets > 8
    assert new_target.any()
    for name in ("va", "sasrec-id"):
        run, model_dir = runs[name], results / "runs" / name / "seed12345"
        evaluate(run, grown, sequences, model_dir, tmp_path / f"{name}.json", tmp_path / f"{name}.pu.parquet",
                 tmp_path / f"{name}.topk.parquet")
        per_user = pq.read_table(tmp_path / f"{name}.pu.parquet").to_pandas()
        test = per_user[(per_user.split == "test") & (per_user.protocol == "repeat_aware")]
        top = pq.read_table(tmp_path / f"{name}.topk.parquet").to_pandas()
        if name == "va":
            model = trained_model(run, results)
            ranks = definition_ranks(user_scores(model, stored_embeddings(model, run, tmp_path), splits.test.inputs),
                                     splits.test)
            # NDCG@20 gives every rank (11 items)
            assert test["ndcg@20"].tolist() == pytest.approx([1 / np.log2(r + 1) for r in ranks])
            assert (test["ndcg@20"][new_target] > 0).all()  # new targets ranked
        else:
            assert (test["hr@20"][new_target] == 0).all() and (test["hr@20"][~new_target] > 0).any()
            assert not top["item_id"].isin(NEW).any()
            assert len(top) == sum(min(10, len(set(range(1, 9)) - set(h.tolist()))) for h in splits.test.histories)
        score = load_scorer(run, pq.read_table(grown), None, model_dir)
        whole = rank_split(score, splits.test, 11, [5, 20], PROTOCOLS, top=10)
        chunked = rank_split(score, splits.test, 11, [5, 20], PROTOCOLS, top=10, chunk_columns=3)
        # chunks are matmuls of other shapes: the same scores up to float32 rounding, so the same ranks
        # and top items (those that score at all: -inf ties fill the rest either way)
        finite = np.isfinite(whole.top_scores)
        assert whole.summary == chunked.summary and np.array_equal(whole.top_items[finite], chunked.top_items[finite])
        assert np.allclose(whole.top_scores, chunked.top_scores, rtol=1e-5, atol=1e-6)
        bench = bench_module("new_items").evaluate_grown(run, grown, sequences, model_dir, 8)
        reference = per_user[(per_user.split == "test") & (per_user.protocol == "reference")]
        assert bench["users_with_new_target"] == new_target.sum()
        assert bench["hr@10"] == pytest.approx(reference["hr@10"].mean())
        assert (bench["new_items_share_of_top10"] > 0) == (name == "va")


def bench_module(name: str):
    """bench/<name>.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def definition_ranks(scores: torch.Tensor, split) -> list[int]:
    """Repeat-aware ranks: 1 + unseen items (the target aside) scoring at least the target's."""
    out = []
    for s, t, h in zip(scores.tolist(), split.targets.tolist(), split.histories):
        hidden = {0, t} | set(h.tolist())
        out.append(1 + sum(1 for j, v in enumerate(s) if j not in hidden and v >= s[t]))
    return out
