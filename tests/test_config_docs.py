"""docs/configuration.md is generated from the schema: it must be current, and cover every key."""
from pathlib import Path

from pipeline.config_docs import reference
from pipeline.methods import METHODS

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_the_configuration_reference_is_current():
    assert DOCS.read_text() == reference(), "regenerate it: python -m pipeline.config_docs --out docs/configuration.md"


def test_the_reference_documents_every_key_and_method():
    text = reference()
    for key in ("datasets.<name>.captions", "encoders.<name>.pooling", "runs.<name>.seeds", "train.cache_memory_mb",
                "train.select_metric", "encode.sort_chunks", "evaluate.ks"):
        assert f"`{key}`" in text, key
    assert all(f"{name} = " in text for name in METHODS)
