"""join_captions: items.parquet + caption columns -> items_captioned.parquet.

The item table with one more column per caption file (null where the item has no caption), in
the same rows and order. The stages join the columns they read themselves
(pipeline/item_table.py), so a change to one caption column re-runs only what reads it;
items_captioned.parquet, with every column, is for people and tools.

Usage: python -m pipeline.join_captions --items ITEMS.parquet --captions C1.parquet [C2.parquet ...] --out OUT.parquet
"""
import argparse
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.data import DataError
from pipeline.files import atomic_path
from pipeline.item_table import join_captions


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
