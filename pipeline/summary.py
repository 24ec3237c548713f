"""summary: what `make demo` prints at its end, a plain-text table of the default targets' runs.

For each dataset in the config's default_targets: its runs with test HR@10 and NDCG@10 (percent,
mean ± standard deviation over seeds where a run has several), epochs (the best epoch in
parentheses), whether training converged and seconds per epoch, then where its HTML report
(pipeline/html_report.py) is.

Usage: python -m pipeline.summary [--config config.yaml] [--results-dir results]
"""
import argparse
from pathlib import Path

from pipeline.config import ConfigError, load_configs
from pipeline.results import ReportError, converged_text, metric_text, read_results, seconds_per_epoch

COLUMNS = ("run", "test HR@10 (%)", "test NDCG@10 (%)", "epochs (best)", "converged", "s / epoch")


def run_row(result: dict) -> tuple[str, ...]:
    seconds = seconds_per_epoch(result)
    epochs = "-" if result.get("epochs") is None else f"{result['epochs']} ({result['best_epoch']})"
    return (result["run"], metric_text(result, "test", "hr@10"), metric_text(result, "test", "ndcg@10"), epochs,
            converged_text(result), "-" if seconds is None else f"{seconds:.2f}")


def summary(dataset_dir: Path, runs: list[str]) -> str:
    """The runs' table, columns aligned, and the report's path."""
    rows = [COLUMNS] + [run_row(r) for r in read_results(dataset_dir, runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    report = dataset_dir / "report.html"
    where = f"HTML report: {report.resolve()}" if report.exists() else f"no HTML report yet: snakemake {report}"
    return "\n".join([f"{dataset_dir.name}: {len(runs)} runs", *lines, where])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, nargs="+", default=[Path("config.yaml")],
                        help="the config, then overlays as Snakemake's --configfile; its default_targets are summarised")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    try:
        targets = {d: runs for d, runs in load_configs(args.config)["default_targets"].items() if runs}
        if not targets:
            raise ReportError(f"{' '.join(map(str, args.config))} lists no runs in default_targets")
        print("\n\n".join(summary(args.results_dir / dataset, runs) for dataset, runs in targets.items()))
    except (ReportError, ConfigError, OSError) as e:
        raise SystemExit(f"summary: {e}")


if __name__ == "__main__":
    main()
