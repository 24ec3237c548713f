"""The README works as written: its two commands, its size, its runnable shell blocks (fenced as
```sh test), run from the repository with and without the venv on PATH, and its example config."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_configs, resolve_run

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
VENV_BIN = str(Path(sys.executable).parent)
BARE_PATH = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != VENV_BIN)


def runnable_commands() -> list[str]:
    blocks = re.findall(r"```sh test\n(.*?)```", README, re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_front_page():
    lines = README.splitlines()
    assert len(lines) <= 220
    assert lines[3].startswith("make demo ") and lines[4].startswith("make test ")
    assert len(runnable_commands()) >= 3


@pytest.mark.parametrize("activated", [False, True], ids=["bare PATH", "venv activated"])
@pytest.mark.parametrize("command", runnable_commands())
def test_runnable_commands(command, activated, tmp_path):
    if not Path(REPO / ".venv/bin/python").exists():
        pytest.skip("no .venv in the repository (make test creates it)")
    path = f"{REPO / '.venv/bin'}{os.pathsep}{BARE_PATH}" if activated else BARE_PATH
    # pipefail: a failing command piped into `head` fails the test too
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=REPO, capture_output=True, text=True,
                          env=os.environ | {"PATH": path})
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def test_the_own_catalogue_config_entry_is_valid(tmp_path):
    """The five steps' overlay (`my.yaml`) validates over config.yaml, and its run resolves."""
    section = README.split("## Your own catalogue")[1].split("\n## ")[0]
    block = re.search(r"`my\.yaml`:\n( *)```yaml\n(.*?)\n *```", section, re.S)
    assert block, "no ```yaml block for my.yaml in the README's own-catalogue section"
    indent = len(block[1])
    overlay = tmp_path / "my.yaml"
    overlay.write_text("\n".join(line[indent:] for line in block[2].splitlines()) + "\n")
    entry = yaml.safe_load(overlay.read_text())
    cfg = load_configs([REPO / "config.yaml", overlay])
    for dataset in entry["datasets"]:
        for run in entry["runs"]:
            resolve_run(cfg, dataset, run)


def test_jobs_run_the_interpreter_that_runs_snakemake(tmp_path):
    """A `python` first on PATH that is not the project's must not run any job."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\necho 'the wrong python ran' >&2\nexit 97\n")
    (fake / "python").chmod(0o755)
    (tmp_path / "config.yaml").write_text("datasets: {d: {format: iisan-split, synthetic: {n_items: 20, n_users: 20, "
                                          "n_categories: 3, image_size: 16}}}\nencoders: {}\nruns: {p: {method: popularity}}\n")
    done = subprocess.run([f"{VENV_BIN}/snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                           "--cores", "1", "results/d/items.parquet"], capture_output=True, text=True,
                          env=os.environ | {"PATH": f"{fake}{os.pathsep}{BARE_PATH}"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "results/d/items.parquet").exists()
