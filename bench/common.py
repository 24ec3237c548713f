"""What the benchmark scripts share: where the real split's files are, and writing their
measurements as JSON and Markdown twins."""
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO / "overlays" / "shared-data.yaml"


def split_files(overlay: Path = SHARED_DATA, dataset: str = "scientific") -> tuple[Path, Path]:
    """The users and items files of a dataset as a config overlay names them (relative paths from
    the repository, as Snakemake reads them): overlays/shared-data.yaml points at the development
    machines' shared copy; point --overlay at a file naming data/<name>/ for your own."""
    import yaml

    entry = yaml.safe_load(Path(overlay).read_text())["datasets"][dataset]
    return (REPO / entry["users"]).resolve(), (REPO / entry["items"]).resolve()


def write_report(out: Path, name: str, machine: str, lines: list[str], **data) -> None:
    """results/bench/<name>.json (the measurements and the machine) and <name>.md (the table),
    and the table on the terminal."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"machine": machine, **data}, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def random_store(path: Path, tower: dict, items, chunk_items: int = 256, seed: int = 0) -> None:
    """A complete store in the encode stage's format, for a resolved run's cached tower, holding
    random float16 states (N(0, 0.25)) for the item table `items`: benchmarks train on it without
    running an encoder."""
    import numpy as np

    from pipeline.cache import store_attributes
    from pipeline.encode import SORT_CHUNKS, _new_store, write_manifest

    rows, k, width = items.num_rows + 1, len(tower["kept_states"]), tower["hidden_size"]
    attrs = store_attributes(tower["settings"], tower["kept_states"], items)
    partial = path.with_name(path.name + ".partial")
    group = _new_store(partial, rows, k, width, chunk_items, attrs | {"chunk_items": chunk_items, "sort_chunks": SORT_CHUNKS})
    rng = np.random.default_rng(seed)
    for lo in range(0, rows, chunk_items):
        n = min(chunk_items, rows - lo)
        group["states"][lo:lo + n] = (rng.standard_normal((n, k, width), dtype=np.float32) * 0.5).astype(np.float16)
        group["done"][lo // chunk_items] = True
    group.attrs.update({"complete": True, "missing_items": {}})
    partial.rename(path)
    write_manifest(path)
