"""Item encoders: IISAN-Versa and the frozen backbone over cached per-layer states, and the
ID-embedding baseline. Each maps item ids [B] and their cached states {tower: [B, K, D]} to [B, d]."""
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.san import InterSAN, IntraSAN
from pipeline.models.user_encoder import init_weight


@dataclass
class TowerShape:
    num_states: int  # kept hidden states K
    dim: int  # hidden width D


@dataclass
class ItemEncoderConfig:
    text: TowerShape | None
    image: TowerShape | None
    embed_dim: int = 64
    sanb_dim: int = 64
    gate_temperature: float = 0.1
    intra: bool = True  # Table VI ablations: w/o intra-modality, w/o inter-modality, w/o gates
    inter: bool = True
    gated: bool = True  # False: the towers sum the two states a gate would mix (the reference's w/o gate)
    num_items: int = 0  # the ID encoder's embedding rows (besides padding)
    init: str = "xavier"  # the ID embeddings' initialisation


class IISANItemEncoder(nn.Module):
    """e_item = FL([e_image : e_inter : e_text]) (eq. 1); each e is Linear(tower output -> d).

    Learning-rate groups (`lr_group`), as the reference's optimiser (Code_Cached/run.py, which
    groups by parameter name): text SANBs `adapter_text` (adapter_bert_lr), image and inter
    SANBs `adapter_image` (adapter_cv_lr), the image gates and head `image` (fine_tune_lr_image),
    the text head `text` (fine_tune_lr_text); the text and inter gates, the DTLs, the inter head
    and the fusion layer `user` (lr). The reference's heads are two Linears (e.g. fc_bert then
    bert_pre_fc, no activation between); one Linear here spans the same maps."""

    def __init__(self, cfg: ItemEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.intra = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for name in ("image", "text"):
            shape = getattr(cfg, name)
            if shape and cfg.intra:
                self.intra[name] = IntraSAN(shape.num_states, shape.dim, cfg.sanb_dim, cfg.gate_temperature,
                                            cfg.gated)
                self.heads[name] = nn.Linear(shape.dim, cfg.embed_dim)
                self.intra[name].blocks.lr_group = f"adapter_{name}"
                if cfg.gated:
                    self.intra[name].gates.lr_group = "image" if name == "image" else "user"
                self.heads[name].lr_group = name
        self.inter = None
        if cfg.text and cfg.image and cfg.inter:
            states = min(cfg.text.num_states, cfg.image.num_states)
            self.inter = InterSAN(states, cfg.text.dim, cfg.image.dim, cfg.sanb_dim, cfg.gate_temperature,
                                  cfg.gated)
            self.heads["inter"] = nn.Linear(self.inter.dim, cfg.embed_dim)
            self.inter.blocks.lr_group = "adapter_image"  # gates, DTLs and head: `user`
        if not self.heads:
            raise ValueError("the item encoder has no tower")
        self.fusion = nn.Linear(len(self.heads) * cfg.embed_dim, cfg.embed_dim)

    def forward(self, ids: torch.Tensor, states: dict[str, torch.Tensor]) -> torch.Tensor:
        # states: text [B, Kt, Dt], image [B, Ki, Di] -> [B, d]
        text, image = states.get("text"), states.get("image")
        parts = []
        if "image" in self.intra:
            parts.append(self.heads["image"](self.intra["image"](image)))
        if self.inter is not None:
            parts.append(self.heads["inter"](self.inter(text, image)))
        if "text" in self.intra:
            parts.append(self.heads["text"](self.intra["text"](text)))
        return self.fusion(torch.cat(parts, dim=-1))


class FrozenItemEncoder(nn.Module):
    """Frozen backbone baseline: each tower's last cached state -> Linear -> d, then the fusion
    layer. Heads and fusion train at the recommender's rate (`user`), as the reference's frozen
    and fine-tuned baselines train their classifier / fc heads."""

    def __init__(self, cfg: ItemEncoderConfig):
        super().__init__()
        self.heads = nn.ModuleDict({
            name: nn.Linear(getattr(cfg, name).dim, cfg.embed_dim)
            for name in ("image", "text") if getattr(cfg, name)
        })
        self.fusion = nn.Linear(len(self.heads) * cfg.embed_dim, cfg.embed_dim)

    def forward(self, ids: torch.Tensor, states: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [head(states[name][:, -1]) for name, head in self.heads.items()]  # [B, d] each
        return self.fusion(torch.cat(parts, dim=-1))


class IDItemEncoder(nn.Module):
    """The IDRec baselines' learned item-ID embeddings: no content at all. `init`: xavier (the
    reference's id_embedding) or normal (N(0, 0.02), RecBole's); the padding row is zero."""

    def __init__(self, cfg: ItemEncoderConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.num_items + 1, cfg.embed_dim, padding_idx=0)
        init_weight(self.embedding.weight.data, cfg.init)
        self.embedding.weight.data[0] = 0

    def forward(self, ids: torch.Tensor, states: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embedding(ids)  # [B] -> [B, d]
