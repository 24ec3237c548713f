import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MINILM, write_sequences
from safetensors.torch import load_file

from pipeline.config import load_config, resolve_run
from pipeline.data import DataError, make_splits, read_sequences
from pipeline.encode import encode
from pipeline.evaluate import evaluate
from pipeline.recommend import recommend
from pipeline.models.build import build_model
from pipeline.train import train


@pytest.fixture
def tiny_run(tmp_path, item_table, tiny_vit, monkeypatch):
    """A VA run (MiniLM 384 wide x ViT 32 wide) on 11 items and 30 users, caches encoded for real."""
    monkeypatch.chdir(tmp_path)
    write_sequences(tmp_path / "sequences.parquet", n_users=30)
    cfg = load_config({
        "datasets": {"t": {"format": "iisan-split", "users": "u", "items": "i"}},
        "encoders": {"minilm": MINILM, "vit": {k: v for k, v in tiny_vit.items() if k != "build"}},
        "runs": {"va": {"method": "iisan", "text": "minilm", "image": "vit", "layerdrop": "group",
                        "train": {"max_epochs": 3, "batch_size": 8}},
                 "still": {"method": "iisan", "image": "vit", "train": {"max_epochs": 20, "patience": 2, "lr_scale": 1e-30}},
                 "frozen": {"method": "frozen", "text": "minilm", "image": "vit", "train": {"max_epochs": 2}},
                 "pop": {"method": "popularity"},
                 "sasrec-id": {"method": "sasrec-id", "train": {"max_epochs": 2}},
                 "gru4rec-id": {"method": "gru4rec-id", "train": {"max_epochs": 2}}},
    })
    runs = {name: resolve_run(cfg, "t", name) for name in cfg["runs"]}
    for tower, enc in (("text", MINILM), ("image", tiny_vit)):
        for run in (runs["va"], runs["frozen"], runs["still"]):
            if tower not in run["towers"]:
                continue
            t = run["towers"][tower]
            if not (tmp_path / t["cache"]).exists():
                encode(item_table, enc, t["kept_states"], tmp_path / t["cache"], chunk_items=4)
    return runs, item_table, tmp_path / "sequences.parquet"


def test_train_then_evaluate(tiny_run, tmp_path):
    runs, items, sequences = tiny_run
    log = train(runs["va"], items, sequences, tmp_path / "va", progress=False)
    assert log["epochs"] == 3 and 1 <= log["best_epoch"] <= 3
    assert log["trainable_params"] > 0 and log["peak_memory_bytes"] > 0
    weights = load_file(str(tmp_path / "va" / "model.safetensors"))
    model = build_model(runs["va"], num_items=11)
    model.load_state_dict(weights)  # the checkpoint matches the architecture exactly
    assert any("text_dtl" in k for k in weights)  # VA: the 384-wide text states are projected to 32

    result = evaluate(runs["va"], items, sequences, tmp_path / "va", tmp_path / "va.json", tmp_path / "va.pu.parquet")
    for split in ("valid", "test"):
        assert set(result["metrics"][split]) == {f"{m}@{k}" for m in ("hr", "ndcg") for k in (5, 10, 20)}
        assert all(0 <= v <= 1 for v in result["metrics"][split].values())
    assert result["efficiency"]["cache_bytes"] > 0 and result["epochs"] == 3
    assert json.loads((tmp_path / "va.json").read_text())["run"] == "va"
    per_user = pq.read_table(tmp_path / "va.pu.parquet").to_pandas()
    assert len(per_user) == 30 * 2 * 2  # users x splits x protocols
    test_ref = per_user[(per_user.split == "test") & (per_user.protocol == "reference")]
    assert test_ref["hr@10"].mean() == pytest.approx(result["metrics"]["test"]["hr@10"])


def test_training_is_reproducible(tiny_run, tmp_path):
    runs, items, sequences = tiny_run
    a = train(runs["frozen"], items, sequences, tmp_path / "a", progress=False)
    b = train(runs["frozen"], items, sequences, tmp_path / "b", progress=False)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_popularity_ranks_by_training_counts(tiny_run, tmp_path):
    runs, items, sequences = tiny_run
    result = evaluate(runs["pop"], items, sequences, None, tmp_path / "p.json", tmp_path / "p.parquet")
    assert result["efficiency"]["trainable_params"] == 0 and result["epochs"] is None
    assert 0 <= result["metrics"]["test"]["hr@20"] <= 1


def test_early_stopping_after_patience_epochs_without_gain(tiny_run, tmp_path):
    runs, items, sequences = tiny_run
    # Learning rates of 1e-30 leave the weights, hence validation NDCG@10, unchanged: epoch 1 is
    # the best and training stops `patience` epochs later.
    log = train(runs["still"], items, sequences, tmp_path / "still", progress=False)
    assert (log["epochs"], log["best_epoch"], log["converged"]) == (3, 1, True)
    assert len({h["valid_ndcg@10"] for h in log["history"]}) == 1


def test_a_run_stopped_by_the_epoch_cap_is_not_converged(tiny_run, tmp_path, capfd):
    runs, items, sequences = tiny_run
    log = train(runs["frozen"], items, sequences, tmp_path / "capped", progress=False)  # 2 epochs, patience 10
    assert log["epochs"] == 2 and log["converged"] is False
    assert "did not converge: the 2-epoch cap stopped it" in capfd.readouterr().err
    result = evaluate(runs["frozen"], items, sequences, tmp_path / "capped", tmp_path / "c.json", tmp_path / "c.parquet")
    assert result["converged"] is False


def test_popularity_by_hand(tmp_path):
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_idx": pa.array([1, 2, 3, 4], pa.int32()), "item_id": list("abcd"),
                             "title": list("abcd"), "image": pa.array([None] * 4, pa.string())}), items)
    sequences = tmp_path / "sequences.parquet"
    pq.write_table(pa.table({"user_id": ["u0", "u1"],
                             "items": pa.array([[1, 2, 1, 3, 4], [1, 1, 2, 2, 3]], pa.list_(pa.int32()))}), sequences)
    cfg = load_config({"datasets": {"t": {"format": "iisan-split", "users": "u", "items": "i"}},
                       "encoders": {}, "runs": {"pop": {"method": "popularity"}}, "evaluate": {"ks": [1, 5]}})
    result = evaluate(resolve_run(cfg, "t", "pop"), items, sequences, None, tmp_path / "p.json", tmp_path / "p.parquet")
    # training counts: item 1 -> 4, item 2 -> 2, items 3 and 4 -> 0.
    # test: u0 target 4 with 1, 2, 3 masked -> rank 1; u1 target 3 with 1, 2 masked, tied with 4 -> rank 2.
    assert result["metrics"]["test"]["hr@1"] == 0.5
    assert result["metrics"]["test"]["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    # valid: u0 target 3 (1, 2 masked, tied with 4) -> rank 2; u1 target 2 repeats its history:
    # a miss for the reference protocol, rank 1 (item 1 masked) for the repeat-aware one.
    assert result["metrics"]["valid"]["hr@5"] == 0.5
    assert result["metrics_repeat_aware"]["valid"]["hr@1"] == 0.5
    assert result["metrics_repeat_aware"]["valid"]["hr@5"] == 1.0


@pytest.mark.parametrize("method", ["sasrec-id", "gru4rec-id"])
def test_id_baselines_learn_item_embeddings_without_caches(tiny_run, tmp_path, method):
    runs, items, sequences = tiny_run
    assert runs[method]["towers"] == {}
    log = train(runs[method], items, sequences, tmp_path / "id", progress=False)
    weights = load_file(str(tmp_path / "id" / "model.safetensors"))
    assert weights["item_encoder.embedding.weight"].shape == (12, 64)  # 11 items + padding
    assert log["trainable_params"] == 12 * 64 + sum(v.numel() for k, v in weights.items() if k.startswith("user_"))
    result = evaluate(runs[method], items, sequences, tmp_path / "id", tmp_path / "id.json", tmp_path / "id.parquet")
    assert result["efficiency"]["cache_bytes"] == 0 and 0 <= result["metrics"]["test"]["hr@10"] <= 1


def test_topk_export_and_recommend(tiny_run, tmp_path):
    runs, items, sequences = tiny_run
    train(runs["va"], items, sequences, tmp_path / "runs" / "va" / "seed12345", progress=False)
    evaluate(runs["va"], items, sequences, tmp_path / "runs" / "va" / "seed12345", tmp_path / "va.json",
             tmp_path / "va.pu.parquet", topk_parquet=tmp_path / "va.topk.parquet")
    topk = pq.read_table(tmp_path / "va.topk.parquet").to_pandas()
    seqs = dict(zip(*[pq.read_table(sequences).column(c).to_pylist() for c in ("user_id", "items")]))
    for user, rows in topk.groupby("user_id"):
        history = set(seqs[user][:-1])
        assert list(rows["rank"]) == list(range(1, len(rows) + 1))
        assert len(rows) == min(10, 11 - len(history))  # every item not in the history, at most 10
        assert not history & set(rows["item_idx"])
        assert list(rows["score"]) == sorted(rows["score"], reverse=True)
        assert all(rows["item_id"] == "I" + (rows["item_idx"] - 1).astype(str))

    # recommend() reads the same run folder (tmp_path plays results/{dataset})
    ranked = recommend(runs["va"], tmp_path, ["I0", "I3"], k=5)
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4, 5]
    assert not {"I0", "I3"} & {r["item_id"] for r in ranked}
    with pytest.raises(DataError, match="unknown item ids"):
        recommend(runs["va"], tmp_path, ["nope"])
    popular = recommend(runs["pop"], tmp_path, ["I0"], k=3)
    assert len(popular) == 3


def test_validation_on_a_seeded_sample_of_users(tiny_run, tmp_path):
    runs, items, sequences = tiny_run
    run = runs["frozen"] | {"train": runs["frozen"]["train"] | {"validate_users": 7}}
    log = train(run, items, sequences, tmp_path / "sample", progress=False)
    assert all(h["valid_seconds"] >= 0 for h in log["history"])
    split = make_splits(*read_sequences(sequences), 11).valid
    a, b = split.sample(7, 3), split.sample(7, 3)
    assert a.user_ids == b.user_ids and len(a.user_ids) == 7 and a.user_ids == sorted(a.user_ids, key=split.user_ids.index)
    assert split.sample(None, 3) is split and split.sample(100, 3) is split
