import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import shared_path

from pipeline.data import DataError, make_splits
from pipeline.prepare import prepare


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.fixture
def tiny(tmp_path):
    items = write(tmp_path / "items.tsv", "a\tAlpha &amp; Co\nb\tBeta\nc\tGamma &quot;x&quot;\nd\tDelta\nz\tNever used\n")
    users = write(tmp_path / "users.tsv", "u1\ta b c d\nu2\tb c\nu3\tc a ghost b\n")
    return users, items


def test_tables_and_drops(tiny):
    users, items = tiny
    item_table, sequences, stats = prepare(users, items, None)
    assert item_table.column("item_id").to_pylist() == ["a", "b", "c", "d"]
    assert item_table.column("item_idx").to_pylist() == [1, 2, 3, 4]
    assert item_table.column("title").to_pylist()[0] == "Alpha & Co"
    assert item_table.column("title").to_pylist()[2] == 'Gamma "x"'
    assert sequences.column("user_id").to_pylist() == ["u1", "u3"]
    assert sequences.column("items").to_pylist() == [[1, 2, 3, 4], [3, 1, 2]]
    assert stats["dropped"] == {
        "interactions with an item missing from the items file": 1,
        "users with fewer than 3 interactions": 1,
        "items never interacted with by a kept user": 1,
    }


def test_leave_one_out(tiny):
    users, items = tiny
    item_table, sequences, _ = prepare(users, items, None)
    s = make_splits(sequences.column("user_id").to_pylist(), sequences.column("items").to_pylist(),
                    item_table.num_rows, max_history=3)
    assert s.test.targets.tolist() == [4, 2]
    assert s.valid.targets.tolist() == [3, 1]
    assert s.test.inputs.tolist() == [[1, 2, 3], [0, 3, 1]]
    assert s.valid.inputs.tolist() == [[0, 1, 2], [0, 0, 3]]
    assert [h.tolist() for h in s.test.histories] == [[1, 2, 3], [3, 1]]
    # training = the rest: u1 trains on [1, 2]; u3's single training item gives no window
    assert s.train_windows.tolist() == [[0, 0, 1, 2]]
    assert s.item_counts.tolist() == [0, 1, 1, 1, 0]


@pytest.mark.parametrize("content,message", [
    ("a\tAlpha\nbroken line\n", "items.tsv, line 2: expected 'item_id<TAB>title'"),
    ("a\tAlpha\na\tAgain\n", "items.tsv, line 2: item 'a' appears twice"),
    (b"a\tAlpha\nb\tB\xe9ta\n", "items.tsv, line 2: not valid UTF-8"),
])
def test_bad_items_file(tmp_path, content, message):
    users = write(tmp_path / "users.tsv", "u1\ta a a\n")
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        prepare(users, write(tmp_path / "items.tsv", content), None)


def test_duplicate_user(tmp_path):
    items = write(tmp_path / "items.tsv", "a\tA\nb\tB\n")
    users = write(tmp_path / "users.tsv", "u1\ta b a\nu1\tb a b\n")
    with pytest.raises(DataError, match="users.tsv, line 2: user 'u1' already on line 1"):
        prepare(users, items, None)


def test_images_are_found_by_item_id(tmp_path, tiny):
    users, items = tiny
    (tmp_path / "img").mkdir()
    write(tmp_path / "img" / "a.png", b"x")
    write(tmp_path / "img" / "c.JPG", b"x")
    item_table, _, stats = prepare(users, items, tmp_path / "img")
    images = item_table.column("image").to_pylist()
    assert images[0].endswith("a.png") and images[1] is None and images[2].endswith("c.JPG")
    assert stats["items_with_image"] == 2


def test_cli_writes_outputs(tmp_path, tiny):
    users, items = tiny
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "pipeline.prepare", "--users", str(users), "--items", str(items),
                    "--out-dir", str(out)], check=True, capture_output=True)
    assert pq.read_table(out / "items.parquet").num_rows == 4
    assert json.loads((out / "stats.json").read_text())["users"] == 2
    bad = subprocess.run([sys.executable, "-m", "pipeline.prepare", "--users", str(users),
                          "--items", str(write(tmp_path / "bad.tsv", "no tab here\n")), "--out-dir",
                          str(tmp_path / "o2")], capture_output=True, text=True)
    assert bad.returncode != 0 and "bad.tsv, line 1" in bad.stderr
    assert not (tmp_path / "o2").exists()


def test_real_scientific_split():
    item_table, sequences, stats = prepare(shared_path("scientific", "users"), shared_path("scientific", "items"), None)
    assert stats["users"] == 12076 and stats["interactions"] == 85211
    assert not any("&amp;" in t for t in item_table.column("title").to_pylist())


def test_microlens_pairs_csv_is_ordered_by_time(tmp_path):
    titles = write(tmp_path / "titles.csv", 'item,title\r\n1,"Cat, dog &amp; bird"\r\n2,Two\r\n3,Three\r\n4,Unused\r\n')
    pairs = write(tmp_path / "pairs.csv", "userID,videoID,timestamp\n7,3,30\n7,1,10\n7,2,20\n8,1,5\n8,2,5\n8,3,1\n")
    (tmp_path / "videos").mkdir()
    write(tmp_path / "videos" / "2.mp4", b"x")
    items, sequences, stats = prepare(pairs, titles, None, fmt="microlens", videos=tmp_path / "videos")
    assert items.column("item_id").to_pylist() == ["1", "2", "3"]
    assert items.column("title").to_pylist()[0] == "Cat, dog & bird"
    assert items.column("video").to_pylist() == [None, str(tmp_path / "videos" / "2.mp4"), None]
    # user 7 sorted by timestamp; user 8's equal timestamps keep file order
    assert sequences.column("items").to_pylist() == [[1, 2, 3], [3, 1, 2]]
    assert stats["items_with_video"] == 1


@pytest.mark.parametrize("name,content,message", [
    ("titles.csv", "id,name\n1,x\n", r"titles.csv, line 1: expected the header item,title"),
    ("titles.csv", 'item,title\n1,"a","b"\n', r"titles.csv, line 2: expected 2 fields, got 3"),
    ("pairs.csv", "userID,videoID,timestamp\n7,1,yesterday\n", r"pairs.csv, line 2: timestamp 'yesterday'"),
])
def test_microlens_bad_files(tmp_path, name, content, message):
    titles = write(tmp_path / "titles.csv", "item,title\n1,One\n")
    pairs = write(tmp_path / "pairs.csv", "userID,videoID,timestamp\n7,1,1\n7,1,2\n7,1,3\n")
    write(tmp_path / name, content)
    with pytest.raises(DataError, match=message):
        prepare(pairs, titles, None, fmt="microlens")


def test_real_microlens_sample():
    users, titles, videos = (shared_path("microlens-sample", key) for key in ("users", "items", "videos"))
    items, sequences, stats = prepare(users, titles, None, fmt="microlens", videos=videos)
    assert stats["users"] == 305 and stats["items"] == 2018 and stats["items_with_video"] == 1
    assert items.column("video").to_pylist()[items.column("item_id").to_pylist().index("10034")].endswith("10034.mp4")


def write_gz_lines(path: Path, records) -> Path:
    import gzip
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def test_amazon_2018_chronological_k_core(tmp_path):
    meta = write_gz_lines(tmp_path / "meta_X.json.gz", [
        {"asin": a, "title": f"Item {a} &amp; co", "imageURL": []} for a in "abcdz"] + [{"asin": "a", "title": "dup"}])
    reviews = [  # u1 and u2: 3 items each; u3 only 1 (dropped); z is rated once (dropped by item k-core)
        {"reviewerID": "u1", "asin": "b", "unixReviewTime": 20}, {"reviewerID": "u1", "asin": "a", "unixReviewTime": 10},
        {"reviewerID": "u1", "asin": "c", "unixReviewTime": 30}, {"reviewerID": "u2", "asin": "c", "unixReviewTime": 1},
        {"reviewerID": "u2", "asin": "a", "unixReviewTime": 2}, {"reviewerID": "u2", "asin": "b", "unixReviewTime": 3},
        {"reviewerID": "u2", "asin": "z", "unixReviewTime": 4}, {"reviewerID": "u3", "asin": "a", "unixReviewTime": 5},
    ]
    users = write_gz_lines(tmp_path / "X.json.gz", reviews)
    items, sequences, stats = prepare(users, meta, None, fmt="amazon-2018", user_k=3, item_k=2)
    assert items.column("item_id").to_pylist() == ["a", "b", "c"]
    assert items.column("title").to_pylist()[0] == "Item a & co"
    assert dict(zip(sequences.column("user_id").to_pylist(), sequences.column("items").to_pylist())) == {
        "u1": [1, 2, 3], "u2": [3, 1, 2]}
    assert stats["dropped"]["interactions removed by the k-core filter"] == 2  # z, then u3's a
    assert stats["dropped"]["repeated items in the metadata file (first kept)"] == 1


@pytest.mark.parametrize("line,message", [
    ("{not json", r"X.json.gz, line 2: not a JSON object"),
    ('{"reviewerID": "u", "asin": "a"}', r"X.json.gz, line 2: missing unixReviewTime"),
    ('{"reviewerID": "u", "asin": "a", "unixReviewTime": "soon"}', r"line 2: unixReviewTime 'soon' is not a number"),
])
def test_amazon_2018_bad_lines(tmp_path, line, message):
    meta = write_gz_lines(tmp_path / "meta_X.json.gz", [{"asin": "a", "title": "A"}])
    users = write_gz_lines(tmp_path / "X.json.gz", [{"reviewerID": "u", "asin": "a", "unixReviewTime": 1}, line])
    with pytest.raises(DataError, match=message):
        prepare(users, meta, None, fmt="amazon-2018")


def test_empty_titles_are_kept_and_counted(tmp_path):
    items = write(tmp_path / "items.tsv", "a\t\nb\t   \nc\tC\n")
    users = write(tmp_path / "users.tsv", "u1\ta b c\n")
    item_table, _, stats = prepare(users, items, None)
    assert item_table.column("title").to_pylist() == ["", "", "C"]
    assert stats["items_with_empty_title"] == 2


def test_items_without_interactions_are_kept_when_asked(tmp_path):
    from pipeline.prepare import prepare

    (tmp_path / "users.tsv").write_text("u1\ta b c\nu2\tb c a\n")
    (tmp_path / "items.tsv").write_text("a\tA\nx\tnew item\nb\tB\nc\tC\n")
    items, _, stats = prepare(tmp_path / "users.tsv", tmp_path / "items.tsv", None)
    assert items.column("item_id").to_pylist() == ["a", "b", "c"]
    assert stats["dropped"]["items never interacted with by a kept user"] == 1
    items, sequences, _ = prepare(tmp_path / "users.tsv", tmp_path / "items.tsv", None, keep_unused_items=True)
    assert items.column("item_id").to_pylist() == ["a", "x", "b", "c"]  # items-file order
    assert sequences.column("items").to_pylist() == [[1, 3, 4], [3, 4, 1]]
