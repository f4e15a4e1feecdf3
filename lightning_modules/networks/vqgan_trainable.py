"""A trainable taming VQGAN (stage 0) and its beta-free PatchGAN critic.

:class:`TrainableVQGAN` is the learning sibling of :class:`~.vqgan.FrozenVQGAN`: the same taming modules under
the same attribute names, so ``state_dict()`` *is* a taming ``{"state_dict": ...}`` payload and a trained model
plugs into :func:`~.vqgan.load_vqgan` like the official "vq-f8-n256" checkpoint::

    x ─encoder─quant_conv─> h (N, embed_dim, H/f, W/f) ─VectorQuantizer2─> z_q, qloss, indices (N, H/f, W/f)
    z_q ─post_quant_conv─decoder─> x̂ (N, 3, H, W)          f = 2 ** (len(ch_mult) - 1)

Images are in [-1, 1], like every VQGAN input in this project (design §1.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import Tensor, nn

from .vqgan import build_taming_autoencoder


@dataclass
class VQGANOutput:
    """``x_hat`` (N, 3, H, W); ``qloss`` = codebook + beta·commitment (taming's legacy form); ``indices`` (N, h, w)."""

    x_hat: Tensor
    qloss: Tensor
    indices: Tensor


class TrainableVQGAN(nn.Module):
    """Taming ``Encoder`` + ``VectorQuantizer2`` + ``Decoder``; defaults are the paper's f8-n256 (design §3.9)."""

    def __init__(
        self,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (32,),
        resolution: int = 256,
        z_channels: int = 4,
        embed_dim: int = 4,
        n_embed: int = 256,
        beta: float = 0.25,
    ) -> None:
        super().__init__()
        # The keyword arguments that rebuild this model as ``load_vqgan(path, **architecture)``.
        self.architecture: dict[str, Any] = dict(
            ch=ch,
            ch_mult=tuple(ch_mult),
            num_res_blocks=num_res_blocks,
            attn_resolutions=tuple(attn_resolutions),
            resolution=resolution,
            z_channels=z_channels,
            embed_dim=embed_dim,
            n_embed=n_embed,
        )
        self.encoder, self.decoder = build_taming_autoencoder(
            ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels
        )
        self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=beta, legacy=True, sane_index_shape=True)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.n_embed = n_embed

    @property
    def last_layer(self) -> Tensor:
        """Decoder output weight: taming balances the adversarial gradient against L1/LPIPS on it."""
        return self.decoder.conv_out.weight

    def encode_pre_quant(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(x))  # (N, embed_dim, H/f, W/f)

    @torch.no_grad()
    def sample_codebook(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``n_embed`` encoder outputs of ``x`` (with replacement when too few), as a data-scaled codebook.

        Taming's uniform(±1/n_embed) codebook is far smaller than the encoder outputs, so at first the decoder sees
        near-constant inputs until the codebook loss has grown the codes; sampled codes start at the data's scale.
        """
        h = self.encode_pre_quant(x).permute(0, 2, 3, 1).reshape(-1, self.quantize.e_dim)  # (N·h·w, embed_dim)
        if h.shape[0] >= self.n_embed:
            return h[torch.randperm(h.shape[0], generator=generator, device=h.device)[: self.n_embed]].clone()
        picks = torch.randint(h.shape[0], (self.n_embed,), generator=generator, device=h.device)
        jitter = torch.randn(self.n_embed, h.shape[1], generator=generator, device=h.device)
        return h[picks] + 0.01 * h.std() * jitter  # repeated picks must not be identical codes

    def forward(self, x: Tensor) -> VQGANOutput:
        h = self.encode_pre_quant(x)
        z_q, qloss, (_, _, indices) = self.quantize(h)  # straight-through z_q, indices (N, H/f, W/f)
        x_hat = self.decoder(self.post_quant_conv(z_q))  # (N, 3, H, W)
        return VQGANOutput(x_hat=x_hat, qloss=qloss, indices=indices)


def build_patch_discriminator(ndf: int = 64, n_layers: int = 3, use_actnorm: bool = False) -> NLayerDiscriminator:
    """Taming's unconditioned PatchGAN with its N(0, 0.02) init, as in taming's ``VQLPIPSWithDiscriminator``."""
    return NLayerDiscriminator(input_nc=3, ndf=ndf, n_layers=n_layers, use_actnorm=use_actnorm).apply(weights_init)
