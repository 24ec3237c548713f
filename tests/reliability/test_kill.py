"""kill -9 at seeded random moments: every stage's output is then absent or complete, never half
written, and a rerun ends with exactly what an uninterrupted run writes.

Each stage runs as its command line in a subprocess; an uninterrupted run sets the reference
and its duration T; five runs are killed at moments drawn (seeded) from [0, T], each continuing
whatever the last one left; a final run completes. Timing fields (seconds, peak memory) are
the only things allowed to differ.
"""
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from conftest import MINILM, write_sequences
from PIL import Image
from test_caption import COVER_PROMPT, tiny_llava  # noqa: F401 (fixture)

from pipeline.config import load_config, resolve_run

KILLS = 5


def run(command: list[str], cwd: Path) -> float:
    """Run to completion; its seconds."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return time.perf_counter() - start


def kill_at(command: list[str], cwd: Path, seconds: float) -> None:
    """Start `command` and SIGKILL it after `seconds` (unless it finished first)."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def killed_then_finished(command: list[str], cwd: Path, reference_seconds: float, seed: int, check) -> None:
    """Five seeded kills, `check()` after each (outputs absent or whole), then a full run."""
    moments = sorted(random.Random(seed).uniform(0, reference_seconds) for _ in range(KILLS))
    for moment in moments:
        kill_at(command, cwd, moment)
        check()
    run(command, cwd)


def python(module: str, *args) -> list[str]:
    return [sys.executable, "-m", f"pipeline.{module}", *map(str, args)]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    """160 titles: enough chunks (8 items) and windows (16) to be killed between."""
    folder = tmp_path_factory.mktemp("catalogue")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(400)]
    n = 160
    pq.write_table(pa.table({"item_idx": pa.array(range(1, n + 1), pa.int32()), "item_id": [f"i{i}" for i in range(n)],
                             "title": [" ".join(rng.choice(words, size=rng.integers(3, 20))) for _ in range(n)],
                             "image": pa.array([None] * n, pa.string())}), folder / "items.parquet")
    return folder / "items.parquet"


def store_bytes(path: Path) -> dict:
    group = zarr.open_group(str(path), mode="r")
    return {name: group[name][:].tobytes() for name in ("states", "missing", "done")}


def whole_or_absent(store: Path):
    def check():
        if store.exists():  # only ever renamed into place complete
            assert zarr.open_group(str(store), mode="r").attrs["complete"]
    return check


def encode_command(items: Path, out: Path, *extra) -> list[str]:
    return python("encode", "--items", items, "--settings", json.dumps(MINILM | {"batch_size": 4}), "--states", 0, 3, 6,
                  "--chunk-items", 8, "--sort-chunks", 2, "--threads", 1, "--out", out, *extra)


def test_encode(catalogue, tmp_path):
    seconds = run(encode_command(catalogue, tmp_path / "reference.zarr"), tmp_path)
    out = tmp_path / "killed.zarr"
    killed_then_finished(encode_command(catalogue, out), tmp_path, seconds, seed=1, check=whole_or_absent(out))
    assert store_bytes(out) == store_bytes(tmp_path / "reference.zarr")


def test_encode_shards_and_gather(catalogue, tmp_path):
    seconds = run(encode_command(catalogue, tmp_path / "reference.zarr"), tmp_path)
    parts = [tmp_path / f"part{i}of2.zarr" for i in range(2)]
    killed_then_finished(encode_command(catalogue, parts[0], "--shard", 0, 2), tmp_path, seconds / 2, seed=10,
                         check=whole_or_absent(parts[0]))
    run(encode_command(catalogue, parts[1], "--shard", 1, 2), tmp_path)
    gather_seconds = run(encode_command(catalogue, tmp_path / "timing.zarr", "--gather", *parts), tmp_path)
    out = tmp_path / "gathered.zarr"
    killed_then_finished(encode_command(catalogue, out, "--gather", *parts), tmp_path, gather_seconds, seed=20,
                         check=whole_or_absent(out))
    assert store_bytes(out) == store_bytes(tmp_path / "reference.zarr")


@pytest.fixture(scope="module")
def trained_setup(catalogue, tmp_path_factory):
    """A cached IISAN run over the catalogue, its store encoded, for train and evaluate."""
    folder = tmp_path_factory.mktemp("train")
    write_sequences(folder / "sequences.parquet", n_users=300, n_items=160)
    cfg = load_config({"datasets": {"t": {"format": "iisan-split", "users": "u", "items": "i"}},
                       "encoders": {"minilm": MINILM},
                       "runs": {"r": {"method": "iisan", "text": "minilm", "train": {"max_epochs": 6, "patience": 6}}}})
    resolved = resolve_run(cfg, "t", "r")
    tower = resolved["towers"]["text"]
    run(python("encode", "--items", catalogue, "--settings", json.dumps(tower["settings"]), "--states",
               *tower["kept_states"], "--chunk-items", 64, "--out", folder / tower["cache"]), folder)
    return resolved, catalogue, folder


def train_command(resolved, items, folder, out) -> list[str]:
    return python("train", "--run", json.dumps(resolved), "--items", items, "--sequences", folder / "sequences.parquet",
                  "--threads", 1, "--out-dir", out)


def without_timings(log: dict) -> dict:
    log = {k: v for k, v in log.items() if k not in ("seconds_per_epoch", "valid_seconds_per_epoch", "peak_memory_bytes")}
    log["history"] = [{k: v for k, v in h.items() if k not in ("seconds", "valid_seconds")} for h in log["history"]]
    return log


def test_train(trained_setup):
    resolved, items, folder = trained_setup
    seconds = run(train_command(resolved, items, folder, folder / "reference"), folder)
    out = folder / "killed"

    def check():  # the model and the log appear together, or not at all
        if (out / "train_log.json").exists():
            assert (out / "model.safetensors").exists()

    killed_then_finished(train_command(resolved, items, folder, out), folder, seconds, seed=2, check=check)
    assert (out / "model.safetensors").read_bytes() == (folder / "reference" / "model.safetensors").read_bytes()
    logs = [json.loads((d / "train_log.json").read_text()) for d in (out, folder / "reference")]
    assert without_timings(logs[0]) == without_timings(logs[1])


def test_evaluate(trained_setup):
    resolved, items, folder = trained_setup
    model = folder / "model"
    if not (model / "model.safetensors").exists():
        run(train_command(resolved, items, folder, model), folder)

    def command(name: str) -> list[str]:
        return python("evaluate", "--run", json.dumps(resolved), "--items", items, "--sequences",
                      folder / "sequences.parquet", "--model-dir", model, "--threads", 1, "--out", folder / f"{name}.json",
                      "--per-user", folder / f"{name}.per_user.parquet", "--topk", folder / f"{name}.topk.parquet")

    seconds = run(command("reference"), folder)

    def check():
        for suffix in (".json", ".per_user.parquet", ".topk.parquet"):
            path = folder / f"killed{suffix}"
            if path.exists():  # written whole under a temporary name, then renamed
                json.loads(path.read_text()) if suffix == ".json" else pq.read_table(path)

    killed_then_finished(command("killed"), folder, seconds, seed=3, check=check)
    a, b = (json.loads((folder / f"{name}.json").read_text()) for name in ("killed", "reference"))
    assert a["metrics"] == b["metrics"] and a["metrics_repeat_aware"] == b["metrics_repeat_aware"]
    for suffix in (".per_user.parquet", ".topk.parquet"):
        assert pq.read_table(folder / f"killed{suffix}").equals(pq.read_table(folder / f"reference{suffix}"))


def test_caption(tiny_llava, tmp_path):  # noqa: F811
    rng = np.random.default_rng(0)
    images = []
    for i in range(24):
        path = tmp_path / f"c{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    pq.write_table(pa.table({"item_idx": pa.array(range(1, 25), pa.int32()), "item_id": [f"i{i}" for i in range(24)],
                             "title": [f"t{i}" for i in range(24)], "image": images}), tmp_path / "items.parquet")

    def command(name: str) -> list[str]:
        return python("caption", "--items", tmp_path / "items.parquet",
                      "--settings", json.dumps(tiny_llava | {"batch_size": 2, "max_new_tokens": 8}),
                      "--prompt", COVER_PROMPT, "--column", "cover_caption", "--out", tmp_path / name / "cover_caption.parquet")

    seconds = run(command("reference"), tmp_path)
    out = tmp_path / "killed" / "cover_caption.parquet"

    def check():
        if out.exists():
            assert pq.read_table(out).num_rows == 24

    killed_then_finished(command("killed"), tmp_path, seconds, seed=4, check=check)
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "reference" / "cover_caption.parquet"))
