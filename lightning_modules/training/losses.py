"""Training losses of design §4.2 as one weighted sum whose terms are logged separately.

Every weight is a constructor argument; a weight of 0 drops the term. ``exp_beta_weighting`` (stage 1_2 only)
turns the rate and code terms into ``mean_n(exp(β_n)·ℓ_n)`` with ``ℓ_n`` the per-sample mean of the term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.networks.dcvic import DCVICOutput

ANOMALY_LIMIT = 1e4


def per_sample_mean(loss: Tensor) -> Tensor:
    """(N, ...) -> (N,): mean over every non-batch dimension."""
    return loss.flatten(1).mean(1)


def mse_01(x: Tensor, x_hat: Tensor) -> Tensor:
    """MSE of images mapped from [-1, 1] to [0, 1]."""
    return F.mse_loss((x_hat + 1) / 2, (x + 1) / 2)


def focal_cross_entropy(logits: Tensor, target: Tensor, gamma: float) -> Tensor:
    """Per-position ``(1 − p_t)^γ · CE``; γ = 0 is plain cross-entropy. Returns the target's shape."""
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    if gamma == 0:
        return ce
    p_t = torch.exp(-ce)
    return (1 - p_t) ** gamma * ce


def generator_gan_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating GAN loss: BCE(D(x̂), 1)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> tuple[Tensor, Tensor]:
    """(BCE(D(x), 1), BCE(D(x̂), 0)); the D loss is their mean, unweighted (design §4.2)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real, fake


def is_anomalous(loss: Tensor) -> bool:
    """The reference skips an iteration whose total loss is NaN, ±Inf or above 1e4 (design §4.8)."""
    return not bool(torch.isfinite(loss)) or float(loss) > ANOMALY_LIMIT


class DCVICLoss(nn.Module):
    """Generator-side loss: rate, image MSE, LPIPS, code MSE, (focal) CE and, in GAN stages, the G term."""

    def __init__(
        self,
        perceptual: nn.Module,
        rate_weight: float = 0.0,
        mse_weight: float = 50.0,
        lpips_weight: float = 1.0,
        code_mse_weight: float = 0.0,
        vq_ce_weight: float = 0.0,
        focal_gamma: float = 0.0,
        gan_weight: float = 0.0,
        exp_beta_weighting: bool = False,
    ) -> None:
        super().__init__()
        self.perceptual = perceptual
        self.rate_weight = rate_weight
        self.mse_weight = mse_weight
        self.lpips_weight = lpips_weight
        self.code_mse_weight = code_mse_weight
        self.vq_ce_weight = vq_ce_weight
        self.focal_gamma = focal_gamma
        self.gan_weight = gan_weight
        self.exp_beta_weighting = exp_beta_weighting

    def _weighted(self, per_sample: Tensor, beta: Tensor | None) -> Tensor:
        if not self.exp_beta_weighting:
            return per_sample.mean()
        if beta is None:
            raise ValueError("exp(beta) weighting needs per-sample betas")
        return (torch.exp(beta.to(per_sample.device, per_sample.dtype)) * per_sample).mean()

    def forward(
        self,
        x: Tensor,
        out: DCVICOutput,
        beta_rate: Tensor | None = None,
        beta_vq: Tensor | None = None,
        fake_logits: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Weighted terms by name; ``loss`` is their sum. Images in [-1, 1], computed in float32."""
        x_hat = out.x_hat.float()
        terms: dict[str, Tensor] = {}
        if self.rate_weight:
            terms["rate"] = self.rate_weight * self._weighted(out.bpp_per_sample(), beta_rate)
        terms["mse"] = self.mse_weight * mse_01(x, x_hat)
        if self.lpips_weight:
            terms["lpips"] = self.lpips_weight * self.perceptual(x_hat, x).mean()
        if self.code_mse_weight:
            code = per_sample_mean((out.synthesis.out_vq_latent.float() - out.vq.latent.float()) ** 2)
            terms["code_mse"] = self.code_mse_weight * self._weighted(code, beta_vq)
        if self.vq_ce_weight:
            ce = per_sample_mean(focal_cross_entropy(out.synthesis.vq_logits, out.vq.indices, self.focal_gamma))
            terms["vq_ce"] = self.vq_ce_weight * self._weighted(ce, beta_vq)
        if self.gan_weight:
            if fake_logits is None:
                raise ValueError("a GAN weight is set but no discriminator logits were given")
            terms["gan"] = self.gan_weight * generator_gan_loss(fake_logits.float())
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms
