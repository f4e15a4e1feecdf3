"""Dual beta conditioning (design §2): Fourier features, the condition MLP and scale-shift ("FT") modules.

Data flow::

    beta_rate ─FE(21)─┐
                      ├─ concat(42) ─ Linear ─ ReLU ─ Linear ─> c (N, C, 1, 1)
    beta_vq ───FE(21)─┘

    FT(F, c) = F * (1 + scale(s)) + shift(s),   s = ReLU(shared(c))
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BetaLike = float | Tensor

BETA_RATE_MAX = 3.0
BETA_VQ_MAX = 3.5


def as_beta_tensor(beta: BetaLike) -> Tensor:
    """A Python number becomes a batch of one; a tensor becomes a 1-D float32 CPU tensor."""
    if isinstance(beta, Tensor):
        return beta.detach().to("cpu", torch.float32).reshape(-1)
    return torch.tensor([float(beta)], dtype=torch.float32)


def fourier_features(beta: BetaLike, beta_max: float, num_freqs: int = 10) -> Tensor:
    """``[b, sin(b·2^k)…, cos(b·2^k)…]`` with ``b = 2(β/β_max − ½)``, no π (design §2.1).

    Computed on the CPU in float32 because sin/cos of arguments up to 512 rad are only bit-reproducible there.
    Returns (N, 2·num_freqs + 1) on the CPU.
    """
    beta = as_beta_tensor(beta)
    if bool(((beta < 0) | (beta > beta_max)).any()):
        raise ValueError(f"beta must lie in [0, {beta_max}], got {beta.tolist()}")
    b = (beta / beta_max - 0.5) * 2.0
    scaled = [b * float(2**k) for k in range(num_freqs)]
    return torch.stack([b, *[torch.sin(s) for s in scaled], *[torch.cos(s) for s in scaled]], dim=1)


class BetaConditionMLP(nn.Sequential):
    """``Linear → ReLU → Linear`` from the 42 Fourier features of (β_rate, β_vq), rate features first.

    A ``Sequential`` so that its parameters keep the reference names ``mlp.0`` / ``mlp.2``.
    """

    def __init__(
        self,
        cond_ch: int = 128,
        num_freqs: int = 10,
        beta_rate_max: float = BETA_RATE_MAX,
        beta_vq_max: float = BETA_VQ_MAX,
    ) -> None:
        in_features = 2 * (2 * num_freqs + 1)
        super().__init__(nn.Linear(in_features, cond_ch), nn.ReLU(inplace=True), nn.Linear(cond_ch, cond_ch))
        self.num_freqs = num_freqs
        self.beta_rate_max = beta_rate_max
        self.beta_vq_max = beta_vq_max

    def condition(self, beta_rate: BetaLike, beta_vq: BetaLike) -> Tensor:
        """Condition vector (N, cond_ch); N = 1 for scalar betas."""
        rate = fourier_features(beta_rate, self.beta_rate_max, self.num_freqs)
        vq = fourier_features(beta_vq, self.beta_vq_max, self.num_freqs)
        n = max(rate.shape[0], vq.shape[0])
        features = torch.cat([rate.expand(n, -1), vq.expand(n, -1)], dim=1)
        weight = self[0].weight
        return self(features.to(weight.device, weight.dtype))


class BetaScaleShift(nn.Module):
    """FiLM-style modulation of a feature map by the beta condition (design §2.3)."""

    def __init__(self, feat_ch: int, cond_ch: int = 128) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(cond_ch, cond_ch, 1), nn.ReLU(inplace=True))
        self.scale = nn.Conv2d(cond_ch, feat_ch, 1)
        self.shift = nn.Conv2d(cond_ch, feat_ch, 1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        s = self.shared(cond)  # cond: (N, C, 1, 1)
        return x * (1 + self.scale(s)) + self.shift(s)
