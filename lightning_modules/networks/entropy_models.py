"""compressai entropy models with DC-VIC's training behaviour (design §3.6, §3.7).

Training: likelihoods come from the noisy value ``v + U(−½, ½)`` while the reconstruction uses straight-through
rounding around the median (z) or the predicted mean (y), so the decoder trains on the values it will see.
Evaluation: compressai's own quantise-then-evaluate path, unchanged.

:func:`training_noise` is the one place the training noise is drawn; :func:`injected_noise` lets a test feed it
recorded tensors instead (training-parity tests, design §4.8).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models.utils import update_registered_buffers
from torch import Tensor, nn

NoiseSource = Callable[[Tensor], Tensor]
_noise_source: NoiseSource | None = None


def training_noise(like: Tensor) -> Tensor:
    """``U(−½, ½)`` of ``like``'s shape (compressai's draw), or the injected source's next tensor."""
    if _noise_source is not None:
        return _noise_source(like)
    return torch.empty_like(like).uniform_(-0.5, 0.5)


@contextlib.contextmanager
def injected_noise(source: NoiseSource) -> Iterator[None]:
    """Within the block every training-noise draw of every entropy model calls ``source(like)`` (tests only)."""
    global _noise_source
    previous, _noise_source = _noise_source, source
    try:
        yield
    finally:
        _noise_source = previous


class _NoiseSeam:
    """compressai's ``quantize`` with the ``"noise"`` mode drawing through :func:`training_noise`."""

    def quantize(self, inputs: Tensor, mode: str, means: Tensor | None = None) -> Tensor:
        if mode == "noise":
            return inputs + training_noise(inputs)
        return super().quantize(inputs, mode, means)


def ste_round(x: Tensor) -> Tensor:
    """``round(x)`` forward, identity backward."""
    return x + (x.round() - x).detach()


class SteEntropyBottleneck(_NoiseSeam, EntropyBottleneck):
    """Factorized prior for ``z``; ``forward`` returns ``(ẑ, likelihoods)``."""

    def __init__(self, channels: int = 192, **kwargs) -> None:
        super().__init__(channels, **kwargs)

    def medians(self) -> Tensor:
        return self.quantiles[:, 0, 1].detach().reshape(1, -1, 1, 1)

    def forward(self, z: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
        training = self.training if training is None else training
        outputs, likelihood = super().forward(z, training=training)
        if not training:
            return outputs, likelihood  # outputs = round(z − m) + m
        # Not detached, as in the reference: the two paths give the quantiles an exactly-zero gradient (−g + g),
        # so DDP sees them used in the main backward; the aux loss alone moves them.
        m = self.quantiles[:, 0, 1].reshape(1, -1, 1, 1)
        return ste_round(z - m) + m, likelihood


class SteGaussianConditional(_NoiseSeam, GaussianConditional):
    """Gaussian mean-scale conditional for ``y``; ``σ`` is floored at 0.11 inside the likelihood."""

    def __init__(self, scale_bound: float = 0.11, **kwargs) -> None:
        super().__init__(None, scale_bound=scale_bound, **kwargs)

    def forward(self, y: Tensor, scales: Tensor, means: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
        training = self.training if training is None else training
        outputs, likelihood = super().forward(y, scales, means=means, training=training)
        if not training:
            return outputs, likelihood  # outputs = round(y − μ) + μ
        return ste_round(y - means) + means, likelihood

    def quantized_likelihood(self, y: Tensor, scales: Tensor, means: Tensor) -> Tensor:
        """Likelihood of the hard-quantised value, for the logged ``qbpp`` (no gradient wanted)."""
        _, likelihood = super().forward(y.detach(), scales.detach(), means=means.detach(), training=False)
        return likelihood


def load_entropy_tables(module: nn.Module, prefix: str, state_dict: dict[str, Tensor]) -> None:
    """Resize compressai's CDF buffers to the shapes stored in ``state_dict`` before a strict load."""
    names = ["_quantized_cdf", "_offset", "_cdf_length"]
    if isinstance(module, GaussianConditional):
        names.append("scale_table")
    if any(f"{prefix}.{n}" in state_dict for n in names):
        update_registered_buffers(module, prefix, names, state_dict)


def entropy_bottleneck_124(entropy_model_z: EntropyBottleneck) -> EntropyBottleneck:
    """A copy whose CDFs are built with compressai 1.2.4's pmf formula (the authors' environment).

    1.2.4 evaluated the pmf as ``|σ(s·u) − σ(s·ℓ)|`` with ``s = −sign(u + ℓ)``; 1.2.8 uses
    ``σ(u) − σ(ℓ)``. The two differ by float rounding in the tails, which moves a few quantised CDF
    entries and so changes z streams. Offsets, lengths and tail masses are the same.
    """
    eb = copy.deepcopy(entropy_model_z)
    eb.update(force=True)
    medians = eb.quantiles[:, 0, 1]
    pmf_length = eb._cdf_length - 2
    max_length = int(pmf_length.max())
    samples = torch.arange(max_length, device=medians.device)[None, :] + (medians + eb._offset)[:, None, None]
    with torch.no_grad():
        lower = eb._logits_cumulative(samples - 0.5, stop_gradient=True)
        upper = eb._logits_cumulative(samples + 0.5, stop_gradient=True)
        sign = -torch.sign(lower + upper)
        pmf = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))[:, 0, :]
        tail_mass = torch.sigmoid(lower[:, 0, :1]) + torch.sigmoid(-upper[:, 0, -1:])
        eb._quantized_cdf = eb._pmf_to_cdf(pmf, tail_mass, pmf_length, max_length)
    return eb


# --- what a rANS string of compressai's coder can and cannot be ---

RANS_PRECISION = 16
"""compressai's rANS coder: probabilities are frequencies out of 2^16 (``_quantized_cdf`` ends at 65536)."""

_MAX_BITS_PER_SYMBOL = RANS_PRECISION + 4 * 9
"""One table symbol (≤ 16 bits, frequency ≥ 1) plus, out of range, a bypass count nibble and ≤ 8 raw nibbles."""

_SLACK_BITS_PER_SYMBOL = 2e-4
"""Rans64's integer rounding: each step (a symbol, a bypass nibble) loses < log2(1/(1 − 2^-15)) = 4.4e-5 bits
to a floor; a symbol takes two, an escaped one a third for its first bypass nibble."""

_BYPASS_BITS = 4
"""compressai codes a value outside a table's range as the table's last (escape) entry, then ≥ 1 raw nibble."""


def min_symbol_bits(quantized_cdf: Tensor, cdf_length: Tensor) -> Tensor:
    """Per table, the fewest bits any coded value costs (float64): ``16 − log2(f)`` for its most frequent
    regular entry ``f``, or the escape entry's cost plus the bypass nibble it always brings, if less."""
    cdf = quantized_cdf.to(torch.int64)
    freqs = cdf[:, 1:] - cdf[:, :-1]  # (tables, max_length − 1); column cdf_length − 2 is the escape entry
    escape_column = cdf_length.reshape(-1, 1).to(torch.int64) - 2
    columns = torch.arange(freqs.shape[1])[None, :]
    regular = torch.where(columns < escape_column, freqs, torch.zeros_like(freqs)).amax(dim=1)
    escape = freqs.gather(1, escape_column.clamp(min=0)).squeeze(1)
    regular_bits = RANS_PRECISION - torch.log2(regular.clamp(min=1).to(torch.float64))
    regular_bits = torch.where(regular > 0, regular_bits, torch.full_like(regular_bits, math.inf))
    escape_bits = RANS_PRECISION - torch.log2(escape.clamp(min=1).to(torch.float64)) + _BYPASS_BITS
    return torch.minimum(regular_bits, escape_bits)


def rans_string_bounds(min_bits: float, num_symbols: int) -> tuple[int, int]:
    """Fewest and most bytes compressai's encoder can write for ``num_symbols`` symbols costing ``min_bits``.

    Rans64 keeps a state ``x ∈ [2^31, 2^63)``, starts at 2^31, grows it by ``2^16/f`` per symbol (up to the
    rounding slack above), emits 32-bit words and flushes 64 bits. So a string is a whole number of words,
    at least 8 bytes, and ``8·len > Σ(cost − slack) + 32``; at most ``Σ cost + 64`` bits with ≤ 52 bits per
    symbol. Both bounds hold for every string the encoder writes, so no legitimate file is refused.
    """
    floor_bits = min_bits - _SLACK_BITS_PER_SYMBOL * num_symbols + 32
    fewest = max(8, 4 * math.ceil(floor_bits / 32))
    most = 4 * math.ceil(((_MAX_BITS_PER_SYMBOL + _SLACK_BITS_PER_SYMBOL) * num_symbols + 64) / 32)
    return fewest, most
