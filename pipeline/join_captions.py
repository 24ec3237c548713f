"""join_captions: items.parquet + caption columns -> items_captioned.parquet.

The item table with one more column per caption file (null where the item has no caption), in
the same rows and order. The stages join the columns they read themselves (read_items), so a
change to one caption column re-runs only what reads it; items_captioned.parquet, with every
column, is for people and tools.

Usage: python -m pipeline.join_captions --items ITEMS.parquet --captions C1.parquet [C2.parquet ...] --out OUT.parquet
"""
import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data import DataError
from pipeline.files import atomic_path

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=Path, required=True)
    parser.add_argument("--captions", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        joined = join_captions(pq.read_table(args.items), {p: pq.read_table(p) for p in args.captions})
    except DataError as e:
        raise SystemExit(f"join_captions: {e}")
    with atomic_path(args.out) as tmp:
        pq.write_table(joined, tmp)
    print(f"{args.out}: {joined.num_rows} items, columns {', '.join(joined.column_names)}")


if __name__ == "__main__":
    main()
