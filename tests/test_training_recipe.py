"""The training recipe: the user encoder's initialisation, the ID baselines' loss and windows,
the learning-rate schedule, the convergence flag and seeds."""
import math

import pytest
import torch
from torch.nn import functional as F

from pipeline.config import ConfigError, load_config, resolve_run, run_seeds
from pipeline.data import make_splits
from pipeline.models.build import build_model
from pipeline.models.loss import full_softmax_ce
from pipeline.train import lr_factor

DATASET = {"d": {"format": "iisan-split", "users": "u", "items": "i"}}
ENCODERS = {"t": {"path": "x", "modality": "text", "layers": 6, "hidden_size": 384}}


def resolved(method, **train):
    cfg = load_config({"datasets": DATASET, "encoders": ENCODERS,
                       "runs": {"r": {"method": method, **({"text": "t"} if method == "iisan" else {}),
                                      "train": train}}})
    return resolve_run(cfg, "d", "r")


@pytest.mark.parametrize("method", ["iisan", "sasrec-id"])
def test_positions_start_at_the_scale_of_the_items(method):
    """At initialisation the position table's rows are within a small factor of the item
    embeddings' norm (left at nn.Embedding's N(0, 1) they were 100x an ID embedding's)."""
    torch.manual_seed(0)
    model = build_model(resolved(method), num_items=20825)
    if method == "iisan":
        items = model.item_encoder(None, {"text": torch.randn(256, 4, 384) * 0.5})  # MiniLM-like states
    else:
        items = model.item_encoder.embedding.weight[1:]
    positions = model.user_encoder.positions.weight
    ratio = positions.norm(dim=1).mean() / items.norm(dim=1).mean()
    assert 0.2 < ratio < 5, ratio


def test_user_encoder_follows_the_reference_modules():
    model = build_model(resolved("iisan"), num_items=5)
    block = model.user_encoder.blocks[0]
    assert block.qkv.bias is None and block.proj.bias is None  # bias-free Q, K, V and output
    assert isinstance(block.ffn[1], torch.nn.ReLU) and block.ffn[0].out_features == 4 * 64
    assert all(m.eps == 1e-6 for m in model.user_encoder.modules() if isinstance(m, torch.nn.LayerNorm))
    # xavier_normal_: std sqrt(2 / (fan_in + fan_out)); each of Q, K, V is its own 64 x 64
    q = block.qkv.weight[:64]
    assert q.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.1)
    assert block.ffn[0].bias.abs().max() == 0


def test_id_baselines_default_to_the_recbole_recipe_and_config_wins():
    t = resolved("sasrec-id")["train"]
    assert (t["init"], t["dropout"], t["lr_user"], t["loss"], t["windows"]) == ("normal", 0.5, 1e-3, "full", "all")
    assert resolved("iisan")["train"]["init"] == "xavier" and resolved("iisan")["train"]["loss"] == "in-batch"
    old = resolved("sasrec-id", init="xavier", dropout=0.1, lr_user=2e-4, loss="in-batch", windows="last")["train"]
    assert (old["init"], old["dropout"], old["loss"], old["windows"]) == ("xavier", 0.1, "in-batch", "last")
    cfg = load_config({"datasets": DATASET, "encoders": {}, "train": {"dropout": 0.3},
                       "runs": {"r": {"method": "sasrec-id"}}})
    assert resolve_run(cfg, "d", "r")["train"]["dropout"] == 0.3  # the config's train block wins too
    torch.manual_seed(0)
    weight = build_model(resolved("sasrec-id"), num_items=5000).item_encoder.embedding.weight
    assert weight[1:].std().item() == pytest.approx(0.02, rel=0.05) and not weight[0].any()


def test_full_softmax_equals_brute_force_in_value_and_gradient():
    torch.manual_seed(0)
    states = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    items = torch.randn(23, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, 23, (7,))
    loss = full_softmax_ce(states, items, targets, chunk=4)  # 6 chunks, the last one short
    logits = states @ items.T
    logits = torch.cat([torch.full_like(logits[:, :1], -torch.inf), logits[:, 1:]], dim=1)  # padding column
    brute = F.cross_entropy(logits, targets)
    assert loss.item() == pytest.approx(brute.item(), rel=1e-12)
    g1 = torch.autograd.grad(loss, (states, items))
    g2 = torch.autograd.grad(brute, (states, items))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g1, g2))
    assert torch.autograd.gradcheck(lambda s, i: full_softmax_ce(s, i, targets, chunk=5), (states, items))


def test_prefix_windows():
    splits = make_splits(["u", "v"], [[1, 2, 3, 4, 5, 6], [7, 8, 9]], 9, max_history=3, windows="all")
    # u trains on 1 2 3 4: windows end at 2, 3 and 4; v trains on 7 alone: no window
    assert splits.train_windows.tolist() == [[0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4]]
    last = make_splits(["u", "v"], [[1, 2, 3, 4, 5, 6], [7, 8, 9]], 9, max_history=3)
    assert last.train_windows.tolist() == [[1, 2, 3, 4]]


def test_prefix_windows_train_only_their_last_position():
    torch.manual_seed(0)
    run = resolved("sasrec-id", loss="in-batch")
    model = build_model(run, num_items=9).eval()
    windows = torch.tensor([[0, 0, 1, 2], [0, 1, 2, 3]])
    log_pop = torch.zeros(10)
    assert model.last_position_only
    loss = model.calculate_loss(windows, log_pop)
    model.last_position_only = False  # every position counts: a different mean
    assert model.calculate_loss(windows, log_pop).item() != pytest.approx(loss.item())
    model.loss, model.last_position_only = "full", True
    states = model.user_states(model.embed_items(windows[:, :-1].reshape(-1)).view(2, 3, -1), windows[:, :-1])
    items = model.embed_items(torch.arange(10))
    logits = states[:, -1] @ items.T
    logits[:, 0] = -torch.inf
    assert model.calculate_loss(windows, log_pop).item() == pytest.approx(F.cross_entropy(logits, windows[:, -1]).item())


def test_learning_rate_schedules():
    t = {"max_epochs": 10, "warmup_epochs": 1, "lr_schedule": "cosine", "lr_step_epochs": 3, "lr_step_gamma": 0.5}
    cosine = lr_factor(t, steps_per_epoch=4)
    assert [cosine(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # warm-up over the first epoch
    assert cosine(4) == 1.0 and cosine(4 + 18) == pytest.approx(0.5) and cosine(40) == pytest.approx(0.0)
    step = lr_factor(t | {"lr_schedule": "step"}, steps_per_epoch=4)
    assert step(4) == 1.0 and step(4 + 12) == 0.5 and step(4 + 24) == 0.25
    assert lr_factor(t | {"lr_schedule": "constant"}, 4)(0) == 1.0


def test_seeds():
    cfg = load_config({"datasets": DATASET, "encoders": {},
                       "runs": {"r": {"method": "sasrec-id", "seeds": [1, 2, 3]}, "s": {"method": "sasrec-id"}}})
    assert run_seeds(cfg, "r") == [1, 2, 3] and run_seeds(cfg, "s") == [12345]
    assert resolve_run(cfg, "d", "r")["train"]["seed"] == 1 and resolve_run(cfg, "d", "r", 3)["train"]["seed"] == 3
    with pytest.raises(ConfigError, match=r"run 'r' has no seed 4 \(its seeds: \[1, 2, 3\]\)"):
        resolve_run(cfg, "d", "r", 4)
