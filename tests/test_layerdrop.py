import re

import pytest

from pipeline import layerdrop
from pipeline.config import ConfigError, kept_states, load_config

# The reference implementation's group LayerDrop lists (0-based text blocks) for a 12-block image
# encoder (eq. 5 of the paper is off by one against them).
DESIGN_EXAMPLES = {
    80: [4, 19, 34, 49, 64, 79],
    32: [1, 7, 13, 19, 25, 31],
    28: [2, 7, 12, 17, 22, 27],
    48: [2, 11, 20, 29, 38, 47],
    24: [3, 7, 11, 15, 19, 23],
}


@pytest.mark.parametrize("text_layers,blocks", DESIGN_EXAMPLES.items())
def test_group_layerdrop_matches_reference_lists(text_layers, blocks):
    # hidden-state index = block + 1, plus the embedding output 0
    assert layerdrop.group(text_layers, 12) == [0] + [b + 1 for b in blocks]


def test_group_keeps_as_many_states_as_the_symmetric_image_tower():
    for image_layers in (4, 12, 24, 32):
        assert len(layerdrop.group(80, image_layers)) == len(layerdrop.symmetric(image_layers))


def test_symmetric_drops_every_odd_block():
    assert layerdrop.symmetric(12) == [0, 2, 4, 6, 8, 10, 12]
    assert layerdrop.symmetric(6) == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="even"):
        layerdrop.symmetric(5)


def test_explicit_lists_are_checked():
    assert layerdrop.check([0, 3, 6], 6, "x") == [0, 3, 6]
    with pytest.raises(ValueError, match="out of range"):
        layerdrop.check([0, 7], 6, "text_layers")
    with pytest.raises(ValueError, match="increasing"):
        layerdrop.check([4, 2], 6, "text_layers")


def _config(text_layers=32, image_layers=12, **run):
    return load_config({
        "datasets": {"d": {"format": "iisan-split", "users": "u.tsv", "items": "i.tsv"}},
        "encoders": {
            "llm": {"path": "x", "modality": "text", "layers": text_layers, "hidden_size": 64},
            "vit": {"path": "y", "modality": "image", "layers": image_layers, "hidden_size": 32},
        },
        "runs": {"r": {"method": "iisan", "text": "llm", "image": "vit", **run}},
    })


def test_run_layer_selection():
    cfg = _config(layerdrop="group")
    assert kept_states(cfg, cfg["runs"]["r"]) == {"text": [0, 2, 8, 14, 20, 26, 32], "image": [0, 2, 4, 6, 8, 10, 12]}
    cfg = _config(layerdrop="none")
    assert kept_states(cfg, cfg["runs"]["r"])["image"] == list(range(13))
    cfg = _config(layerdrop={"text": [0, 16, 32], "image": "6(top)"})
    assert kept_states(cfg, cfg["runs"]["r"]) == {"text": [0, 16, 32], "image": [0, 7, 8, 9, 10, 11, 12]}
    with pytest.raises(ConfigError, match="no selection for the image tower"):
        _config(layerdrop={"text": "all"})
    with pytest.raises(ConfigError, match="runs.r.layerdrop"):
        _config(layerdrop={"text": "6(evn_all)", "image": "all"})
    with pytest.raises(ConfigError, match="cannot keep 40 of 32 blocks"):
        _config(layerdrop={"text": "40(top)", "image": "all"})


# Table VIII's selections for BERT-large (24 blocks) and ViT-base (12 blocks), as 1-based blocks.
TABLE_VIII = {
    (24, "12(even_all)"): list(range(2, 25, 2)),
    (24, "12(top)"): list(range(13, 25)),
    (24, "12(down)"): list(range(1, 13)),
    (24, "6(even_all)"): [4, 8, 12, 16, 20, 24],
    (24, "6(even_top12)"): [14, 16, 18, 20, 22, 24],
    (24, "6(even_down12)"): [2, 4, 6, 8, 10, 12],
    (12, "6(even_all)"): [2, 4, 6, 8, 10, 12],
    (12, "6(top)"): [7, 8, 9, 10, 11, 12],
    (12, "6(down)"): [1, 2, 3, 4, 5, 6],
    (12, "all"): list(range(1, 13)),
}


@pytest.mark.parametrize("layers,spec", TABLE_VIII)
def test_table_viii_selections(layers, spec):
    assert layerdrop.from_spec(spec, layers, "x") == [0] + TABLE_VIII[(layers, spec)]


def test_group_is_even_all_and_specs_are_checked():
    assert layerdrop.group(80, 12) == layerdrop.from_spec("6(even_all)", 80, "x") == [0, 5, 20, 35, 50, 65, 80]
    assert layerdrop.from_spec("symmetric", 4, "x") == [0, 2, 4]
    assert layerdrop.from_spec("1(even_all)", 4, "x") == [0, 4]
    for bad, message in [("7(even_top6)", "needs 7 <= 6"), ("3(even_top30)", "needs 3 <= 30 <= 24"),
                         ("6(middle)", "not all, symmetric"), ([0, 30], "out of range")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            layerdrop.from_spec(bad, 24, "x")


def test_group_layerdrop_groups_the_deeper_tower():
    """Table IV's BERT-base + ViT-huge: the 32-block image tower is grouped to the text tower's 6."""
    cfg = _config(text_layers=12, image_layers=32, layerdrop="group")
    assert kept_states(cfg, cfg["runs"]["r"]) == {"text": [0, 2, 4, 6, 8, 10, 12], "image": [0, 2, 8, 14, 20, 26, 32]}
