"""The item table a stage reads: items.parquet with the caption columns it needs appended.

Each stage joins only the caption columns its run reads (run_items), so a change to one caption
column re-runs only what reads it; pipeline.join_captions writes the table with every column.
"""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data import DataError

KEYS = ("item_idx", "item_id", "status")


def caption_column(table: pa.Table, path: Path) -> str:
    """The caption column of a caption file: the one column besides item_idx, item_id, status."""
    columns = [c for c in table.column_names if c not in KEYS]
    if len(columns) != 1:
        raise DataError(f"{path}: expected one caption column besides {', '.join(KEYS)}, found {columns}")
    return columns[0]


def join_captions(items: pa.Table, captions: dict[Path, pa.Table]) -> pa.Table:
    """items with each caption file's column appended; every file must cover the same items."""
    for path, table in captions.items():
        column = caption_column(table, path)
        if table.column("item_id").to_pylist() != items.column("item_id").to_pylist():
            raise DataError(f"{path} was written for another item table; delete it and caption again")
        if column in items.column_names:
            raise DataError(f"{path}: column '{column}' is already in the item table")
        items = items.append_column(column, table.column(column))
    return items


def read_items(items_parquet: Path, captions=()) -> pa.Table:
    """items.parquet with the caption columns of the given caption files appended."""
    items = pq.read_table(items_parquet)
    if not captions:
        return items
    return join_captions(items, {Path(p): pq.read_table(p) for p in captions})


def run_items(run: dict, items_parquet: Path) -> pa.Table:
    """The item table with the caption columns a resolved run's towers read (their `captions` files)."""
    return read_items(items_parquet, sorted({t["captions"] for t in run["towers"].values() if "captions" in t}))
