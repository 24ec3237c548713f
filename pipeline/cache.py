"""The cache contract: a Zarr store of kept, pooled states, read by train and evaluate.

Layout and attributes are described in pipeline/encode.py, which writes the stores. This module
only reads and checks them, so the training side never imports transformers.
"""
import hashlib
import json
from pathlib import Path

import torch
import zarr

from pipeline.methods import method


class CacheError(ValueError):
    """A missing or unusable cache, reported without a traceback by the command lines."""


class CacheMismatch(CacheError):
    """A store written for another request (model, kept states, items, ...)."""


def items_fingerprint(items, column: str = "title") -> str:
    """Identity of the item rows a store was written for, with the text column it read."""
    h = hashlib.sha256()
    for name in ("item_id", "title", "image") + ((column,) if column != "title" else ()):
        if name not in items.column_names:
            raise CacheError(f"the item table has no column '{name}' (caption columns are in items_captioned.parquet)")
        h.update(json.dumps(items.column(name).to_pylist()).encode())
    return h.hexdigest()[:16]


def item_columns(settings: dict) -> list[str]:
    """The item-table columns an encoder reads: ids, title, image, and its text column."""
    return list(dict.fromkeys(["item_id", "title", "image", settings.get("column", "title")]))


def check_attributes(found: dict, expected: dict, where: Path) -> None:
    diff = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
    if diff:
        lines = "\n".join(f"  {k}: store has {a!r}, request is {b!r}" for k, (a, b) in diff.items())
        raise CacheMismatch(
            f"{where} was written for a different request and is not reused:\n{lines}\n"
            f"Delete it to re-encode."
        )


def open_store(path: Path) -> zarr.Group:
    """Open a finished cache read-only."""
    return zarr.open_group(str(path), mode="r")


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def read_states(run: dict, items) -> dict[str, torch.Tensor]:
    """Each tower's cached states [N+1, K, D] (float16, in memory) for a resolved run, checked
    against the run and the item table (with the text column the tower reads); {} for a method
    without caches."""
    caches = {}
    if not method(run["method"]).cached:
        return caches
    for name, tower in run["towers"].items():
        if not Path(tower["cache"]).is_dir():
            raise CacheMismatch(f"{tower['cache']}: no cache; run the encode stage first")
        store = open_store(tower["cache"])
        expected = {key: tower[key] for key in ("model", "pooling", "kept_states", "hidden_size")}
        fingerprint = items_fingerprint(items, tower.get("column", "title"))
        check_attributes(dict(store.attrs), expected | {"complete": True, "items_fingerprint": fingerprint},
                         tower["cache"])
        caches[name] = torch.from_numpy(store["states"][:])
    return caches
