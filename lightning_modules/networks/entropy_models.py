"""compressai entropy models with DC-VIC's training behaviour (design §3.6, §3.7).

Training: likelihoods come from the noisy value ``v + U(−½, ½)`` while the reconstruction uses straight-through
rounding around the median (z) or the predicted mean (y), so the decoder trains on the values it will see.
Evaluation: compressai's own quantise-then-evaluate path, unchanged.

:func:`training_noise` is the one place the training noise is drawn; :func:`injected_noise` lets a test feed it
recorded tensors instead (training-parity tests, design §4.8).
"""

from __future__ import annotations

import contextlib
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
