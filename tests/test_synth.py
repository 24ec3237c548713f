import html
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.synth import SynthConfig, generate
from pipeline.vocabulary import THEMES

REPO = Path(__file__).resolve().parents[1]
SMALL = SynthConfig(n_items=60, n_users=40, n_categories=5)


def _run(tmp: Path, cfg: SynthConfig = SMALL) -> tuple[dict, Path, Path, Path]:
    users, items, images = tmp / "users.tsv", tmp / "items.tsv", tmp / "images"
    summary = generate(cfg, users, items, images)
    return summary, users, items, images


def _read(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert all(line.count("\t") == 1 for line in lines)
    return [tuple(line.split("\t")) for line in lines]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    _, u1, i1, img1 = _run(tmp_path / "a")
    _, u2, i2, img2 = _run(tmp_path / "b")
    assert u1.read_bytes() == u2.read_bytes()
    assert i1.read_bytes() == i2.read_bytes()
    assert _tree(img1) == _tree(img2)

    _, u3, i3, img3 = _run(tmp_path / "c", SynthConfig(n_items=60, n_users=40, n_categories=5, seed=7))
    assert u3.read_bytes() != u1.read_bytes()
    assert i3.read_bytes() != i1.read_bytes()
    assert _tree(img3) != _tree(img1)


def test_format(tmp_path):
    summary, users, items, images = _run(tmp_path)
    item_rows, user_rows = _read(items), _read(users)
    item_ids = [i for i, _ in item_rows]
    user_ids = [u for u, _ in user_rows]

    assert len(item_ids) == len(set(item_ids)) == SMALL.n_items
    assert len(user_ids) == len(set(user_ids)) == SMALL.n_users
    assert all(len(i) == 10 and i[0] == "B" and i.isalnum() and i == i.upper() for i in item_ids)
    assert all(len(u) == 14 and u[0] == "A" and u.isalnum() and u == u.upper() for u in user_ids)
    assert all(title.strip() for _, title in item_rows)

    known = set(item_ids)
    for _, seq in user_rows:
        seq = seq.split(" ")
        assert 5 <= len(seq) <= 15
        assert set(seq) <= known
    assert summary["n_interactions"] == sum(len(s.split()) for _, s in user_rows)

    pngs = sorted(images.iterdir())
    assert [p.name for p in pngs] == sorted(f"{i}.png" for i in item_ids)
    with Image.open(pngs[0]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    assert not images.with_name("images.tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "items.tsv", "users.tsv"]


def test_items_file_is_not_sorted_by_category(tmp_path):
    summary, _, items, _ = _run(tmp_path)
    cats = [summary["item_category"][i] for i, _ in _read(items)]
    assert cats != sorted(cats)


def test_html_entities_appear_and_unescape(tmp_path):
    cfg = SynthConfig(n_items=400, n_users=5, n_categories=5)
    _, _, items, _ = _run(tmp_path, cfg)
    titles = [t for _, t in _read(items)]
    escaped = [t for t in titles if "&amp;" in t or "&quot;" in t or "&deg;" in t]
    assert escaped
    assert all(html.unescape(t) != t for t in escaped)


def test_rerun_replaces_outputs_and_leftover_tmp(tmp_path):
    _, users, _, images = _run(tmp_path)
    stale_tmp = images.with_name("images.tmp")
    stale_tmp.mkdir()
    (stale_tmp / "junk.png").write_bytes(b"x")
    (images / "stale.png").write_bytes(b"x")
    generate(SynthConfig(n_items=30, n_users=10, n_categories=5), users, tmp_path / "items.tsv", images)
    assert len(list(images.iterdir())) == 30
    assert not stale_tmp.exists()


def _words(title: str) -> set[str]:
    return {w.lower() for w in html.unescape(title).split()}


def test_titles_share_theme_words_within_category(tmp_path):
    summary, _, items, _ = _run(tmp_path)
    cat = summary["item_category"]
    words = {i: _words(t) for i, t in _read(items)}
    theme_vocab = {w for theme in THEMES for w in theme}
    within, across = [], []
    for a, b in itertools.combinations(words, 2):
        shared = len(words[a] & words[b] & theme_vocab)
        (within if cat[a] == cat[b] else across).append(shared)
    # ~3 of 10 theme words per title: two same-category titles share ~0.9 on average.
    assert np.mean(within) > 0.6
    assert np.mean(across) < 0.1 * np.mean(within)


def test_themes_are_disjoint_and_cover_defaults():
    words = [w for theme in THEMES for w in theme]
    assert len(words) == len(set(words))
    assert len(THEMES) >= SynthConfig().n_categories
    assert all(8 <= len(theme) <= 12 for theme in THEMES)


def test_images_look_alike_within_category(tmp_path):
    summary, _, _, images = _run(tmp_path)
    cat = summary["item_category"]
    mean_rgb = {i: np.asarray(Image.open(images / f"{i}.png"), dtype=np.float32).mean(axis=(0, 1)) for i in cat}
    within, across = [], []
    for a, b in itertools.combinations(cat, 2):
        d = float(np.linalg.norm(mean_rgb[a] - mean_rgb[b]))
        (within if cat[a] == cat[b] else across).append(d)
    assert np.mean(within) < 0.5 * np.mean(across)


@pytest.mark.parametrize("p_follow", [0.8, 0.3])
def test_transitions_follow_successors(tmp_path, p_follow):
    cfg = SynthConfig(n_items=60, n_users=400, n_categories=5, p_follow=p_follow)
    summary, users, _, _ = _run(tmp_path, cfg)
    cat, succ = summary["item_category"], summary["successors"]
    hits = total = 0
    for _, seq in _read(users):
        cats = [cat[i] for i in seq.split()]
        for a, b in zip(cats, cats[1:]):
            hits += b in succ[a]
            total += 1
    # A uniform draw lands on one of the 2 successors with probability 2 / n_categories.
    expected = p_follow + (1 - p_follow) * 2 / cfg.n_categories
    assert abs(hits / total - expected) < 0.04
    assert all(len(set(s)) == 2 and c not in s for c, s in succ.items())


def test_popularity_is_skewed_within_category(tmp_path):
    cfg = SynthConfig(n_items=60, n_users=400, n_categories=5, popularity_exponent=1.0)
    summary, users, _, _ = _run(tmp_path, cfg)
    counts: dict[str, int] = {}
    for _, seq in _read(users):
        for i in seq.split():
            counts[i] = counts.get(i, 0) + 1
    by_cat: dict[int, list[int]] = {}
    for i, c in summary["item_category"].items():
        by_cat.setdefault(c, []).append(counts.get(i, 0))
    for c, n in by_cat.items():
        n = sorted(n, reverse=True)
        # Zipf with exponent 1 over 12 items: the top item gets ~1/H_12 = 32% of the category.
        assert n[0] / sum(n) > 0.2
        assert n[0] > 4 * n[-1]


def test_repeats_are_rare(tmp_path):
    summary, _, _, _ = _run(tmp_path, SynthConfig(n_items=200, n_users=300, n_categories=5))
    assert summary["n_repeats"] < 0.05 * summary["n_interactions"]


def test_invalid_config_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        _run(tmp_path, SynthConfig(n_categories=len(THEMES) + 1))
    with pytest.raises(ValueError):
        _run(tmp_path, SynthConfig(n_items=3, n_categories=5))
    assert not any(tmp_path.iterdir())


def test_cli(tmp_path):
    users, items, images = tmp_path / "u.tsv", tmp_path / "i.tsv", tmp_path / "img"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.synth", "--users", str(users), "--items", str(items),
         "--images", str(images), "--settings",
         '{"n_items": 30, "n_users": 12, "n_categories": 4, "seed": 3, "p_follow": 0.5, "image_size": 32}'],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    assert '"n_items": 30' in result.stdout
    assert len(_read(users)) == 12 and len(_read(items)) == 30
    assert len(list(images.iterdir())) == 30
    with Image.open(next(images.iterdir())) as im:
        assert im.size == (32, 32)
