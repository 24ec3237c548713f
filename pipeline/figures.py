"""figures: the paper's Figures 4, 6 and 7 from run results and cache stores (Figure 5 is the
efficiency stage's plot).

- figure4: test HR@10 of each text encoder (Table IV), grouped by scale (PLM, Base LLM, MoE LLM,
  70B LLM) with each group's mean, ours beside the paper's.
- figure6: on-disk cache of each text encoder, ordered by its size (parameters of the whole base
  model, counted from its config): the kept states' store (real bytes on disk) and all of its
  L + 1 states (real bytes where such a store exists, else the kept store's bytes scaled by
  (L + 1) / kept states, and marked so: stores are compressed, so a raw size would not compare).
- figure7: training time per epoch and peak memory with all cached states ('full') against the
  kept ones ('dropped'), per text encoder, from the runs' own measurements.
Each figure also writes a CSV twin with the plotted numbers.

Usage: python -m pipeline.figures figure4|figure6|figure7 --spec JSON --results-dir results --out F.png
"""
import argparse
import json
from pathlib import Path

from pipeline.backbone import model_path, parameter_count
from pipeline.cache import store_bytes
from pipeline.files import atomic_path, read_json, write_csv
from pipeline.paper import VALUES, paper_values


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, out: Path, rows: list[dict]) -> None:
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    write_csv(out.with_suffix(".csv"), rows)


def figure4(spec: dict, results: Path, out: Path, values: Path = VALUES) -> list[dict]:
    """spec: {rows: [{label, group, run, dataset}]}: HR@10 per encoder, grouped, with group means."""
    paper = paper_values("table4", values)
    rows = []
    for r in spec["rows"]:
        result = read_json(results / r["dataset"] / f"{r['run']}.json")
        rows.append({"label": r["label"], "group": r["group"], "run": r["run"],
                     "ours_hr@10": result["metrics"]["test"]["hr@10"],
                     "paper_hr@10": paper.get(r["dataset"], {}).get(r["run"], {}).get("hr@10")})
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 2), 4.5))
    x = list(range(len(rows)))
    ax.plot(x, [100 * r["ours_hr@10"] for r in rows], "o-", label="ours")
    if any(r["paper_hr@10"] is not None for r in rows):
        ax.plot([i for i, r in zip(x, rows) if r["paper_hr@10"] is not None],
                [100 * r["paper_hr@10"] for r in rows if r["paper_hr@10"] is not None], "s--", alpha=0.6,
                label="paper")
    groups = list(dict.fromkeys(r["group"] for r in rows))
    for g in groups:
        idx = [i for i, r in enumerate(rows) if r["group"] == g]
        mean = sum(100 * rows[i]["ours_hr@10"] for i in idx) / len(idx)
        ax.hlines(mean, idx[0] - 0.3, idx[-1] + 0.3, colors="grey", linestyles="-", linewidth=1)
        ax.text((idx[0] + idx[-1]) / 2, mean, g, ha="center", va="bottom", fontsize=8)
        if idx[0] > 0:
            ax.axvline(idx[0] - 0.5, color="red", linestyle=":")
    ax.set_xticks(x, [r["label"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("test HR@10 (%)")
    ax.set_title(spec.get("title", "Scaling of the text encoder"), fontsize=9, wrap=True)
    ax.legend(fontsize=8)
    _save(fig, plt, out, rows)
    return rows


def _text_store(result: dict) -> Path:
    """The text tower's store of a cached run (its path as the run recorded it)."""
    return Path(result["config"]["towers"]["text"]["cache"])


def _size(parameters: int) -> str:
    return f"{parameters / 1e9:.3g}B" if parameters >= 1e9 else f"{parameters / 1e6:.3g}M"


def figure6(spec: dict, results: Path, out: Path) -> list[dict]:
    """spec: {rows: [{label, run, dataset, model: {path|package, model_class?, layers}, full_run?}]}:
    cache bytes of kept and of all states, by the text encoder's parameter count."""
    rows = []
    for r in spec["rows"]:
        result = read_json(results / r["dataset"] / f"{r['run']}.json")
        tower = result["config"]["towers"]["text"]
        parameters = parameter_count(model_path(r["model"]), r["model"].get("model_class", "AutoModel"))
        row = {"label": r["label"], "run": r["run"], "parameters": parameters,
               "kept_states": len(tower["kept_states"]), "dropped_bytes": store_bytes(tower["cache"])}
        if r.get("full_run"):
            full = read_json(results / r["dataset"] / f"{r['full_run']}.json")
            row["full_bytes"], row["full_measured"] = store_bytes(_text_store(full)), True
        else:  # all L + 1 states, scaled from the kept store: both bars count compressed bytes per state
            row["full_bytes"] = round(row["dropped_bytes"] * (r["model"]["layers"] + 1) / row["kept_states"])
            row["full_measured"] = False
        rows.append(row)
    rows.sort(key=lambda row: row["parameters"])  # the paper's x-axis: increasing model size
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows) + 2), 4.5))
    x = list(range(len(rows)))
    width = 0.4
    sizes = [r[key] for r in rows for key in ("full_bytes", "dropped_bytes")]
    unit, scale = ("GiB", 2**30) if max(sizes) >= 2**30 else ("MiB", 2**20)
    ax.bar([i - width / 2 for i in x], [r["full_bytes"] / scale for r in rows], width,
           label="all states (hatched: scaled from the kept states)", color="tab:orange")
    for i, r in zip(x, rows):
        if not r["full_measured"]:
            ax.bar(i - width / 2, r["full_bytes"] / scale, width, fill=False, hatch="//", edgecolor="black")
    ax.bar([i + width / 2 for i in x], [r["dropped_bytes"] / scale for r in rows], width,
           label="kept states (measured)", color="tab:blue")
    ax.set_xticks(x, [f"{r['label']}\n{_size(r['parameters'])}" for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"cache on disk ({unit})")
    if max(sizes) > 50 * min(sizes):  # BERT-base to Llama-70B spans two orders of magnitude
        ax.set_yscale("log")
    ax.set_title(spec.get("title", "On-disk cache by text encoder"), fontsize=9, wrap=True)
    ax.legend(fontsize=8)
    _save(fig, plt, out, rows)
    return rows


def figure7(spec: dict, results: Path, out: Path) -> list[dict]:
    """spec: {rows: [{label, run, full_run, dataset}]}: time per epoch and peak memory, full vs dropped."""
    rows = []
    for r in spec["rows"]:
        for kind, run in (("dropped", r["run"]), ("full", r["full_run"])):
            eff = read_json(results / r["dataset"] / f"{run}.json")["efficiency"]
            rows.append({"label": r["label"], "kind": kind, "run": run, "seconds_per_epoch": eff["seconds_per_epoch"],
                         "peak_memory_bytes": eff["peak_memory_bytes"], "device": eff["device"]})
    plt = _pyplot()
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(labels) + 4), 4.2))
    x = list(range(len(labels)))
    for offset, kind in ((-0.2, "full"), (0.2, "dropped")):
        mine = {r["label"]: r for r in rows if r["kind"] == kind}
        left.bar([i + offset for i in x], [mine[lab]["seconds_per_epoch"] for lab in labels], 0.4, label=kind)
        right.bar([i + offset for i in x], [mine[lab]["peak_memory_bytes"] / 2**30 for lab in labels], 0.4, label=kind)
    for ax, label in ((left, "training time per epoch (s)"), (right, "peak memory (GiB)")):
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    devices = list(dict.fromkeys(r["device"] for r in rows))
    where = devices[0] if len(devices) == 1 else f"runs measured on different devices, times not comparable: {', '.join(devices)}"
    if len(devices) > 1:
        print(f"warning: figure7 {where}")
    fig.suptitle(f"{spec.get('title', 'Cached training by text encoder')} ({where})", fontsize=9, wrap=True)
    _save(fig, plt, out, rows)
    return rows


FIGURES = {"figure4": figure4, "figure6": figure6, "figure7": figure7}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figure", choices=sorted(FIGURES))
    parser.add_argument("--spec", type=json.loads, required=True, help="the figure's spec as JSON")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--values", type=Path, default=VALUES, help="the paper's numbers (Figure 4 plots them)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    extra = {"values": args.values} if args.figure == "figure4" else {}
    try:
        rows = FIGURES[args.figure](args.spec, args.results_dir, args.out, **extra)
    except (OSError, KeyError) as e:
        raise SystemExit(f"figures: {e}")
    print(f"{args.out}: {len(rows)} rows")


if __name__ == "__main__":
    main()
