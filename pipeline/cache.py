"""The cache contract: a Zarr store of kept, pooled states, written by encode and read by train,
evaluate and recommend.

Layout: array `states` (N+1, K, D) float16, row 0 = padding, chunked along items; `done` one
flag per chunk; `missing` one code per item; every chunk zstd-compressed with a CRC-32C
checksum, written even when it is all zeros, so a corrupt chunk fails its checksum and a
deleted one is noticed. Attributes: the request's identity (store_attributes), `complete`.
This module only reads and checks stores, so the training side never imports transformers.

Readers (read_states) require a complete store whose every chunk is done and present, and
compare its whole identity with the run's request. A store larger than the memory budget is
streamed: read once, checksums verified, into a raw float16 file beside it
(`<store>.<identity>.f16crc`: the rows, then a CRC-32 per row), from which a batch's rows are
read with pread and checked against their CRCs; the values are the store's, bit for bit. A row
that fails its CRC (the copy was damaged after it was made) is an error that says to delete the
copy: the next run makes it again from the store, whose chunks are verified.
"""
import hashlib
import json
import os
import zlib
from pathlib import Path

import numpy as np
import torch
import zarr

from pipeline.files import model_path, weights_fingerprint
from pipeline.methods import method

FORMAT_VERSION = 3  # 3: CRC-32C per chunk, every chunk written


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


def store_attributes(settings: dict, states: list[int], items) -> dict:
    """Everything that decides a store's content: a store is reused only for the same request."""
    return {
        "format_version": FORMAT_VERSION,
        "model": settings.get("package") or settings["path"],
        "weights_fingerprint": weights_fingerprint(model_path(settings)),
        "modality": settings["modality"],
        "kept_states": list(states),
        "pooling": settings["pooling"],
        "max_length": settings["max_length"] if settings["modality"] == "text" else None,
        "hidden_size": settings["hidden_size"],
        "compute_dtype": settings.get("dtype", "float32"),
        "quantization": settings.get("quantization"),
        "dtype": "float16",
        "items": items.num_rows,
        "items_fingerprint": items_fingerprint(items, settings.get("column", "title")),
        **({"column": settings["column"]} if "column" in settings else {}),
    }


def manifest_path(store: Path) -> Path:
    """The file that says a store is complete (X.zarr -> X.json): what the Snakemake rules track,
    while the store itself is the encode stage's own, so a rerun can extend or replace it."""
    return Path(store).with_suffix(".json")


def check_attributes(found: dict, expected: dict, where: Path) -> None:
    diff = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
    if diff:
        lines = "\n".join(f"  {k}: store has {a!r}, request is {b!r}" for k, (a, b) in diff.items())
        raise CacheMismatch(
            f"{where} was written for a different request and is not reused:\n{lines}\n"
            f"Delete it to re-encode."
        )


def open_store(path: Path) -> zarr.Group:
    """Open a store read-only."""
    try:
        return zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError) as e:
        raise CacheError(f"{path} is not a readable Zarr store ({e}); delete it and encode again") from None


def check_complete(store: zarr.Group, path: Path) -> None:
    """Refuse a store that was not finished, or that lost chunks since."""
    attrs = dict(store.attrs)
    if not attrs.get("complete"):
        raise CacheError(f"{path} is not complete (an encode was interrupted or is running); run encode again")
    if not store["done"][:].all():
        raise CacheError(f"{path} is marked complete but some chunks are not done; delete it and encode again")
    states = store["states"]
    expected = states.nchunks
    present = sum(1 for f in (Path(path) / "states" / "c").rglob("*") if f.is_file())
    if present != expected:
        raise CacheError(f"{path}: {expected - present} of its {expected} chunks of states are missing on disk "
                         f"(deleted or never synced); delete the store and encode again")


def read_chunk_rows(store: zarr.Group, path: Path, lo: int, hi: int) -> np.ndarray:
    """states[lo:hi], a failed checksum or decompression reported with the store and rows."""
    try:
        return store["states"][lo:hi]
    except Exception as e:  # zarr raises ValueError (checksum) or RuntimeError (zstd) without naming the chunk
        chunk = store["states"].chunks[0]
        raise CacheError(f"{path}: rows {lo}-{hi - 1} (chunk {lo // chunk}) cannot be read: {e}; the store is "
                         f"corrupt: delete it and encode again") from None


def check_item_embeddings(item_embs: torch.Tensor, where: str, advice: str) -> None:
    """Refuse item embeddings [N+1, d] (row 0 = padding) with a NaN or infinite value: ranking
    would turn such an item's score into a silent miss."""
    bad = (~torch.isfinite(item_embs[1:]).all(dim=1)).nonzero()[:, 0] + 1
    if len(bad):
        raise CacheError(f"{where}: {len(bad)} item embeddings are not finite (e.g. item_idx {bad[0].item()}); "
                         f"{advice}")


def expected_attributes(tower: dict, items) -> dict:
    """The store identity a resolved run's cached tower asks for."""
    return store_attributes(tower["settings"], tower["kept_states"], items)


RAW_SUFFIX = "f16crc"  # float16 rows, then one little-endian uint32 CRC-32 per row


class StreamedStates:
    """A store's states read from its raw copy (_raw_copy), a batch of rows at a time (pread of
    contiguous runs), so that only the batch and the rows' CRCs are in memory. Every row is
    checked against its CRC the first time this process reads it (the copy is reused across runs
    and could be damaged on disk); later epochs read it again unchecked."""

    def __init__(self, raw: Path, shape: tuple[int, int, int]):
        self.raw, self.shape = raw, shape
        self.row_bytes = shape[1] * shape[2] * 2
        self.fd = os.open(raw, os.O_RDONLY)
        rows_end = shape[0] * self.row_bytes
        size = os.fstat(self.fd).st_size
        if size != rows_end + 4 * shape[0]:
            raise CacheError(f"{raw} has {size} bytes, not the {rows_end + 4 * shape[0]} of {shape[0]} rows and their "
                             f"CRCs (truncated or damaged); delete it: the next run makes it again from the store")
        self.crcs = np.frombuffer(os.pread(self.fd, 4 * shape[0], rows_end), dtype="<u4")  # [N+1]
        self.checked = np.zeros(shape[0], dtype=bool)  # [N+1] rows whose CRC this process has checked

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, ids: np.ndarray) -> np.ndarray:  # [B] -> [B, K, D] float16
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        out = np.empty((len(ids), *self.shape[1:]), dtype=np.float16)
        starts = np.flatnonzero(np.diff(sorted_ids, prepend=-2) != 1)  # runs of consecutive rows
        for a, b in zip(starts, np.append(starts[1:], len(ids))):
            first, count = int(sorted_ids[a]), int(sorted_ids[b - 1] - sorted_ids[a] + 1)
            block = os.pread(self.fd, count * self.row_bytes, first * self.row_bytes)
            self._check(block, first, count)
            rows = np.frombuffer(block, dtype=np.float16).reshape(count, *self.shape[1:])
            out[order[a:b]] = rows[sorted_ids[a:b] - first]
        return out

    def _check(self, block: bytes, first: int, count: int) -> None:
        """Rows first..first+count-1, as read, against their CRCs (a short read fails too), each
        row once."""
        view, size = memoryview(block), self.row_bytes
        for j in np.flatnonzero(~self.checked[first:first + count]).tolist():
            if zlib.crc32(view[j * size:(j + 1) * size]) != self.crcs[first + j]:
                raise CacheError(f"{self.raw}: row {first + j} does not match its CRC-32 (the copy was damaged "
                                 f"after it was made); delete it: the next run makes it again from the store")
        self.checked[first:first + count] = True

    def __del__(self):
        if hasattr(self, "fd"):
            os.close(self.fd)


def _raw_copy(store: zarr.Group, path: Path) -> Path:
    """The store's states as a raw float16 file beside it, with a CRC-32 per row after the rows,
    made once (checksums verified on the way, one chunk in memory at a time), named by the
    store's identity and renamed into place whole, so the rows and their CRCs come together."""
    attrs = dict(store.attrs)
    identity = hashlib.sha256(json.dumps(attrs, sort_keys=True, default=str).encode()).hexdigest()[:12]
    raw = Path(f"{path}.{identity}.{RAW_SUFFIX}")
    if raw.exists():
        return raw
    name = Path(path).name
    for stale in Path(path).parent.glob(f"{name}.*.f16*"):  # another identity (an older store), or a .f16 without CRCs
        if stale.name != raw.name:  # this one: another job has just renamed it into place
            stale.unlink(missing_ok=True)  # another job may be removing it too
    for left in Path(path).parent.glob(f".{name}.*.f16*.tmp*"):  # of killed jobs: as large as the store
        if not _alive(int(left.name.rsplit(".tmp", 1)[1])):
            left.unlink(missing_ok=True)
    tmp = raw.with_name(f".{raw.name}.tmp{os.getpid()}")
    states, crcs = store["states"], []
    try:
        with open(tmp, "wb") as f:
            for lo in range(0, states.shape[0], states.chunks[0]):
                rows = np.ascontiguousarray(read_chunk_rows(store, path, lo, lo + states.chunks[0]))  # [C, K, D]
                crcs.extend(zlib.crc32(row) for row in rows)
                f.write(rows.tobytes())
            f.write(np.asarray(crcs, dtype="<u4").tobytes())
        os.replace(tmp, raw)
    finally:
        tmp.unlink(missing_ok=True)
    return raw


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        pass
    return True


def memory_budget_bytes(cache_memory_mb: float | None) -> int:
    """train.cache_memory_mb, or by default half of the memory now available (of the GPU's too,
    where the in-memory caches go)."""
    if cache_memory_mb is not None:
        return int(cache_memory_mb * 2**20)
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):  # not Linux: no host budget unless one is given
        available = 2**62
    if torch.cuda.is_available():
        available = min(available, torch.cuda.mem_get_info()[0])
    return available // 2


def read_states(run: dict, items, cache_memory_mb: float | None = None) -> dict:
    """Each cached tower's states [N+1, K, D] for a resolved run: a float16 tensor in memory, or
    StreamedStates when the run's stores together exceed the memory budget. Every store is
    checked against the run and the item table first; {} for a method without caches."""
    if not method(run["method"]).cached:
        return {}
    stores = {}
    for name, tower in run["towers"].items():
        path = Path(tower["cache"])
        if not path.is_dir():
            raise CacheMismatch(f"{path}: no cache; run the encode stage first")
        store = open_store(path)
        check_complete(store, path)
        check_attributes(dict(store.attrs), expected_attributes(tower, items), path)
        stores[name] = (path, store)
    size = sum(np.prod(store["states"].shape) * 2 for _, store in stores.values())
    stream = size > memory_budget_bytes(cache_memory_mb)
    out = {}
    for name, (path, store) in stores.items():
        if stream:
            out[name] = StreamedStates(_raw_copy(store, path), store["states"].shape)
        else:  # one array filled chunk by chunk: the store is in memory once, not twice
            states = np.empty(store["states"].shape, dtype=np.float16)
            chunk = store["states"].chunks[0]
            for lo in range(0, len(states), chunk):
                states[lo:lo + chunk] = read_chunk_rows(store, path, lo, lo + chunk)
            out[name] = torch.from_numpy(states)
    return out


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
