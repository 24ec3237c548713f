"""Side-adapted networks (paper sections III-C, III-D): SANBs, gates, intra and inter towers."""
import torch
from torch import nn


class SANB(nn.Module):
    """Side-adapted network block: Linear(d -> r) -> ReLU -> Linear(r -> d) + residual."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        for linear in (self.down, self.up):  # the reference's adapter init
            nn.init.normal_(linear.weight, std=0.01)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, d] -> [B, d]
        return x + self.up(torch.relu(self.down(x)))


class Gate(nn.Module):
    """Learnable scalar mix weight sigmoid(p / T); p starts at 0, so the gate starts at 0.5."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.param = nn.Parameter(torch.zeros(()))
        self.temperature = temperature

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.param / self.temperature)


def mix(gate: Gate | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """g * a + (1 - g) * b; without a gate (the w/o-gate ablation) the reference sums a + b."""
    if gate is None:
        return a + b
    g = gate()
    return g * a + (1 - g) * b


class IntraSAN(nn.Module):
    """One modality's tower: x_k = g_k * h_k + (1 - g_k) * s_{k-1}; s_k = SANB_k(x_k); s_{-1} = 0.
    gated=False: x_k = h_k + s_{k-1}, as the reference's un-gated branch."""

    def __init__(self, num_states: int, dim: int, bottleneck: int, temperature: float, gated: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(SANB(dim, bottleneck) for _ in range(num_states))
        self.gates = nn.ModuleList(Gate(temperature) for _ in range(num_states)) if gated else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [B, K, d] -> [B, d]
        s = torch.zeros_like(h[:, 0])
        for k, block in enumerate(self.blocks):
            s = block(mix(self.gates[k] if self.gates else None, h[:, k], s))
        return s


class InterSAN(nn.Module):
    """Image-text tower: m_k = SANB_k(m_{k-1} + g_k * h_img_k + (1 - g_k) * X_k).

    X_k is the text state (IISAN-VS) or DTL_k of the wider modality's state (IISAN-VA): the
    SANBs run at the smaller width. gated=False sums the two states instead. It reads the frozen states, not the intra towers' outputs,
    and fuses the last `num_states` kept states of each tower.
    """

    def __init__(self, num_states: int, text_dim: int, image_dim: int, bottleneck: int, temperature: float,
                 gated: bool = True):
        super().__init__()
        self.dim = min(text_dim, image_dim)
        self.num_states = num_states

        def dtl(width):  # dimension transformation layers, one per block, only where widths differ
            if width == self.dim:
                return None
            return nn.ModuleList(nn.Linear(width, self.dim) for _ in range(num_states))

        self.text_dtl, self.image_dtl = dtl(text_dim), dtl(image_dim)
        self.blocks = nn.ModuleList(SANB(self.dim, bottleneck) for _ in range(num_states))
        self.gates = nn.ModuleList(Gate(temperature) for _ in range(num_states)) if gated else None

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        # text [B, Kt, Dt], image [B, Ki, Di] -> [B, min(Dt, Di)]
        text, image = text[:, -self.num_states:], image[:, -self.num_states:]
        m = text.new_zeros(text.shape[0], self.dim)
        for k, block in enumerate(self.blocks):
            x_text = self.text_dtl[k](text[:, k]) if self.text_dtl else text[:, k]
            x_image = self.image_dtl[k](image[:, k]) if self.image_dtl else image[:, k]
            m = block(m + mix(self.gates[k] if self.gates else None, x_image, x_text))
        return m
