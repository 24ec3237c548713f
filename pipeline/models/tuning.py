"""How the uncached baselines adapt a backbone that runs inside every training step (Table III).

- fft: every backbone weight trains.
- bitfit: only the biases train.
- lora: rank-8 LoRA on the query, key and value projections, from peft (LoraConfig, get_peft_model).
- adapter: Houlsby bottleneck adapters after each block's attention output and feed-forward
  output projections (before the residual sum), and only those train. The maintained `adapters`
  library pins transformers ~4.57 and does not install beside transformers 5, so this is a small
  module of our own (HoulsbyAdapter below).
- frozen: nothing trains (IISAN with the backbones in the loop: `iisan-uncached`).
"""
import torch
from torch import nn

# Query, key and value projections (BERT names, then ViT and LLM names in transformers 5), and the
# sublayer output projections (attention output, feed-forward output) that Houlsby adapters follow.
ATTENTION_PROJECTIONS = ("query", "key", "value", "q_proj", "k_proj", "v_proj")
SUBLAYER_OUTPUTS = ("attention.output.dense", "output.dense", "o_proj", "down_proj", "mlp.fc2")


class HoulsbyAdapter(nn.Module):
    """A projection followed by a bottleneck adapter: y = W x; y + up(GELU(down(y))).
    up starts at zero, so the adapted backbone starts as the pretrained one."""

    def __init__(self, projection: nn.Linear, bottleneck: int):
        super().__init__()
        self.projection = projection
        self.down = nn.Linear(projection.out_features, bottleneck)
        self.up = nn.Linear(bottleneck, projection.out_features)
        nn.init.normal_(self.down.weight, std=0.01)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D_in] -> [B, T, D_out]
        y = self.projection(x)
        return y + self.up(nn.functional.gelu(self.down(y)))


def adapter_modules(model: nn.Module) -> list[nn.Module]:
    """The modules a method added to the backbone (Houlsby adapters, LoRA layers): their
    parameters train at the adapter learning rate, as the reference groups `adapter` and `lora`."""
    found = [m for m in model.modules() if isinstance(m, HoulsbyAdapter)]
    if any("lora_" in name for name, _ in model.named_parameters()):
        from peft.tuners.lora import LoraLayer

        found += [m for m in model.modules() if isinstance(m, LoraLayer)]
    return found


def _matching(model: nn.Module, suffixes: tuple[str, ...]) -> list[str]:
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.endswith(suffixes)]


def add_houlsby_adapters(model: nn.Module, bottleneck: int) -> int:
    """Wrap every sublayer output projection with an adapter; returns how many were added."""
    names = _matching(model, SUBLAYER_OUTPUTS)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, HoulsbyAdapter(getattr(parent, child), bottleneck))
    return len(names)


def _freeze_pooler(model: nn.Module) -> None:
    pooler = getattr(model, "pooler", None)
    if isinstance(pooler, nn.Module):
        pooler.requires_grad_(False)


def prepare_backbone(model: nn.Module, method: str, lora_rank: int = 8, adapter_dim: int = 64) -> nn.Module:
    """The backbone with exactly the parameters `method` trains left trainable. A pooler head is
    never trained: no hidden state goes through it."""
    if method == "fft":
        model.requires_grad_(True)
        _freeze_pooler(model)
        return model
    model.requires_grad_(False)
    if method == "frozen":
        return model
    if method == "bitfit":
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.requires_grad_(True)
        _freeze_pooler(model)
        return model
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = sorted({name.rsplit(".", 1)[-1] for name in _matching(model, ATTENTION_PROJECTIONS)})
        if not targets:
            raise ValueError(f"{type(model).__name__}: no attention projections named {ATTENTION_PROJECTIONS}")
        return get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                                                target_modules=targets))
    if method == "adapter":
        if not add_houlsby_adapters(model, adapter_dim):
            raise ValueError(f"{type(model).__name__}: no sublayer output projections named {SUBLAYER_OUTPUTS}")
        for module in model.modules():
            if isinstance(module, HoulsbyAdapter):
                module.down.requires_grad_(True)
                module.up.requires_grad_(True)
        return model
    raise ValueError(f"unknown adaptation method '{method}'")
