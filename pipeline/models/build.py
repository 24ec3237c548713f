"""A resolved run (pipeline.config.resolve_run) -> its Recommender, as the method registry says."""
from pathlib import Path

import pyarrow as pa
import torch
from safetensors.torch import load_file
from torch import nn

from pipeline.cache import check_item_embeddings, item_columns, read_states
from pipeline.config import run_dir
from pipeline.data import DataError
from pipeline.methods import method
from pipeline.models.cached import CachedTower
from pipeline.models.item_encoder import ItemEncoderConfig, TowerShape
from pipeline.models.kinds import ITEM_ENCODER_CLASSES, USER_ENCODER_CLASSES
from pipeline.models.recommender import Recommender
from pipeline.models.user_encoder import UserEncoderConfig
from pipeline.runtime import device


def build_model(run: dict, num_items: int, items: pa.Table | None = None, caches: dict | None = None) -> Recommender:
    """The run's model. Cached methods read `caches` ({tower: states [N+1, K, D]} from
    pipeline.cache.read_states; without them the model can load its weights but not embed
    items); uncached methods load their backbones and prepare `items`' inputs."""
    m = method(run["method"])
    if not m.trains:
        raise ValueError(f"method '{run['method']}' has no model")
    t = run["train"]
    shapes = {name: TowerShape(len(tower["kept_states"]), tower["hidden_size"])
              for name, tower in run["towers"].items()}
    ablate = run.get("ablate", [])
    item_cfg = ItemEncoderConfig(text=shapes.get("text"), image=shapes.get("image"), embed_dim=t["embed_dim"],
                                 sanb_dim=t["sanb_dim"], gate_temperature=t["gate_temperature"],
                                 intra="intra" not in ablate, inter="inter" not in ablate,
                                 gated="gate" not in ablate, num_items=num_items, init=t["init"])
    item_encoder = ITEM_ENCODER_CLASSES[m.item_encoder](item_cfg)

    towers = nn.ModuleDict()
    if m.uncached:
        if items is None:
            raise ValueError(f"method '{run['method']}' runs its backbones: build_model needs the item table")
        from pipeline.models.live import LiveTower  # transformers is imported only where backbones run

        for name, tower in run["towers"].items():
            records = items.select(item_columns(tower["settings"])).to_pylist()
            towers[name] = LiveTower(tower["settings"], tower["kept_states"], records, m.adapt, name)
    elif caches is not None:
        towers.update({name: CachedTower(states) for name, states in caches.items()})

    user_cfg = UserEncoderConfig(dim=t["embed_dim"], layers=t["user_layers"], heads=t["user_heads"],
                                 max_len=t["max_history"], dropout=t["dropout"], init=t["init"])
    return Recommender(item_encoder, USER_ENCODER_CLASSES[m.user_encoder](user_cfg), towers, loss=t["loss"],
                       last_position_only=t["windows"] == "all")


LR_GROUPS = ("user", "image", "text", "adapter_image", "adapter_text")


def learning_rates(t: dict) -> dict[str, float]:
    """The learning rate of each group a module can declare (Recommender.optimizer_groups):
    train.lr_<group>, times train.lr_scale."""
    return {g: t[f"lr_{g}"] * t["lr_scale"] for g in LR_GROUPS}


def make_optimizer(model: Recommender, t: dict, dev: torch.device) -> torch.optim.Adam:
    """Adam without weight decay over the model's learning-rate groups (fused on a GPU)."""
    return torch.optim.Adam(model.optimizer_groups(learning_rates(t)), weight_decay=0.0, fused=dev.type == "cuda")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def trained_run(run: dict, results: Path) -> Path:
    """The folder of a run's trained model (its seed's) in a dataset's results, checked to exist."""
    model_dir = run_dir(results, run["run"], run["train"]["seed"])
    if not (model_dir / "model.safetensors").exists():
        raise DataError(f"{model_dir / 'model.safetensors'} does not exist: train the run first "
                        f"(snakemake --cores N {results}/{run['run']}.json)")
    return model_dir


def load_model(run: dict, items: pa.Table, model_dir: Path) -> tuple[Recommender, int]:
    """A trained run's model over the current catalogue, in eval mode, and the number of items
    it can embed. Content models embed every item of `items`, also items added after training
    (their cached states go through the trained towers); an ID model knows only the items it
    was trained with, a prefix of the catalogue."""
    m = method(run["method"])
    weights = load_file(str(model_dir / "model.safetensors"))
    known = items.num_rows
    if m.learns_ids:
        known = weights["item_encoder.embedding.weight"].shape[0] - 1
        if known > items.num_rows:
            raise ValueError(f"{model_dir} was trained on {known} items; the catalogue has only {items.num_rows}")
    caches = read_states(run, items, run["train"]["cache_memory_mb"])
    model = build_model(run, known, items, caches).to(device())
    model.load_state_dict(weights)
    return model.eval(), known


def model_scorer(model: Recommender, item_embs: torch.Tensor):
    """A model's scorer for pipeline.metrics.rank_split: left-padded histories [U, L] (numpy) ->
    columns(lo, hi) -> scores [U, hi - lo] of items lo..hi-1, dot products of the users' last
    states (computed once per block) with item_embs [K+1, d]. Items past K, which an ID model was
    not trained with, score -inf (and count as padding in a history): it cannot recommend them."""
    known = len(item_embs) - 1

    @torch.no_grad()
    def score(inputs):
        inputs = torch.as_tensor(inputs, device=item_embs.device)
        inputs = inputs.masked_fill(inputs > known, 0)
        states = model.ranking_states(item_embs, inputs)  # [U, d]

        def columns(lo: int, hi: int) -> torch.Tensor:
            scores = states @ item_embs[lo:hi].T  # [U, min(hi, K+1) - lo]; item_embs[0:] is item_embs itself
            unknown = hi - lo - scores.shape[1]
            if unknown:
                scores = torch.cat([scores, scores.new_full((len(scores), unknown), -torch.inf)], dim=1)
            return scores

        return columns

    return score


def load_scorer(run: dict, items: pa.Table, item_counts, model_dir: Path | None):
    """A scorer (pipeline.metrics.Columns) over the catalogue `items`, for a trained run (its
    caches and model_dir/model.safetensors; model_scorer) or popularity (training counts)."""
    if not method(run["method"]).trains:  # popularity
        counts = torch.as_tensor(item_counts, dtype=torch.float32)  # [N+1]
        return lambda inputs: lambda lo, hi: counts[lo:hi].repeat(len(inputs), 1)
    model, known = load_model(run, items, model_dir)
    item_embs = model.item_embeddings(known)  # [known + 1, d]
    check_item_embeddings(item_embs, str(model_dir), "the model or the caches are broken: train again")
    return model_scorer(model, item_embs)
