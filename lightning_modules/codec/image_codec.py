"""Real compression with a :class:`DCVIC` model: rANS bitstreams for ``z`` and ``y`` (design §6.1–6.6).

::

    compress                                   decompress
    x ─pad 64─ VQGAN (tiled >1024) ─ encoder (tiled >1344) ─ y
    y ─hyperencoder─ z ─EB─ z_string ───────── z_string ─EB─ ẑ
                      ẑ ─hyperdecoder─ hyper_out           ẑ ─hyperdecoder─ hyper_out
       ChARM.run(quantize = round)  ─ y_string ─ ChARM.run(quantize = rANS decode slice k)
                                               ŷ ─synthesis (tiled >1024)─ crop ─ clamp ─ x̂

Everything between ``y`` and ``ŷ`` (hyperdecoder, ChARM, entropy models) runs on the CPU in float32 with one
thread on *both* sides: that makes the entropy parameters bit-identical across machines' thread counts, and
so decompress rebuilds exactly the ``ŷ`` compress used. The ``y`` symbols of all slices are coded in one
channel-major string, like the reference, and decoded slice by slice from one :class:`RansDecoder`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from compressai.ans import RansDecoder
from compressai.entropy_models import EntropyBottleneck
from compressai.models.google import get_scale_table
from torch import Tensor

from lightning_modules.codec.container import (
    EXPLICIT_BETAS,
    BitstreamError,
    Container,
    ModelMismatchError,
    entropy_bottleneck_124,
    guard_stream,
    read_legacy,
)
from lightning_modules.model_file import ModelFile, QualityTable, weights_fingerprint
from lightning_modules.networks.conditioning import BetaRange
from lightning_modules.networks.dcvic import DCVIC, pad_to_multiple
from lightning_modules.networks.tiling import needs_tiling

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Conditioning:
    """What the decoder needs to know besides the latents: a quality index (or ``None``) and the beta pair."""

    quality_index: int | None
    beta_rate: float
    beta_vq: float

    def betas(self) -> tuple[Tensor, Tensor]:
        return torch.tensor([self.beta_rate]), torch.tensor([self.beta_vq])  # float32, batch of one


def resolve_conditioning(
    quality_table: QualityTable | None,
    quality: int | None = None,
    beta_rate: float | None = None,
    beta_vq: float | None = None,
    beta_range: BetaRange | None = None,
) -> Conditioning:
    """A quality index of the model's table, or an explicit pair (rounded to float32, as transmitted), checked
    against the model's ``beta_range`` when given (:meth:`DCVICCodec.compress` checks it in any case)."""
    if quality is not None:
        if beta_rate is not None or beta_vq is not None:
            raise ValueError("give either a quality index or an explicit beta pair, not both")
        if quality_table is None:
            raise ValueError(
                "this model file has no quality table (only stage 3 and converted releases carry selected pairs): "
                "give an explicit beta pair instead"
            )
        count = len(quality_table["beta_rate"])
        if not 0 <= quality < count:
            raise ValueError(f"quality index {quality} is out of range: this model has qualities 0..{count - 1}")
        return Conditioning(quality, quality_table["beta_rate"][quality], quality_table["beta_vq"][quality])
    if beta_rate is None or beta_vq is None:
        raise ValueError("give a quality index, or both beta_rate and beta_vq")
    if beta_range is not None:
        beta_range.check(beta_rate, beta_vq)
    return Conditioning(None, float(np.float32(beta_rate)), float(np.float32(beta_vq)))


@contextmanager
def entropy_parameter_context() -> Iterator[None]:
    """One CPU thread and no autograd: the same float32 results on every machine and thread setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(threads)


def prepare_for_coding(model: DCVIC) -> DCVIC:
    """``codec_setup`` (§6.1): rebuild the CDF tables and put the entropy-parameter path on the CPU."""
    model.eval()
    for module in (model.hyperdecoder, model.context_model, model.entropy_model_z, model.entropy_model_y):
        module.to(CPU, torch.float32)
    model.entropy_model_z.update(force=True)
    model.entropy_model_y.update_scale_table(get_scale_table(), force=True)
    return model


def model_device(model: DCVIC) -> torch.device:
    return next(model.encoder.parameters()).device


@dataclass
class LatentCode:
    """The two rANS strings and what compress learned on the way (ŷ, estimated bits)."""

    z_string: bytes
    y_string: bytes
    z_hat: Tensor
    y_hat: Tensor
    estimated_z_bits: float
    estimated_y_bits: float


def encode_latents(model: DCVIC, y: Tensor) -> LatentCode:
    """``y`` (1, C, h, w) → z and y strings (§6.3 steps 3–7); ``ŷ`` is what the decoder will rebuild."""
    if y.shape[0] != 1:
        raise ValueError(f"the codec codes one image at a time, got a batch of {y.shape[0]}")
    with torch.inference_mode():
        z = model.hyperencoder(y).to(CPU, torch.float32)  # (1, 192, h/4, w/4)
    y = y.to(CPU, torch.float32)
    gaussian = model.entropy_model_y
    with entropy_parameter_context():
        z_string = model.entropy_model_z.compress(z)[0]
        z_hat, z_likelihood = model.entropy_model_z(z, training=False)
        y_likelihoods: list[Tensor] = []

        def round_slice(k: int, mu: Tensor, sigma: Tensor) -> Tensor:
            y_hat_k, likelihood = gaussian(model.context_model.slice_of(y, k), sigma, mu, training=False)
            y_likelihoods.append(likelihood)
            return y_hat_k

        ctx = model.context_model.run(model.hyperdecoder(z_hat), round_slice)
        y_string = gaussian.compress(y, gaussian.build_indexes(ctx.scales), ctx.means)[0]
    return LatentCode(z_string, y_string, z_hat, ctx.y_hat, _bits(z_likelihood), _bits(torch.cat(y_likelihoods, 1)))


def decode_latents(
    model: DCVIC,
    z_string: bytes,
    y_string: bytes,
    y_size: tuple[int, int],
    entropy_model_z: EntropyBottleneck | None = None,
) -> tuple[Tensor, Tensor]:
    """Strings → ``(ẑ, ŷ)`` on the CPU (§6.5 steps 3–5); ``entropy_model_z`` overrides the z tables."""
    eb = entropy_model_z or model.entropy_model_z
    gaussian = model.entropy_model_y
    cdfs = gaussian._quantized_cdf.tolist()
    cdf_lengths = gaussian._cdf_length.reshape(-1).int().tolist()
    offsets = gaussian._offset.reshape(-1).int().tolist()
    decoder = RansDecoder()
    with entropy_parameter_context():
        z_hat = eb.decompress([guard_stream(z_string, _symbols(eb, y_size))], (y_size[0] // 4, y_size[1] // 4))
        hyper_out = model.hyperdecoder(z_hat)
        decoder.set_stream(guard_stream(y_string, _num_y_symbols(model, y_size)))

        def decode_slice(k: int, mu: Tensor, sigma: Tensor) -> Tensor:
            indexes = gaussian.build_indexes(sigma).reshape(-1).tolist()
            symbols = decoder.decode_stream(indexes, cdfs, cdf_lengths, offsets)
            return gaussian.dequantize(torch.tensor(symbols, dtype=torch.int32).reshape(mu.shape), mu)

        y_hat = model.context_model.run(hyper_out, decode_slice).y_hat
    if not bool(torch.isfinite(y_hat).all()):
        raise BitstreamError("the latents decode to non-finite values: the file is corrupt")
    return z_hat, y_hat


def synthesize(model: DCVIC, y_hat: Tensor, height: int, width: int, conditioning: Conditioning) -> Tensor:
    """``ŷ`` → image in [-1, 1], (1, 3, H, W); tiled when the long side exceeds 1024 px (§6.5 steps 6–7)."""
    beta_rate, beta_vq = conditioning.betas()
    y_hat = y_hat.to(model_device(model))
    with torch.inference_mode():
        if needs_tiling(height, width):
            x_hat = model.tiled_synthesis(y_hat, beta_rate, beta_vq).x_hat
        else:
            x_hat = model.synthesis(y_hat, beta_rate, beta_vq).x_hat
    return x_hat[:, :, :height, :width].clamp(-1, 1).cpu()


def analyse(model: DCVIC, x: Tensor, conditioning: Conditioning) -> Tensor:
    """Image (1, 3, H, W) in [-1, 1] → ``y`` (§6.3 steps 1–2; the encoder is tiled above 1344 px)."""
    beta_rate, beta_vq = conditioning.betas()
    x_pad = pad_to_multiple(x.to(model_device(model)), model.pad_multiple)
    with torch.inference_mode():
        return model.analysis(x_pad, model.vq_encode(x_pad), beta_rate, beta_vq)


class DCVICCodec:
    """A prepared model plus its identity: turns images into :class:`Container` bytes and back."""

    def __init__(self, model: DCVIC, quality_table: QualityTable | None, fingerprint: bytes | None = None):
        self.model = prepare_for_coding(model)
        self.quality_table = quality_table
        self.fingerprint = fingerprint or weights_fingerprint(model.state_dict())

    @classmethod
    def from_model_file(cls, model_file: ModelFile) -> DCVICCodec:
        return cls(model_file.build_model(), model_file.quality_table, model_file.fingerprint())

    @property
    def beta_range(self) -> BetaRange:
        return self.model.beta_range

    def compress(self, x: Tensor, conditioning: Conditioning) -> tuple[Container, LatentCode]:
        self.beta_range.check(conditioning.beta_rate, conditioning.beta_vq)
        height, width = x.shape[-2:]
        code = encode_latents(self.model, analyse(self.model, x, conditioning))
        container = Container(
            fingerprint=self.fingerprint,
            height=height,
            width=width,
            quality_index=EXPLICIT_BETAS if conditioning.quality_index is None else conditioning.quality_index,
            beta_rate=conditioning.beta_rate,
            beta_vq=conditioning.beta_vq,
            z_string=code.z_string,
            y_string=code.y_string,
        )
        return container, code

    def decode_container(self, container: Container) -> tuple[Tensor, Tensor]:
        """Container → ``(x̂, ŷ)``; refuses a file made with other weights."""
        if container.fingerprint != self.fingerprint:
            raise ModelMismatchError(
                f"this file was made with model {container.fingerprint.hex()}, but the loaded model is "
                f"{self.fingerprint.hex()}; decode it with the checkpoint that compressed it"
            )
        if not self.beta_range.contains(container.beta_rate, container.beta_vq):
            raise BitstreamError(
                f"corrupt header: betas ({container.beta_rate}, {container.beta_vq}) lie outside this model's "
                f"[0, {self.beta_range.rate_max}]×[0, {self.beta_range.vq_max}]"
            )
        conditioning = Conditioning(container.quality_index, container.beta_rate, container.beta_vq)
        return self._decode(container.z_string, container.y_string, container.height, container.width, conditioning)

    def decompress(self, data: bytes) -> Tensor:
        return self.decode_container(Container.from_bytes(data))[0]

    def decompress_legacy(self, data: bytes, legacy_eb_version: str = "1.2.4") -> tuple[Tensor, Tensor]:
        """An authors' ``.bin`` file (§6.4): betas from this model's quality table, z CDFs of
        ``legacy_eb_version``.

        The file cannot say which compressai wrote it; the authors used 1.2.4, hence the default.
        """
        legacy = read_legacy(data)
        if self.quality_table is None:
            raise ValueError("an authors' .bin file names a quality index, but this model file has no quality table")
        count = len(self.quality_table["beta_rate"])
        if legacy.quality_index >= count:
            raise BitstreamError(f"legacy file asks for quality {legacy.quality_index}; the model has 0..{count - 1}")
        q = legacy.quality_index
        conditioning = Conditioning(q, self.quality_table["beta_rate"][q], self.quality_table["beta_vq"][q])
        if legacy_eb_version == "1.2.4":
            eb = entropy_bottleneck_124(self.model.entropy_model_z)
        elif legacy_eb_version == "1.2.8":
            eb = self.model.entropy_model_z
        else:
            raise ValueError(f"legacy_eb_version must be '1.2.4' or '1.2.8', got {legacy_eb_version!r}")
        return self._decode(legacy.z_string, legacy.y_string, legacy.height, legacy.width, conditioning, eb)

    def _decode(
        self,
        z_string: bytes,
        y_string: bytes,
        height: int,
        width: int,
        conditioning: Conditioning,
        entropy_model_z: EntropyBottleneck | None = None,
    ) -> tuple[Tensor, Tensor]:
        multiple = self.model.pad_multiple
        y_size = (math.ceil(height / multiple) * multiple // 16, math.ceil(width / multiple) * multiple // 16)
        _, y_hat = decode_latents(self.model, z_string, y_string, y_size, entropy_model_z)
        x_hat = synthesize(self.model, y_hat, height, width, conditioning)
        if not bool(torch.isfinite(x_hat).all()):
            raise BitstreamError("the image decodes to non-finite values: the file is corrupt")
        return x_hat, y_hat


def _bits(likelihood: Tensor) -> float:
    return float(torch.log2(likelihood).sum().neg())


def _symbols(eb: EntropyBottleneck, y_size: tuple[int, int]) -> int:
    return eb._quantized_cdf.shape[0] * (y_size[0] // 4) * (y_size[1] // 4)


def _num_y_symbols(model: DCVIC, y_size: tuple[int, int]) -> int:
    return model.context_model.num_slices * model.context_model.slice_ch * y_size[0] * y_size[1]
