import pytest

from pipeline import layerdrop
from pipeline.config import kept_states, load_config

# DESIGN.md's group LayerDrop lists (0-based text blocks) for a 12-block image encoder.
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


def _config(**run):
    return load_config({
        "datasets": {"d": {"format": "iisan-split", "users": "u.tsv", "items": "i.tsv"}},
        "encoders": {
            "llm": {"path": "x", "modality": "text", "layers": 32, "hidden_size": 64},
            "vit": {"path": "y", "modality": "image", "layers": 12, "hidden_size": 32},
        },
        "runs": {"r": {"method": "iisan", "text": "llm", "image": "vit", **run}},
    })


def test_run_layer_selection():
    cfg = _config(layerdrop="group")
    assert kept_states(cfg, cfg["runs"]["r"]) == {"text": [0, 2, 8, 14, 20, 26, 32], "image": [0, 2, 4, 6, 8, 10, 12]}
    cfg = _config(layerdrop="none")
    assert kept_states(cfg, cfg["runs"]["r"])["image"] == list(range(13))
    cfg = _config(text_layers=[0, 16, 32])
    assert kept_states(cfg, cfg["runs"]["r"])["text"] == [0, 16, 32]
