"""The recommender: towers -> item encoder -> user encoder; score(user, item) = <user state, item>.

Like RecBole's model classes it owns its loss (calculate_loss), what full ranking scores with
(item_embeddings, and ranking_states: a user's score of an item is their dot product, computed by
pipeline.metrics in blocks of users and items) and its optimiser groups (each module declares its
learning-rate group with an `lr_group` attribute; undeclared modules are in `user`).
"""
import torch
from torch import nn
from tqdm import tqdm

from pipeline.models.loss import full_softmax_ce, in_batch_debiased_ce


class Recommender(nn.Module):
    """loss: `in-batch` (debiased, over the batch's items; the paper's eq. 6-7) or `full` (softmax
    over every item). last_position_only: a training window counts only its last position (the
    windows are every prefix of a sequence, RecBole's augmentation); otherwise every position."""

    def __init__(self, item_encoder: nn.Module, user_encoder: nn.Module, towers: nn.ModuleDict | None = None,
                 loss: str = "in-batch", last_position_only: bool = False):
        super().__init__()
        if loss not in ("in-batch", "full"):
            raise ValueError(f"unknown loss {loss!r}")
        self.loss, self.last_position_only = loss, last_position_only
        # {tower: item ids [B] -> kept states [B, K, D]}: cached (CachedTower) or backbones in the
        # loop (LiveTower); empty for the ID baselines, or before a cached run's caches are attached.
        self.towers = towers if towers is not None else nn.ModuleDict()
        self.item_encoder = item_encoder
        self.user_encoder = user_encoder

    def embed_items(self, ids: torch.Tensor) -> torch.Tensor:  # [B] -> [B, d]
        return self.item_encoder(ids, {name: tower(ids) for name, tower in self.towers.items()})

    def user_states(self, item_embs: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        # item_embs [B, L, d] of the left-padded sequence `items` [B, L] -> [B, L, d]
        return self.user_encoder(item_embs, items != 0)

    def calculate_loss(self, windows: torch.Tensor, log_pop: torch.Tensor) -> torch.Tensor:
        """The loss of training windows [B, L+1]: position t's state predicts item t+1.
        log_pop [N+1]: log training frequency of each item (the in-batch loss's debiasing)."""
        rows = windows[:, :-1] != 0  # [B, L] positions holding an item
        if self.last_position_only:
            rows[:, :-1] = False
        if self.loss == "in-batch":
            unique, inverse = torch.unique(windows, return_inverse=True)
            embs = self.embed_items(unique)[inverse]  # [B, L+1, d], each item embedded once
            states = self.user_states(embs[:, :-1], windows[:, :-1])  # [B, L, d]
            return in_batch_debiased_ce(states, embs, windows, log_pop, rows)
        items = self.embed_items(torch.arange(len(log_pop), device=windows.device))  # [N+1, d]
        states = self.user_states(items[windows[:, :-1]], windows[:, :-1])  # [B, L, d]
        return full_softmax_ce(states[rows], items, windows[:, 1:][rows])

    @torch.no_grad()
    def item_embeddings(self, num_items: int, batch: int = 4096, progress: str | None = None) -> torch.Tensor:
        """Every item's embedding [N+1, d], row 0 = padding. progress: a progress bar's label."""
        batch = min([batch] + [getattr(t, "max_batch", batch) for t in self.towers.values()])
        ids = torch.arange(num_items + 1, device=self.device)
        starts = tqdm(range(0, len(ids), batch), desc=progress, unit="batch", disable=progress is None)
        return torch.cat([self.embed_items(ids[i:i + batch]) for i in starts])

    @torch.no_grad()
    def ranking_states(self, item_embs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Left-padded histories [U, L] -> the last position's state [U, d], which scores item i
        as <state, item_embs[i]>."""
        return self.user_states(item_embs[inputs], inputs)[:, -1]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def optimizer_groups(self, lrs: dict[str, float]) -> list[dict]:
        """Trainable parameters by the learning-rate group of the nearest module declaring one."""
        groups: dict[str, list] = {}

        def visit(module: nn.Module, group: str):
            group = getattr(module, "lr_group", group)
            for p in module.parameters(recurse=False):
                if p.requires_grad:
                    groups.setdefault(group, []).append(p)
            for child in module.children():
                visit(child, group)

        visit(self, "user")
        return [{"params": ps, "lr": lrs[g], "name": g} for g, ps in groups.items()]


def train_step(model: Recommender, optimizer: torch.optim.Optimizer, windows: torch.Tensor,
               log_pop: torch.Tensor) -> torch.Tensor:
    """One optimisation step on training windows [B, L+1]; returns the loss, detached and on the
    model's device (reading it would wait for a GPU: callers read an epoch's losses at once)."""
    loss = model.calculate_loss(windows, log_pop)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()
