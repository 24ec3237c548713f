"""Building a run's model, reading its caches, and scoring users against all items.

Shared by train (validation during training) and evaluate.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from pipeline.cache import CacheMismatch, check_attributes, item_columns, items_fingerprint, open_store
from pipeline.metrics import history_mask, per_user_metrics, summarise, target_ranks
from pipeline.models.item_encoder import (
    FrozenItemEncoder,
    IDItemEncoder,
    IISANItemEncoder,
    ItemEncoderConfig,
    TowerShape,
)
from pipeline.config import UNCACHED_METHODS
from pipeline.models.recommender import Recommender
from pipeline.models.user_encoder import UserEncoderConfig


def build_model(run: dict, num_items: int, items: pa.Table | None = None) -> Recommender:
    """The run's model; uncached methods also load their backbones and prepare `items`' inputs."""
    t = run["train"]
    shapes = {name: TowerShape(len(tower["kept_states"]), tower["hidden_size"])
              for name, tower in run["towers"].items()}
    ablate = run.get("ablate", [])
    item_cfg = ItemEncoderConfig(text=shapes.get("text"), image=shapes.get("image"), embed_dim=t["embed_dim"],
                                 sanb_dim=t["sanb_dim"], gate_temperature=t["gate_temperature"],
                                 intra="intra" not in ablate, inter="inter" not in ablate,
                                 learn_gates="gate" not in ablate)
    method, backbones = run["method"], None
    if method in ("sasrec-id", "gru4rec-id"):
        item_encoder = IDItemEncoder(num_items, t["embed_dim"])
    elif method in ("iisan", "iisan-uncached"):
        item_encoder = IISANItemEncoder(item_cfg)
    else:  # frozen and the uncached baselines: the last state of each tower -> heads -> fusion
        item_encoder = FrozenItemEncoder(item_cfg)
    if method in UNCACHED_METHODS:
        if items is None:
            raise ValueError(f"method '{method}' runs its backbones: build_model needs the item table")
        from pipeline.models.live import LiveTower  # transformers is imported only where backbones run

        adapt = "frozen" if method == "iisan-uncached" else method
        backbones = nn.ModuleDict({
            name: LiveTower(tower["settings"], tower["kept_states"],
                            items.select(item_columns(tower["settings"])).to_pylist(), adapt)
            for name, tower in run["towers"].items()})
    user_cfg = UserEncoderConfig(dim=t["embed_dim"], layers=t["user_layers"], heads=t["user_heads"],
                                 max_len=t["max_history"], dropout=t["dropout"])
    return Recommender(item_encoder, user_cfg, user_encoder="gru" if method == "gru4rec-id" else "sasrec",
                       backbones=backbones)


def run_items(run: dict, items_parquet: Path) -> pa.Table:
    """The item table with the caption columns the run's towers read (their `captions` files)."""
    from pipeline.join_captions import read_items

    return read_items(items_parquet, sorted({t["captions"] for t in run["towers"].values() if "captions" in t}))


def param_groups(model: Recommender, t: dict) -> list[dict]:
    """The reference's learning rates: user encoder and fusion, image and inter side, text side."""
    groups = {"user": [], "image": [], "text": []}
    for name, p in model.named_parameters():
        if name.startswith(("item_encoder.", "backbones.text.")) and ".text." in name:
            groups["text"].append(p)
        elif name.startswith(("item_encoder.intra", "item_encoder.inter", "item_encoder.heads", "backbones.image.")):
            groups["image"].append(p)
        else:  # user encoder, fusion layer
            groups["user"].append(p)
    return [{"params": ps, "lr": t[f"lr_{g}"], "name": g} for g, ps in groups.items() if ps]


def load_caches(run: dict, items: pa.Table) -> dict[str, torch.Tensor]:
    """Each tower's cached states [N+1, K, D] (float16, in memory), checked against the run and
    the item table (with the text column the tower reads)."""
    caches = {}
    if run["method"] in UNCACHED_METHODS:  # their backbones run in the loop
        return caches
    for name, tower in run["towers"].items():
        if not Path(tower["cache"]).is_dir():
            raise CacheMismatch(f"{tower['cache']}: no cache; run the encode stage first")
        store = open_store(tower["cache"])
        expected = {key: tower[key] for key in ("model", "pooling", "kept_states", "hidden_size")}
        fingerprint = items_fingerprint(items, tower.get("column", "title"))
        check_attributes(dict(store.attrs), expected | {"complete": True, "items_fingerprint": fingerprint},
                         tower["cache"])
        caches[name] = torch.from_numpy(store["states"][:])
    return caches


def gather(caches: dict[str, torch.Tensor], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: states[ids].float() for name, states in caches.items()}


@torch.no_grad()
def all_item_embeddings(model: Recommender, caches: dict, num_items: int, batch: int = 4096) -> torch.Tensor:
    if model.backbones is not None:  # every item through the backbones: smaller batches
        batch = min(batch, 256)
    ids = torch.arange(num_items + 1, device=next(model.parameters()).device)
    return torch.cat([model.embed_items(ids[i:i + batch], gather(caches, ids[i:i + batch]))
                      for i in range(0, len(ids), batch)])


@torch.no_grad()
def model_scores(model: Recommender, item_embs: torch.Tensor, inputs: np.ndarray) -> torch.Tensor:
    """inputs [U, L] left-padded item indices -> scores [U, N+1] from the last position's state."""
    items = torch.as_tensor(inputs, device=item_embs.device)
    states = model.user_states(item_embs[items], items)[:, -1]  # [U, d]
    return states @ item_embs.T


def top_k(scores: torch.Tensor, histories: list, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k items per row of scores [U, N+1], excluding padding and each user's history."""
    scores = scores.detach().cpu().float().clone()
    scores[:, 0] = -torch.inf
    scores[history_mask(histories, scores.shape)] = -torch.inf
    return scores.topk(min(k, scores.shape[1] - 1), dim=1)  # values, item indices [U, k]


def ranking_metrics(score_fn, split, ks, protocols, batch: int = 1024) -> tuple[dict, dict]:
    """Summary and per-user metrics for every protocol; score_fn(rows) -> scores [len(rows), N+1]."""
    per_user = {p: {} for p in protocols}
    for lo in range(0, len(split.targets), batch):
        rows = slice(lo, lo + batch)
        scores = score_fn(rows)
        targets = torch.as_tensor(split.targets[rows])
        for p in protocols:
            ranks = target_ranks(scores, targets, split.histories[rows], p)
            for name, values in per_user_metrics(ranks, ks).items():
                per_user[p].setdefault(name, []).append(values)
    per_user = {p: {k: np.concatenate(v) for k, v in m.items()} for p, m in per_user.items()}
    return {p: summarise(m) for p, m in per_user.items()}, per_user


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def run_arguments(description: str) -> argparse.ArgumentParser:
    """The command-line arguments shared by the train and evaluate stages."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run", type=json.loads, required=True, help="resolved run settings as JSON")
    parser.add_argument("--items", type=Path, required=True, help="items.parquet")
    parser.add_argument("--sequences", type=Path, required=True, help="sequences.parquet")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def parse_run_arguments(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
