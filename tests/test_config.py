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
    with pytest.raises(ConfigError, match=r"config.yaml, line 9: key 'runs.r.layerdorp': .*'layerdorp' was unexpected"):
        load_config(path)


def test_unknown_encoder_is_named(tmp_path):
    path = write_config(tmp_path, BASE.replace("text: t", "text: bert"))
    with pytest.raises(ConfigError, match=r"line 8: key 'runs.r.text': unknown encoder 'bert' \(known: t\)"):
        load_config(path)


def test_wrong_modality_and_bad_values(tmp_path):
    with_image = BASE.replace("runs:", "  v: {path: y, modality: image, layers: 4, hidden_size: 8}\nruns:")
    with pytest.raises(ConfigError, match="key 'runs.r.text': encoder 'v' is not a text encoder"):
        load_config(write_config(tmp_path, with_image.replace("text: t", "text: v")))
    with pytest.raises(ConfigError, match="key 'runs.r.columns.image': .*encoder 'v' reads images"):
        load_config(write_config(tmp_path, with_image + "    image: v\n    columns: {image: title}\n"))
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


CAPTIONED = BASE.replace("  d: {format: iisan-split, users: u.tsv, items: i.tsv}", """\
  d: {format: iisan-split, users: u.tsv, items: i.tsv, images: covers, captions: {cover_caption: llava}}
  plain: {format: iisan-split, users: u.tsv, items: i.tsv}
captioners:
  llava: {path: llava-hf/llava-v1.6-mistral-7b-hf, source: image, prompt: prompts/cover-dalle2.v1.yaml}""")


def test_a_second_text_tower_reads_a_caption_column(tmp_path):
    cfg = load_config(write_config(tmp_path, CAPTIONED + "    image: t\n    columns: {image: cover_caption}\n"))
    run = resolve_run(cfg, "d", "r")
    assert run["towers"]["text"]["cache"] == "results/d/cache/t.h0-2-4.zarr"  # titles: the name as before
    assert "column" not in run["towers"]["text"]
    assert run["towers"]["image"]["column"] == "cover_caption"
    assert run["towers"]["image"]["cache"] == "results/d/cache/t.cover_caption.h0-2-4.zarr"
    with pytest.raises(ConfigError, match="run 'r' reads column 'cover_caption' in its image tower, which dataset "
                                          "'plain' does not have \\(its text columns: title; add it under "
                                          "datasets.plain.captions\\)"):
        resolve_run(cfg, "plain", "r")


def test_caption_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="key 'datasets.d.captions.cover_caption': unknown captioner 'llava2'"):
        load_config(write_config(tmp_path, CAPTIONED.replace("cover_caption: llava}", "cover_caption: llava2}")))
    with pytest.raises(ConfigError, match="captioner 'llava' describes videos, but the dataset has no videos folder"):
        load_config(write_config(tmp_path, CAPTIONED.replace("source: image", "source: video")))
    with pytest.raises(ConfigError, match="key 'datasets.d.captions'"):  # a column name taken by the item table
        load_config(write_config(tmp_path, CAPTIONED.replace("{cover_caption: llava}", "{title: llava}")))
    with pytest.raises(ConfigError, match="key 'datasets.d.captions'"):  # the caption files' own column
        load_config(write_config(tmp_path, CAPTIONED.replace("{cover_caption: llava}", "{status: llava}")))
    with pytest.raises(ConfigError, match="key 'runs.r.columns.image': the run has no image tower"):
        load_config(write_config(tmp_path, CAPTIONED + "    columns: {image: cover_caption}\n"))
