"""compressai entropy models with DC-VIC's training behaviour (design §3.6, §3.7).

Training: likelihoods come from the noisy value ``v + U(−½, ½)`` while the reconstruction uses straight-through
rounding around the median (z) or the predicted mean (y), so the decoder trains on the values it will see.
Evaluation: compressai's own quantise-then-evaluate path, unchanged.
"""

from __future__ import annotations

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
