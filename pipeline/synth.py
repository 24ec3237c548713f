"""synth: a seeded synthetic dataset in the raw Amazon split format, for the embedded demo.

Generative story:
- There are `n_categories` latent categories. Each has a theme vocabulary (real English words,
  so a sentence encoder separates them), a few preferred brands, and an image style
  (base hue + shape).
- Every item belongs to one category (near-equal sizes). Its title is a brand, 2-4 theme words
  and 1-2 generic words ("Pro", "Pack of 6", "12mm", ...); a few titles carry HTML entities
  (`&amp;`, `&quot;`, ...) as in the real data. Its cover is a 64x64 PNG: the category's
  shape in the category's hue, with per-item jitter of colour, position and size plus noise.
- Within a category, item popularity is Zipf-like (weight 1/rank^popularity_exponent).
- Each category has 2 fixed "successor" categories. A user starts in a random category; each
  next item's category is a successor with probability `p_follow`, else uniform at random;
  the item is drawn by popularity, and a repeat of an earlier item is re-drawn with
  probability 0.9 so repeats stay rare. Sequence lengths are 5..15, skewed to short.

Outputs (same format as the real split): users tsv `user_id<TAB>item item ...` (chronological),
items tsv `item_id<TAB>title`, and `<images_dir>/<item_id>.png`. All three are written
atomically. Separate random streams per part mean e.g. changing n_users keeps the catalogue.

Usage: python -m pipeline.synth --users U --items I --images DIR [--n-items N --n-users N
       --n-categories N --seed S --p-follow P --image-size S]
"""
import argparse
import colorsys
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from pipeline.files import atomic_path
from pipeline.vocabulary import GENERIC, THEMES

SIZES = ["{}mm", "{} cm", "{} inch", "{} oz", "{}ml", "{} lbs"]
# HTML-escaped phrases, so the prepare stage's unescaping is exercised.
ENTITY_PHRASES = ["Black &amp; White", "Tools &amp; Accessories", "Red &amp; Blue", "{}&quot;",
                  "up to {}&deg;C", "{}&quot; x {}&quot;", "Professional &amp; Home Use"]
P_ENTITY = 0.06
BRAND_SYLLABLES = ["ka", "zen", "tor", "vi", "lex", "mar", "qu", "ro", "dex", "sa", "nor", "fi",
                   "gal", "tek", "pri", "mo", "ax", "lu", "ver", "ion"]
N_BRANDS = 40
P_PREFERRED_BRAND = 0.6

SHAPES = ["circle", "square", "triangle", "hstripes", "cross", "ring", "diamond", "vstripes"]

N_SUCCESSORS = 2
MIN_LEN, MAX_LEN = 5, 15
LENGTH_DECAY = 0.55  # P(len = 5 + k) ~ 0.55^k: roughly the real split's length histogram
P_REDRAW_REPEAT = 0.9
ALNUM = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


@dataclass
class SynthConfig:
    n_items: int = 2000
    n_users: int = 3000
    n_categories: int = 24
    p_follow: float = 0.9
    popularity_exponent: float = 0.4  # Zipf exponent of item popularity within a category
    image_size: int = 64
    seed: int = 12345


@dataclass
class Catalogue:
    item_ids: list[str]
    category: np.ndarray  # item index -> category
    members: list[np.ndarray]  # category -> item indices, most popular first
    cum_weights: list[np.ndarray]  # category -> cumulative popularity, for searchsorted
    themes: list[list[str]]  # category -> theme words


def _validate(cfg: SynthConfig) -> None:
    if not N_SUCCESSORS + 1 <= cfg.n_categories <= len(THEMES):
        raise ValueError(f"n_categories must be in {N_SUCCESSORS + 1}..{len(THEMES)}, got {cfg.n_categories}")
    if cfg.n_items < cfg.n_categories:
        raise ValueError(f"n_items ({cfg.n_items}) must be at least n_categories ({cfg.n_categories})")
    if cfg.n_users < 1:
        raise ValueError("n_users must be positive")
    if not 0.0 <= cfg.p_follow <= 1.0:
        raise ValueError(f"p_follow must be in [0, 1], got {cfg.p_follow}")
    if cfg.image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {cfg.image_size}")


def _unique_ids(rng: np.random.Generator, n: int, prefix: str, length: int) -> list[str]:
    """n distinct ids `prefix + length` uppercase alphanumerics; collisions are re-drawn."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        for row in rng.integers(0, len(ALNUM), size=(n - len(ids), length)):
            s = prefix + "".join(ALNUM[row])
            if s not in seen:
                seen.add(s)
                ids.append(s)
    return ids


def _catalogue(cfg: SynthConfig, rng: np.random.Generator) -> Catalogue:
    item_ids = _unique_ids(rng, cfg.n_items, "B", 9)
    # Near-equal category sizes, assigned in random order so ids carry no category signal.
    category = rng.permutation(np.arange(cfg.n_items) % cfg.n_categories)
    members, cum_weights = [], []
    for c in range(cfg.n_categories):
        idx = rng.permutation(np.flatnonzero(category == c))  # random popularity ranks
        w = 1.0 / np.arange(1, len(idx) + 1) ** cfg.popularity_exponent
        members.append(idx)
        cum_weights.append(np.cumsum(w / w.sum()))
    theme_order = rng.permutation(len(THEMES))[: cfg.n_categories]
    return Catalogue(item_ids, category, members, cum_weights, [THEMES[t] for t in theme_order])


def _brands(rng: np.random.Generator) -> list[str]:
    brands: set[str] = set()
    while len(brands) < N_BRANDS:
        n_syl = int(rng.integers(2, 4))
        name = "".join(BRAND_SYLLABLES[i] for i in rng.integers(0, len(BRAND_SYLLABLES), n_syl))
        brands.add(name.capitalize() if rng.random() < 0.7 else name.upper())
    return sorted(brands)  # sorted: set order must not leak into the output


def _generic_token(rng: np.random.Generator) -> str:
    if rng.random() < 0.3:
        return SIZES[rng.integers(len(SIZES))].format(int(rng.integers(2, 120)))
    return GENERIC[rng.integers(len(GENERIC))]


def _entity_phrase(rng: np.random.Generator) -> str:
    phrase = ENTITY_PHRASES[rng.integers(len(ENTITY_PHRASES))]
    return phrase.format(*(int(v) for v in rng.integers(2, 40, size=2)))


def _title(rng: np.random.Generator, theme: list[str], brands: list[str], preferred: np.ndarray) -> str:
    use_preferred = rng.random() < P_PREFERRED_BRAND
    brand = brands[preferred[rng.integers(len(preferred))]] if use_preferred else brands[rng.integers(len(brands))]
    words = [w.capitalize() for w in rng.choice(theme, size=int(rng.integers(2, 5)), replace=False)]
    extras = [_generic_token(rng)]
    if rng.random() < 0.5:  # a second, different, non-size generic word
        extras.append(GENERIC[rng.integers(len(GENERIC))])
        extras = list(dict.fromkeys(extras))
    if rng.random() < P_ENTITY:
        extras.append(_entity_phrase(rng))
    # Extras go before or after the product words, as real titles vary in order.
    parts = [brand] + (extras + words if rng.random() < 0.3 else words + extras)
    return " ".join(parts)


def _titles(cfg: SynthConfig, cat: Catalogue, rng: np.random.Generator) -> list[str]:
    brands = _brands(rng)
    preferred = [rng.choice(len(brands), size=3, replace=False) for _ in range(cfg.n_categories)]
    return [_title(rng, cat.themes[c], brands, preferred[c]) for c in cat.category]


def _successors(n_categories: int, rng: np.random.Generator) -> np.ndarray:
    """category -> N_SUCCESSORS distinct other categories (a fixed random transition graph)."""
    out = np.empty((n_categories, N_SUCCESSORS), dtype=np.int64)
    for c in range(n_categories):
        others = np.delete(np.arange(n_categories), c)
        out[c] = rng.choice(others, size=N_SUCCESSORS, replace=False)
    return out


def _draw_item(rng: np.random.Generator, cat: Catalogue, c: int) -> int:
    pos = int(np.searchsorted(cat.cum_weights[c], rng.random(), side="right"))
    return int(cat.members[c][min(pos, len(cat.members[c]) - 1)])  # min: guards float round-off


def _sequence(cfg: SynthConfig, cat: Catalogue, succ: np.ndarray, rng: np.random.Generator,
              length: int) -> list[int]:
    seq: list[int] = []
    c = int(rng.integers(cfg.n_categories))
    for step in range(length):
        if step > 0:
            follow = rng.random() < cfg.p_follow
            c = int(succ[c, rng.integers(N_SUCCESSORS)]) if follow else int(rng.integers(cfg.n_categories))
        item = _draw_item(rng, cat, c)
        # Bounded re-draws: keeps repeats rare without looping on a tiny category.
        for _ in range(20):
            if item not in seq or rng.random() >= P_REDRAW_REPEAT:
                break
            item = _draw_item(rng, cat, c)
        seq.append(item)
    return seq


def _lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    w = LENGTH_DECAY ** np.arange(MAX_LEN - MIN_LEN + 1)
    return MIN_LEN + rng.choice(len(w), size=n, p=w / w.sum())


def _styles(n_categories: int, rng: np.random.Generator) -> list[tuple[float, str]]:
    """category -> (base hue, shape); evenly spaced hues so categories differ in colour."""
    offset = rng.random()
    hues = (offset + np.arange(n_categories) / n_categories) % 1.0
    shapes = [SHAPES[i % len(SHAPES)] for i in rng.permutation(n_categories)]
    return [(float(h), s) for h, s in zip(rng.permutation(hues), shapes)]


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    elif shape == "cross":
        t = r / 3
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
    elif shape in ("hstripes", "vstripes"):
        band = max(2.0, r / 3)
        for k in range(-3, 4, 2):
            lo = k * band
            if shape == "hstripes":
                draw.rectangle([cx - r, cy + lo, cx + r, cy + lo + band], fill=fill)
            else:
                draw.rectangle([cx + lo, cy - r, cx + lo + band, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _image(style: tuple[float, str], size: int, rng: np.random.Generator) -> Image.Image:
    hue, shape = style
    j = rng.normal(size=8)  # per-item jitter
    bg = _rgb(hue + 0.02 * j[0], 0.15 + 0.05 * j[1], 0.92 + 0.03 * j[2])
    fg = _rgb(hue + 0.02 * j[3], 0.75 + 0.08 * j[4], 0.75 + 0.08 * j[5])
    img = Image.new("RGB", (size, size), bg)
    cx, cy = size / 2 + size * 0.08 * np.clip(j[6:8], -2, 2)
    r = size * float(rng.uniform(0.22, 0.34))
    _draw_shape(ImageDraw.Draw(img), shape, float(cx), float(cy), r, fg)
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0.0, 6.0, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _write_images(cfg: SynthConfig, cat: Catalogue, images_dir: Path, seed_seq: np.random.SeedSequence,
                  style_rng: np.random.Generator, progress: bool) -> None:
    styles = _styles(cfg.n_categories, style_rng)
    tmp = images_dir.with_name(images_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from an interrupted run
    tmp.mkdir(parents=True)
    # One child stream per item: an image depends only on the seed and its index.
    item_seeds = seed_seq.spawn(cfg.n_items)
    for i in tqdm(range(cfg.n_items), desc="images", disable=not progress):
        img = _image(styles[cat.category[i]], cfg.image_size, np.random.default_rng(item_seeds[i]))
        img.save(tmp / f"{cat.item_ids[i]}.png", format="PNG")
    if images_dir.exists():
        shutil.rmtree(images_dir)
    os.replace(tmp, images_dir)


def _write_text(path: Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(line + "\n" for line in lines)


def generate(cfg: SynthConfig, users_tsv: Path, items_tsv: Path, images_dir: Path,
             progress: bool = False) -> dict:
    """Writes the three outputs atomically and returns a summary dict (counts).

    The summary also holds the ground truth for tests: "item_category" {item_id: category}
    and "successors" {category: [category, category]}.
    """
    _validate(cfg)
    users_tsv, items_tsv, images_dir = Path(users_tsv), Path(items_tsv), Path(images_dir)
    ids_ss, titles_ss, users_ss, styles_ss, images_ss, order_ss = np.random.SeedSequence(cfg.seed).spawn(6)

    cat = _catalogue(cfg, np.random.default_rng(ids_ss))
    titles = _titles(cfg, cat, np.random.default_rng(titles_ss))

    user_rng = np.random.default_rng(users_ss)
    succ = _successors(cfg.n_categories, user_rng)
    user_ids = _unique_ids(user_rng, cfg.n_users, "A", 13)
    lengths = _lengths(cfg.n_users, user_rng)
    sequences = [_sequence(cfg, cat, succ, user_rng, int(n)) for n in lengths]

    _write_images(cfg, cat, images_dir, images_ss, np.random.default_rng(styles_ss), progress)
    order = np.random.default_rng(order_ss).permutation(cfg.n_items)  # file order hides categories
    _write_text(items_tsv, [f"{cat.item_ids[i]}\t{titles[i]}" for i in order])
    _write_text(users_tsv, [f"{u}\t{' '.join(cat.item_ids[i] for i in s)}" for u, s in zip(user_ids, sequences)])

    used = {i for s in sequences for i in s}
    return {
        "n_items": cfg.n_items,
        "n_users": cfg.n_users,
        "n_categories": cfg.n_categories,
        "n_interactions": int(lengths.sum()),
        "n_items_used": len(used),
        "n_repeats": sum(len(s) - len(set(s)) for s in sequences),
        "n_titles_with_entities": sum("&" in t for t in titles),
        "seed": cfg.seed,
        "item_category": {cat.item_ids[i]: int(c) for i, c in enumerate(cat.category)},
        "successors": {int(c): [int(x) for x in succ[c]] for c in range(cfg.n_categories)},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=Path, required=True, help="users tsv to write")
    p.add_argument("--items", type=Path, required=True, help="items tsv to write")
    p.add_argument("--images", type=Path, required=True, help="folder of <item_id>.png to write")
    p.add_argument("--settings", default="{}",
                   help="JSON object of SynthConfig fields (the dataset's `synthetic` block); others default")
    a = p.parse_args(argv)
    try:
        cfg = SynthConfig(**json.loads(a.settings))
    except TypeError as e:
        p.error(f"--settings: {e}")
    try:
        summary = generate(cfg, a.users, a.items, a.images, progress=True)
    except ValueError as e:
        p.error(str(e))
    counts = {k: v for k, v in summary.items() if k not in ("item_category", "successors")}
    print(json.dumps(counts, indent=2))


if __name__ == "__main__":
    main()
