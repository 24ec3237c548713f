"""prepare: raw dataset files -> canonical Parquet tables.

Outputs (contract used by every later stage):
- items.parquet: item_idx int32 1..N (0 is padding), item_id, title (HTML unescaped),
  image and video (paths or null). Only items that some kept user interacted with, in
  items-file order.
- sequences.parquet: user_id, items list<int32> (chronological, whole sequence).
  Leave-one-out: test target = last item, validation target = second to last, train = the rest.
- stats.json: counts, and what was dropped and why.

Input formats (--format): see pipeline/formats.py. Optional folders: images with
{item_id}.png/.jpg/.jpeg, videos with {item_id}.mp4.

Usage: python -m pipeline.prepare [--format F] --users U --items I [--images DIR] [--videos DIR] --out-dir DIR
"""
import argparse
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data import DataError
from pipeline.files import atomic_path, write_json
from pipeline.formats import FORMATS, IMAGE_SUFFIXES, VIDEO_SUFFIXES, find_files, read_raw


def prepare(users_tsv: Path, items_tsv: Path, images: Path | None, min_interactions: int = 3,
            fmt: str = "iisan-split", videos: Path | None = None, keep_unused_items: bool = False, **options):
    """Return (items table, sequences table, stats). options: the format's own settings.
    keep_unused_items: keep the items no kept user interacted with (new items a content model
    can recommend), in items-file order with the others; by default they are dropped."""
    titles, users, dropped = read_raw(fmt, users_tsv, items_tsv, **options)

    kept_users = []
    for user_id, items in users:
        known = [i for i in items if i in titles]
        dropped["interactions with an item missing from the items file"] += len(items) - len(known)
        if len(known) < min_interactions:
            dropped[f"users with fewer than {min_interactions} interactions"] += 1
            continue
        kept_users.append((user_id, known))
    if not kept_users:  # later stages cannot split or train on nothing; say what removed everyone
        reasons = ", ".join(f"{n} {reason}" for reason, n in dropped.items() if n) or "nothing"
        raise DataError(f"no users left to prepare: {users_tsv} gave {len(users)} users and {items_tsv} "
                        f"{len(titles)} items; dropped: {reasons}")

    used = {i for _, items in kept_users for i in items}
    if not keep_unused_items:
        dropped["items never interacted with by a kept user"] = len(titles) - len(used)
    item_ids = [i for i in titles if i in used or keep_unused_items]
    empty_titles = sum(1 for i in item_ids if not titles[i])
    idx = {item_id: n for n, item_id in enumerate(item_ids, start=1)}
    image_of = find_files(images, item_ids, IMAGE_SUFFIXES, "images")
    video_of = find_files(videos, item_ids, VIDEO_SUFFIXES, "videos")

    items_table = pa.table({
        "item_idx": pa.array(range(1, len(item_ids) + 1), pa.int32()),
        "item_id": pa.array(item_ids, pa.string()),
        "title": pa.array([titles[i] for i in item_ids], pa.string()),
        "image": pa.array([image_of.get(i) for i in item_ids], pa.string()),
        "video": pa.array([video_of.get(i) for i in item_ids], pa.string()),
    })
    sequences = pa.table({
        "user_id": pa.array([u for u, _ in kept_users], pa.string()),
        "items": pa.array([[idx[i] for i in items] for _, items in kept_users], pa.list_(pa.int32())),
    })
    n_interactions = sum(len(items) for _, items in kept_users)
    stats = {
        "users": len(kept_users),
        "items": len(item_ids),
        "interactions": n_interactions,
        "items_with_image": len(image_of),
        "items_with_video": len(video_of),
        "items_with_empty_title": empty_titles,
        "repeat_interactions": sum(len(s) - len(set(s)) for _, s in kept_users),
        "dropped": {reason: n for reason, n in dropped.items() if n},
        "inputs": {"format": fmt, "users": str(users_tsv), "items": str(items_tsv),
                   "images": str(images) if images else None, "videos": str(videos) if videos else None},
    }
    return items_table, sequences, stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", default="iisan-split", choices=sorted(FORMATS))
    parser.add_argument("--users", type=Path, required=True, help="users tsv / pairs tsv or csv")
    parser.add_argument("--items", type=Path, required=True, help="items tsv / titles csv")
    parser.add_argument("--images", type=Path, default=None)
    parser.add_argument("--videos", type=Path, default=None)
    parser.add_argument("--min-interactions", type=int, default=3)
    parser.add_argument("--keep-unused-items", action="store_true",
                        help="keep items no kept user interacted with (new items to recommend)")
    parser.add_argument("--k-core", type=int, nargs=2, default=None, metavar=("USER_K", "ITEM_K"),
                        help="amazon-2018: keep users and items with at least this many interactions")
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.min_interactions < 3:
        parser.error("--min-interactions must be at least 3 (leave-one-out needs a train, a validation and a test item)")
    try:
        options = {"user_k": args.k_core[0], "item_k": args.k_core[1]} if args.k_core else {}
        items, sequences, stats = prepare(args.users, args.items, args.images, args.min_interactions,
                                          args.format, args.videos, args.keep_unused_items, **options)
    except DataError as e:
        raise SystemExit(f"prepare: {e}")
    with atomic_path(args.out_dir / "items.parquet") as tmp:
        pq.write_table(items, tmp)
    with atomic_path(args.out_dir / "sequences.parquet") as tmp:
        pq.write_table(sequences, tmp)
    write_json(args.out_dir / "stats.json", stats)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
