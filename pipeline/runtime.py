"""Where a stage runs: its device, threads, peak memory and package versions, and the command-line
arguments shared by the stages that read a resolved run (train, evaluate, efficiency)."""
import argparse
import json
import platform
import resource
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("torch", "transformers", "zarr", "numpy", "pyarrow", "snakemake")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def peak_memory_bytes(dev: torch.device) -> int:
    """GPU: the peak of torch's allocations; CPU: the process's peak resident memory."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:  # the library also runs without Snakemake
        return None


def versions() -> dict:
    return {"python": platform.python_version(), **{p: package_version(p) for p in PACKAGES}}


def run_arguments(description: str) -> argparse.ArgumentParser:
    """The command-line arguments shared by the stages that read a resolved run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run", type=json.loads, required=True,
                        help="the resolved run as JSON (pipeline.config.resolve_run; the Snakemake rule passes it)")
    parser.add_argument("--items", type=Path, required=True, help="results/<dataset>/items.parquet")
    parser.add_argument("--sequences", type=Path, required=True, help="results/<dataset>/sequences.parquet")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def parse_run_arguments(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
