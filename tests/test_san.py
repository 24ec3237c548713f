import pytest
import torch

from pipeline.config import ConfigError, load_config, resolve_run
from pipeline.models.item_encoder import IISANItemEncoder, ItemEncoderConfig, TowerShape
from pipeline.models.san import SANB, Gate, InterSAN, IntraSAN
from pipeline.models.build import build_model, learning_rates


def test_gates_start_at_one_half():
    assert Gate(0.1)().item() == 0.5
    tower = IntraSAN(num_states=4, dim=8, bottleneck=2, temperature=0.1)
    assert all(g().item() == 0.5 for g in tower.gates)


def test_sanb_init_and_residual():
    torch.manual_seed(0)
    block = SANB(dim=256, bottleneck=64)
    assert torch.all(block.down.bias == 0) and torch.all(block.up.bias == 0)
    assert abs(block.down.weight.std().item() - 0.01) < 0.001
    x = torch.randn(3, 256)
    assert torch.allclose(block(x), x + block.up(torch.relu(block.down(x))))


def test_intra_tower_follows_the_recurrence():
    torch.manual_seed(0)
    tower = IntraSAN(num_states=3, dim=4, bottleneck=2, temperature=0.1)
    with torch.no_grad():
        for g, v in zip(tower.gates, (0.3, -0.2, 0.1)):
            g.param.fill_(v)
    h = torch.randn(5, 3, 4)
    s = torch.zeros(5, 4)
    for k in range(3):
        g = torch.sigmoid(torch.tensor((0.3, -0.2, 0.1)[k]) / 0.1)
        s = tower.blocks[k](g * h[:, k] + (1 - g) * s)
    assert torch.allclose(tower(h), s)


def test_inter_tower_uses_dtl_on_the_wider_modality_and_last_states():
    torch.manual_seed(0)
    tower = InterSAN(num_states=2, text_dim=16, image_dim=8, bottleneck=4, temperature=0.1)
    assert tower.image_dtl is None and len(tower.text_dtl) == 2 and tower.dim == 8
    text, image = torch.randn(3, 5, 16), torch.randn(3, 2, 8)  # text keeps more states
    m = torch.zeros(3, 8)
    for k in range(2):
        x_text = tower.text_dtl[k](text[:, 3 + k])
        m = tower.blocks[k](m + 0.5 * image[:, k] + 0.5 * x_text)
    assert torch.allclose(tower(text, image), m)


def test_item_encoder_fuses_three_towers():
    cfg = ItemEncoderConfig(text=TowerShape(3, 16), image=TowerShape(3, 8), embed_dim=6, sanb_dim=4)
    enc = IISANItemEncoder(cfg)
    assert enc.fusion.in_features == 18
    out = enc(None, {"text": torch.randn(7, 3, 16), "image": torch.randn(7, 3, 8)})
    assert out.shape == (7, 6)
    text_only = IISANItemEncoder(ItemEncoderConfig(text=TowerShape(3, 16), image=None, embed_dim=6))
    assert text_only.inter is None and text_only(None, {"text": torch.randn(2, 3, 16)}).shape == (2, 6)


def test_learning_rate_groups_follow_the_reference():
    """Code_Cached/run.py groups IISAN's parameters by name: adapter_bert_lr for the text SANBs,
    adapter_cv_lr for the image and inter SANBs, fine_tune_lr_image for the image gates and head,
    fine_tune_lr_text for the text head, lr for the rest (text and inter gates, DTLs, inter head,
    fusion, user encoder). Here each module declares its group."""
    cfg = load_config({
        "datasets": {"d": {"format": "iisan-split", "users": "u", "items": "i"}},
        "encoders": {"t": {"path": "x", "modality": "text", "layers": 4, "hidden_size": 16},
                     "v": {"path": "y", "modality": "image", "layers": 2, "hidden_size": 8}},
        "runs": {"r": {"method": "iisan", "text": "t", "image": "v", "layerdrop": "group"}},
    })
    model = build_model(resolve_run(cfg, "d", "r"), num_items=5)
    groups = {g["name"]: g for g in model.optimizer_groups(learning_rates(cfg["train"]))}
    names = {id(p): n for n, p in model.named_parameters()}
    found = {g: {names[id(p)] for p in group["params"]} for g, group in groups.items()}
    assert {g: group["lr"] for g, group in groups.items()} == {
        "user": 2e-4, "adapter_text": 1e-4, "adapter_image": 1e-4, "image": 1e-4, "text": 5e-5}

    def expected(name: str) -> str:
        if name.startswith("item_encoder.intra.text.blocks."):
            return "adapter_text"
        if name.startswith(("item_encoder.intra.image.blocks.", "item_encoder.inter.blocks.")):
            return "adapter_image"
        if name.startswith(("item_encoder.intra.image.gates.", "item_encoder.heads.image.")):
            return "image"
        if name.startswith("item_encoder.heads.text."):
            return "text"
        return "user"

    assert {n: g for g, ns in found.items() for n in ns} == {n: expected(n) for n in names.values()}
    assert any("text_dtl" in n for n in found["user"]) and any("inter.gates" in n for n in found["user"])
    scaled = model.optimizer_groups(learning_rates(cfg["train"] | {"lr_scale": 4}))
    assert {g["name"]: g["lr"] for g in scaled}["text"] == 2e-4


def test_gru_encoder_ignores_left_padding():
    from pipeline.models.gru_encoder import GRUUserEncoder
    from pipeline.models.user_encoder import UserEncoderConfig

    torch.manual_seed(0)
    gru = GRUUserEncoder(UserEncoderConfig(dim=4, dropout=0.0)).eval()
    seq = torch.randn(1, 3, 4)
    padded = torch.cat([torch.randn(1, 2, 4), seq], dim=1)  # two padding slots of noise in front
    mask = torch.tensor([[False, False, True, True, True]])
    out = gru(padded, mask)
    alone = gru(seq, torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(out[:, 2:], alone, atol=1e-6)  # same states at the real positions
    expected, _ = gru.gru(seq)
    assert torch.allclose(alone, expected, atol=1e-6)


def _ablation_run(ablate):
    cfg = load_config({
        "datasets": {"d": {"format": "iisan-split", "users": "u", "items": "i"}},
        "encoders": {"t": {"path": "x", "modality": "text", "layers": 4, "hidden_size": 16},
                     "v": {"path": "y", "modality": "image", "layers": 2, "hidden_size": 8}},
        "runs": {"r": {"method": "iisan", "text": "t", "image": "v", "layerdrop": "group", "ablate": ablate}},
    })
    return resolve_run(cfg, "d", "r")


def test_table_vi_ablations_remove_their_part():
    towers = lambda model: (sorted(model.item_encoder.intra), model.item_encoder.inter is not None,  # noqa: E731
                            sorted(model.item_encoder.heads))
    assert towers(build_model(_ablation_run([]), 10)) == (["image", "text"], True, ["image", "inter", "text"])
    assert towers(build_model(_ablation_run(["intra"]), 10)) == ([], True, ["inter"])
    assert towers(build_model(_ablation_run(["inter"]), 10)) == (["image", "text"], False, ["image", "text"])
    assert _ablation_run([]).get("ablate") is None  # ordinary runs' settings are unchanged


def test_without_gates_the_towers_sum_their_inputs():
    """The reference's un-gated branch: x_k = h_k + s_{k-1}, not a fixed 0.5 mixture."""
    from pipeline.models.san import InterSAN, IntraSAN

    torch.manual_seed(0)
    model = build_model(_ablation_run(["gate"]), 10)
    assert not [n for n, _ in model.named_parameters() if "gates" in n]
    h = torch.randn(5, 3, 16)
    intra = IntraSAN(3, 16, 4, 0.1, gated=False)
    s = torch.zeros(5, 16)
    for k in range(3):
        s = intra.blocks[k](h[:, k] + s)
    assert torch.allclose(intra(h), s)
    inter = InterSAN(2, 16, 16, 4, 0.1, gated=False)
    text, image = torch.randn(5, 2, 16), torch.randn(5, 2, 16)
    m = inter.blocks[0](image[:, 0] + text[:, 0])
    assert torch.allclose(inter(text, image), inter.blocks[1](m + image[:, 1] + text[:, 1]))


def test_ablation_config_errors():
    for ablate, message in [(["intra", "inter"], "leaves nothing"), (["fusion"], "is not one of")]:
        with pytest.raises(ConfigError, match=message):
            _ablation_run(ablate)
