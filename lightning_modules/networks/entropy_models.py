"""compressai entropy models with DC-VIC's training behaviour (design §3.6, §3.7).

Training: likelihoods come from the noisy value ``v + U(−½, ½)`` while the reconstruction uses straight-through
rounding around the median (z) or the predicted mean (y), so the decoder trains on the values it will see.
Evaluation: compressai's own quantise-then-evaluate path, unchanged.
"""

from __future__ import annotations

import copy

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models.utils import update_registered_buffers
from torch import Tensor, nn


def ste_round(x: Tensor) -> Tensor:
    """``round(x)`` forward, identity backward."""
    return x + (x.round() - x).detach()


class SteEntropyBottleneck(EntropyBottleneck):
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
        m = self.medians()
        return ste_round(z - m) + m, likelihood


class SteGaussianConditional(GaussianConditional):
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
