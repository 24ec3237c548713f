"""Readers of raw dataset formats: each returns item titles and chronological user sequences.

- iisan-split: users tsv `user<TAB>item item ...` (chronological), items tsv `item<TAB>title`
  (the paper's Amazon Scientific / Instruments / Office splits).
- microlens: users = pairs tsv (as above) or pairs csv with header `userID,videoID,timestamp`
  (ordered by timestamp per user, stable for ties); items = titles csv with header `item,title`.
- amazon-2018: users = reviews `{Category}.json.gz` (one JSON object per line with reviewerID,
  asin, unixReviewTime), items = `meta_{Category}.json.gz` (asin, title); sequences ordered by
  review time, then filtered to a user/item k-core. Files are streamed line by line.
Malformed input raises DataError naming the file and line.
"""
import csv
import gzip
import html
import json
from collections import Counter
from pathlib import Path

from pipeline.data import DataError

Sequences = list[tuple[str, list[str]]]


def _lines(path: Path):
    """(line number, text) of a text file, with a clear error for undecodable bytes."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}, line {number}: not valid UTF-8 ({e.reason} at byte {e.start})") from e


def _tab_records(path: Path, expected: str):
    """(line number, key, rest) of each non-blank `key<TAB>rest` line; a malformed line is an error."""
    for number, line in _lines(path):
        if not line.strip():
            continue
        key, sep, rest = line.partition("\t")
        key = key.strip()
        if not sep or not key:
            raise DataError(f"{path}, line {number}: expected '{expected}', got {line[:80]!r}")
        yield number, key, rest


def read_items(path: Path) -> dict[str, str]:
    """item_id -> title (unescaped). A line without a tab or a repeated id is an error."""
    titles: dict[str, str] = {}
    for number, item_id, title in _tab_records(path, "item_id<TAB>title"):
        if item_id in titles:
            raise DataError(f"{path}, line {number}: item '{item_id}' appears twice")
        titles[item_id] = html.unescape(title).strip()
    return titles


def read_users(path: Path) -> Sequences:
    users, seen = [], {}
    for number, user_id, items in _tab_records(path, "user_id<TAB>item item ..."):
        if user_id in seen:
            raise DataError(f"{path}, line {number}: user '{user_id}' already on line {seen[user_id]}")
        seen[user_id] = number
        users.append((user_id, items.split()))
    return users


def _csv_rows(path: Path, header: list[str]):
    """(line number, row) of a CSV file whose header must be `header`."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            found = next(reader, None)
            if [h.strip() for h in found or []] != header:
                raise DataError(f"{path}, line 1: expected the header {','.join(header)}, got {found}")
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}, line {reader.line_num}: expected {len(header)} fields, got {len(row)}")
                yield reader.line_num, [v.strip() for v in row]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from e


def read_titles_csv(path: Path) -> dict[str, str]:
    titles: dict[str, str] = {}
    for number, (item_id, title) in _csv_rows(path, ["item", "title"]):
        if item_id in titles:
            raise DataError(f"{path}, line {number}: item '{item_id}' appears twice")
        titles[item_id] = html.unescape(title)
    return titles


def read_pairs_csv(path: Path) -> Sequences:
    """Chronological sequences from `userID,videoID,timestamp` rows (stable for equal times)."""
    events: dict[str, list[tuple[float, str]]] = {}
    for number, (user_id, item_id, timestamp) in _csv_rows(path, ["userID", "videoID", "timestamp"]):
        try:
            events.setdefault(user_id, []).append((float(timestamp), item_id))
        except ValueError:
            raise DataError(f"{path}, line {number}: timestamp {timestamp!r} is not a number") from None
    return [(u, [i for _, i in sorted(e, key=lambda x: x[0])]) for u, e in events.items()]


def json_lines(path: Path):
    """(line number, object) of a JSON-lines file, gzip-compressed when it ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        try:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {number}: not a JSON object ({e.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}, line {number}: not a JSON object")
                yield number, record
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 ({e.reason})") from e


def _require(record: dict, keys: tuple, path: Path, number: int) -> list:
    missing = [k for k in keys if record.get(k) in (None, "")]
    if missing:
        raise DataError(f"{path}, line {number}: missing {', '.join(missing)}")
    return [record[k] for k in keys]


def k_core(sequences: Sequences, user_k: int, item_k: int, dropped: Counter) -> Sequences:
    """Repeatedly drop users with fewer than user_k and items with fewer than item_k interactions."""
    while True:
        counts = Counter(i for _, items in sequences for i in items)
        rare = {i for i, n in counts.items() if n < item_k}
        kept = []
        for user, items in sequences:
            items = [i for i in items if i not in rare]
            if len(items) >= user_k:
                kept.append((user, items))
        dropped["interactions removed by the k-core filter"] += (
            sum(len(s) for _, s in sequences) - sum(len(s) for _, s in kept))
        if len(kept) == len(sequences) and not rare:
            return kept
        sequences = kept


def read_amazon_2018(reviews: Path, meta: Path, user_k: int = 5, item_k: int = 5):
    dropped = Counter()
    titles: dict[str, str] = {}
    for number, record in json_lines(meta):
        (asin,) = _require(record, ("asin",), meta, number)
        if asin in titles:
            dropped["repeated items in the metadata file (first kept)"] += 1
            continue
        titles[asin] = html.unescape(str(record.get("title") or "")).strip()
    events: dict[str, list[tuple[int, str]]] = {}
    for number, record in json_lines(reviews):
        user, asin, time = _require(record, ("reviewerID", "asin", "unixReviewTime"), reviews, number)
        if not isinstance(time, (int, float)):
            raise DataError(f"{reviews}, line {number}: unixReviewTime {time!r} is not a number")
        events.setdefault(user, []).append((time, asin))
    sequences = [(u, [a for _, a in sorted(e, key=lambda x: x[0])]) for u, e in events.items()]
    return titles, k_core(sequences, user_k, item_k, dropped), dropped


def read_iisan_split(users: Path, items: Path):
    return read_items(items), read_users(users), Counter()


def read_microlens(users: Path, items: Path):
    sequences = read_pairs_csv(users) if users.suffix.lower() == ".csv" else read_users(users)
    return read_titles_csv(items), sequences, Counter()


FORMATS = {"iisan-split": read_iisan_split, "microlens": read_microlens, "amazon-2018": read_amazon_2018}


def read_raw(fmt: str, users: Path, items: Path, **options) -> tuple[dict[str, str], Sequences, Counter]:
    """(item_id -> title, [(user_id, chronological item ids)], what the reader dropped and why).

    options: format-specific settings (amazon-2018: user_k, item_k).
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown dataset format {fmt!r} (known: {', '.join(sorted(FORMATS))})")
    return FORMATS[fmt](users, items, **options)
