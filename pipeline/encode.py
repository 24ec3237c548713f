"""encode: frozen backbone forward passes over all items -> a Zarr store of the kept layers.

Store layout (one per dataset x encoder x kept states):
- array `states`, shape (N+1, K, D), float16, row 0 = padding (zeros), row i = item_idx i;
  chunked along items only, so disjoint item ranges are independent writes. Every value is
  finite: pooled states with NaN or inf in float16 (an overflow) stop the encode, naming them.
- array `done`, one bool per chunk: set after the chunk's states are written (the resume unit).
- attributes: model, weights fingerprint, kept states, pooling, max length, compute dtype,
  quantisation, item-table fingerprint, ... A store whose attributes differ from the request is
  refused, never reused.
The work happens in `<out>.partial`; it is renamed to `<out>` once every chunk is done, so the
output is complete or absent. Items are processed a window of `sort_chunks` chunks at a time,
sorted by token length inside it, with the same batches every time, so a resumed store is
identical to an uninterrupted one (unless a batch ran out of GPU memory: the batch size is then
halved until it fits, and the store records the size used).

Sharding (encode.shards): `--shard I N` writes a part store holding shard I's rows, whole
windows of the split above, resumable like a store; `--gather PART...` checks that the parts were written
for this request and hold every row once, and assembles them into the store, which then equals
the unsharded store array for array.

Usage: python -m pipeline.encode --items ITEMS.parquet --settings JSON --states 0 2 4 6 --out X.zarr
           [--shard I N | --gather PART ...]
"""
import argparse
import fcntl
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm import tqdm

from zarr.codecs import Crc32cCodec, ZstdCodec

from pipeline.backbone import Backbone, BackboneError
from pipeline.cache import (
    CacheError,
    manifest_path,
    check_attributes,
    check_complete,
    item_columns,
    items_fingerprint,
    open_store,
    store_attributes,
    store_bytes,
)
from pipeline.data import DataError
from pipeline.files import write_json
from pipeline.item_table import read_items

SORT_CHUNKS = 16  # chunks whose items are length-sorted and batched together (encode.sort_chunks)
# Write every chunk, zeros included, so that a deleted chunk file is noticed (zarr keeps this
# setting per array object, not in the store: it must hold wherever the arrays are reopened).
zarr.config.set({"array.write_empty_chunks": True})


class EncodeError(CacheError):
    """Bad input or settings, reported without a traceback by the command line."""


MISSING_CODES = {"ok": 0, "no_image": 1, "unreadable": 2, "no_text": 3}


def shard_rows(n_rows: int, window: int, shard: int, shards: int) -> tuple[int, int]:
    """Rows [lo, hi) of shard `shard` of `shards`: whole windows (chunk_items x sort_chunks rows),
    split as evenly as windows allow (a shard may be empty when there are more shards than
    windows), so each window is batched as in an unsharded encode."""
    n_windows = -(-n_rows // window)
    first, last = shard * n_windows // shards, (shard + 1) * n_windows // shards
    return first * window, min(last * window, n_rows)


def _new_store(path: Path, n_rows: int, n_states: int, width: int, chunk_items: int, attrs: dict) -> zarr.Group:
    # Every chunk checksummed: a flipped byte fails to read. The attributes come first, so that a
    # store killed while being created lacks arrays, and is started again (_open_partial).
    checked = {"compressors": [ZstdCodec(), Crc32cCodec()]}
    group = zarr.open_group(str(path), mode="w")
    group.attrs.update(attrs | {"complete": False})
    group.create_array("states", shape=(n_rows, n_states, width), chunks=(chunk_items, n_states, width),
                       dtype="float16", fill_value=0, **checked)
    group.create_array("done", shape=(-(-n_rows // chunk_items),), chunks=(1,), dtype="bool", fill_value=False,
                       **checked)
    # per item: 0 = encoded, 1 = no image, 2 = unreadable image, 3 = no caption (states left at zero)
    group.create_array("missing", shape=(n_rows,), chunks=(chunk_items,), dtype="uint8", fill_value=0, **checked)
    return group


@contextmanager
def store_lock(out: Path):
    """Hold an exclusive lock on `out` (its store and its .partial) for the block: a second
    encode of the same store fails at once instead of corrupting it. The lock dies with its
    process, so a killed encode leaves nothing to clean up."""
    lock = out.with_name(out.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EncodeError(f"{out} is being written by another encode (pid {holder}); wait for it to finish") from None
        if os.path.exists(lock) and os.stat(lock).st_ino == os.fstat(fd).st_ino:
            break  # locked the file that is still in place (not one its last holder just removed)
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.unlink(lock)
        os.close(fd)


def _open_partial(partial: Path, expected: dict, make, replace: bool = False) -> zarr.Group:
    """The half-written store to continue, or a new one: a .partial killed while being created
    (no metadata, attributes or arrays) is started again; one written for another request is
    refused, or with `replace` started again."""
    if partial.exists():
        try:
            group = zarr.open_group(str(partial), mode="r+")
            found = dict(group.attrs)
            whole = "complete" in found and {"states", "done", "missing"} <= set(group.array_keys())
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, KeyError):
            whole = False
        if whole and (not replace or all(found.get(k) == v for k, v in expected.items())):
            check_attributes(found, expected, partial)
            return group
        why = "for another request" if whole else "without usable Zarr metadata (killed while being created)"
        print(f"{partial} was written {why}: starting it again")
        shutil.rmtree(partial)
    return make()


def _finish(group: zarr.Group, partial: Path, out: Path, modality: str, attrs: dict, drop=()) -> None:
    """Count the items encoded as zeros, mark the store complete (attributes written at once,
    `drop` ones removed) and move it into place: a store already there, for another request, is
    replaced only now. Then write its manifest (pipeline.cache.manifest_path) unless it is a
    shard's part."""
    if not all(group["done"][:]):
        raise RuntimeError(f"{partial}: some chunks are not done")
    codes = group["missing"][:]
    kinds = ("no_text",) if modality == "text" else ("no_image", "unreadable")
    report = {status: int((codes == MISSING_CODES[status]).sum()) for status in kinds}
    if any(report.values()):
        print(f"{out.name}: items encoded as zeros: {report}")
    final = {k: v for k, v in dict(group.attrs).items() if k not in drop}
    group.attrs.put(final | attrs | {"missing_items": report, "complete": True})
    if partial != out:  # not appended in place
        old = out.with_name(out.name + ".replaced")
        shutil.rmtree(old, ignore_errors=True)  # left by a replace that was killed
        if out.exists():
            out.rename(old)
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    if "shard" not in final:
        write_manifest(out)


def write_manifest(out: Path) -> None:
    """The store's attributes beside it: the file the Snakemake rules track (pipeline.cache)."""
    write_json(manifest_path(out), dict(open_store(out).attrs) | {"store": out.name})


def _request(items_parquet: Path, settings: dict, states: list[int], missing_image: str, captions=()):
    items = read_items(items_parquet, captions)
    bad = [s for s in states if not 0 <= s <= settings["layers"]]
    if bad or list(states) != sorted(set(states)):
        raise EncodeError(f"kept states {list(states)} must increase within 0..{settings['layers']}")
    return items, store_attributes(settings, states, items) | {"missing_image": missing_image}


def encode(items_parquet: Path, settings: dict, states: list[int], out: Path, chunk_items: int = 256,
           missing_image: str = "zeros", on_chunk_done=None, shard: tuple[int, int] | None = None,
           captions=(), sort_chunks: int = SORT_CHUNKS, replace: bool = False) -> dict:
    """Write, finish or extend the cache at `out`; return its attributes. Resumable per chunk.

    Items are encoded a window of `sort_chunks` chunks at a time, sorted by token length inside
    the window so that a batch pads little; windows are counted from the store's first row, so
    the same items share a batch whether the store is encoded whole, resumed or sharded (a
    resumed window is encoded again whole). A writer thread converts each window to float16
    and writes its chunks while the next window runs.
    An existing store for the same request is left alone. One whose item table is a prefix of
    this one (the catalogue grew) is extended in place: only the new items are encoded, and the
    earlier rows are not touched. One for another request is refused, or with `replace`
    re-encoded beside it and swapped in once complete (the Snakemake rule replaces).
    missing_image: what an item without a readable image gets: `zeros` (its states stay zero,
    like padding, and it is counted in the `missing` array) or `error`.
    shard: (i, n) writes only shard i of n, a part store holding its rows (see shard_rows), for
    `gather` to assemble. captions: caption files whose columns join the item table.
    """
    items, expected = _request(items_parquet, settings, states, missing_image, captions)
    n_rows, layout = items.num_rows + 1, {"chunk_items": chunk_items, "sort_chunks": sort_chunks}
    window = chunk_items * sort_chunks
    base, end = shard_rows(n_rows, window, *shard) if shard else (0, n_rows)
    if shard:
        expected |= {"shard": list(shard), "rows": [base, end]}
    records = items.select(item_columns(settings)).to_pylist()
    if settings["modality"] == "image" and not any(r["image"] for r in records):
        raise EncodeError(f"no item of {items_parquet} has an image: set the dataset's `images` folder "
                          f"(or use a run without an image tower)")

    with store_lock(out):
        if out.exists():
            found = _found_attributes(out, replace)
            if found is not None and all(found.get(k) == v for k, v in (expected | {"complete": True}).items()):
                print(f"{out} is complete; nothing to do")
                if not shard:
                    write_manifest(out)
                return expected
            first = None if shard or found is None else _extended_prefix(found, expected, items, settings, layout)
            if first is not None:
                group = zarr.open_group(str(out), mode="r+")
                _grow(group, found, expected, n_rows, chunk_items)
                _encode_rows(group, settings, states, records, out, first, n_rows, 0, window, chunk_items,
                             missing_image, on_chunk_done, out, extra={"extends": found.get("extends", []) + [
                                 {"items": found["items"], "items_fingerprint": found["items_fingerprint"]}]})
                return expected
            if not replace:
                check_attributes(found, expected | {"complete": True}, out)
        partial = out.with_name(out.name + ".partial")
        group = _open_partial(partial, expected | layout, lambda: _new_store(
            partial, end - base, len(states), settings["hidden_size"], chunk_items, expected | layout), replace)
        _encode_rows(group, settings, states, records, out, base, end, base, window, chunk_items, missing_image,
                     on_chunk_done, partial)
    return expected


def _found_attributes(out: Path, replace: bool) -> dict | None:
    """The attributes of the store at `out`, or None when it is unreadable and may be replaced."""
    try:
        return dict(open_store(out).attrs)
    except CacheError:
        if replace:
            return None
        raise


def _extended_prefix(found: dict, expected: dict, items, settings: dict, layout: dict) -> int | None:
    """The first new row when the store at hand holds exactly the first rows of this item table
    for this request (a grown catalogue, or an interrupted extension of it); else None."""
    same = {k for k in expected if k not in ("items", "items_fingerprint")} | set(layout)
    if any(found.get(k) != (expected | layout)[k] for k in same) or found["items"] >= items.num_rows:
        return None
    if found.get("complete") is False and found.get("growing_to") != expected["items_fingerprint"]:
        return None  # half-written for another table
    prefix = items.slice(0, found["items"])
    if items_fingerprint(prefix, settings.get("column", "title")) != found["items_fingerprint"]:
        return None
    return found["items"] + 1


def _grow(group: zarr.Group, found: dict, expected: dict, n_rows: int, chunk_items: int) -> None:
    """Make room for the new rows; the chunk shared by the last old and first new rows is done
    again once its new rows are written."""
    old_rows = found["items"] + 1
    group.attrs.update({"complete": False, "growing_to": expected["items_fingerprint"]})  # first: a resume knows
    for name, shape in (("states", (n_rows, *group["states"].shape[1:])), ("missing", (n_rows,)),
                        ("done", (-(-n_rows // chunk_items),))):
        if group[name].shape != shape:  # each its own check: a kill may fall between them
            group[name].resize(shape)
    if old_rows % chunk_items:
        group["done"][old_rows // chunk_items] = False


def _encode_rows(group: zarr.Group, settings: dict, states: list[int], records: list[dict], out: Path, lo: int,
                 hi: int, base: int, window: int, chunk_items: int, missing_image: str, on_chunk_done,
                 partial: Path, extra: dict | None = None) -> None:
    """Encode item rows lo..hi of the store (store row 0 is item row `base`) window by window
    (the grid of `window` rows from row 0, cut at lo), skipping windows whose chunks are done."""
    done_flags = group["done"][:]
    edges = sorted({lo, hi} | set(range((lo // window + 1) * window, hi, window)))
    windows = [(a, b) for a, b in zip(edges, edges[1:])
               if not done_flags[(a - base) // chunk_items:-(-(b - base) // chunk_items)].all()]
    try:
        backbone = Backbone(settings, states) if windows else None
    except BackboneError as e:
        raise EncodeError(str(e)) from None
    todo = sum(b - a for a, b in windows)
    bar = tqdm(total=hi - lo, initial=hi - lo - todo, unit="item", desc=f"encode {out.name}", smoothing=0.1)
    state = {"batch_size": settings["batch_size"]}
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-writer") as writer:
        pending = None
        for a, b in windows:
            block, codes = _encode_window(backbone, records, a, b, settings["hidden_size"], missing_image, state, bar)
            if pending is not None:
                pending.result()  # one window in flight: its chunks are written (and marked done) in order
            pending = writer.submit(_write_window, group, block, codes, a - base, chunk_items, on_chunk_done)
        if pending is not None:
            pending.result()
    bar.close()
    attrs = {"encode_seconds": round(time.perf_counter() - start, 3), "batch_size_used": state["batch_size"]}
    drop = ()
    if extra:  # an extension: the grown table's identity, and the prefixes it extends
        attrs |= extra | {"items": len(records), "items_fingerprint": group.attrs["growing_to"]}
        drop = ("growing_to",)
    _finish(group, partial, out, settings["modality"], attrs, drop)


def _encode_window(backbone: Backbone, records: list[dict], lo: int, hi: int, width: int, missing_image: str,
                   state: dict, bar) -> tuple[torch.Tensor, np.ndarray]:
    """Pooled states [hi - lo, K, D] (float16, CPU; row 0 of the store stays zero) and missing
    codes of the item rows lo..hi, in batches of similar token length."""
    rows = [r for r in range(lo, hi) if r > 0]
    window_records = [records[r - 1] for r in rows]
    codes = np.zeros(hi - lo, dtype=np.uint8)
    if backbone.modality == "text":
        tokens, status = backbone.tokens(window_records)
        usable = [i for i, st in enumerate(status) if st == "ok"]  # positions in window_records
        lengths = [len(t) for t in tokens.get("input_ids", [])]
        order = [usable[j] for j in np.argsort(lengths, kind="stable")]  # similar lengths share a batch
        token_row = {i: j for j, i in enumerate(usable)}  # position in window_records -> row of tokens
    else:
        order, status = list(range(len(rows))), None
    parts = []  # (positions in window_records, states on the device): one transfer per window
    b = 0
    while b < len(order):
        batch = order[b:b + state["batch_size"]]
        try:
            if status is not None:  # text: collate the batch from the window's tokens
                pooled = backbone.forward(backbone.collate(tokens, [token_row[i] for i in batch]))
                ok = batch
            else:
                inputs, image_status = backbone.inputs([window_records[i] for i in batch])
                bad = [(i, st) for i, st in zip(batch, image_status) if st != "ok"]
                if bad and missing_image == "error":
                    i, st = bad[0]
                    item = window_records[i]
                    raise EncodeError(f"item {item['item_id']}: {st.replace('_', ' ')} ({item['image']}); "
                                      f"set encode.missing_image: zeros to encode it as zeros")
                codes[[rows[i] - lo for i, _ in bad]] = [MISSING_CODES[st] for _, st in bad]
                ok = [i for i, st in zip(batch, image_status) if st == "ok"]
                pooled = backbone.forward(inputs) if inputs is not None else None
        except torch.OutOfMemoryError:
            if state["batch_size"] == 1:
                raise EncodeError("out of memory with a batch of one item: use a GPU with more memory, "
                                  "device_map: auto over several GPUs, or quantization") from None
            state["batch_size"] = max(1, state["batch_size"] // 2)  # back off and retry the same items
            torch.cuda.empty_cache()
            bar.write(f"out of memory: encoding on with batches of {state['batch_size']}")
            bar.set_postfix(batch=state["batch_size"])
            continue
        if pooled is not None:  # float16 on the device: half the memory and transfer, the same rounding
            parts.append((ok, pooled.half()))
        bar.update(len(batch))
        b += len(batch)
    if status is not None:  # missing captions were counted by the caption stage; encoded as zeros
        missing = [i for i, st in enumerate(status) if st != "ok"]
        codes[[rows[i] - lo for i in missing]] = MISSING_CODES["no_text"]
        bar.update(len(missing))
    if lo == 0:
        bar.update(1)  # the padding row
    block = torch.zeros((hi - lo, len(backbone.states), width), dtype=torch.float16)
    if parts:
        encoded = [i for ok, _ in parts for i in ok]  # positions in window_records
        pooled = torch.cat([p for _, p in parts])  # [len(encoded), K, D] float16, on the device
        _check_finite(pooled, window_records, encoded, backbone.states)
        block[torch.as_tensor([rows[i] - lo for i in encoded])] = pooled.cpu()
    return block, codes


def _check_finite(pooled: torch.Tensor, records: list[dict], encoded: list[int], kept: list[int]) -> None:
    """Refuse pooled states [B, K, D] (row b: the item records[encoded[b]]) with NaN or inf in
    float16 before they are stored: readers would take them as data (large LLM activations
    overflow float16 beyond 65504)."""
    bad = ~torch.isfinite(pooled).all(dim=2)  # [B, K]
    if not bad.any():
        return
    items = bad.any(dim=1).nonzero()[:, 0].tolist()  # in batch order
    states = [kept[k] for k in bad.any(dim=0).nonzero()[:, 0].tolist()]
    named = ", ".join(records[encoded[b]]["item_id"] for b in items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
    raise EncodeError(f"items {named}: pooled state(s) {states} are not finite in float16 (NaN, or beyond +-65504 "
                      f"as large LLM activations can be); the store keeps float16: keep other states or another "
                      f"pooling, or, if the encoder computes in float16, use dtype bfloat16 or float32")


def _write_window(group: zarr.Group, block: torch.Tensor, codes: np.ndarray, first: int, chunk_items: int,
                  on_chunk_done) -> None:
    """Write a window's rows (from store row `first`) chunk by chunk, marking each chunk done
    after its states are written. A window ends on a chunk boundary (or the store's
    end); it starts on one unless it extends a store, whose last chunk it then completes."""
    states = block.numpy()
    c = 0
    while c < len(states):
        n = min(len(states) - c, chunk_items - (first + c) % chunk_items)  # up to the chunk's end
        group["states"][first + c:first + c + n] = states[c:c + n]
        group["missing"][first + c:first + c + n] = codes[c:c + n]
        chunk = (first + c) // chunk_items
        group["done"][chunk] = True
        if on_chunk_done:
            on_chunk_done(chunk)
        c += n


def gather(items_parquet: Path, settings: dict, states: list[int], parts: list[Path], out: Path,
           chunk_items: int = 256, missing_image: str = "zeros", captions=(), sort_chunks: int = SORT_CHUNKS) -> dict:
    """Assemble the part stores of a sharded encode into the store at `out`, after checking that
    every part was written for this request and that together they hold every item row once."""
    items, expected = _request(items_parquet, settings, states, missing_image, captions)
    n_rows, layout = items.num_rows + 1, {"chunk_items": chunk_items, "sort_chunks": sort_chunks}
    found = {}
    for path in parts:
        if not Path(path).is_dir():
            raise EncodeError(f"{path}: no such part store; run its encode shard first")
        attrs = dict(open_store(path).attrs)
        if "shard" not in attrs:
            raise EncodeError(f"{path} is not a part store of a sharded encode (no 'shard' attribute)")
        check_attributes({k: v for k, v in attrs.items() if k not in ("shard", "rows")},
                         expected | {"complete": True} | layout, path)
        check_complete(open_store(path), path)
        found[tuple(attrs["shard"])] = (path, attrs)
    counts = {n for _, n in found}
    if len(counts) != 1:
        raise EncodeError(f"the parts come from splits into different numbers of shards: {sorted(counts)}")
    shards = counts.pop()
    missing = sorted(set(range(shards)) - {i for i, _ in found})
    if missing or len(parts) != shards:
        raise EncodeError(f"gather needs each of the {shards} shards once; missing: {missing}, given: "
                          f"{sorted(i for i, _ in found)} from {len(parts)} parts")
    # Every row exactly once: the parts' ranges are the chunk-aligned split of all the rows.
    for i in range(shards):
        path, attrs = found[(i, shards)]
        rows = list(shard_rows(n_rows, chunk_items * sort_chunks, i, shards))
        if attrs["rows"] != rows:
            raise EncodeError(f"{path} holds rows {attrs['rows']}, not shard {i}'s {rows}")

    with store_lock(out):
        partial = out.with_name(out.name + ".partial")
        group = _new_store(partial, n_rows, len(states), settings["hidden_size"], chunk_items, expected | layout)
        _copy_parts(group, found, shards, chunk_items)
        timings = [found[(i, shards)][1] for i in range(shards)]
        _finish(group, partial, out, settings["modality"], {
            "encode_seconds": round(sum(a["encode_seconds"] for a in timings), 3),
            "batch_size_used": min(a["batch_size_used"] for a in timings),
            "shards": shards,
        })
    return expected


def _copy_parts(group: zarr.Group, found: dict, shards: int, chunk_items: int) -> None:
    for i in range(shards):
        path, attrs = found[(i, shards)]
        lo, hi = attrs["rows"]
        part = open_store(path)
        for c in range(0, hi - lo, chunk_items):  # one chunk in memory at a time: parts can be GBs
            group["states"][lo + c:min(lo + c + chunk_items, hi)] = part["states"][c:c + chunk_items]
        group["missing"][lo:hi] = part["missing"][:]
        first = lo // chunk_items
        group["done"][first:first + part["done"].shape[0]] = part["done"][:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=Path, required=True)
    parser.add_argument("--settings", required=True, help="the encoder's config entry as JSON")
    parser.add_argument("--states", type=int, nargs="+", required=True, help="kept hidden-state indices")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chunk-items", type=int, default=256, help="items per Zarr chunk (the resume unit)")
    parser.add_argument("--sort-chunks", type=int, default=SORT_CHUNKS,
                        help="chunks whose items are sorted by length and batched together")
    parser.add_argument("--missing-image", choices=["zeros", "error"], default="zeros",
                        help="an item without a readable image: zero states (counted) or an error")
    parser.add_argument("--shard", type=int, nargs=2, metavar=("I", "N"), default=None,
                        help="write only shard I of N (a part store; 0 <= I < N)")
    parser.add_argument("--gather", type=Path, nargs="+", metavar="PART", default=None,
                        help="assemble these part stores (all N shards) into --out instead of encoding")
    parser.add_argument("--captions", type=Path, nargs="+", default=(),
                        help="caption files (captions/<column>.parquet) whose columns the encoder may read")
    parser.add_argument("--replace", action="store_true",
                        help="a store at --out for another request is re-encoded (swapped in when complete) "
                             "instead of refused")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device-map", choices=["auto", "none"], default="none",
                        help="auto: spread the model over the GPUs this job sees (accelerate)")
    args = parser.parse_args(argv)
    if args.shard and not 0 <= args.shard[0] < args.shard[1]:
        parser.error("--shard I N needs 0 <= I < N")
    torch.set_num_threads(args.threads)
    settings = json.loads(args.settings) | {"device_map": None if args.device_map == "none" else args.device_map}
    try:
        if args.gather:
            attrs = gather(args.items, settings, args.states, args.gather, args.out, args.chunk_items,
                           args.missing_image, captions=args.captions, sort_chunks=args.sort_chunks)
        else:
            attrs = encode(args.items, settings, args.states, args.out, args.chunk_items, args.missing_image,
                           shard=tuple(args.shard) if args.shard else None, captions=args.captions,
                           sort_chunks=args.sort_chunks, replace=args.replace)
    except (CacheError, DataError) as e:
        raise SystemExit(f"encode: {e}")
    print(f"{args.out}: {attrs['items']} items x {len(args.states)} states x {attrs['hidden_size']}, "
          f"{store_bytes(args.out)} bytes")


if __name__ == "__main__":
    main()
