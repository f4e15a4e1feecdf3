"""Minnen-2020 hyper-analysis and two-branch hyper-synthesis (design §3.4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .elic import conv, deconv


class HyperEncoder(nn.Module):
    """``y → z``: 3×3/s1, 5×5/s2, 5×5/s2 convolutions with ReLU, applied to ``y`` itself (not ``|y|``)."""

    def __init__(self, y_ch: int = 192, hidden_ch: tuple[int, int] = (320, 256), z_ch: int = 192) -> None:
        super().__init__()
        self.conv1 = conv(y_ch, hidden_ch[0], kernel=3, stride=1)
        self.conv2 = conv(hidden_ch[0], hidden_ch[1])
        self.conv3 = conv(hidden_ch[1], z_ch)

    def forward(self, y: Tensor) -> Tensor:
        return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(y)))))  # (N, z_ch, H/64, W/64)


class HyperSynthesisBranch(nn.Module):
    """``ConvT 5×5/s2 → ReLU → ConvT 5×5/s2 → ReLU → ConvT 3×3/s1``, no output activation."""

    def __init__(self, z_ch: int = 192, hidden_ch: tuple[int, int] = (192, 256), out_ch: int = 128) -> None:
        super().__init__()
        self.conv1 = deconv(z_ch, hidden_ch[0])
        self.conv2 = deconv(hidden_ch[0], hidden_ch[1])
        self.conv3 = deconv(hidden_ch[1], out_ch, kernel=3, stride=1)

    def forward(self, z_hat: Tensor) -> Tensor:
        return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(z_hat)))))


class HyperDecoder(nn.Module):
    """``ẑ → [μ_hyper, σ_hyper]`` from two independent branches (mean first)."""

    def __init__(self, z_ch: int = 192, hidden_ch: tuple[int, int] = (192, 256), out_ch: int = 128) -> None:
        super().__init__()
        self.hd_mu = HyperSynthesisBranch(z_ch, hidden_ch, out_ch)
        self.hd_std = HyperSynthesisBranch(z_ch, hidden_ch, out_ch)

    def forward(self, z_hat: Tensor) -> Tensor:
        return torch.cat([self.hd_mu(z_hat), self.hd_std(z_hat)], dim=1)  # (N, 2·out_ch, H/16, W/16)
