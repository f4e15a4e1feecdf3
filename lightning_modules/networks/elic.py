"""ELIC-style analysis and synthesis transforms (design §3.1–3.3), with and without dual beta conditioning.

Analysis (dual-conditioned; ``FTi`` after every layer, VQ features injected at 1/8)::

    x ─conv1─FT0─block1─FT1─conv2─FT2─block2─FT3─attn2─FT4─conv3─FT5─(+proj[feat, ·])─block3─FT6
      ─conv4─FT7─attn4─FT8─> y                                     (N, 192, H/16, W/16)

Synthesis is used as a feature extractor only: ``FTi`` *before* every layer, stop after ``block3``::

    ŷ ─(init_fuse(ŷ)+ŷ)─FT0─attn1─FT1─conv1─FT2─block1[F_8]─FT3─conv2─FT4─attn2─FT5─block2[F_4]
      ─FT6─conv3─FT7─block3[F_2]          (conv4 and FT8 exist in the checkpoint but never run)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .conditioning import PAPER_BETA_RANGE, BetaConditionMLP, BetaLike, BetaRange, BetaScaleShift


def conv(in_ch: int, out_ch: int, kernel: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2)


def deconv(in_ch: int, out_ch: int, kernel: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, output_padding=stride - 1)


class BottleneckUnit(nn.Module):
    """``1×1 → ReLU → 3×3 → ReLU → 1×1`` plus identity (ELIC residual bottleneck)."""

    def __init__(self, ch: int, mid_ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(ch, mid_ch, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, mid_ch, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, ch, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x)


class ResidualBottleneckBlocks(nn.Module):
    """Three bottleneck units in sequence, no outer skip (names ``block0..block2``)."""

    def __init__(self, ch: int, mid_ch: int) -> None:
        super().__init__()
        self.block0 = BottleneckUnit(ch, mid_ch)
        self.block1 = BottleneckUnit(ch, mid_ch)
        self.block2 = BottleneckUnit(ch, mid_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.block2(self.block1(self.block0(x)))


class AttentionResidualUnit(nn.Module):
    """Cheng 2020 residual unit: ``1×1 → ReLU → 3×3 → ReLU → 1×1`` plus identity."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        half = ch // 2
        self.c1 = nn.Conv2d(ch, half, 1)
        self.c2 = nn.Conv2d(half, half, 3, padding=1)
        self.c3 = nn.Conv2d(half, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.c1(x))
        h = torch.relu(self.c2(h))
        return x + self.c3(h)


class SimplifiedAttention(nn.Module):
    """Cheng 2020 attention without the non-local op: ``x + trunk(x)·σ(conv(mask(x)))``."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.trunk_block = nn.Sequential(*[AttentionResidualUnit(ch) for _ in range(3)])
        self.attention_block = nn.Sequential(*[AttentionResidualUnit(ch) for _ in range(3)])
        self.conv = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.trunk_block(x) * torch.sigmoid(self.conv(self.attention_block(x)))


class ElicVqEncoder(nn.Module):
    """Analysis transform taking the image and the VQ side features (design §3.2).

    ``dual_conditioned=False`` is the stage-1_1 encoder: the same layers without MLP and FT modules, so that
    its parameter names are a subset of the dual encoder's.
    """

    layer_order = ("conv1", "block1", "conv2", "block2", "attn2", "conv3", "block3", "conv4", "attn4")

    def __init__(
        self,
        in_ch: int = 3,
        main_ch: int = 192,
        out_ch: int = 192,
        block_mid_ch: int = 96,
        vq_feat_ch: int = 260,
        cond_ch: int = 128,
        dual_conditioned: bool = True,
        fourier_freqs: int = 10,
        beta_range: BetaRange = PAPER_BETA_RANGE,
    ) -> None:
        super().__init__()
        self.dual_conditioned = dual_conditioned
        self.beta_range = beta_range
        self.conv1 = conv(in_ch, main_ch)
        self.block1 = ResidualBottleneckBlocks(main_ch, block_mid_ch)
        self.conv2 = conv(main_ch, main_ch)
        self.block2 = ResidualBottleneckBlocks(main_ch, block_mid_ch)
        self.attn2 = SimplifiedAttention(main_ch)
        self.conv3 = conv(main_ch, main_ch)
        self.projection = nn.Conv2d(vq_feat_ch + main_ch, main_ch, 3, padding=1)
        self.block3 = ResidualBottleneckBlocks(main_ch, block_mid_ch)
        self.conv4 = conv(main_ch, out_ch)
        self.attn4 = SimplifiedAttention(out_ch)
        if dual_conditioned:
            self.mlp = BetaConditionMLP(cond_ch, fourier_freqs, beta_range)
            self.beta_ft_list = nn.ModuleList(
                [BetaScaleShift(main_ch, cond_ch) for _ in range(len(self.layer_order) - 2)]
                + [BetaScaleShift(out_ch, cond_ch) for _ in range(2)]
            )

    def forward(
        self, x: Tensor, vq_feat: Tensor, beta_rate: BetaLike | None = None, beta_vq: BetaLike | None = None
    ) -> Tensor:
        cond = None
        if self.dual_conditioned:
            if beta_rate is None or beta_vq is None:
                raise ValueError("the dual-conditioned encoder needs beta_rate and beta_vq")
            cond = self.mlp.condition(beta_rate, beta_vq)[:, :, None, None]
        for i, name in enumerate(self.layer_order):
            x = getattr(self, name)(x)
            if cond is not None:
                x = self.beta_ft_list[i](x, cond)
            if name == "conv3":  # VQ injection after conv3/FT5, feat first: (N, 260+C, H/8, W/8)
                x = x + self.projection(torch.cat([vq_feat, x], dim=1))
        return x

    def start_conditioning_as_identity(self) -> None:
        """Every FT module passes its input through unchanged (see :meth:`BetaScaleShift.start_as`)."""
        for ft in self.beta_ft_list:
            ft.start_as(1.0)

    def start_conditioning_as_rate_gain(self, gain_at_max: float) -> None:
        """Identity everywhere except the last FT, which scales ``y`` by a gain falling from 1 at β_rate = 0 to
        ``gain_at_max`` at β_rate,max: a coarser effective quantisation step at high β_rate (design §4.5)."""
        self.start_conditioning_as_identity()
        self.mlp.reserve_rate_channel()
        self.beta_ft_list[-1].start_as_rate_gain(gain_at_max)


@dataclass
class DecoderFeatures:
    """Decoder outputs consumed downstream: ``t`` feeds the VQ estimator, ``fusion`` the SFT blocks."""

    t: Tensor
    fusion: dict[str, Tensor]


class ElicFeatureDecoder(nn.Module):
    """Synthesis transform used as a multi-scale feature extractor (design §3.3)."""

    layer_order = ("attn1", "conv1", "block1", "conv2", "attn2", "block2", "conv3", "block3", "conv4")
    fusion_layers = {"block1": "block_1_8", "block2": "block_1_4", "block3": "block_1_2"}

    def __init__(
        self,
        in_ch: int = 192,
        main_ch: int = 192,
        out_ch: int = 3,
        block_mid_ch: int = 96,
        cond_ch: int = 128,
        dual_conditioned: bool = True,
        fourier_freqs: int = 10,
        beta_range: BetaRange = PAPER_BETA_RANGE,
    ) -> None:
        super().__init__()
        self.dual_conditioned = dual_conditioned
        self.beta_range = beta_range
        self.attn1 = SimplifiedAttention(in_ch)
        self.conv1 = deconv(in_ch, main_ch)
        self.block1 = ResidualBottleneckBlocks(main_ch, block_mid_ch)
        self.conv2 = deconv(main_ch, main_ch)
        self.attn2 = SimplifiedAttention(main_ch)
        self.block2 = ResidualBottleneckBlocks(main_ch, block_mid_ch)
        self.conv3 = deconv(main_ch, main_ch)
        self.block3 = ResidualBottleneckBlocks(main_ch, block_mid_ch)
        self.conv4 = deconv(main_ch, out_ch)  # in the checkpoint, never executed
        if dual_conditioned:
            self.mlp = BetaConditionMLP(cond_ch, fourier_freqs, beta_range)
            self.init_fuse = BetaScaleShift(in_ch, cond_ch)
            self.beta_ft_list = nn.ModuleList(
                [BetaScaleShift(in_ch, cond_ch) for _ in range(2)]
                + [BetaScaleShift(main_ch, cond_ch) for _ in range(len(self.layer_order) - 2)]
            )

    def forward(
        self, y_hat: Tensor, beta_rate: BetaLike | None = None, beta_vq: BetaLike | None = None
    ) -> DecoderFeatures:
        x, cond = y_hat, None
        if self.dual_conditioned:
            if beta_rate is None or beta_vq is None:
                raise ValueError("the dual-conditioned decoder needs beta_rate and beta_vq")
            cond = self.mlp.condition(beta_rate, beta_vq)[:, :, None, None]
            x = self.init_fuse(x, cond) + x
        fusion: dict[str, Tensor] = {}
        for i, name in enumerate(self.layer_order):
            if cond is not None:
                x = self.beta_ft_list[i](x, cond)
            x = getattr(self, name)(x)
            if name in self.fusion_layers:
                fusion[self.fusion_layers[name]] = x
                if len(fusion) == len(self.fusion_layers):
                    break
        return DecoderFeatures(t=fusion["block_1_8"], fusion=fusion)

    def start_conditioning_as_identity(self) -> None:
        """FT modules pass through and ``init_fuse`` outputs zero, so ``init_fuse(ŷ) + ŷ = ŷ`` (not ``2ŷ``)."""
        self.init_fuse.start_as(0.0)
        for ft in self.beta_ft_list:
            ft.start_as(1.0)

    def start_conditioning_as_rate_gain(self, gain_at_max: float) -> None:
        """The encoder's rate gain undone at the input: the first FT scales ``ŷ`` from 1 (β_rate = 0) to
        ``1 / gain_at_max`` (β_rate,max), linearly in β_rate, so the inverse is exact only at the ends."""
        self.start_conditioning_as_identity()
        self.mlp.reserve_rate_channel()
        self.beta_ft_list[0].start_as_rate_gain(1.0 / gain_at_max)
