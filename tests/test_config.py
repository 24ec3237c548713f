from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config, resolve_run

REPO = Path(__file__).resolve().parent.parent


def test_repository_config_is_valid():
    cfg = load_config(REPO / "config.yaml")
    assert cfg["train"]["batch_size"] == 64 and cfg["train"]["seed"] == 12345
    run = resolve_run(cfg, "demo", "iisan-va")
    assert run["towers"]["text"]["kept_states"] == [0, 1, 6]
    assert run["towers"]["image"]["kept_states"] == [0, 2, 4]
    assert run["towers"]["text"]["cache"] == "results/demo/cache/minilm.h0-1-6.zarr"


def write_config(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


BASE = """\
datasets:
  d: {format: iisan-split, users: u.tsv, items: i.tsv}
encoders:
  t: {path: x, modality: text, layers: 4, hidden_size: 8}
runs:
  r:
    method: iisan
    text: t
"""


def test_misspelt_key_is_named_with_its_line(tmp_path):
    path = write_config(tmp_path, BASE + "    layerdorp: symmetric\n")
    with pytest.raises(ConfigError, match=r"config.yaml, line 6: key 'runs.r': .*'layerdorp' was unexpected"):
        load_config(path)


def test_unknown_encoder_is_named(tmp_path):
    path = write_config(tmp_path, BASE.replace("text: t", "text: bert"))
    with pytest.raises(ConfigError, match=r"line 8: key 'runs.r.text': unknown encoder 'bert' \(known: t\)"):
        load_config(path)


def test_wrong_modality_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="is not a image encoder"):
        load_config(write_config(tmp_path, BASE + "    image: t\n"))
    with pytest.raises(ConfigError, match=r"key 'runs.r.layerdrop'"):
        load_config(write_config(tmp_path, BASE + "    layerdrop: sometimes\n"))
    with pytest.raises(ConfigError, match=r"key 'train.batch_size'"):
        load_config(write_config(tmp_path, BASE + "train: {batch_size: 0}\n"))
    with pytest.raises(ConfigError, match="group LayerDrop|symmetric LayerDrop needs an even"):
        load_config(write_config(tmp_path, BASE.replace("layers: 4", "layers: 5")))


def test_run_train_block_overrides_only_its_keys(tmp_path):
    cfg = load_config(write_config(tmp_path, BASE + "    train: {max_epochs: 3}\ntrain: {batch_size: 32}\n"))
    t = cfg["runs"]["r"]["train"]
    assert (t["max_epochs"], t["batch_size"], t["patience"]) == (3, 32, 10)


def test_unknown_default_target(tmp_path):
    with pytest.raises(ConfigError, match="unknown run 'nope'"):
        load_config(write_config(tmp_path, BASE + "default_targets: {d: [nope]}\n"))
