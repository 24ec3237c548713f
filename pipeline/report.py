"""report: one of the paper's tables from run results, beside the paper's published numbers.

A table is a list of rows, each naming the run that reproduces it (config.yaml) on a dataset;
the paper's numbers come from paper/values.yaml. For each row the table shows our test HR@10
and NDCG@10 (reference protocol), the paper's and the difference, in percent; a row the paper
quotes from elsewhere (e.g. the MicroLens benchmark's baselines) and that has no run is marked
as quoted. With `group_means` (Table VIII), each group of more than one row is followed by its
mean. Where the spec names an improvement, the relative improvement of a run over another is
given with the paper's formula, (run - base) / run (Table III: (7.29 - 6.83) / 7.29 = +6.31%),
and marked `*` when the run is better, a paired t-test over the users' metrics (averaged over
seeds) is significant (p < 0.05) and the gain exceeds the seeds' standard deviation. A run with
several seeds shows its mean ± standard deviation.

Outputs: <table>.md, and its twins <table>.json and <table>.csv for tools.

Usage: python -m pipeline.report --spec JSON --results-dir results --out results/tables/table3.md
"""
import argparse
import json
from pathlib import Path

from pipeline.files import atomic_path, read_json, write_csv, write_json
from pipeline.paired_test import SignificanceError, paired_t_test
from pipeline.paper import VALUES, paper_values
from pipeline.results import ReportError

METRICS = ("hr@10", "ndcg@10")


def _record(label: str, group: str, dataset: str, run, ours: dict, published: dict, mean=False,
            spread: dict | None = None) -> dict:
    record = {"label": label, "group": group, "dataset": dataset, "run": run, "quoted": run is None and not mean}
    for m in METRICS:
        record[f"ours_{m}"] = ours.get(m)
        record[f"ours_std_{m}"] = (spread or {}).get(m)
        record[f"paper_{m}"] = published.get(m)
        both = record[f"ours_{m}"] is not None and record[f"paper_{m}"] is not None
        record[f"diff_{m}"] = record[f"ours_{m}"] - record[f"paper_{m}"] if both else None
    record["mean"] = mean
    return record


def _group_mean(rows: list[dict], published: dict) -> dict:
    """The mean of a group's rows (ours where every row has a value) beside the paper's mean."""
    ours = {m: sum(r[f"ours_{m}"] for r in rows) / len(rows) for m in METRICS
            if all(r[f"ours_{m}"] is not None for r in rows)}
    group = rows[0]["group"]
    return _record(f"Mean ({group})", group, rows[0]["dataset"], None, ours, published, mean=True)


def table_rows(spec: dict, results: Path, paper: dict) -> list[dict]:
    """One record per row: label, dataset, run, ours and paper per metric, the differences;
    with spec['group_means'], a mean record after each group of more than one row."""
    if not spec["rows"]:
        raise ReportError(f"{spec['table']}: the spec has no rows")
    rows = []
    for row in spec["rows"]:
        dataset, key = row["dataset"], row.get("paper", row.get("run"))
        result = read_json(results / dataset / f"{row['run']}.json") if row.get("run") else {}
        rows.append(_record(row["label"], row.get("group", ""), dataset, row.get("run"),
                            result.get("metrics", {}).get("test", {}), paper.get(dataset, {}).get(key, {}),
                            spread=seed_spread(result)))
    if not spec.get("group_means"):
        return rows
    out = []
    for i, r in enumerate(rows):
        out.append(r)
        key = (r["group"], r["dataset"])
        if i + 1 == len(rows) or (rows[i + 1]["group"], rows[i + 1]["dataset"]) != key:  # the group's last row
            group = [g for g in rows if (g["group"], g["dataset"]) == key]
            if len(group) > 1:
                out.append(_group_mean(group, paper.get(r["dataset"], {}).get("means", {}).get(r["group"], {})))
    return out


def seed_spread(result: dict) -> dict | None:
    """The test metrics' standard deviation over a run's seeds, when it has several."""
    if len(result.get("seeds", [])) < 2:
        return None
    return result["metrics_std"]["test"]


def improvement(spec: dict, results: Path, paper: dict) -> list[dict]:
    """Relative improvement (run - base) / run of spec['improvement']['run'] over ['over'] per
    dataset, with the t-test, beside the paper's (values.yaml's `relative_improvement`). A gain
    is significant when the run is better, p < 0.05 and, for runs trained with several seeds,
    the gain exceeds the larger of the two runs' standard deviations over seeds."""
    if "improvement" not in spec:
        return []
    best, base = spec["improvement"]["run"], spec["improvement"]["over"]
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in spec["rows"]):
        published = paper.get(dataset, {}).get("relative_improvement", {})
        entry = {"dataset": dataset, "run": best, "over": base}
        found = [read_json(results / dataset / f"{run}.json") for run in (best, base)]
        ours, theirs = (r["metrics"]["test"] for r in found)
        spreads = [seed_spread(r) for r in found]
        for m in METRICS:
            a, b = ours[m], theirs[m]
            spread = max((s[m] for s in spreads if s), default=0.0)
            try:
                test = paired_t_test(results / dataset / f"{best}.per_user.parquet",
                                     results / dataset / f"{base}.per_user.parquet", metric=m)
            except SignificanceError as e:
                raise ReportError(str(e)) from None
            entry[m] = {"relative": (a - b) / a if a else None, "paper_relative": published.get(m),
                        "p": test["p"], "seed_spread": spread,
                        "significant": test["significant"] and a - b > spread}
        out.append(entry)
    return out


def _pct(value, signed=False, std=None) -> str:
    if value is None:
        return "-"
    text = f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"
    return text + (f" ± {100 * std:.2f}" if std is not None else "")


def markdown(spec: dict, rows: list[dict], gains: list[dict]) -> str:
    lines = [f"# {spec['title']}", "",
             "| " + " | ".join(["", "dataset", "run"] + [f"{w} {m.upper()}" for m in METRICS
                                                          for w in ("ours", "paper", "diff")]) + " |",
             "|" + "---|" * (3 + 3 * len(METRICS))]
    for r in rows:
        label = f"{r['group']}: {r['label']}" if r["group"] else r["label"]
        run = "quoted" if r["quoted"] else "mean" if r["mean"] else f"`{r['run']}`"
        cells = [_pct(r[f"{w}_{m}"], signed=w == "diff", std=r[f"ours_std_{m}"] if w == "ours" else None)
                 for m in METRICS for w in ("ours", "paper", "diff")]
        lines.append("| " + " | ".join([label, r["dataset"], run] + cells) + " |")
    lines.append("")
    lines.append("Values in percent (test split, reference protocol: the history is excluded from the "
                 "ranking). diff = ours - paper." + (" ours ± s: mean and standard deviation over the run's seeds."
                                                    if any(r["ours_std_hr@10"] is not None for r in rows) else ""))
    if any(r["quoted"] for r in rows):
        lines.append(f"Rows marked quoted are not rerun: {spec.get('quoted_from', 'the paper')}.")
    for g in gains:
        parts = []
        for m in METRICS:
            paper = f", paper {_pct(g[m]['paper_relative'], signed=True)}%" if g[m]["paper_relative"] is not None else ""
            parts.append(f"{m.upper()} {_pct(g[m]['relative'], signed=True)}%{'*' if g[m]['significant'] else ''} "
                         f"(p = {g[m]['p']:.3g}{paper})")
        lines.append(f"Relative improvement (run - base) / run of `{g['run']}` over `{g['over']}` on {g['dataset']}: "
                     + ", ".join(parts) + " (* = better, significant by a paired t-test over users, p < 0.05, and, "
                 "for runs with several seeds, a gain larger than their spread over seeds).")
    if gains and spec["improvement"].get("note"):
        lines.append(spec["improvement"]["note"])
    return "\n".join(lines) + "\n"


def write_table(spec: dict, results: Path, out: Path, values: Path = VALUES) -> dict:
    """Write <out>.md, .json and .csv; return the JSON twin."""
    paper = paper_values(spec["table"], values)
    rows = table_rows(spec, results, paper)
    gains = improvement(spec, results, paper)
    with atomic_path(out) as tmp:
        tmp.write_text(markdown(spec, rows, gains))
    twin = {"table": spec["table"], "title": spec["title"], "rows": rows, "improvement": gains}
    write_json(out.with_suffix(".json"), twin)
    write_csv(out.with_suffix(".csv"), rows)
    return twin


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=json.loads, required=True, help="the table's spec as JSON")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--values", type=Path, default=VALUES, help="the paper's numbers (paper/values.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="results/tables/<table>.md")
    args = parser.parse_args(argv)
    try:
        write_table(args.spec, args.results_dir, args.out, args.values)
    except (ReportError, OSError, KeyError) as e:
        raise SystemExit(f"report: {e}")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
