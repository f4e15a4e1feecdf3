"""Fast checks of the systems without a Trainer: optimizer partitions, frozen parts, bf16 forward."""

from __future__ import annotations

import functools

import pytest
import torch

from lightning_modules.networks.dcvic import TINY_ARCHITECTURE, build_dcvic
from lightning_modules.networks.discriminator import BetaConditionedPatchGAN
from lightning_modules.training.adversarial import AdversarialSystem
from lightning_modules.training.beta_sampling import UniformBetaSampler
from lightning_modules.training.losses import DCVICLoss
from lightning_modules.training.rate_distortion import RateDistortionSystem

ADAM = functools.partial(torch.optim.Adam, lr=1e-4)
FLAT = functools.partial(torch.optim.lr_scheduler.ConstantLR, factor=1.0)


def rate_distortion(bf16: bool = False) -> RateDistortionSystem:
    torch.manual_seed(0)
    network = build_dcvic(**TINY_ARCHITECTURE)
    loss = DCVICLoss(perceptual=None, lpips_weight=0.0, rate_weight=0.5)
    return RateDistortionSystem(network, loss, UniformBetaSampler(), ADAM, ADAM, FLAT, max_iterations=1, bf16=bf16)


def test_rate_distortion_partition_and_never_run_layers() -> None:
    system = rate_distortion()
    (main, aux), _ = system.configure_optimizers()
    assert [p.shape for p in aux.param_groups[0]["params"]] == [system.network.entropy_model_z.quantiles.shape]
    frozen = {n for n, p in system.network.named_parameters() if not p.requires_grad}
    assert frozen == {n for n in frozen if n.startswith(("vq_model.", "decoder.conv4.", "decoder.beta_ft_list.8."))}
    assert any(n.startswith("decoder.conv4.") for n in frozen) and any(".beta_ft_list.8." in n for n in frozen)
    system.train()
    assert not system.network.vq_model.training  # .train() cannot unfreeze the VQGAN


def test_partition_assertion_catches_a_stray_trainable_parameter() -> None:
    system = rate_distortion()
    system.network.vq_model.quant_conv.weight.requires_grad_(True)
    with pytest.raises(AssertionError, match="quant_conv"):
        system.configure_optimizers()


def test_adversarial_system_trains_only_the_synthesis_side() -> None:
    network = build_dcvic(**TINY_ARCHITECTURE)
    loss = DCVICLoss(perceptual=None, lpips_weight=0.0, gan_weight=0.01)
    system = AdversarialSystem(
        network, BetaConditionedPatchGAN(), loss, UniformBetaSampler(), ADAM, ADAM, FLAT, FLAT, max_iterations=1
    )
    (g_opt, d_opt), _ = system.configure_optimizers()
    generator = {id(p) for p in g_opt.param_groups[0]["params"]}
    expected = {
        id(p)
        for n, p in network.named_parameters()
        if n.startswith(("decoder.", "vq_estimator.", "fusion_module."))
        and not n.startswith(("decoder.conv4.", "decoder.beta_ft_list.8."))
    }
    assert generator == expected
    assert len(d_opt.param_groups[0]["params"]) == len(list(system.discriminator.parameters()))


def test_bf16_switch_keeps_the_entropy_path_in_float32() -> None:
    system = rate_distortion(bf16=True).train()
    beta_rate, beta_vq = system.sample_betas(1)
    out = system.forward_train(torch.rand(1, 3, 64, 64) * 2 - 1, beta_rate, beta_vq)
    assert out.y.dtype == torch.bfloat16  # analysis transform ran under autocast
    assert out.synthesis.x_hat.dtype == torch.bfloat16
    assert out.entropy.likelihoods["y"].dtype == torch.float32 and out.entropy.hyper_out.dtype == torch.float32
    assert out.x_hat.dtype == torch.float32 and torch.isfinite(out.bpp())
