"""A backbone in the loop: item ids -> pooled kept states [B, K, D], computed at every step.

The uncached baselines (FFT, Adapter, LoRA, BitFit) and IISAN without its cache run their
backbones here instead of reading a Zarr store. Each item's model inputs (token ids, or the
processed cover) are prepared once; the forward passes are what every step pays for.
"""
import numpy as np
import torch
from torch import nn

from pipeline.backbone import Backbone, pooled_states
from pipeline.models.tuning import adapter_modules, prepare_backbone


def item_inputs(backbone: Backbone, records: list[dict], chunk: int = 256) -> tuple[dict, torch.Tensor]:
    """Model inputs of every item, row 0 = padding: token ids + mask [N+1, T], or pixels [N+1, 3, S, S]
    (float16); and which rows have no input [N+1] (padding, items without an image or caption)."""
    blank = torch.zeros(len(records) + 1, dtype=torch.bool)
    blank[0] = True
    if backbone.modality == "text":
        column = backbone.column
        blank[1:] = torch.tensor([r[column] is None for r in records])  # a caption that was not generated
        inputs = backbone.inputs([{column: ""}] + [{column: r[column] or ""} for r in records])[0]
        inputs["attention_mask"][0, 0] = 1  # the padding row sees one token: no all-masked softmax
        return inputs, blank
    pixels = None
    for lo in range(0, len(records), chunk):
        part = records[lo:lo + chunk]
        inputs, status = backbone.inputs(part)
        if inputs is None:
            continue
        values = inputs["pixel_values"]  # [B_ok, 3, S, S]
        if pixels is None:
            pixels = torch.zeros((len(records) + 1, *values.shape[1:]), dtype=torch.float16)
        ok = np.array([s == "ok" for s in status])
        pixels[torch.as_tensor(1 + lo + np.flatnonzero(ok))] = values.to(torch.float16)
        blank[torch.as_tensor(1 + lo + np.flatnonzero(~ok), dtype=torch.long)] = True
    if pixels is None:
        raise ValueError("no item has a readable image: the image tower has nothing to see")
    return {"pixel_values": pixels}, blank


class LiveTower(nn.Module):
    """One tower's backbone (`slot`: text or image), adapted by `method` (see tuning.py), pooled
    at the kept states."""

    max_batch = 256  # items per forward pass when every item is embedded (evaluation)

    def __init__(self, settings: dict, states: list[int], records: list[dict], method: str, slot: str):
        super().__init__()
        backbone = Backbone(settings, states)
        self.states, self.pool = list(states), backbone.pool
        # CPU tensors, not part of the checkpoint. Blank rows get zero states, as the cache gives
        # padding and items without a readable image (encode.missing_image: zeros).
        self.inputs, self.blank = item_inputs(backbone, records)
        self.model = prepare_backbone(backbone.model, method)
        self.lr_group = slot  # the backbone's own weights (fft, bitfit): the tower's rate
        for module in adapter_modules(self.model):
            module.lr_group = f"adapter_{slot}"
        self.trainable = any(p.requires_grad for p in self.model.parameters())

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:  # a frozen backbone behaves as when its states were cached
            self.model.eval()
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [B] -> [B, K, D]
        device = next(self.model.parameters()).device
        rows = ids.cpu()
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            states = pooled_states(self.model, {k: v[rows] for k, v in self.inputs.items()}, self.states,
                                   self.pool, device)
        return states.masked_fill(self.blank[rows].to(device)[:, None, None], 0.0)  # [B, K, D]
