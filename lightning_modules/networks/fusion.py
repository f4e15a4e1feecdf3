"""SFT fusion of decoder features into the VQGAN decoder (design §3.10).

Fused decoding (``u`` = condition first)::

    q ─conv_in─mid─┬─ up[3] blocks+attn ─SFT(block_1_8, F_8)─upsample
                   ├─ up[2] blocks      ─SFT(block_1_4, F_4)─upsample
                   ├─ up[1] blocks      ─SFT(block_1_2, F_2)─upsample
                   └─ up[0] blocks ─norm_out─swish─conv_out─> x̂   (no tanh, not clamped in training)

    SFT: g = ResBlock([F, h]);  h ← h + w·(h·scale(g) + shift(g))

The VQGAN decoder runs through :mod:`.vqgan`'s block functions; ``fused`` (the codec's fast mode) selects their
fused SiLU and attention, equal up to float rounding.
"""

from __future__ import annotations

import torch
from taming.modules.diffusionmodules.model import Decoder
from torch import Tensor, nn

from .vqgan import attention_block, resnet_block, swish


def group_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, ch, eps=1e-6, affine=True)


class ConditionResBlock(nn.Module):
    """``GN → swish → Conv3×3 → GN → swish → Conv3×3`` with a 1×1 shortcut (channels change)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_out = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, fused: bool = False) -> Tensor:
        h = self.conv1(swish(self.norm1(x), fused))
        h = self.conv2(swish(self.norm2(h), fused))
        return self.conv_out(x).add_(h) if not torch.is_grad_enabled() else self.conv_out(x) + h


def modulation_head(mid_ch: int, dec_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(mid_ch, dec_ch, 3, padding=1),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dec_ch, dec_ch, 3, padding=1),
    )


class FuseSftBlock(nn.Module):
    def __init__(self, cond_ch: int, dec_ch: int, mid_ch: int) -> None:
        super().__init__()
        self.fuse_block = ConditionResBlock(cond_ch + dec_ch, mid_ch)
        self.scale = modulation_head(mid_ch, dec_ch)
        self.shift = modulation_head(mid_ch, dec_ch)

    def forward(self, h: Tensor, cond: Tensor, w: float = 1.0, fused: bool = False) -> Tensor:
        g = self.fuse_block(torch.cat([cond, h], dim=1), fused)
        if torch.is_grad_enabled():
            return h + w * (h * self.scale(g) + self.shift(g))
        modulation = self.scale(g).mul_(h).add_(self.shift(g))  # the same float operations, in place
        return (modulation if w == 1.0 else modulation.mul_(w)).add_(h)


class VqDecoderFusion(nn.Module):
    """Runs the frozen VQGAN decoder level by level, modulating levels 3, 2, 1 with decoder features."""

    level_keys = {3: "block_1_8", 2: "block_1_4", 1: "block_1_2"}

    def __init__(self, cond_ch: int = 192, vq_ch: int = 128, vq_ch_mult: tuple[int, ...] = (1, 2, 2, 4)) -> None:
        super().__init__()
        self.fusion_modules = nn.ModuleDict(
            {
                key: FuseSftBlock(cond_ch, vq_ch * vq_ch_mult[level], vq_ch * vq_ch_mult[level])
                for level, key in self.level_keys.items()
            }
        )

    def forward(
        self, q: Tensor, features: dict[str, Tensor], decoder: Decoder, w: float = 1.0, fused: bool = False
    ) -> Tensor:
        h = decoder.conv_in(q)
        mid = decoder.mid
        h = resnet_block(mid.block_2, attention_block(mid.attn_1, resnet_block(mid.block_1, h, fused), fused), fused)
        for level in reversed(range(decoder.num_resolutions)):
            up = decoder.up[level]
            for j in range(decoder.num_res_blocks + 1):
                h = resnet_block(up.block[j], h, fused)
                if len(up.attn) > 0:
                    h = attention_block(up.attn[j], h, fused)
            key = self.level_keys.get(level)
            if key is not None:
                h = self.fusion_modules[key](h, features[key], w, fused)
            if level != 0:
                h = up.upsample(h)
        return decoder.conv_out(swish(decoder.norm_out(h), fused))
