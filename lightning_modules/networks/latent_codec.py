"""The entropy path as one object: hyperprior for ``z``, ChARM + Gaussian conditional for ``y`` (design §3.4–3.7).

::

    y ─hyperencoder─ z ─EntropyBottleneck─ ẑ ─hyperdecoder─ [μ_h, σ_h] ─ChARM slice k─ (μ_k, σ_k) ─GC─ ŷ_k

One object with CompressAI's latent-codec contract (``compressai.latent_codecs.LatentCodec``):

- ``forward(y)``: likelihoods (noisy + STE in training, rounded otherwise) and ``ŷ`` — training and rate estimates;
- ``compress(y)``: the z string (EntropyBottleneck) and one channel-major y string of all slices;
- ``decompress(strings, shape)``: ẑ, then slice ``k`` rANS-decoded from one :class:`RansDecoder` with the
  ``(μ_k, σ_k)`` its predecessors allow.

All three run the same :meth:`ChannelContextModel.run` loop; only the per-slice quantiser differs. ``compress`` and
``decompress`` compute the entropy parameters with one thread and no autograd (:func:`entropy_parameter_context`),
so the decoder rebuilds bit for bit the ``ŷ`` the encoder used, on any machine and thread count (design §6.1).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from compressai.ans import RansDecoder
from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import LatentCodec
from compressai.models.google import get_scale_table
from torch import Tensor

from .context_model import ChannelContextModel, ContextOutput
from .entropy_models import SteEntropyBottleneck, SteGaussianConditional, min_symbol_bits, rans_string_bounds
from .hyperprior import HyperDecoder, HyperEncoder

Z_STRIDE = 4
"""``y`` → ``z`` downsampling of the hyperencoder (two stride-2 convolutions)."""


@dataclass
class EntropyOutput:
    """Hyperprior + ChARM results; ``likelihoods`` are noisy in training, ``q_likelihoods`` always quantised."""

    z: Tensor
    z_hat: Tensor
    y_hat: Tensor
    hyper_out: Tensor
    means: Tensor
    scales: Tensor
    likelihoods: dict[str, Tensor]
    q_likelihoods: dict[str, Tensor]


@dataclass
class LatentCode:
    """``compress``: the two rANS strings and what it learned on the way (ŷ, estimated bits)."""

    z_string: bytes
    y_string: bytes
    z_hat: Tensor
    y_hat: Tensor
    estimated_z_bits: float
    estimated_y_bits: float

    @property
    def strings(self) -> tuple[bytes, bytes]:
        """``(z_string, y_string)``, the order of the file formats and of :meth:`decompress`."""
        return self.z_string, self.y_string


class DecodedLatents(NamedTuple):
    z_hat: Tensor
    y_hat: Tensor


@contextmanager
def entropy_parameter_context() -> Iterator[None]:
    """One CPU thread and no autograd: the same float32 results on every machine and thread setting.

    On a GPU (``entropy_device``): deterministic cuDNN kernels, no autotuning and no TF32, so that encoder and
    decoder on the same kind of GPU agree bit for bit.
    """
    threads = torch.get_num_threads()
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32)
    torch.set_num_threads(1)
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = False, True, False, False
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(threads)
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = saved


class HyperpriorCharmLatentCodec(LatentCodec):
    """``y`` ↔ (z string, y string). Attribute names are the model's (``entropy_model_z`` …): state-dict keys."""

    def __init__(
        self,
        hyperencoder: HyperEncoder,
        hyperdecoder: HyperDecoder,
        context_model: ChannelContextModel,
        entropy_model_z: SteEntropyBottleneck,
        entropy_model_y: SteGaussianConditional,
    ) -> None:
        super().__init__()
        self.hyperencoder = hyperencoder
        self.hyperdecoder = hyperdecoder
        self.entropy_model_z = entropy_model_z
        self.entropy_model_y = entropy_model_y
        self.context_model = context_model

    # --- forward: likelihoods for training and rate estimates ---

    def forward(self, y: Tensor, training: bool | None = None) -> EntropyOutput:
        training = self.training if training is None else training
        y = y.contiguous()  # one layout for the entropy path, as in compress
        return self._entropy(y, self.hyperencoder(y), training)

    def _entropy(self, y: Tensor, z: Tensor, training: bool) -> EntropyOutput:
        z_hat, z_likelihood = self.entropy_model_z(z, training=training)
        z_q_likelihood = z_likelihood
        if training:
            with torch.no_grad():
                _, z_q_likelihood = self.entropy_model_z(z, training=False)
        hyper_out = self.hyperdecoder(z_hat)
        ctx, y_likelihood, y_q_likelihood = self.context(y, hyper_out, training)
        return EntropyOutput(
            z=z,
            z_hat=z_hat,
            y_hat=ctx.y_hat,
            hyper_out=hyper_out,
            means=ctx.means,
            scales=ctx.scales,
            likelihoods={"y": y_likelihood, "z": z_likelihood},
            q_likelihoods={"y": y_q_likelihood, "z": z_q_likelihood},
        )

    def context(self, y: Tensor, hyper_out: Tensor, training: bool) -> tuple[ContextOutput, Tensor, Tensor]:
        """ChARM over ``y`` given the hyper-synthesis output: ``(ŷ and parameters, L_y, quantised L_y)``."""
        likelihoods: list[Tensor] = []
        q_likelihoods: list[Tensor] = []

        def quantize_slice(k: int, mu: Tensor, sigma: Tensor) -> Tensor:
            y_k = self.context_model.slice_of(y, k)
            y_hat_k, likelihood = self.entropy_model_y(y_k, sigma, mu, training=training)
            likelihoods.append(likelihood)
            if training:
                with torch.no_grad():
                    likelihood = self.entropy_model_y.quantized_likelihood(y_k, sigma, mu)
            q_likelihoods.append(likelihood)
            return y_hat_k

        ctx = self.context_model.run(hyper_out, quantize_slice)
        return ctx, torch.cat(likelihoods, 1), torch.cat(q_likelihoods, 1)

    # --- real coding ---

    def prepare_for_coding(self, device: torch.device | str = "cpu") -> None:
        """Put everything after ``z`` on ``device`` in float32 and rebuild the CDF tables (``codec_setup``, §6.1).

        The hyperencoder stays where it is: it runs on the encoder side only, and ``z`` is transmitted.
        """
        for module in (self.hyperdecoder, self.context_model, self.entropy_model_z, self.entropy_model_y):
            module.to(device, torch.float32)
        self.entropy_model_z.update(force=True)
        self.entropy_model_y.update_scale_table(get_scale_table(), force=True)

    def compress(self, y: Tensor) -> LatentCode:
        """``y`` (1, C, h, w) → z and y strings (§6.3 steps 3–7); ``ŷ`` is what :meth:`decompress` rebuilds."""
        if y.shape[0] != 1:
            raise ValueError(f"the codec codes one image at a time, got a batch of {y.shape[0]}")
        # float32 NCHW whatever precision and layout the image networks used: the z and y bytes depend on it
        y = y.to(torch.float32, memory_format=torch.contiguous_format)
        with torch.inference_mode():
            z = self.hyperencoder(y)  # (1, z_ch, h/4, w/4)
        device = self._parameter_device()
        y, z = y.to(device, torch.float32), z.to(device, torch.float32)
        gaussian = self.entropy_model_y
        with entropy_parameter_context():
            out = self._entropy(y, z, training=False)
            z_string = self.entropy_model_z.compress(z)[0]
            y_string = gaussian.compress(y, gaussian.build_indexes(out.scales), out.means)[0]
        return LatentCode(
            z_string, y_string, out.z_hat, out.y_hat, _bits(out.likelihoods["z"]), _bits(out.likelihoods["y"])
        )

    def decompress(
        self,
        strings: Sequence[bytes],
        shape: tuple[int, int],
        entropy_model_z: EntropyBottleneck | None = None,
    ) -> DecodedLatents:
        """``(z_string, y_string)`` and ``y``'s spatial ``shape`` → ``(ẑ, ŷ)`` (§6.5 steps 3–5).

        ``entropy_model_z`` replaces the z tables (the compressai-1.2.4 ones of the authors' files). Strings
        that are too short or forged decode to *something*; callers check plausibility and finiteness.
        """
        z_string, y_string = strings
        if shape[0] % Z_STRIDE or shape[1] % Z_STRIDE:
            raise ValueError(f"y's size {shape} is not a multiple of {Z_STRIDE}")
        eb = entropy_model_z or self.entropy_model_z
        gaussian = self.entropy_model_y
        cdfs = gaussian._quantized_cdf.tolist()
        cdf_lengths = gaussian._cdf_length.reshape(-1).int().tolist()
        offsets = gaussian._offset.reshape(-1).int().tolist()
        z_symbols, y_symbols = self.symbol_counts(shape)
        decoder = RansDecoder()
        with entropy_parameter_context():
            z_hat = eb.decompress([_guard_stream(z_string, z_symbols)], (shape[0] // Z_STRIDE, shape[1] // Z_STRIDE))
            hyper_out = self.hyperdecoder(z_hat)
            decoder.set_stream(_guard_stream(y_string, y_symbols))

            def decode_slice(k: int, mu: Tensor, sigma: Tensor) -> Tensor:
                indexes = gaussian.build_indexes(sigma).reshape(-1).tolist()
                symbols = decoder.decode_stream(indexes, cdfs, cdf_lengths, offsets)
                return gaussian.dequantize(
                    torch.tensor(symbols, dtype=torch.int32, device=mu.device).reshape(mu.shape), mu
                )

            y_hat = self.context_model.run(hyper_out, decode_slice).y_hat
        return DecodedLatents(z_hat, y_hat)

    def symbol_counts(self, shape: tuple[int, int]) -> tuple[int, int]:
        """How many symbols the z and y strings of a ``y`` of spatial ``shape`` carry."""
        z_positions = (shape[0] // Z_STRIDE) * (shape[1] // Z_STRIDE)
        return self.entropy_model_z.channels * z_positions, self.y_channels * shape[0] * shape[1]

    @property
    def y_channels(self) -> int:
        return self.context_model.num_slices * self.context_model.slice_ch

    def string_bounds(
        self, shape: tuple[int, int], entropy_model_z: EntropyBottleneck | None = None
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """Fewest and most bytes a real ``(z, y)`` string pair for a ``y`` of ``shape`` can have.

        A z symbol of channel ``c`` costs at least the cheapest entry of table ``c``; a y symbol's table
        depends on σ, so it costs at least the cheapest entry of any table (see :func:`rans_string_bounds`).
        """
        eb = entropy_model_z or self.entropy_model_z
        gaussian = self.entropy_model_y
        z_symbols, y_symbols = self.symbol_counts(shape)
        z_positions = z_symbols // eb.channels
        z_bits = z_positions * float(min_symbol_bits(eb._quantized_cdf, eb._cdf_length).sum())
        y_bits = y_symbols * float(min_symbol_bits(gaussian._quantized_cdf, gaussian._cdf_length).min())
        return rans_string_bounds(z_bits, z_symbols), rans_string_bounds(y_bits, y_symbols)

    def decode_bytes(self, shape: tuple[int, int], string_lengths: tuple[int, int]) -> int:
        """Peak memory of :meth:`decompress` beyond the weights, from the widths (float32, whole ``y`` at once).

        Per ``y`` position: the hyper-synthesis branches and their output, ŷ/μ/σ of every slice and their
        concatenation, one slice's supports and hidden maps; per symbol of a slice, the Python and C++
        index/symbol lists of the rANS call; plus both guarded copies of each string.
        """
        positions = shape[0] * shape[1]
        hyper = self.hyperdecoder.hd_mu
        hyper_out = hyper.conv3.out_channels
        hidden = self.context_model.mean_slice_transforms[0].model
        slice_ch, support = self.context_model.slice_ch, self.context_model.max_support
        floats = (
            2 * hyper.conv2.out_channels
            + 6 * hyper_out
            + 6 * self.y_channels
            + 3 * (hyper_out + slice_ch * support)
            + slice_ch
            + hidden[0].out_channels
            + hidden[2].out_channels
        )
        rans_lists = 76 * slice_ch  # 8 + 4 (indexes), 8 + 32 + 4 + 4 (symbols), int32 tensors and temporaries
        counts = self.symbol_counts(shape)
        guards = sum(2 * (n + _guard_bytes(n, count)) for n, count in zip(string_lengths, counts, strict=True))
        return positions * (4 * floats + rans_lists) + guards

    def _parameter_device(self) -> torch.device:
        return next(self.hyperdecoder.parameters()).device


def _bits(likelihood: Tensor) -> float:
    return float(torch.log2(likelihood).sum().neg())


def _guard_bytes(length: int, num_symbols: int) -> int:
    """Zero bytes after a rANS string of ``length`` bytes that codes ``num_symbols`` symbols.

    compressai's C++ decoder does not bounds-check its reads. It reads at most one 32-bit word per symbol, plus
    the raw nibbles of bypassed values, whose count (≤ 15 per count nibble) a forged string controls: at most
    15·length/4 words for count nibbles read from the string, and a few from the 64-bit state. Zero padding
    ends every bypass count, so reads stay inside the buffer; 4 KiB cover counts drawn from the state.
    """
    return 4 * num_symbols + 16 * length + 4096


def _guard_stream(string: bytes, num_symbols: int) -> bytes:
    """The string followed by :func:`_guard_bytes` zero bytes (a valid string never reads into them)."""
    return string + bytes(_guard_bytes(len(string), num_symbols))
