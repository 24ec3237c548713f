"""A dataset's aggregated run results (results/<dataset>/<run>.json) as the reports show them:
read and checked, the best run picked, metrics and training in words (html_report, summary)."""
from pathlib import Path

from pipeline.files import read_json

SELECT = "ndcg@10"  # the best run: highest test value of this metric
REQUIRED = ("run", "method", "metrics", "metrics_std", "seeds", "per_seed", "efficiency")


class ReportError(ValueError):
    """Results that cannot make the report: missing, or written by an older version of the pipeline."""


def read_results(dataset_dir: Path, runs: list[str]) -> list[dict]:
    """Each run's aggregated result, in the given order."""
    results = []
    for run in runs:
        path = dataset_dir / f"{run}.json"
        if not path.exists():
            raise ReportError(f"{path} does not exist: run `snakemake {path}` first")
        result = read_json(path)
        missing = [k for k in REQUIRED if k not in result]
        if missing:
            raise ReportError(f"{path} lacks {', '.join(missing)}: written before results were aggregated over "
                              f"seeds; run snakemake again to remake it")
        if SELECT not in result["metrics"]["test"]:
            raise ReportError(f"{path} has no test {SELECT}, which picks the best run: evaluate.ks lacks 10")
        results.append(result)
    return results


def best_result(results: list[dict]) -> dict:
    return max(results, key=lambda r: r["metrics"]["test"][SELECT])  # the first of equals


def metric_parts(result: dict, split: str, metric: str) -> tuple[str, str]:
    """The metric in percent and its spread over seeds ('' with one seed); '-' where not measured."""
    value = result["metrics"][split].get(metric)
    if value is None:
        return "-", ""
    spread = f"{100 * result['metrics_std'][split][metric]:.2f}" if len(result["seeds"]) > 1 else ""
    return f"{100 * value:.2f}", spread


def metric_text(result: dict, split: str, metric: str) -> str:
    value, spread = metric_parts(result, split, metric)
    return f"{value} ± {spread}" if spread else value


def seconds_per_epoch(result: dict) -> float | None:
    """The mean over seeds (pipeline.aggregate writes it)."""
    return result["efficiency"].get("seconds_per_epoch")


def epochs_text(result: dict) -> str:
    """best epoch / epochs of each seed; '-' for a method that does not train."""
    seeds = [s for s in result["per_seed"] if s["epochs"] is not None]
    return ", ".join(f"{s['best_epoch']} / {s['epochs']}" for s in seeds) or "-"


def converged_text(result: dict) -> str:
    flags = [s["converged"] for s in result["per_seed"] if s["converged"] is not None]
    if not flags:
        return "-"
    if all(flags) or not any(flags):
        return "yes" if flags[0] else "no"
    return f"{sum(flags)} of {len(flags)} seeds"
