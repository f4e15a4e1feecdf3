"""Validation metrics of design §7, computed on one image (batch 1) at one beta setting."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
)

from lightning_modules.evaluation.metrics import MS_SSIM_MIN_SIDE
from lightning_modules.images import to_uint8
from lightning_modules.networks.dcvic import DCVICOutput


def validation_metrics(x: Tensor, out: DCVICOutput) -> dict[str, Tensor]:
    """bpp (quantised-likelihood estimate), PSNR and MS-SSIM on truncated 8-bit values, VQ accuracy and MSE.

    Truncation like the reference's PNG writer (design §8.1 quirk 11); MS-SSIM only where it is defined.
    """
    target, pred = to_uint8(x).float(), to_uint8(out.x_hat).float()
    metrics = {
        "bpp": out.bpp(),
        "psnr": peak_signal_noise_ratio(pred, target, data_range=255.0),
        "vq_acc": out.vq_accuracy(),
        "vq_mse": F.mse_loss(out.synthesis.out_vq_latent, out.vq.latent),
    }
    if min(x.shape[-2:]) >= MS_SSIM_MIN_SIDE:
        metrics["ms_ssim"] = multiscale_structural_similarity_index_measure(pred, target, data_range=255.0)
    return metrics
