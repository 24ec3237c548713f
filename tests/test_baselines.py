"""Uncached baselines (Table III): each trains exactly the parameters its method names."""
import pytest
import torch
from conftest import write_sequences

from pipeline.config import load_config, resolve_run
from pipeline.data import make_splits, read_sequences
from pipeline.evaluate import evaluate
from pipeline.models.build import build_model, learning_rates
from pipeline.models.recommender import train_step
from pipeline.models.tuning import HoulsbyAdapter
from pipeline.train import train


def run_for(method, tiny_bert, tiny_vit, **train):
    cfg = load_config({
        "datasets": {"t": {"format": "iisan-split", "users": "u", "items": "i"}},
        "encoders": {"bert": tiny_bert, "vit": {k: v for k, v in tiny_vit.items() if k != "build"}},
        "runs": {"r": {"method": method, "text": "bert", "image": "vit", "train": train}},
    })
    return resolve_run(cfg, "t", "r")


def one_step(model, splits, train_cfg):
    """One optimisation step on a batch of training windows, as pipeline.train takes it."""
    optimizer = torch.optim.Adam(model.optimizer_groups(learning_rates(train_cfg)), weight_decay=0.0)
    log_pop = torch.log(torch.as_tensor(splits.item_counts, dtype=torch.float32).clamp(min=1))
    train_step(model, optimizer, torch.as_tensor(splits.train_windows[:8]), log_pop)


# What each method may change inside the backbones (parameter-name predicates).
EXPECTED = {
    "fft": lambda name: ".pooler." not in name,  # no hidden state goes through a pooler
    "bitfit": lambda name: name.endswith("bias") and ".pooler." not in name,
    "lora": lambda name: "lora_" in name,
    "adapter": lambda name: ".down." in name or ".up." in name,
    "iisan-uncached": lambda name: False,
}


@pytest.mark.parametrize("method", list(EXPECTED))
def test_only_the_intended_backbone_parameters_change(method, tiny_bert, tiny_vit, item_table, tmp_path):
    import pyarrow.parquet as pq

    items = pq.read_table(item_table)
    user_ids, sequences = read_sequences(write_sequences(tmp_path / "s.parquet", n_users=20))
    splits = make_splits(user_ids, sequences, items.num_rows, 10)
    run = run_for(method, tiny_bert, tiny_vit)
    torch.manual_seed(0)
    model = build_model(run, items.num_rows, items)
    model.train()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    one_step(model, splits, run["train"])

    backbone = {k for k in before if k.startswith("towers.")}
    changed = {k for k, v in model.named_parameters() if not torch.equal(before[k], v.detach())}
    trainable = {k for k, v in model.named_parameters() if v.requires_grad}
    assert changed & backbone <= {k for k in backbone if EXPECTED[method](k)}, method
    assert trainable & backbone == {k for k in backbone if EXPECTED[method](k)}, method
    if method != "iisan-uncached":
        assert changed & backbone, f"{method}: no backbone parameter moved"
    # The heads, fusion and user encoder always train.
    assert any(k.startswith("item_encoder.fusion") for k in changed)
    assert any(k.startswith("user_encoder.") for k in changed)
    if method == "adapter":
        adapters = [m for m in model.modules() if isinstance(m, HoulsbyAdapter)]
        assert len(adapters) == 2 * (2 + 4)  # attention and feed-forward outputs of every block


def test_uncached_runs_train_and_evaluate_end_to_end(tiny_bert, tiny_vit, item_table, tmp_path):
    sequences = write_sequences(tmp_path / "s.parquet", n_users=30)
    for method in ("lora", "iisan-uncached"):
        run = run_for(method, tiny_bert, tiny_vit, max_epochs=2, batch_size=8)
        log = train(run, item_table, sequences, tmp_path / method, progress=False)
        assert log["epochs"] == 2 and 0 < log["trainable_params"] < log["total_params"]
        result = evaluate(run, item_table, sequences, tmp_path / method, tmp_path / f"{method}.json",
                          tmp_path / f"{method}.parquet")
        assert result["efficiency"]["cache_bytes"] == 0 and result["missing_items"] == {}
        assert 0 <= result["metrics"]["test"]["hr@10"] <= 1
    # IISAN in the loop reads the same kept states as the cached run would.
    assert run["towers"]["text"]["kept_states"] == [0, 2] and run["towers"]["image"]["kept_states"] == [0, 2, 4]


def test_items_without_a_cover_get_zero_states_as_in_the_cache(tiny_bert, tiny_vit, item_table, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = pq.read_table(item_table)
    images = items.column("image").to_pylist()
    images[2] = None  # item 3 has no cover
    items = items.set_column(items.schema.get_field_index("image"), "image", pa.array(images))
    run = run_for("iisan-uncached", tiny_bert, tiny_vit)
    model = build_model(run, items.num_rows, items)
    with torch.no_grad():
        states = model.towers["image"](torch.tensor([0, 2, 3]))  # padding, an item, the coverless item
    assert not states[0].any() and states[1].any() and not states[2].any()


def test_tuned_methods_refuse_quantised_or_half_precision_encoders(tiny_bert, tiny_vit):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="must load in float32 without quantization"):
        run_for("lora", tiny_bert | {"dtype": "bfloat16"}, tiny_vit)
    run_for("iisan-uncached", tiny_bert | {"dtype": "bfloat16"}, tiny_vit)  # frozen backbones may


def test_a_tuned_text_tower_reads_a_caption_column(tiny_bert, item_table):
    """FFT over a caption column (Table IX's single-column rows): the live tower tokenizes the
    captions, and an item without a caption gets zero states, as an encoded store gives it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    items = pq.read_table(item_table)
    captions = [f"a caption of item {i}" if i != 3 else None for i in range(items.num_rows)]
    items = items.append_column("cover_caption", pa.array(captions, pa.string()))
    cfg = load_config({
        "datasets": {"t": {"format": "iisan-split", "users": "u", "items": "i", "images": "img",
                           "captions": {"cover_caption": "llava"}}},
        "captioners": {"llava": {"path": "x", "source": "image", "prompt": "p.yaml"}},
        "encoders": {"bert": tiny_bert},
        "runs": {"r": {"method": "fft", "text": "bert", "columns": {"text": "cover_caption"}}},
    })
    run = resolve_run(cfg, "t", "r")
    model = build_model(run, items.num_rows, items)
    tower = model.towers["text"]
    assert tower.blank.tolist() == [True] + [i == 3 for i in range(items.num_rows)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert["path"])
    assert tokenizer.decode(tower.inputs["input_ids"][2], skip_special_tokens=True) == "a caption of item 1"
    states = tower(torch.tensor([1, 4, 5]))  # item_idx 4 has no caption
    assert states.shape == (3, 1, 32) and states[1].abs().sum() == 0 and states[0].abs().sum() > 0
