"""The DC-VIC compression model: composition of the sub-networks and the forward data flow (design §1.2).

::

    x ─VQGAN enc (frozen, no grad)─> indices, latent ─feat=[latent, onehot]─┐
    x ──────────────────────────────────────────────── encoder(x, feat, β) ─> y
    y ─hyperencoder─> z ─EB─> ẑ ─hyperdecoder─> [μ_h, σ_h] ─ChARM(y)─> ŷ, L_y
    ŷ ─decoder(β)─> t, {F_8, F_4, F_2}
    t ─VQ estimator─> ê, logits ─argmax─> î ─codebook─post_quant_conv─> q
    q ─VQGAN decoder ⊕ SFT(F_8, F_4, F_2)─> x̂

The ``y → ŷ`` line is :attr:`DCVIC.latent_codec` (:mod:`.latent_codec`), which also writes and reads the
rANS strings. In eval mode the image is reflect-padded (bottom/right) to a multiple of 64 and the output cropped and
clamped; rates are divided by the *unpadded* pixel count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from taming.modules.diffusionmodules.model import AttnBlock
from torch import Tensor, nn

from .conditioning import PAPER_BETA_RANGE, BetaLike, BetaRange
from .context_model import ChannelContextModel
from .elic import DecoderFeatures, ElicFeatureDecoder, ElicVqEncoder
from .entropy_models import SteEntropyBottleneck, SteGaussianConditional, load_entropy_tables
from .fusion import VqDecoderFusion
from .hyperprior import HyperDecoder, HyperEncoder
from .latent_codec import EntropyOutput, HyperpriorCharmLatentCodec
from .tiling import (
    ANALYSIS_STRIDE,
    ANALYSIS_TILE,
    REFERENCE_VQ_GRID,
    REFERENCE_Y_GRID,
    TiledStageCost,
    TileGrid,
    memory_format_of,
    needs_tiling,
    tiled_apply,
)
from .vq_estimator import SwinVqEstimator
from .vqgan import FrozenVQGAN, VQEncoding, load_vqgan

VQ_MARGIN_PX = (REFERENCE_VQ_GRID.tile[0] - REFERENCE_VQ_GRID.stride[0]) // 2  # 128 px, the reference's margin
Y_MARGIN = (REFERENCE_Y_GRID.tile[0] - REFERENCE_Y_GRID.stride[0]) // 2  # 8 ŷ = 128 px
# Peak working memory per pixel, measured (VmHWM) at 512×768 with the released network, attention matrices apart
VQ_ENCODER_BYTES_PER_PX = 2100.0
SYNTHESIS_BYTES_PER_PX = 3400.0


def _attention_flops_per_pair(network: nn.Module) -> float:
    return float(sum(4 * m.in_channels for m in network.modules() if isinstance(m, AttnBlock)))


def bits(likelihoods: Tensor) -> Tensor:
    return torch.log(likelihoods).sum() / -math.log(2)


def bits_per_sample(likelihoods: Tensor) -> Tensor:
    return torch.log(likelihoods).flatten(1).sum(1) / -math.log(2)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad bottom/right to a multiple; reflect like the reference, replicate where reflect is impossible."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


@dataclass
class SynthesisOutput:
    x_hat: Tensor
    out_vq_latent: Tensor
    vq_logits: Tensor
    pred_vq_indices: Tensor
    features: DecoderFeatures | None = field(default=None, repr=False)


@dataclass
class DCVICOutput:
    x_hat: Tensor
    y: Tensor
    y_hat: Tensor
    entropy: EntropyOutput
    vq: VQEncoding
    synthesis: SynthesisOutput
    num_pixels: int

    @property
    def likelihoods(self) -> dict[str, Tensor]:
        return self.entropy.likelihoods

    def bpp(self) -> Tensor:
        """Estimated bits per (unpadded) pixel over the batch."""
        return (bits(self.likelihoods["y"]) + bits(self.likelihoods["z"])) / self.num_pixels

    def qbpp(self) -> Tensor:
        q = self.entropy.q_likelihoods
        return (bits(q["y"]) + bits(q["z"])) / self.num_pixels

    def bpp_per_sample(self) -> Tensor:
        """(N,) bits of each sample divided by its own pixel count (stage 1_2's weighted rate loss)."""
        n = self.x_hat.shape[0]
        return (bits_per_sample(self.likelihoods["y"]) + bits_per_sample(self.likelihoods["z"])) / (self.num_pixels / n)

    def vq_accuracy(self) -> Tensor:
        return (self.synthesis.pred_vq_indices == self.vq.indices).float().mean()


class DCVIC(nn.Module):
    """Dual-conditioned VQGAN-based image codec (or the stage-1_1 unconditioned variant)."""

    latent_codec: HyperpriorCharmLatentCodec

    def __init__(
        self,
        encoder: ElicVqEncoder,
        decoder: ElicFeatureDecoder,
        hyperencoder: HyperEncoder,
        hyperdecoder: HyperDecoder,
        context_model: ChannelContextModel,
        entropy_model_z: SteEntropyBottleneck,
        entropy_model_y: SteGaussianConditional,
        vq_estimator: SwinVqEstimator,
        vq_model: FrozenVQGAN,
        fusion_module: VqDecoderFusion,
        pad_multiple: int = 64,
    ) -> None:
        super().__init__()
        if encoder.beta_range != decoder.beta_range:
            raise ValueError(f"encoder and decoder beta ranges differ: {encoder.beta_range} vs {decoder.beta_range}")
        self.encoder = encoder
        self.decoder = decoder
        self.hyperencoder = hyperencoder
        self.hyperdecoder = hyperdecoder
        self.entropy_model_z = entropy_model_z
        self.entropy_model_y = entropy_model_y
        self.context_model = context_model
        self.vq_estimator = vq_estimator
        self.vq_model = vq_model
        self.fusion_module = fusion_module
        self.pad_multiple = pad_multiple
        # The entropy path as one object over the same five modules. Not registered as a child, so the
        # state-dict keys stay ``hyperencoder.*``, ``entropy_model_z.*``, … (converted and released files).
        codec = HyperpriorCharmLatentCodec(hyperencoder, hyperdecoder, context_model, entropy_model_z, entropy_model_y)
        object.__setattr__(self, "latent_codec", codec)

    @property
    def dual_conditioned(self) -> bool:
        return self.encoder.dual_conditioned

    @property
    def beta_range(self) -> BetaRange:
        """The betas this model was built for (an architecture argument; the codec and stage 2 read it here)."""
        return self.encoder.beta_range

    # --- stages, each callable on its own (teacher forcing, codec, training) ---

    @torch.no_grad()
    def vq_encode(
        self,
        x: Tensor,
        vq_indices: Tensor | None = None,
        grid: TileGrid | None = None,
        fast_kernels: bool = False,
    ) -> VQEncoding:
        """VQGAN tokens of ``x``; cached ``vq_indices`` skip the VQGAN encoder (stage-2 validation sets).

        Above 1024 px the pre-quantisation latent is assembled from tiles (``grid``, by default the reference's
        512² every 256 px) and quantised once (§6.6a). ``fast_kernels``: fused SiLU and attention (:mod:`.vqgan`).
        """
        if vq_indices is not None:
            indices = vq_indices.to(x.device).long()
            return VQEncoding(h=None, indices=indices, latent=self.vq_model.indices_to_latent(indices))
        vq = self.vq_model
        if needs_tiling(*x.shape[-2:]) and not (grid is not None and grid.covers_whole(*x.shape[-2:])):
            grid = grid or REFERENCE_VQ_GRID
            (h,) = tiled_apply(x, lambda tile: (vq.encode_pre_quant(tile, fast_kernels),), grid.tile, grid.stride)
            return vq.quantize_latent(h)
        return vq.encode(x, fast_kernels)

    def vq_features(self, vq: VQEncoding) -> Tensor:
        """``[latent (4), one-hot indices (256)]`` at 1/8, detached."""
        onehot = F.one_hot(vq.indices.long(), self.vq_model.n_embed).permute(0, 3, 1, 2)
        return torch.cat([vq.latent, onehot.to(vq.latent.dtype)], dim=1).detach()

    def analysis(self, x: Tensor, vq: VQEncoding, beta_rate: BetaLike | None, beta_vq: BetaLike | None) -> Tensor:
        """``y`` (N, 192, H/16, W/16); in eval mode above 1344 px from overlapping tiles, to bound memory.

        The VQ features take ``x``'s memory layout (channels-last in the codec's fast mode)."""
        features = self.vq_features(vq).contiguous(memory_format=memory_format_of(x))
        if self.training or not needs_tiling(*x.shape[-2:], threshold=ANALYSIS_TILE):
            return self.encoder(x, features, beta_rate, beta_vq)
        return self.tiled_analysis(x, features, beta_rate, beta_vq)

    def tiled_analysis(
        self,
        x: Tensor,
        features: Tensor,
        beta_rate: BetaLike | None,
        beta_vq: BetaLike | None,
        tile: int = ANALYSIS_TILE,
        stride: int = ANALYSIS_STRIDE,
    ) -> Tensor:
        """The encoder on ``tile``-px crops keeping their centre ``stride`` px (see :mod:`.tiling`)."""

        def encode_tile(x_tile: Tensor, features_tile: Tensor) -> tuple[Tensor]:
            return (self.encoder(x_tile, features_tile, beta_rate, beta_vq),)

        (y,) = tiled_apply(x, encode_tile, tile, stride, side_inputs=(features,))
        return y

    def synthesis(
        self,
        y_hat: Tensor,
        beta_rate: BetaLike | None,
        beta_vq: BetaLike | None,
        fusion_w: float = 1.0,
        fast_kernels: bool = False,
    ) -> SynthesisOutput:
        """``ŷ`` → image; every map takes ``ŷ``'s memory layout. ``fast_kernels``: fused SiLU and attention in the
        VQGAN decoder (equal up to float rounding, :mod:`.vqgan`)."""
        features = self.decoder(y_hat, beta_rate, beta_vq)
        # the code logits in float32 under any autocast: their argmax is a hard decision, and bf16 flips near ties
        with torch.autocast(y_hat.device.type, enabled=False):
            out_vq_latent, logits = self.vq_estimator(features.t.float())
        pred = logits.argmax(dim=1)  # (N, h, w); hard decision, no gradient path
        q = self.vq_model.post_quant_conv(self.vq_model.indices_to_latent(pred))
        q = q.contiguous(memory_format=memory_format_of(y_hat))
        x_hat = self.fusion_module(q, features.fusion, self.vq_model.decoder, w=fusion_w, fused=fast_kernels)
        return SynthesisOutput(x_hat, out_vq_latent, logits, pred, features)

    def tiled_synthesis(
        self,
        y_hat: Tensor,
        beta_rate: BetaLike | None,
        beta_vq: BetaLike | None,
        grid: TileGrid = REFERENCE_Y_GRID,
        fast_kernels: bool = False,
    ) -> SynthesisOutput:
        """:meth:`synthesis` on ``ŷ`` tiles (the reference's 32×32 every 16), stitched (§6.6b); no decoder features."""

        def decode_tile(y_tile: Tensor) -> tuple[Tensor, ...]:
            out = self.synthesis(y_tile, beta_rate, beta_vq, fast_kernels=fast_kernels)
            return out.x_hat, out.out_vq_latent, out.vq_logits, out.pred_vq_indices

        return SynthesisOutput(*tiled_apply(y_hat, decode_tile, grid.tile, grid.stride))

    def tiling_costs(self, fast_kernels: bool = False) -> tuple[TiledStageCost, TiledStageCost]:
        """Work and memory of the two tiled stages per pixel, for choosing tiles (:func:`.tiling.fitted_grid`).

        Convolution FLOPs and working memory were counted (``FlopCounterMode``, peak RSS) for the released network
        and scale with the VQGAN width; attention costs 4·C FLOPs per (query, key) pair in each global
        attention block, and without ``fast_kernels`` (taming's arithmetic) holds two float32 score matrices.
        The VQGAN encoder is tiled in pixels, the synthesis in ``ŷ`` units of 16 px.
        """
        vq = self.vq_model
        width = vq.ch / 128
        return (
            TiledStageCost(
                unit_px=1,
                margin=VQ_MARGIN_PX,
                align=self.pad_multiple,
                conv_flops_per_px=3.4e6 * width**2,
                attention_flops_per_pair=_attention_flops_per_pair(vq.encoder),
                bytes_per_px=VQ_ENCODER_BYTES_PER_PX * width,
                attention_bytes_per_pair=0.0 if fast_kernels else 8.0,
            ),
            TiledStageCost(
                unit_px=16,
                margin=Y_MARGIN,
                align=self.pad_multiple // 16,
                conv_flops_per_px=10.8e6 * width**2,
                attention_flops_per_pair=_attention_flops_per_pair(vq.decoder),
                bytes_per_px=SYNTHESIS_BYTES_PER_PX * width,
                attention_bytes_per_pair=0.0 if fast_kernels else 8.0,
            ),
        )

    def synthesis_bytes(
        self, height: int, width: int, tile_px: tuple[int, int] | None, fused_attention: bool = False
    ) -> int:
        """Peak memory of decoding a padded ``height × width`` image beyond the weights (float32, eval mode).

        Over one ``tile_px`` tile for :meth:`tiled_synthesis` (which also allocates the stitched full-size image,
        code logits, latent and indices), or the whole image (``None``) for :meth:`synthesis`: the larger of the
        convolution phase (:meth:`_synthesis_floats_per_pixel`) and the VQGAN decoder's global self-attention,
        whose ``T × T`` weights (``T`` = tokens at its level) exist twice at once (product, softmax) unless
        ``fused_attention`` (SDPA, the codec's fast mode) never holds them.
        """
        tiled = tile_px is not None
        region = min(height, tile_px[0]) * min(width, tile_px[1]) if tiled else height * width
        persistent = self._persistent_floats_per_pixel()
        convolutions = region * (self._synthesis_floats_per_pixel() + persistent)
        decoder = self.vq_model.decoder
        attention_levels = [decoder.num_resolutions - 1] + [i for i, up in enumerate(decoder.up) if len(up.attn)]
        tokens = region // 4 ** min(attention_levels)
        attention = (0 if fused_attention else 2 * tokens**2) + region * persistent
        stitched = 3 + (self.vq_model.embed_dim + self.vq_model.n_embed + 2) / 64  # int64 indices = 2 floats
        return int(4 * (max(convolutions, attention) + (height * width * stitched if tiled else 0)))

    def _synthesis_floats_per_pixel(self) -> float:
        """Most float32 values alive at once per output pixel in the convolutions (level ``l`` at scale 2^-l).

        The VQGAN decoder: at each level a residual block's input, norm, swish and conv maps (5) next to the
        map upsampled from the level below and its source, or the SFT fusion there (concatenation, input,
        block, scale and shift). The ELIC decoder: its maps at 1/2 and the column buffer of its transposed
        convolutions. The VQ estimator at 1/8.
        """
        channels = [self.vq_model.ch * m for m in self.vq_model.ch_mult]
        fused = {level: self.fusion_module.fusion_modules[key] for level, key in VqDecoderFusion.level_keys.items()}
        peak = 0.0
        for level, ch in enumerate(channels):
            below = channels[level + 1] if level + 1 < len(channels) else 0
            maps = 5 * ch + 1.25 * below
            if level in fused:
                block = fused[level].fuse_block
                maps = max(maps, block.norm1.num_channels + 3 * ch + 3 * block.conv1.out_channels)
            peak = max(peak, maps / 4**level)
        main_ch = self.decoder.conv1.out_channels
        estimator = self.vq_estimator.embed_projection.in_channels
        return max(peak, 3 * main_ch, (4 * estimator + 2 * self.vq_model.n_embed) / 64)

    def _persistent_floats_per_pixel(self) -> float:
        """The ELIC decoder's features kept for the SFT fusion (1/2, 1/4, 1/8) and the output image."""
        return self.decoder.conv1.out_channels * (1 / 4 + 1 / 16 + 1 / 64) + 3

    # --- full model ---

    def forward(
        self,
        x: Tensor,
        beta_rate: BetaLike | None = None,
        beta_vq: BetaLike | None = None,
        vq_indices: Tensor | None = None,
        fix_entropy_models: bool = False,
        fast_kernels: bool = False,
    ) -> DCVICOutput:
        """Training (``self.training``): raw crops, noisy likelihoods, STE. Eval: pad, round, crop, clamp.

        ``fix_entropy_models`` (GAN stages) runs encoder and entropy model without gradients but in training
        quantisation mode, exactly like the reference. ``fast_kernels``: the VQGAN's fused SiLU and attention,
        as in the codec's fast mode (an eval forward timed or evaluated like a fast-mode round trip).
        """
        n, _, h, w = x.shape
        training = self.training
        if training and (h % self.pad_multiple or w % self.pad_multiple):
            # Training crops are not padded (design §1.2), so the hyperprior's 1/64 grid must divide them.
            raise ValueError(
                f"training crops must be multiples of {self.pad_multiple} px on each side, got {h}x{w} "
                "(set data.crop_size accordingly)"
            )
        x_in = x if training else pad_to_multiple(x, self.pad_multiple)
        vq = self.vq_encode(x_in, vq_indices, fast_kernels=fast_kernels)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not fix_entropy_models):
            y = self.analysis(x_in, vq, beta_rate, beta_vq)
            entropy = self.latent_codec(y, training=training)
        y_hat = entropy.y_hat
        if fast_kernels:  # the entropy path works in NCHW; the image networks in the input's layout (channels-last)
            y_hat = y_hat.contiguous(memory_format=memory_format_of(x_in))
        if not training and needs_tiling(*x_in.shape[-2:]):
            synthesis = self.tiled_synthesis(y_hat, beta_rate, beta_vq, fast_kernels=fast_kernels)
        else:
            synthesis = self.synthesis(y_hat, beta_rate, beta_vq, fast_kernels=fast_kernels)
        x_hat = synthesis.x_hat
        if not training:
            x_hat = x_hat[:, :, :h, :w].clamp(-1, 1)
        return DCVICOutput(x_hat, y, entropy.y_hat, entropy, vq, synthesis, num_pixels=n * h * w)

    # --- weights ---

    def train(self, mode: bool = True) -> DCVIC:
        """Also the mode flag of :attr:`latent_codec`, which is not a registered child."""
        super().train(mode)
        self.latent_codec.training = mode
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D102
        load_entropy_tables(self.entropy_model_z, "entropy_model_z", state_dict)
        load_entropy_tables(self.entropy_model_y, "entropy_model_y", state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


TINY_ARCHITECTURE: dict = dict(
    main_ch=64,
    block_mid_ch=32,
    cond_ch=32,
    fourier_freqs=2,
    hyper_enc_ch=(64, 64),
    hyper_dec_ch=(64, 64),
    hyper_out_ch=32,
    z_ch=64,
    num_slices=4,
    slice_hidden_ch=(64, 32),
    vq_estimator_ch=32,
    num_swin_blocks=1,
    swin_depth=2,
    num_heads=2,
    vqgan_ch=32,
    vqgan_ch_mult=(1, 1, 2, 2),
    vqgan_num_res_blocks=1,
)
"""A 5.9 M-parameter configuration with the full data flow, for tests and CPU demos (conf/network/tiny.yaml).

2 Fourier frequencies per beta instead of 10: short runs learn a rate that falls smoothly with beta_rate."""


def build_dcvic(
    dual_conditioned: bool = True,
    main_ch: int = 192,
    block_mid_ch: int = 96,
    cond_ch: int = 128,
    fourier_freqs: int = 10,
    hyper_enc_ch: tuple[int, int] = (320, 256),
    hyper_dec_ch: tuple[int, int] = (192, 256),
    hyper_out_ch: int = 128,
    z_ch: int = 192,
    num_slices: int = 6,
    max_support: int = 4,
    slice_hidden_ch: tuple[int, int] = (224, 128),
    vq_estimator_ch: int = 128,
    num_swin_blocks: int = 3,
    swin_depth: int = 3,
    num_heads: int = 8,
    window_size: int = 8,
    vqgan_ch: int = 128,
    vqgan_ch_mult: tuple[int, ...] = (1, 2, 2, 4),
    vqgan_num_res_blocks: int = 2,
    vqgan_attn_resolutions: tuple[int, ...] = (32,),
    n_embed: int = 256,
    embed_dim: int = 4,
    vqgan_checkpoint: str | None = None,
    beta_rate_max: float = PAPER_BETA_RANGE.rate_max,
    beta_vq_max: float = PAPER_BETA_RANGE.vq_max,
) -> DCVIC:
    """Wire the sub-networks; defaults are the released architecture (84.0 M trainable + 67.7 M VQGAN).

    ``fourier_freqs`` is the number of Fourier frequencies per beta (the paper's 10; §2.1); ``beta_rate_max`` /
    ``beta_vq_max`` bound the betas the condition MLPs normalise by (model files without them get the paper's).
    ``vqgan_checkpoint`` loads the frozen VQGAN strictly from a taming file; ``None`` leaves random weights
    (for tests, or when a DC-VIC checkpoint that contains ``vq_model.*`` is loaded next).
    """
    vqgan_arch = dict(
        ch=vqgan_ch,
        ch_mult=tuple(vqgan_ch_mult),
        num_res_blocks=vqgan_num_res_blocks,
        attn_resolutions=tuple(vqgan_attn_resolutions),
        n_embed=n_embed,
        embed_dim=embed_dim,
    )
    vq_model = load_vqgan(vqgan_checkpoint, **vqgan_arch) if vqgan_checkpoint else FrozenVQGAN(**vqgan_arch)
    betas = BetaRange(float(beta_rate_max), float(beta_vq_max))
    return DCVIC(
        encoder=ElicVqEncoder(
            3, main_ch, main_ch, block_mid_ch, embed_dim + n_embed, cond_ch, dual_conditioned, fourier_freqs, betas
        ),
        decoder=ElicFeatureDecoder(main_ch, main_ch, 3, block_mid_ch, cond_ch, dual_conditioned, fourier_freqs, betas),
        hyperencoder=HyperEncoder(main_ch, tuple(hyper_enc_ch), z_ch),
        hyperdecoder=HyperDecoder(z_ch, tuple(hyper_dec_ch), hyper_out_ch),
        context_model=ChannelContextModel(main_ch, hyper_out_ch, num_slices, max_support, tuple(slice_hidden_ch)),
        entropy_model_z=SteEntropyBottleneck(z_ch),
        entropy_model_y=SteGaussianConditional(),
        vq_estimator=SwinVqEstimator(
            main_ch, vq_estimator_ch, n_embed, embed_dim, num_swin_blocks, swin_depth, num_heads, window_size
        ),
        vq_model=vq_model,
        fusion_module=VqDecoderFusion(main_ch, vqgan_ch, tuple(vqgan_ch_mult)),
    )
