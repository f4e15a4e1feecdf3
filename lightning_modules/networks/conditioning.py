"""Dual beta conditioning (design §2): Fourier features, the condition MLP and scale-shift ("FT") modules.

Data flow::

    beta_rate ─FE(21)─┐
                      ├─ concat(42) ─ Linear ─ ReLU ─ Linear ─> c (N, C, 1, 1)
    beta_vq ───FE(21)─┘

    FT(F, c) = F * (1 + scale(s)) + shift(s),   s = ReLU(shared(c))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

BetaLike = float | Tensor


@dataclass(frozen=True)
class BetaRange:
    """β_rate ∈ [0, rate_max], β_vq ∈ [0, vq_max]: an architecture argument, because the Fourier features divide by
    the maxima, so a model understands only the betas of its own range (``conf/network/*.yaml`` sets it; samplers,
    the codec and stage 2 read it from there or from the model)."""

    rate_max: float
    vq_max: float

    def contains(self, beta_rate: float, beta_vq: float) -> bool:
        return _inside(beta_rate, self.rate_max) and _inside(beta_vq, self.vq_max)

    def check(self, beta_rate: float, beta_vq: float) -> None:
        """Raise ``ValueError`` naming the beta that lies outside (or is not finite)."""
        for name, value, high in (("beta_rate", beta_rate, self.rate_max), ("beta_vq", beta_vq, self.vq_max)):
            if not _inside(value, high):
                raise ValueError(f"{name} must lie in [0, {high}] for this model, got {value}")


def _inside(value: float, high: float) -> bool:
    return math.isfinite(value) and 0.0 <= value <= high


PAPER_BETA_RANGE = BetaRange(rate_max=3.0, vq_max=3.5)
"""The paper's ranges; the default for model files written before the range was recorded in them."""


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

    def __init__(self, cond_ch: int = 128, num_freqs: int = 10, beta_range: BetaRange = PAPER_BETA_RANGE) -> None:
        in_features = 2 * (2 * num_freqs + 1)
        super().__init__(nn.Linear(in_features, cond_ch), nn.ReLU(inplace=True), nn.Linear(cond_ch, cond_ch))
        self.num_freqs = num_freqs
        self.beta_range = beta_range

    def condition(self, beta_rate: BetaLike, beta_vq: BetaLike) -> Tensor:
        """Condition vector (N, cond_ch); N = 1 for scalar betas."""
        rate = fourier_features(beta_rate, self.beta_range.rate_max, self.num_freqs)
        vq = fourier_features(beta_vq, self.beta_range.vq_max, self.num_freqs)
        n = max(rate.shape[0], vq.shape[0])
        features = torch.cat([rate.expand(n, -1), vq.expand(n, -1)], dim=1)
        weight = self[0].weight
        return self(features.to(weight.device, weight.dtype))

    @torch.no_grad()
    def reserve_rate_channel(self) -> None:
        """Make condition channel 0 exactly ``u = β_rate / β_rate,max`` ∈ [0, 1] (the rate-gain start, design §4.5).

        Feature 0 is ``b = 2u − 1``, so hidden unit 0 = ReLU(b/2 + 1/2) = u and output 0 copies it; the other units
        keep their random weights (they may read ``u`` too).
        """
        first, second = self[0], self[2]
        first.weight[0].zero_()
        first.weight[0, 0] = 0.5
        first.bias[0] = 0.5
        second.weight[0].zero_()
        second.weight[0, 0] = 1.0
        second.bias[0] = 0.0


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

    @torch.no_grad()
    def start_as(self, gain: float) -> None:
        """Zero the output convolutions so that, whatever the betas, ``forward(x) = gain · x`` until training moves
        them (design §4.5: a short stage 1_2 then starts from stage 1_1's function instead of a perturbed one)."""
        for conv in (self.scale, self.shift):
            conv.weight.zero_()
            conv.bias.zero_()
        self.scale.bias.fill_(gain - 1.0)

    @torch.no_grad()
    def start_as_rate_gain(self, gain_at_max: float) -> None:
        """``forward(x) = (1 + (gain_at_max − 1)·u)·x`` with ``u`` condition channel 0: after
        :meth:`BetaConditionMLP.reserve_rate_channel` a gain falling linearly from 1 at β_rate = 0 to
        ``gain_at_max`` at β_rate,max, whatever β_vq (design §4.5)."""
        self.start_as(1.0)
        shared = self.shared[0]
        shared.weight[0].zero_()
        shared.weight[0, 0] = 1.0
        shared.bias[0] = 0.0
        self.scale.weight[:, 0] = gain_at_max - 1.0
