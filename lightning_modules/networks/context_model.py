"""Channel-wise autoregressive entropy parameters with latent residual prediction (ChARM, design §3.5).

``y`` is split into ``num_slices`` channel slices. Slice ``k`` is modelled from the hyper-synthesis output and
the *first* ``min(k, max_support)`` reconstructed slices::

    mean_support_k  = [μ_h, ŷ_0 … ŷ_{s-1}]   → mean transform  → μ_k
    scale_support_k = [σ_h, ŷ_0 … ŷ_{s-1}]   → scale transform → σ_k (raw; floored at 0.11 later)
    ŷ_k = Q(y_k; μ_k)                          (quantiser supplied by the caller)
    ŷ_k += 0.5·tanh(lrp_k([mean_support_k, ŷ_k]))

The loop is written once (:meth:`ChannelContextModel.run`); training, compress and decompress differ only in
the ``quantize_slice`` callback (noise/STE, rounding, or rANS decoding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class SliceTransform(nn.Module):
    """``Conv5×5 → ReLU → Conv5×5 → ReLU → Conv3×3`` (names ``model.0/2/4``)."""

    def __init__(self, in_ch: int, out_ch: int, hidden_ch: tuple[int, int] = (224, 128)) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(in_ch, hidden_ch[0], 5, padding=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_ch[0], hidden_ch[1], 5, padding=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_ch[1], out_ch, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


QuantizeSlice = Callable[[int, Tensor, Tensor], Tensor]
"""``(k, μ_k, σ_k) → ŷ_k`` before LRP."""


@dataclass
class ContextOutput:
    """Per-slice entropy parameters concatenated over channels, and ``ŷ`` including LRP."""

    y_hat: Tensor
    means: Tensor
    scales: Tensor


class ChannelContextModel(nn.Module):
    def __init__(
        self,
        y_ch: int = 192,
        hyper_ch: int = 128,
        num_slices: int = 6,
        max_support: int = 4,
        hidden_ch: tuple[int, int] = (224, 128),
        lrp_scale: float = 0.5,
    ) -> None:
        super().__init__()
        if y_ch % num_slices:
            raise ValueError(f"y_ch={y_ch} is not divisible by num_slices={num_slices}")
        self.num_slices = num_slices
        self.max_support = max_support
        self.slice_ch = y_ch // num_slices
        self.lrp_scale = lrp_scale
        support_ch = [hyper_ch + self.slice_ch * min(k, max_support) for k in range(num_slices)]
        self.mean_slice_transforms = nn.ModuleList([SliceTransform(c, self.slice_ch, hidden_ch) for c in support_ch])
        self.scale_slice_transforms = nn.ModuleList([SliceTransform(c, self.slice_ch, hidden_ch) for c in support_ch])
        self.lrp_slice_transforms = nn.ModuleList(
            [SliceTransform(c + self.slice_ch, self.slice_ch, hidden_ch) for c in support_ch]
        )

    def run(self, hyper_out: Tensor, quantize_slice: QuantizeSlice) -> ContextOutput:
        hyper_mean, hyper_scale = hyper_out.chunk(2, dim=1)
        y_hat_slices: list[Tensor] = []
        means: list[Tensor] = []
        scales: list[Tensor] = []
        for k in range(self.num_slices):
            support = y_hat_slices[: min(k, self.max_support)]
            mean_support = torch.cat([hyper_mean, *support], dim=1)
            mu = self.mean_slice_transforms[k](mean_support)
            sigma = self.scale_slice_transforms[k](torch.cat([hyper_scale, *support], dim=1))
            y_hat_k = quantize_slice(k, mu, sigma)
            lrp = self.lrp_slice_transforms[k](torch.cat([mean_support, y_hat_k], dim=1))
            y_hat_slices.append(y_hat_k + self.lrp_scale * torch.tanh(lrp))
            means.append(mu)
            scales.append(sigma)
        return ContextOutput(torch.cat(y_hat_slices, 1), torch.cat(means, 1), torch.cat(scales, 1))

    def slice_of(self, x: Tensor, k: int) -> Tensor:
        return x[:, k * self.slice_ch : (k + 1) * self.slice_ch]
