"""Readers of raw dataset formats: each returns item titles and chronological user sequences.

- iisan-split: users tsv `user<TAB>item item ...` (chronological), items tsv `item<TAB>title`
  (the paper's Amazon Scientific / Instruments / Office splits).
- microlens: users = pairs tsv (as above) or pairs csv with header `userID,videoID,timestamp`
  (ordered by timestamp per user, stable for ties); items = titles csv with header `item,title`.
- amazon-2018: users = reviews `{Category}.json.gz` (one JSON object per line with reviewerID,
  asin, unixReviewTime), items = `meta_{Category}.json.gz` (asin, title); sequences ordered by
  review time, then filtered to a user/item k-core. Files are streamed line by line.
All files are UTF-8 (a leading byte order mark is ignored); a `.gz` name means gzip.
Malformed input raises DataError naming the file and line. Item ids must be usable as file
names (images and videos are found as {item_id}.jpg / .mp4 by find_files), see check_item_id.
"""
import csv
import gzip
import html
import json
import math
import re
import zlib
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from pipeline.data import DataError

Sequences = list[tuple[str, list[str]]]

MAX_LINE_BYTES = 16 << 20  # far above any real record; a binary or wrong file fails instead of filling memory
MAX_ID_BYTES = 200  # plus a suffix and atomic_path's temporary prefix, still under the usual 255-byte name limit
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4",)


def find_files(folder: Path | None, item_ids, suffixes, what: str) -> dict[str, str]:
    """item_id -> path of {item_id}.<suffix> in folder. Names are matched against the folder's
    listing, never joined onto the folder, so no id can point outside it."""
    if folder is None:
        return {}
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} {'is not a folder' if folder.exists() else 'does not exist'}")
    by_stem = {p.stem: str(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes}
    return {i: by_stem[i] for i in item_ids if i in by_stem}


def check_item_id(item_id: str, path: Path, number: int) -> str:
    """item_id if it can name a file inside a folder, else a DataError naming the file and line."""
    if not item_id:
        problem = "it is empty"
    elif item_id in (".", ".."):
        problem = "it names a folder"
    elif "/" in item_id or "\\" in item_id:
        problem = "it contains a path separator"
    elif CONTROL_CHARACTERS.search(item_id):
        problem = "it contains a control character"
    elif len(item_id.encode()) > MAX_ID_BYTES:
        problem = f"it is longer than {MAX_ID_BYTES} bytes"
    else:
        return item_id
    raise DataError(f"{path}, line {number}: item id {item_id!r:.80} cannot name a file: {problem}")


def require_text(value, name: str, path: Path, number: int) -> str:
    """value, which must be a string: a JSON number or list is an error, not str()-ed into an id or title."""
    if not isinstance(value, str):
        raise DataError(f"{path}, line {number}: {name} must be text, got {type(value).__name__}")
    return value


def _lines(path: Path, keep_ends: bool = False):
    """(line number, text) of a UTF-8 text file, gzip-compressed when it ends in .gz. Unreadable,
    undecodable, overlong or corrupt-gzip input is a DataError naming the file and line."""
    number = 0
    try:
        # lines/s, as the other stages show items/s: an Amazon 2018 dump takes minutes. Shown after
        # a second, so a small file reads silently and an error stays a one-line message.
        with ((gzip.open if path.suffix == ".gz" else open)(path, "rb") as f,
              tqdm(unit="line", unit_scale=True, desc=f"read {path.name}", smoothing=0.1, delay=1) as bar):
            while raw := f.readline(MAX_LINE_BYTES + 1):
                number += 1
                bar.update()
                if len(raw) > MAX_LINE_BYTES:
                    raise DataError(f"{path}, line {number}: longer than {MAX_LINE_BYTES} bytes (the wrong file?)")
                try:
                    text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}, line {number}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
                yield number, text if keep_ends else text.rstrip("\r\n")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}, line {number + 1}: corrupt or truncated gzip data ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e


def _tab_records(path: Path, expected: str):
    """(line number, key, rest) of each non-blank `key<TAB>rest` line; a malformed line is an error."""
    for number, line in _lines(path):
        if not line.strip():
            continue
        if "\r" in line:
            raise DataError(f"{path}, line {number}: carriage return inside the line (old Mac line ends?)")
        columns = line.split("\t")
        key = columns[0].strip()
        if len(columns) != 2 or not key:
            raise DataError(f"{path}, line {number}: expected '{expected}' (2 tab-separated columns), "
                            f"got {len(columns)}: {line[:80]!r}")
        yield number, key, columns[1]


def read_items(path: Path) -> dict[str, str]:
    """item_id -> title (unescaped). A line without exactly one tab, an id that cannot name a file
    or a repeated id is an error."""
    titles: dict[str, str] = {}
    for number, item_id, title in _tab_records(path, "item_id<TAB>title"):
        check_item_id(item_id, path, number)
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
    """(first line number, row) of each record of a CSV file whose header must be `header`."""
    reader = csv.reader((text for _, text in _lines(path, keep_ends=True)), strict=True)
    start = 1
    try:
        found = next(reader, None)
        if [h.strip() for h in found or []] != header:
            raise DataError(f"{path}, line 1: expected the header {','.join(header)}, got {found}")
        start = reader.line_num + 1
        for row in reader:
            if row:
                if len(row) != len(header):
                    raise DataError(f"{path}, line {start}: expected {len(header)} fields, got {len(row)}")
                yield start, [v.strip() for v in row]
            start = reader.line_num + 1
    except csv.Error as e:  # an unterminated quote, a field over csv.field_size_limit()
        raise DataError(f"{path}, line {start}: {e}") from e


def read_titles_csv(path: Path) -> dict[str, str]:
    titles: dict[str, str] = {}
    for number, (item_id, title) in _csv_rows(path, ["item", "title"]):
        check_item_id(item_id, path, number)
        if item_id in titles:
            raise DataError(f"{path}, line {number}: item '{item_id}' appears twice")
        titles[item_id] = html.unescape(title).strip()
    return titles


def read_pairs_csv(path: Path) -> Sequences:
    """Chronological sequences from `userID,videoID,timestamp` rows (stable for equal times)."""
    events: dict[str, list[tuple[float, str]]] = {}
    header = ["userID", "videoID", "timestamp"]
    for number, row in _csv_rows(path, header):
        if empty := [name for name, value in zip(header, row) if not value]:
            raise DataError(f"{path}, line {number}: empty {', '.join(empty)}")
        user_id, item_id, timestamp = row
        try:
            time = float(timestamp)
        except ValueError:
            raise DataError(f"{path}, line {number}: timestamp {timestamp!r} is not a number") from None
        if not math.isfinite(time):  # NaN compares false with everything and leaves the sequence unsorted
            raise DataError(f"{path}, line {number}: timestamp {timestamp!r} is not a finite number")
        events.setdefault(user_id, []).append((time, item_id))
    return [(u, [i for _, i in sorted(e, key=lambda x: x[0])]) for u, e in events.items()]


def json_lines(path: Path):
    """(line number, object) of a JSON-lines file, gzip-compressed when it ends in .gz."""
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: not a JSON object ({e.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: not a JSON object")
        yield number, record


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
        asin = check_item_id(require_text(asin, "asin", meta, number), meta, number)
        if asin in titles:
            dropped["repeated items in the metadata file (first kept)"] += 1
            continue
        titles[asin] = html.unescape(require_text(record.get("title") or "", "title", meta, number)).strip()
    events: dict[str, list[tuple[int, str]]] = {}
    for number, record in json_lines(reviews):
        user, asin, time = _require(record, ("reviewerID", "asin", "unixReviewTime"), reviews, number)
        user, asin = require_text(user, "reviewerID", reviews, number), require_text(asin, "asin", reviews, number)
        if isinstance(time, bool) or not isinstance(time, (int, float)):  # JSON true is an int to Python
            raise DataError(f"{reviews}, line {number}: unixReviewTime {time!r} is not a number")
        if isinstance(time, float) and not math.isfinite(time):  # json.loads accepts NaN and Infinity
            raise DataError(f"{reviews}, line {number}: unixReviewTime {time!r} is not a finite number")
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
