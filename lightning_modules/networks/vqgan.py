"""The frozen, pre-trained VQGAN (taming "vq-f8-n256"), built from taming's own modules (design §3.9).

Frozen in one place: :class:`FrozenVQGAN` sets ``requires_grad_(False)`` and keeps itself in eval mode
through any ``.train()`` call. Gradients still flow *through* its decoder into the fusion blocks.

Its blocks run through :func:`resnet_block` and :func:`attention_block` rather than taming's ``forward``, in place
when no gradient is recorded, so inference allocates (and page-faults in) far fewer full-resolution buffers;
:func:`encoder_forward` keeps only the current activation, where taming's encoder holds every level's output.
By default the arithmetic is taming's, operation for operation (bit-identical results). ``fused=True`` (the codec's
fast mode, design §6.1) fuses SiLU and computes attention with ``scaled_dot_product_attention``, which never holds
the ``(hw)²`` score matrix: equal up to float rounding (≤ 1e-6 here), no longer bit-identical.
"""

from __future__ import annotations

import contextlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from taming.modules.diffusionmodules.model import AttnBlock, Decoder, Encoder, ResnetBlock
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import Tensor, nn

VQGAN_DOWNLOAD_HINT = (
    "download the latent-diffusion 'vq-f8-n256' first-stage model (VQGAN OpenImages f=8, 256 codes), "
    "e.g. https://ommer-lab.com/files/latent-diffusion/vq-f8-n256.zip, unzip it and pass the path of "
    "'model.ckpt' (the file is a taming/Lightning checkpoint holding {'state_dict': ...})"
)


@dataclass
class VQEncoding:
    """``h`` = pre-quantisation latent, ``indices`` (N, h, w) int64, ``latent`` = codebook vectors (N, 4, h, w)."""

    h: Tensor | None
    indices: Tensor
    latent: Tensor


def build_taming_autoencoder(
    ch: int,
    ch_mult: tuple[int, ...],
    num_res_blocks: int,
    attn_resolutions: tuple[int, ...],
    resolution: int,
    z_channels: int,
) -> tuple[Encoder, Decoder]:
    """Taming's encoder and decoder for a VQGAN ``ddconfig`` (one place for frozen and trainable VQGANs)."""
    ddconfig = dict(
        ch=ch,
        out_ch=3,
        ch_mult=tuple(ch_mult),
        num_res_blocks=num_res_blocks,
        attn_resolutions=list(attn_resolutions),
        dropout=0.0,
        in_channels=3,
        resolution=resolution,
        z_channels=z_channels,
        double_z=False,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # taming prints the z shape
        return Encoder(**ddconfig), Decoder(**ddconfig)


def swish(x: Tensor, fused: bool = False) -> Tensor:
    """taming's ``x·σ(x)``, overwriting ``x`` when no gradient is recorded; ``fused``: ``F.silu``."""
    inplace = not torch.is_grad_enabled()
    if fused:
        return F.silu(x, inplace=inplace)
    return x.mul_(torch.sigmoid(x)) if inplace else x * torch.sigmoid(x)


def resnet_block(block: ResnetBlock, x: Tensor, fused: bool = False) -> Tensor:
    """taming's ``ResnetBlock`` without time embedding: ``x + conv2(swish(GN(conv1(swish(GN(x))))))``."""
    h = block.conv1(swish(block.norm1(x), fused))
    h = block.conv2(swish(block.norm2(h), fused))
    if block.in_channels != block.out_channels:
        x = block.conv_shortcut(x) if block.use_conv_shortcut else block.nin_shortcut(x)
    return h.add_(x) if not torch.is_grad_enabled() else x + h


def attention_block(block: AttnBlock, x: Tensor, fused: bool = False) -> Tensor:
    """taming's single-head ``AttnBlock``: ``x + proj(softmax(q kᵀ / √C) v)`` over all ``h·w`` positions."""
    if not fused:
        return block(x)
    h = block.norm(x)
    n, c, height, width = h.shape
    # (N, 1, hw, C) with unit stride along C: strided rows (an NCHW map) send SDPA to the kernel that holds the
    # (hw)² score matrix, several GiB for a large tile (see tiling.crop)
    q, k, v = (conv(h).flatten(2).transpose(1, 2).unsqueeze(1).contiguous() for conv in (block.q, block.k, block.v))
    out = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(n, c, height, width)
    # a channels-last copy with plain strides: SDPA's odd batch stride would send the next convolution to NCHW
    out = block.proj_out(out.clone(memory_format=torch.channels_last))
    return out.add_(x) if not torch.is_grad_enabled() else x + out


def encoder_forward(encoder: Encoder, x: Tensor, fused: bool = False) -> Tensor:
    """taming's ``Encoder.forward`` (image → pre-``quant_conv`` latent at 1/8), one activation alive at a time."""
    h = encoder.conv_in(x)
    for level, down in enumerate(encoder.down):
        for i, block in enumerate(down.block):
            h = resnet_block(block, h, fused)
            if len(down.attn) > 0:
                h = attention_block(down.attn[i], h, fused)
        if level != encoder.num_resolutions - 1:
            h = down.downsample(h)
    mid = encoder.mid
    h = resnet_block(mid.block_2, attention_block(mid.attn_1, resnet_block(mid.block_1, h, fused), fused), fused)
    return encoder.conv_out(swish(encoder.norm_out(h), fused))


class FrozenVQGAN(nn.Module):
    """Taming ``Encoder`` + ``VectorQuantizer2`` + ``Decoder`` with taming's state-dict names."""

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
    ) -> None:
        super().__init__()
        self.encoder, self.decoder = build_taming_autoencoder(
            ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels
        )
        self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=0.25, legacy=True, sane_index_shape=True)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.ch = ch
        self.ch_mult = tuple(ch_mult)
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.freeze()

    def freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenVQGAN:
        """Stays in eval mode whatever the parent asks: it is a fixed, pre-trained tokenizer."""
        return super().train(False)

    def encode_pre_quant(self, x: Tensor, fused: bool = False) -> Tensor:
        return self.quant_conv(encoder_forward(self.encoder, x, fused))  # (N, 4, H/8, W/8)

    def quantize_latent(self, h: Tensor) -> VQEncoding:
        """Nearest codebook entries, always in float32: a bf16 distance would flip near-tied indices."""
        with torch.autocast(h.device.type, enabled=False):
            z_q, _, (_, _, indices) = self.quantize(h.float())
        return VQEncoding(h=h, indices=indices, latent=z_q)

    def indices_to_latent(self, indices: Tensor) -> Tensor:
        """Codebook vectors for (N, h, w) indices, as (N, embed_dim, h, w)."""
        return self.quantize.embedding(indices.long()).permute(0, 3, 1, 2).contiguous()

    def encode(self, x: Tensor, fused: bool = False) -> VQEncoding:
        return self.quantize_latent(self.encode_pre_quant(x, fused))

    def decode(self, latent: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(latent))


def read_taming_state_dict(path: str | Path) -> dict[str, Tensor]:
    """``ckpt['state_dict']`` of a taming/Lightning VQGAN checkpoint, without the ``loss.*`` entries."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQGAN checkpoint not found: {path}. To get it: {VQGAN_DOWNLOAD_HINT}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning files from 2021 pickle callback objects; they hold no code we execute.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any reader error means the file is not a checkpoint
        raise ValueError(f"VQGAN checkpoint {path} is unreadable ({exc}). {VQGAN_DOWNLOAD_HINT}") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{path} is not a taming VQGAN checkpoint (no 'state_dict' dict). {VQGAN_DOWNLOAD_HINT}")
    return {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("loss.")}


def load_vqgan(path: str | Path, **arch) -> FrozenVQGAN:
    """Build a :class:`FrozenVQGAN` and load it strictly from a taming checkpoint file."""
    model = FrozenVQGAN(**arch)
    state = read_taming_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"VQGAN checkpoint {path} does not match the configured architecture: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} with other shapes (e.g. {wrong[:3]}). {VQGAN_DOWNLOAD_HINT}"
        )
    model.load_state_dict(state, strict=True)
    model.freeze()
    return model
