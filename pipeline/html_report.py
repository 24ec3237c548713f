"""html_report: a dataset's runs on one self-contained page, results/<dataset>/report.html.

The page shows
- a metrics table: per run, test HR and NDCG at each evaluated k and validation HR@10 and
  NDCG@10 (reference protocol, percent; mean ± standard deviation when the run has several
  seeds), best epoch / epochs, whether training converged, seconds per epoch, peak memory and
  trainable parameters; the best run by test NDCG@10 is highlighted;
- training curves: validation NDCG@10 per epoch from each seed's train_log.json, one line per
  run and seed, the best epoch marked;
- efficiency: seconds per epoch and peak memory per trained run, from the run results' own
  measurements (not the separate efficiency stage);
- example recommendations: for the first 3 test users by id, the best run's top 10 (its first
  seed), each with its title and cover, beside the user's last items and the held-out test item.
One file with nothing to fetch: plots and covers (items.parquet `image`, read relative to the
working directory, shrunk with Pillow) are data: URIs, the CSS is inline, there is no script.
Every text from the data is escaped.

Reads from --dataset-dir: <run>.json, <run>.topk.parquet, runs/<run>/seed<seed>/train_log.json
(methods that train), items.parquet and sequences.parquet.

Usage: python -m pipeline.html_report --dataset-dir results/demo --runs iisan-vs frozen popularity
       --out results/demo/report.html
"""
import argparse
import base64
import io
import sys
from functools import lru_cache
from html import escape
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from pipeline.files import atomic_path, read_json
from pipeline.methods import method
from pipeline.results import (
    ReportError,
    best_result,
    converged_text,
    epochs_text,
    metric_parts,
    read_results,
    seconds_per_epoch,
)

EXAMPLE_USERS = 3
HISTORY_SHOWN = 5  # the user's last items before the held-out one
THUMBNAIL = (64, 64)


def memory_text(n_bytes: int | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 2**20:,.0f} MiB"


def metric_columns(results: list[dict]) -> list[str]:
    """The test metrics every run has, HR before NDCG, by k."""
    common = set.intersection(*(set(r["metrics"]["test"]) for r in results))
    return sorted(common, key=lambda m: (m.split("@")[0] != "hr", int(m.split("@")[1])))


def about_text(result: dict) -> str:
    """The method and each tower's encoder (and the column it reads, where not the title)."""
    towers = [f"{tower}: {e['encoder']}" + (f" ({e['column']})" if e.get("column", "title") != "title" else "")
              for tower, e in result.get("encoders", {}).items()]
    return "; ".join([result["method"], ", ".join(towers)] if towers else [result["method"]])


def metric_cell(result: dict, split: str, metric: str) -> str:
    value, spread = metric_parts(result, split, metric)
    return f"<td>{value}" + (f'<span class="std">± {spread}</span>' if spread else "") + "</td>"


def run_cell(result: dict) -> str:
    return f'<td><b>{escape(result["run"])}</b><span class="about">{escape(about_text(result))}</span></td>'


def metrics_table(results: list[dict]) -> str:
    """One row per run, the best run's highlighted; metrics in percent under a two-row header."""
    columns = metric_columns(results)
    training = ["Best epoch / epochs", "Converged", "s / epoch", "Peak memory", "Trainable params"]
    head = (f'<tr><th rowspan="2">Run</th><th rowspan="2">Seeds</th><th colspan="{len(columns)}">Test (%)</th>'
            f'<th colspan="2">Validation (%)</th><th colspan="{len(training)}">Training</th></tr><tr>'
            + "".join(f"<th>{escape(m.upper())}</th>" for m in columns) + "<th>HR@10</th><th>NDCG@10</th>"
            + "".join(f"<th>{h}</th>" for h in training) + "</tr>")
    best = best_result(results)["run"]
    rows = []
    for r in results:
        seconds = seconds_per_epoch(r)
        plain = [epochs_text(r), converged_text(r), "-" if seconds is None else f"{seconds:.2f}",
                 memory_text(r["efficiency"].get("peak_memory_bytes")),
                 f"{r['efficiency'].get('trainable_params') or 0:,}"]
        css = ' class="best"' if r["run"] == best else ""
        rows.append(f"<tr{css}>" + run_cell(r)
                    + f"<td>{escape(', '.join(map(str, r['seeds'])))}</td>"
                    + "".join(metric_cell(r, "test", m) for m in columns)
                    + metric_cell(r, "valid", "hr@10") + metric_cell(r, "valid", "ndcg@10")
                    + "".join(f"<td>{escape(c)}</td>" for c in plain) + "</tr>")
    return f'<table class="metrics"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _pyplot():
    # Imported only to plot: the summary `make demo` prints imports this module and should start fast.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def train_logs(dataset_dir: Path, result: dict) -> dict[int, dict]:
    """{seed: train_log} of a run whose method trains; {} otherwise."""
    if not method(result["method"]).trains:
        return {}
    logs = {}
    for seed in result["seeds"]:
        path = dataset_dir / "runs" / result["run"] / f"seed{seed}" / "train_log.json"
        if not path.exists():
            raise ReportError(f"{path} does not exist: the training log of {result['run']} (seed {seed})")
        logs[seed] = read_json(path)
    return logs


def curves_uri(logs: dict[str, dict[int, dict]]) -> str:
    """Validation NDCG@10 per epoch, one line per run and seed, the best epoch as a dot."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4))
    for run, by_seed in logs.items():
        for seed, log in by_seed.items():
            label = run if len(by_seed) == 1 else f"{run} (seed {seed})"
            epochs = [h["epoch"] for h in log["history"]]
            values = [100 * h["valid_ndcg@10"] for h in log["history"]]
            line, = ax.plot(epochs, values, label=label)
            ax.plot(log["best_epoch"], values[log["best_epoch"] - 1], "o", color=line.get_color())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@10 (%)")
    ax.set_title("Training curves (dot: the best epoch, whose weights are kept)", fontsize=10)
    ax.legend(fontsize=8)
    return png_uri(fig)


def efficiency_uri(trained: list[dict]) -> str:
    """Seconds per epoch and peak memory of each run that trained."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = [r["run"] for r in trained]
    left.bar(names, [seconds_per_epoch(r) for r in trained], color="tab:blue")
    right.bar(names, [(r["efficiency"].get("peak_memory_bytes") or 0) / 2**20 for r in trained], color="tab:orange")
    for ax, label in ((left, "training seconds per epoch"), (right, "peak memory (MiB)")):
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    devices = sorted({r["efficiency"]["device"] for r in trained})
    where = devices[0] if len(devices) == 1 else "different devices, not comparable: " + ", ".join(devices)
    fig.suptitle(f"Efficiency, measured while training ({where})", fontsize=10)
    return png_uri(fig)


@lru_cache(maxsize=None)
def thumbnail_uri(path: str) -> str | None:
    """A cover shrunk to THUMBNAIL as a JPEG data URI; None where the file is missing or unreadable."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail(THUMBNAIL)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except (OSError, UnidentifiedImageError) as e:
        print(f"warning: cover {path} not shown: {e}", file=sys.stderr)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def read_items(dataset_dir: Path) -> dict[int, dict]:
    """{item_idx: {item_id, title, image}} from items.parquet (image: a path or None)."""
    table = pq.read_table(dataset_dir / "items.parquet")
    images = table.column("image").to_pylist() if "image" in table.column_names else [None] * table.num_rows
    return {idx: {"item_id": item_id, "title": title, "image": image} for idx, item_id, title, image in
            zip(table.column("item_idx").to_pylist(), table.column("item_id").to_pylist(),
                table.column("title").to_pylist(), images)}


def cover(item: dict) -> str:
    uri = thumbnail_uri(item["image"]) if item.get("image") else None
    if uri is None:
        return '<span class="nocover">no cover</span>'
    return f'<img class="cover" src="{uri}" alt="{escape(item["title"] or item["item_id"])}">'


def item_card(item: dict) -> str:
    return (f'<div class="card">{cover(item)}<div>{escape(item["title"] or "")}</div>'
            f'<div class="id">{escape(item["item_id"])}</div></div>')


def user_section(user: str, sequence: list[int], recommended: list[dict], item) -> str:
    """A user's last items, the held-out test item (the sequence's last) and the top 10, the
    held-out item highlighted where it was recommended. item: item_idx -> its items.parquet row."""
    history, target = sequence[:-1], sequence[-1]
    hit = next((row["rank"] for row in recommended if row["item_idx"] == target), None)
    rows = []
    for row in recommended:
        css = ' class="hit"' if row["item_idx"] == target else ""
        rows.append(f"<tr{css}><td>{row['rank']}</td><td>{cover(item(row['item_idx']))}</td>"
                    f"<td>{escape(row['title'] or '')}</td><td>{escape(row['item_id'])}</td>"
                    f"<td>{row['score']:.3f}</td></tr>")
    return (f"<section><h3>User {escape(user)}</h3>"
            f"<p>Last {min(HISTORY_SHOWN, len(history))} of {len(history)} items before the held-out one:</p>"
            f'<div class="strip">{"".join(item_card(item(i)) for i in history[-HISTORY_SHOWN:])}</div>'
            f"<p>Held-out test item ({f'recommended at rank {hit}' if hit else 'not in the top 10'}):</p>"
            f'<div class="strip">{item_card(item(target))}</div>'
            '<table class="recs"><thead><tr><th>Rank</th><th>Cover</th><th>Title</th><th>Item</th><th>Score</th>'
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></section>")


def example_users(dataset_dir: Path, best: dict, items: dict[int, dict]) -> str:
    """The best run's top 10 (its first seed) for the first EXAMPLE_USERS test users by id."""
    seed = best["seeds"][0]
    path = dataset_dir / f"{best['run']}.topk.parquet"
    topk = pq.read_table(path)
    if "seed" not in topk.column_names:
        raise ReportError(f"{path} has no seed column: written before results were aggregated over seeds; "
                          f"run snakemake again to remake it")
    topk = [row for row in topk.to_pylist() if row["seed"] == seed]
    sequences = {row["user_id"]: row["items"] for row in pq.read_table(dataset_dir / "sequences.parquet").to_pylist()}

    def item(idx: int) -> dict:
        if idx not in items:
            raise ReportError(f"item {idx} of {path} or sequences.parquet is not in {dataset_dir / 'items.parquet'}")
        return items[idx]

    sections = []
    for user in sorted({row["user_id"] for row in topk})[:EXAMPLE_USERS]:
        if user not in sequences:
            raise ReportError(f"user {user} of {path} is not in {dataset_dir / 'sequences.parquet'}")
        recommended = sorted((row for row in topk if row["user_id"] == user), key=lambda row: row["rank"])
        sections.append(user_section(user, sequences[user], recommended, item))
    return (f"<p>Top 10 of <b>{escape(best['run'])}</b> (seed {seed}), the best run by test NDCG@10, for the "
            f"first {len(sections)} test users by id; items a user has seen are not ranked.</p>" + "".join(sections))


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: middle; }
th { background: #f0f0f0; }
table.metrics td { white-space: nowrap; }
table.metrics th { text-align: center; }
.std, .about { display: block; color: #777; font-size: 0.8em; font-weight: normal; }
.about { white-space: normal; min-width: 12em; }
tr.best td { background: #e8f4e8; font-weight: bold; }
tr.hit td { background: #fff3c4; }
img.plot { max-width: 100%; }
img.cover { width: 48px; height: 48px; object-fit: contain; }
.strip { display: flex; gap: 0.75em; flex-wrap: wrap; }
.card { width: 110px; font-size: 0.75em; }
.card .id, .nocover { color: #777; }
"""


def render(dataset_dir: Path, runs: list[str]) -> str:
    results = read_results(dataset_dir, runs)
    dataset = escape(results[0].get("dataset", dataset_dir.name))
    logs = {r["run"]: train_logs(dataset_dir, r) for r in results}
    logs = {run: by_seed for run, by_seed in logs.items() if by_seed}
    trained = [r for r in results if seconds_per_epoch(r) is not None]
    untrained = ", ".join(r["run"] for r in results if r not in trained)
    items = read_items(dataset_dir)
    parts = [
        f"<h1>IISAN-Versa results: {dataset}</h1>",
        f"<p>{len(results)} runs on {results[0].get('users', '?')} users and {results[0].get('items', '?')} items. "
        "Metrics in percent, full ranking over all items (reference protocol); "
        "mean ± standard deviation over seeds where a run has several.</p>",
        "<h2>Metrics</h2>", f'<div class="scroll">{metrics_table(results)}</div>',
        "<h2>Training curves</h2>",
        f'<img class="plot" src="{curves_uri(logs)}" alt="validation NDCG@10 per epoch">' if logs else "<p>No run trains.</p>",
        "<h2>Efficiency</h2>",
        f'<img class="plot" src="{efficiency_uri(trained)}" alt="seconds per epoch and peak memory per run">'
        if trained else "<p>No run trains.</p>",
        f"<p>Not trained, so not shown: {escape(untrained)}.</p>" if untrained else "",
        "<h2>Example recommendations</h2>", example_users(dataset_dir, best_result(results), items),
    ]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>IISAN-Versa: {dataset}</title><style>{CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def write_report(dataset_dir: Path, runs: list[str], out: Path) -> None:
    page = render(dataset_dir, runs)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", type=Path, required=True, help="results/<dataset>")
    parser.add_argument("--runs", nargs="+", required=True, help="the runs to show, in this order")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        write_report(args.dataset_dir, args.runs, args.out)
    except (ReportError, OSError) as e:
        raise SystemExit(f"html_report: {e}")
    print(f"{args.out}: {len(args.runs)} runs")


if __name__ == "__main__":
    main()
