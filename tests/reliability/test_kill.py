"""kill -9 at seeded random moments: every stage's output is then absent or complete, never half
written, and a rerun ends with exactly what an uninterrupted run writes.

Each stage runs as its command line in a subprocess; an uninterrupted run sets the reference,
its duration T and the duration W of its work (from the moment the work visibly begins: its
first chunk, batch or copied part written, or its progress bar printed; interpreter start-up and
model loading are not work). Five runs are killed, each continuing whatever the last one left:
the first three after a delay drawn from [0, 0.8 W] once the run's work has begun (a run a little
faster than the reference is still killed at work; the anywhere kills reach the rest), or from a
sixth of W for a stage that resumes (encode, caption), since each later run has less left to do
and first finishes the unit (window, batch) whose file says it has begun; the last ANYWHERE at
a moment drawn from [0, T], start-up included. At least MID_WORK kills must land while the run
works (the old kills mostly landed in start-up); a final run completes. Timing fields (seconds,
peak memory) are the only things allowed to differ.
"""
import json
import random
import stat
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
ANYWHERE = 2  # the last kills, at any moment of a run; the others wait for its work to begin
MID_WORK = 2  # kills that must land while the run works: of the three timed ones, as timings vary
POLL = 0.01  # seconds between looks for the work's start
LOG = "kill_test.stderr"  # a run's stderr, beside its outputs


def run(command: list[str], cwd: Path) -> float:
    """Run to completion; its seconds."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return time.perf_counter() - start


def wrote(folder: Path, pattern: str = "*"):
    """Work has begun once this run has written a file matching `pattern` under `folder`."""
    def began(since: float, log: Path) -> bool:
        try:
            return any(modified_since(f, since) for f in folder.rglob(pattern))
        except OSError:  # a folder renamed or removed while walked (the store's final move)
            return False
    return began


def modified_since(path: Path, since: float) -> bool:
    """A plain file modified after `since`; False for one renamed away while looked at (zarr writes
    each chunk to a temporary file and renames it)."""
    try:
        info = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_mtime > since


def printed(text: str):
    """Work has begun once the run's stderr shows `text` (its progress bar)."""
    return lambda since, log: text in log.read_text(errors="replace")


def start(command: list[str], cwd: Path, began, wait: bool = True):
    """Start `command` and, with `wait`, wait until its work has begun (or it ended); the process
    and a function that says whether its work has begun."""
    since, seen = time.time(), [False]
    with open(cwd / LOG, "wb") as err:
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)

    def begun() -> bool:  # latched: a look that races a file's rename or the store's final move
        seen[0] = seen[0] or began(since, cwd / LOG)  # must not un-begin the work
        return seen[0]

    while wait and not begun() and process.poll() is None:
        time.sleep(POLL)
    return process, begun


def reference_seconds(command: list[str], cwd: Path, began) -> tuple[float, float]:
    """Run to completion, uninterrupted: (its seconds, the seconds from its work's start to its end)."""
    launched = time.perf_counter()
    process, begun = start(command, cwd, began)
    working, seen = time.perf_counter(), begun()  # now: a finished store is no longer a .partial
    assert process.wait() == 0 and seen, (cwd / LOG).read_text()[-3000:]
    return time.perf_counter() - launched, time.perf_counter() - working


def killed_then_finished(command: list[str], cwd: Path, seconds: tuple[float, float], seed: int, check, began,
                         resumes: bool, mid_work: int = MID_WORK) -> None:
    """KILLS seeded kills (see the module's doc), `check()` after each (outputs absent or whole),
    then a full run; at least `mid_work` kills land while the run works. A run that ends before
    its kill must have succeeded."""
    total, work = seconds
    rng = random.Random(seed)
    landed = 0
    for kill in range(KILLS):
        anywhere = kill >= KILLS - ANYWHERE
        delay = rng.uniform(0, total if anywhere else work / (2 * (KILLS - ANYWHERE)) if resumes else 0.8 * work)
        process, begun = start(command, cwd, began, wait=not anywhere)
        try:
            process.wait(timeout=delay if anywhere or begun() else None)
        except subprocess.TimeoutExpired:
            working = begun()
            process.kill()
            process.wait()
            landed += working
        else:
            assert process.returncode == 0, (cwd / LOG).read_text()[-3000:]
        check()
    assert landed >= mid_work, f"only {landed} of {KILLS} kills landed while the run worked"
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


def chunk_done(out: Path):
    """An encode's work has begun once it marks a chunk of its .partial store done."""
    return wrote(out.with_name(out.name + ".partial") / "done" / "c")


@pytest.fixture(scope="module")
def reference(catalogue, tmp_path_factory) -> tuple[Path, tuple[float, float]]:
    """An uninterrupted encode of the catalogue: its store and (seconds, seconds of its work)."""
    folder = tmp_path_factory.mktemp("reference")
    store = folder / "reference.zarr"
    return store, reference_seconds(encode_command(catalogue, store), folder, chunk_done(store))


def test_encode(catalogue, reference, tmp_path):
    reference, seconds = reference
    out = tmp_path / "killed.zarr"
    killed_then_finished(encode_command(catalogue, out), tmp_path, seconds, seed=1, check=whole_or_absent(out),
                         began=chunk_done(out), resumes=True)
    assert store_bytes(out) == store_bytes(reference)


def test_encode_shards_and_gather(catalogue, reference, tmp_path):
    reference, (total, work) = reference
    parts = [tmp_path / f"part{i}of2.zarr" for i in range(2)]
    half = (total - work / 2, work / 2)  # a shard does half the work
    killed_then_finished(encode_command(catalogue, parts[0], "--shard", 0, 2), tmp_path, half, seed=10,
                         check=whole_or_absent(parts[0]), began=chunk_done(parts[0]), resumes=True)
    run(encode_command(catalogue, parts[1], "--shard", 1, 2), tmp_path)

    def copying(out: Path):  # the gather's work: creating the store, copying the parts, finishing
        return wrote(out.with_name(out.name + ".partial"))

    timing = tmp_path / "timing.zarr"
    gathering = reference_seconds(encode_command(catalogue, timing, "--gather", *parts), tmp_path, copying(timing))
    out = tmp_path / "gathered.zarr"
    # The gather's work lasts tens of milliseconds after seconds of start-up: its kills may all miss it.
    killed_then_finished(encode_command(catalogue, out, "--gather", *parts), tmp_path, gathering, seed=20,
                         check=whole_or_absent(out), began=copying(out), resumes=False, mid_work=0)
    assert store_bytes(out) == store_bytes(reference)


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
    training = printed(f"train {resolved['dataset']}/{resolved['run']}")  # the epochs' bar: data and caches read
    seconds = reference_seconds(train_command(resolved, items, folder, folder / "reference"), folder, training)
    out = folder / "killed"

    def check():  # the model and the log appear together, or not at all
        if (out / "train_log.json").exists():
            assert (out / "model.safetensors").exists()

    killed_then_finished(train_command(resolved, items, folder, out), folder, seconds, seed=2, check=check,
                         began=training, resumes=False)
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

    ranking = printed("rank valid")  # the model and caches loaded
    seconds = reference_seconds(command("reference"), folder, ranking)

    def check():
        for suffix in (".json", ".per_user.parquet", ".topk.parquet"):
            path = folder / f"killed{suffix}"
            if path.exists():  # written whole under a temporary name, then renamed
                json.loads(path.read_text()) if suffix == ".json" else pq.read_table(path)

    killed_then_finished(command("killed"), folder, seconds, seed=3, check=check, began=ranking, resumes=False)
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

    seconds = reference_seconds(command("reference"), tmp_path, wrote(tmp_path / "reference", "batch-*.parquet"))
    out = tmp_path / "killed" / "cover_caption.parquet"

    def check():
        if out.exists():
            assert pq.read_table(out).num_rows == 24

    killed_then_finished(command("killed"), tmp_path, seconds, seed=4, check=check,
                         began=wrote(tmp_path / "killed", "batch-*.parquet"), resumes=True)
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "reference" / "cover_caption.parquet"))
