"""Validation metrics of design §7, computed on one image (batch 1) at one beta setting."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
)

from lightning_modules.networks.dcvic import DCVICOutput

MS_SSIM_MIN_SIDE = 161  # five scales of an 11-px window need > 160 px


def to_uint8_levels(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 255] *truncated* like the reference's PNG writer (design §8.1 quirk 11), as float."""
    return ((x.clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8).float()


def validation_metrics(x: Tensor, out: DCVICOutput) -> dict[str, Tensor]:
    """bpp (quantised-likelihood estimate), PSNR and MS-SSIM on truncated 8-bit values, VQ accuracy and MSE."""
    target, pred = to_uint8_levels(x), to_uint8_levels(out.x_hat)
    metrics = {
        "bpp": out.bpp(),
        "psnr": peak_signal_noise_ratio(pred, target, data_range=255.0),
        "vq_acc": out.vq_accuracy(),
        "vq_mse": F.mse_loss(out.synthesis.out_vq_latent, out.vq.latent),
    }
    if min(x.shape[-2:]) >= MS_SSIM_MIN_SIDE:
        metrics["ms_ssim"] = multiscale_structural_similarity_index_measure(pred, target, data_range=255.0)
    return metrics
