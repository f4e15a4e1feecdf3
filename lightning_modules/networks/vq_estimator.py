"""Swin-transformer VQ estimator (design §3.8): decoder features at 1/8 → VQGAN code logits.

::

    t (N,192,h,w) ─first_block─> x ─embed_projection─> ê (N,4,h,w)      predicted VQ latent (loss only)
                                 x ─3×RSTB(3 Swin blocks, shifts 0/4/0)─out_block─> logits (N,256,h,w)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GroupNorm32(nn.Module):
    """Wrapper that keeps the reference parameter names ``….norm.weight``."""

    def __init__(self, ch: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(32, ch, eps=eps, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class PreActResBlock(nn.Module):
    """``GN → SiLU → Conv3×3 → GN → SiLU → Conv3×3`` plus identity."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            GroupNorm32(ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            GroupNorm32(ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x)


def window_partition(x: Tensor, ws: int) -> Tensor:
    """(N, H, W, C) → (N·H/ws·W/ws, ws·ws, C), windows in row-major order."""
    n, h, w, c = x.shape
    x = x.view(n, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(ws: int) -> Tensor:
    """Index into the ``(2ws−1)²`` bias table for every (query, key) pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]  # (ws², ws²) int64


def shifted_window_mask(h: int, w: int, ws: int, shift: int) -> Tensor:
    """0 / −100 mask that keeps cyclically shifted windows from attending across the wrap-around."""
    labels = torch.zeros(1, h, w, 1)
    bands = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in bands:
        for wsl in bands:
            labels[:, hs, wsl, :] = label
            label += 1
    windows = window_partition(labels, ws).squeeze(-1)  # (nW, ws²)
    mask = windows[:, None, :] - windows[:, :, None]
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, n, c = x.shape  # (windows·N, ws², C)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, self.num_heads, n, n) + mask[None, :, None].to(attn.dtype)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self._masks: dict[tuple[int, int], Tensor] = {}

    def mask_for(self, h: int, w: int, device: torch.device) -> Tensor | None:
        if not self.shift:
            return None
        if (h, w) not in self._masks:
            self._masks[(h, w)] = shifted_window_mask(h, w, self.window_size, self.shift)
        return self._masks[(h, w)].to(device)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        h, w = size
        n, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(n, h, w, c)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(x, self.window_size), self.mask_for(h, w, x.device))
        x = window_reverse(windows, self.window_size, h, w)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x.reshape(n, h * w, c)
        return x + self.mlp(self.norm2(x))


class SwinGroup(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2) for i in range(depth)]
        )

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        for block in self.blocks:
            x = block(x, size)
        return x


class ResidualSwinBlock(nn.Module):
    """RSTB: ``x + embed(conv3×3(unembed(SwinGroup(x))))`` on token sequences."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.residual_group = SwinGroup(dim, depth, num_heads, window_size)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        n, _, c = x.shape
        h = self.residual_group(x, size).transpose(1, 2).reshape(n, c, *size)
        return self.conv(h).flatten(2).transpose(1, 2) + x


class SwinVqEstimator(nn.Module):
    """Predicts VQGAN code logits (and a 4-ch latent for the code loss) from decoder features at 1/8."""

    def __init__(
        self,
        in_ch: int = 192,
        main_ch: int = 128,
        n_embed: int = 256,
        embed_dim: int = 4,
        num_swin_blocks: int = 3,
        blk_depth: int = 3,
        num_heads: int = 8,
        window_size: int = 8,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.first_block = nn.Sequential(
            nn.Conv2d(in_ch, main_ch, 3, padding=1),
            nn.Identity(),
            PreActResBlock(main_ch),
            PreActResBlock(main_ch),
            nn.Conv2d(main_ch, main_ch, 3, padding=1),
        )
        self.embed_projection = nn.Conv2d(main_ch, embed_dim, 1)
        self.swin_blks = nn.ModuleList(
            [ResidualSwinBlock(main_ch, blk_depth, num_heads, window_size) for _ in range(num_swin_blocks)]
        )
        self.out_block = nn.Sequential(PreActResBlock(main_ch), nn.Conv2d(main_ch, n_embed, 3, padding=1))

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor]:
        x = self.first_block(t)
        vq_latent = self.embed_projection(x)  # (N, 4, h, w)
        h, w = x.shape[2:]
        ws = self.window_size
        pad_h, pad_w = (-h) % ws, (-w) % ws
        if pad_h or pad_w:  # only reachable in eval on sizes not padded to 64
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        n, c, hp, wp = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, hp·wp, C)
        for rstb in self.swin_blks:
            tokens = rstb(tokens, (hp, wp))
        x = tokens.transpose(1, 2).reshape(n, c, hp, wp)[:, :, :h, :w]
        return vq_latent, self.out_block(x)  # logits (N, 256, h, w)
