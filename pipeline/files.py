"""Small file helpers: outputs appear complete or not at all."""
import csv
import hashlib
import importlib
import json
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """One row per dict; the columns are the first row's keys unless given."""
    columns = columns or list(rows[0])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def sha256_file(path: str | Path, limit: int | None = None) -> str:
    """Hex digest of a file (of its first `limit` bytes if given)."""
    h = hashlib.sha256()
    remaining = limit
    with open(path, "rb") as f:
        while remaining is None or remaining > 0:
            block = f.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not block:
                break
            h.update(block)
            if remaining is not None:
                remaining -= len(block)
    return h.hexdigest()


def model_path(settings: dict) -> str:
    """Hub id or folder for from_pretrained; `package` names a module with get_model_path()."""
    if settings.get("package"):
        return str(importlib.import_module(settings["package"]).get_model_path())
    return settings["path"]


def weights_fingerprint(path: str) -> str:
    """Cheap identity of a local checkpoint: config + each weight file's size and first MiB."""
    folder = Path(path)
    if not folder.is_dir():
        return f"hub:{path}"
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.name == "config.json" or f.suffix in (".safetensors", ".bin", ".pt"):
            h.update(f"{f.name}:{f.stat().st_size}:{sha256_file(f, limit=1 << 20)}".encode())
    return h.hexdigest()[:16]
