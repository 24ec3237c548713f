"""Decoder-LLM text encoders: tiny random Llama, Mistral, Gemma, Mixtral and Qwen2 checkpoints
built from configs, saved with their LM heads and loaded back through the pipeline."""
import importlib.util
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from conftest import write_sequences
from transformers import AutoModel, AutoTokenizer

from pipeline.backbone import Backbone, BackboneError, load_model, parameter_count
from pipeline.build_encoder import build_llm
from pipeline.config import ConfigError, load_config, resolve_run
from pipeline.encode import EncodeError, encode
from pipeline.evaluate import evaluate
from pipeline.pooling import POOLERS
from pipeline.train import train

FAMILIES = ["llama", "mistral", "gemma", "mixtral", "qwen2"]


def llm_settings(path, architecture="llama", **extra) -> dict:
    return {"path": str(path), "modality": "text", "causal": True, "layers": 6, "hidden_size": 64,
            "pooling": "mean", "max_length": 12, "batch_size": 4, "dtype": "float32", "quantization": None,
            "device_map": None, "model_class": "AutoModel",
            "build": {"architecture": architecture, "num_attention_heads": 4, "num_key_value_heads": 2,
                      "intermediate_size": 128, "vocab_size": 400, "seed": 0}} | extra


@pytest.fixture(scope="session")
def tiny_llms(tmp_path_factory) -> dict:
    """One saved tiny checkpoint per family, as {family: settings}."""
    root = tmp_path_factory.mktemp("llms")
    built = {}
    for family in FAMILIES:
        settings = llm_settings(root / family, family)
        build_llm(settings, root / family)
        built[family] = settings
    return built


def full_model_states(settings: dict, titles: list[str]) -> list[tuple]:
    """Every hidden state of the full checkpoint, one title at a time (no padding involved)."""
    model = AutoModel.from_pretrained(settings["path"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(settings["path"])
    out = []
    with torch.no_grad():
        for title in titles:
            inputs = tokenizer([title], truncation=True, max_length=settings["max_length"], return_tensors="pt")
            out.append(model(**inputs, output_hidden_states=True).hidden_states)  # L+1 x [1, T, D]
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_stored_states_equal_the_full_models_at_the_kept_indices(family, tiny_llms, item_table, tmp_path):
    """Early exit is exact: the store built from blocks 1..4 holds the full model's states."""
    settings = tiny_llms[family]
    states = [0, 2, 4]
    backbone = Backbone(settings, states)
    assert len(backbone.model.layers) == 4  # blocks 5 and 6 are neither built nor run
    assert not hasattr(backbone.model, "lm_head")  # the base model, without the LM head
    encode(item_table, settings, states, tmp_path / "c.zarr", chunk_items=4)
    stored = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")["states"][:]  # [N+1, 3, 64]

    titles = pq.read_table(item_table).column("title").to_pylist()
    for i, hidden in enumerate(full_model_states(settings, titles), start=1):
        expected = torch.stack([hidden[s][0].mean(0) for s in states]).numpy()  # [3, 64]
        np.testing.assert_allclose(stored[i], expected, rtol=2e-3, atol=2e-3)
    assert not stored[0].any()  # padding row


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_count_is_the_base_models(family, tiny_llms):
    """Counted on the meta device from the config: every block, no LM head."""
    path = tiny_llms[family]["path"]
    assert parameter_count(path) == sum(p.numel() for p in AutoModel.from_pretrained(path).parameters())


def test_the_last_block_is_the_full_models_last_state(tiny_llms, item_table, tmp_path):
    """With the last block kept the model is not cut, and state L is what transformers returns
    (after the final norm for these models)."""
    settings = tiny_llms["llama"] | {"pooling": "last"}
    encode(item_table, settings, [0, 3, 6], tmp_path / "c.zarr", chunk_items=4)
    stored = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")["states"][:]
    titles = pq.read_table(item_table).column("title").to_pylist()
    for i, hidden in enumerate(full_model_states(settings, titles), start=1):
        expected = torch.stack([hidden[s][0, -1] for s in (0, 3, 6)]).numpy()
        np.testing.assert_allclose(stored[i], expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("pooling", ["mean", "last", "mean_unmasked"])
def test_pooling_does_not_depend_on_batch_mates(pooling, tiny_llms, item_table):
    """Right-padded batches of different lengths give each title the same vector as alone."""
    backbone = Backbone(tiny_llms["qwen2"] | {"pooling": pooling}, [0, 3, 6])
    items = pq.read_table(item_table).select(["item_id", "title", "image"]).to_pylist()
    together, _ = backbone(items)
    alone = np.concatenate([backbone([item])[0] for item in items])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    lengths = [len(ids) for ids in backbone.tokens(items)[0]["input_ids"]]
    assert len(set(lengths)) > 1  # the batch really was padded
    if pooling == "mean_unmasked":  # the reference averages over all max_length positions
        assert backbone.inputs(items[:1])[0]["input_ids"].shape[1] == 12


def test_poolers_on_a_padded_batch():
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)  # [B=2, T=4, D=1]
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert POOLERS["mean"](h, mask).flatten().tolist() == [1.5, 4.5]
    assert POOLERS["last"](h, mask).flatten().tolist() == [3.0, 5.0]
    assert POOLERS["mean_unmasked"](h, mask).flatten().tolist() == [1.5, 5.5]
    assert POOLERS["cls"](h, mask).flatten().tolist() == [0.0, 4.0]


def test_causal_models_pool_with_the_masked_mean_by_default():
    cfg = load_config({"datasets": {"d": {"format": "iisan-split", "users": "u", "items": "i"}},
                       "encoders": {"llm": {"path": "x", "modality": "text", "layers": 4, "hidden_size": 8, "causal": True},
                                    "bert": {"path": "y", "modality": "text", "layers": 4, "hidden_size": 8}},
                       "runs": {"r": {"method": "popularity"}}})
    assert cfg["encoders"]["llm"]["pooling"] == "mean" and cfg["encoders"]["bert"]["pooling"] == "cls"


def test_config_refuses_cls_pooling_for_a_causal_model():
    with pytest.raises(ConfigError, match="encoders.llm.pooling'.*first token sees only itself"):
        load_config({"datasets": {"d": {"format": "iisan-split", "users": "u", "items": "i"}},
                     "encoders": {"llm": {"path": "x", "modality": "text", "layers": 4, "hidden_size": 8,
                                          "causal": True, "pooling": "cls"}},
                     "runs": {"r": {"method": "popularity"}}})


def test_entry_must_match_the_checkpoint(tiny_llms, tmp_path):
    with pytest.raises(BackboneError, match="the model has 6 layers x 64, the config says 32 x 64"):
        load_model(tiny_llms["llama"] | {"layers": 32}, deepest=4)
    # A checkpoint without some of the weights would leave them random: refused.
    import shutil

    from safetensors.torch import load_file, save_file
    shutil.copytree(tiny_llms["llama"]["path"], tmp_path / "broken")
    weights = load_file(tmp_path / "broken" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".layers.1." not in k}, tmp_path / "broken" / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(BackboneError, match="no weights for 9 parameters of LlamaModel"):
        load_model(tiny_llms["llama"] | {"path": str(tmp_path / "broken")}, deepest=4)


def test_only_the_embedding_output(tiny_llms, item_table, tmp_path):
    settings = tiny_llms["gemma"]
    encode(item_table, settings, [0], tmp_path / "h0.zarr", chunk_items=4)
    stored = zarr.open_group(str(tmp_path / "h0.zarr"), mode="r")["states"][:]
    titles = pq.read_table(item_table).column("title").to_pylist()
    for i, hidden in enumerate(full_model_states(settings, titles), start=1):
        np.testing.assert_allclose(stored[i, 0], hidden[0][0].mean(0).numpy(), rtol=2e-3, atol=2e-3)


def test_out_of_memory_halves_the_batch(tiny_llms, item_table, tmp_path, monkeypatch):
    settings = tiny_llms["mistral"]
    encode(item_table, settings | {"batch_size": 2}, [0, 6], tmp_path / "small.zarr", chunk_items=4, sort_chunks=1)
    real_forward = Backbone.forward
    sizes = []

    def tight_memory(self, inputs):
        sizes.append(len(inputs["input_ids"]))
        if sizes[-1] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(self, inputs)

    monkeypatch.setattr(Backbone, "forward", tight_memory)
    encode(item_table, settings | {"batch_size": 8}, [0, 6], tmp_path / "backoff.zarr", chunk_items=4, sort_chunks=1)
    assert sizes[:3] == [3, 3, 2]  # the first chunk (items 1-3) fails at 8 and 4, then fits at 2
    assert max(sizes[3:]) == 2  # the smaller size is kept for the rest
    backoff = zarr.open_group(str(tmp_path / "backoff.zarr"), mode="r")
    assert backoff.attrs["batch_size_used"] == 2
    np.testing.assert_array_equal(backoff["states"][:], zarr.open_group(str(tmp_path / "small.zarr"))["states"][:])

    monkeypatch.setattr(Backbone, "forward", lambda self, inputs: (_ for _ in ()).throw(torch.OutOfMemoryError()))
    with pytest.raises(EncodeError, match="out of memory with a batch of one item"):
        encode(item_table, settings | {"batch_size": 1}, [0, 6], tmp_path / "never.zarr", chunk_items=4)


def test_bfloat16_encoding_is_close_to_float32(tiny_llms, item_table, tmp_path):
    settings = tiny_llms["gemma"]
    encode(item_table, settings, [0, 2], tmp_path / "f32.zarr", chunk_items=4)
    encode(item_table, settings | {"dtype": "bfloat16"}, [0, 2], tmp_path / "bf16.zarr", chunk_items=4)
    f32 = zarr.open_group(str(tmp_path / "f32.zarr"))
    bf16 = zarr.open_group(str(tmp_path / "bf16.zarr"))
    assert bf16.attrs["compute_dtype"] == "bfloat16" and f32.attrs["compute_dtype"] == "float32"
    a, b = f32["states"][1:].astype(np.float32), bf16["states"][1:].astype(np.float32)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
    assert not np.array_equal(a, b)  # really computed in another precision


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_8bit_loading(tiny_llms, item_table, tmp_path):
    import bitsandbytes as bnb

    settings = tiny_llms["llama"]
    model = load_model(settings | {"quantization": "bnb-8bit"}, deepest=6)
    assert isinstance(model.layers[0].mlp.up_proj, bnb.nn.Linear8bitLt)
    encode(item_table, settings, [0, 6], tmp_path / "f32.zarr", chunk_items=4)
    encode(item_table, settings | {"quantization": "bnb-8bit"}, [0, 6], tmp_path / "int8.zarr", chunk_items=4)
    a = zarr.open_group(str(tmp_path / "f32.zarr"))["states"][1:].astype(np.float32)
    int8 = zarr.open_group(str(tmp_path / "int8.zarr"))
    b = int8["states"][1:].astype(np.float32)
    assert int8.attrs["quantization"] == "bnb-8bit"
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()


def test_gptq_needs_a_gptq_checkpoint(tiny_llms):
    with pytest.raises(BackboneError, match="no GPTQ quantization_config"):
        load_model(tiny_llms["llama"] | {"quantization": "gptq"}, deepest=6)


@pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is None or importlib.util.find_spec("optimum") is None,
                    reason="GPTQ loading needs the 'gptq' extra (gptqmodel + optimum), not installed")
def test_gptq_loading(tiny_llms, item_table, tmp_path):
    """Quantise the tiny Llama to 4-bit GPTQ, save it, and encode from the quantised checkpoint."""
    from transformers import AutoModelForCausalLM, GPTQConfig

    settings = tiny_llms["llama"]
    tokenizer = AutoTokenizer.from_pretrained(settings["path"])
    titles = pq.read_table(item_table).column("title").to_pylist()
    quantised = AutoModelForCausalLM.from_pretrained(
        settings["path"], quantization_config=GPTQConfig(bits=4, group_size=32, dataset=titles * 4, tokenizer=tokenizer))
    quantised.save_pretrained(tmp_path / "gptq")
    tokenizer.save_pretrained(tmp_path / "gptq")
    gptq = settings | {"path": str(tmp_path / "gptq"), "quantization": "gptq", "dtype": "float16"}
    encode(item_table, gptq, [0, 6], tmp_path / "gptq.zarr", chunk_items=4)
    encode(item_table, settings, [0, 6], tmp_path / "f32.zarr", chunk_items=4)
    a = zarr.open_group(str(tmp_path / "f32.zarr"))["states"][1:].astype(np.float32)
    b = zarr.open_group(str(tmp_path / "gptq.zarr"))["states"][1:].astype(np.float32)
    assert np.isfinite(b).all() and np.abs(a - b).max() < 0.5 * np.abs(a).max()
    assert parameter_count(gptq["path"]) == parameter_count(settings["path"])  # logical, not packed, weights


def test_va_training_with_an_llm_text_tower(tiny_llms, tiny_vit, item_table, tmp_path, monkeypatch):
    """IISAN-VA end to end: a 6-block, 64-wide LLM + a 4-block, 32-wide ViT (group LayerDrop, DTL)."""
    monkeypatch.chdir(tmp_path)
    write_sequences(tmp_path / "sequences.parquet", n_users=30)
    llm = {k: v for k, v in tiny_llms["mixtral"].items() if k != "build"}
    vit = {k: v for k, v in tiny_vit.items() if k != "build"}
    cfg = load_config({"datasets": {"t": {"format": "iisan-split", "users": "u", "items": "i"}},
                       "encoders": {"llm": llm, "vit": vit},
                       "runs": {"va": {"method": "iisan", "text": "llm", "image": "vit", "layerdrop": "group",
                                       "train": {"max_epochs": 2, "batch_size": 8}}}})
    run = resolve_run(cfg, "t", "va")
    assert run["towers"]["text"]["kept_states"] == [0, 1, 6]  # 2(even_all) of 6 blocks
    assert run["towers"]["image"]["kept_states"] == [0, 2, 4]
    for tower in run["towers"].values():
        encode(item_table, cfg["encoders"][tower["encoder"]], tower["kept_states"], tmp_path / tower["cache"],
               chunk_items=4)
    log = train(run, item_table, tmp_path / "sequences.parquet", tmp_path / "va", progress=False)
    assert log["epochs"] == 2
    result = evaluate(run, item_table, tmp_path / "sequences.parquet", tmp_path / "va", tmp_path / "va.json",
                      tmp_path / "va.pu.parquet")
    assert result["encoders"]["text"] == {"encoder": "llm", "column": "title", "kept_states": [0, 1, 6]}
    assert result["efficiency"]["cache_bytes"] > 0
    assert json.loads((tmp_path / "va.json").read_text())["metrics"]["test"]["hr@10"] >= 0


def test_other_hugging_face_encoders_by_config_alone(tmp_path, item_table):
    """A SigLIP vision tower (model_class), a DINOv2 ViT and a Phi-3 LLM: entries, no code."""
    from transformers import (
        BitImageProcessor,
        Dinov2Config,
        Dinov2Model,
        Phi3Config,
        Phi3ForCausalLM,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipVisionModel,
    )

    from pipeline.build_encoder import train_tokenizer

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2)
    SiglipModel(SiglipConfig(text_config=small | {"vocab_size": 100},
                             vision_config=small | {"image_size": 32, "patch_size": 8})).save_pretrained(tmp_path / "siglip")
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "siglip")
    Dinov2Model(Dinov2Config(**small, image_size=32, patch_size=8)).save_pretrained(tmp_path / "dinov2")
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "dinov2")
    tokenizer = train_tokenizer(300)
    Phi3ForCausalLM(Phi3Config(**small, vocab_size=len(tokenizer) + 16, pad_token_id=None)).save_pretrained(tmp_path / "phi3")
    tokenizer.save_pretrained(tmp_path / "phi3")

    common = {"layers": 4, "hidden_size": 32, "batch_size": 4, "max_length": 12}
    entries = {
        "siglip": common | {"path": str(tmp_path / "siglip"), "modality": "image", "model_class": "SiglipVisionModel",
                            "pooling": "mean"},
        "dinov2": common | {"path": str(tmp_path / "dinov2"), "modality": "image", "pooling": "cls"},
        "phi3": common | {"path": str(tmp_path / "phi3"), "modality": "text", "causal": True, "pooling": "mean"},
    }
    cfg = load_config({"datasets": {"d": {"format": "iisan-split", "users": "u", "items": "i"}},
                       "encoders": entries, "runs": {"r": {"method": "popularity"}}})
    for name, settings in cfg["encoders"].items():
        encode(item_table, settings, [0, 2], tmp_path / f"{name}.zarr", chunk_items=4)
        stored = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r")["states"][:]
        assert stored.shape == (12, 2, 32) and np.abs(stored[1:]).sum(axis=(1, 2)).all()

    # The SigLIP tower's stored states are the full vision model's, at the kept indices.
    backbone = Backbone(cfg["encoders"]["siglip"], [0, 2])
    assert len(backbone.model.encoder.layers) == 2  # blocks 3 and 4 are not built
    full = SiglipVisionModel.from_pretrained(tmp_path / "siglip").eval()
    item = pq.read_table(item_table).to_pylist()[3]
    with torch.no_grad():
        hidden = full(**backbone.inputs([item])[0], output_hidden_states=True).hidden_states
    stored = zarr.open_group(str(tmp_path / "siglip.zarr"), mode="r")["states"][4]
    np.testing.assert_allclose(stored, torch.stack([hidden[0][0].mean(0), hidden[2][0].mean(0)]).numpy(),
                               rtol=2e-3, atol=2e-3)


def test_hand_built_hidden_states_keep_a_margin_block(tmp_path, item_table):
    """Falcon returns its final norm as the last hidden state by hand: the cut keeps one block more."""
    from transformers import FalconConfig, FalconForCausalLM

    from pipeline.build_encoder import train_tokenizer

    tokenizer = train_tokenizer(300)
    config = FalconConfig(vocab_size=len(tokenizer) + 16, hidden_size=32, num_hidden_layers=4, num_attention_heads=4)
    FalconForCausalLM(config).save_pretrained(tmp_path / "falcon")
    tokenizer.save_pretrained(tmp_path / "falcon")
    settings = {"path": str(tmp_path / "falcon"), "modality": "text", "causal": True, "layers": 4, "hidden_size": 32,
                "pooling": "mean", "max_length": 12, "batch_size": 4}
    backbone = Backbone(settings, [0, 2])
    assert len(backbone.model.h) == 3
    encode(item_table, settings, [0, 2], tmp_path / "c.zarr", chunk_items=4)
    stored = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")["states"][:]
    titles = pq.read_table(item_table).column("title").to_pylist()
    for i, hidden in enumerate(full_model_states(settings, titles), start=1):
        expected = torch.stack([hidden[s][0].mean(0) for s in (0, 2)]).numpy()
        np.testing.assert_allclose(stored[i], expected, rtol=2e-3, atol=2e-3)
