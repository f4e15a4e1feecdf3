"""Loss terms (design §4.2), beta sampling (§4.3), the anomaly rule (§4.8) and the offline LPIPS builder."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import alexnet

from lightning_modules.perceptual import ALEXNET_FILE, build_lpips
from lightning_modules.training.beta_sampling import SelectedBetaSampler, UniformBetaSampler
from lightning_modules.training.losses import (
    DCVICLoss,
    discriminator_loss,
    focal_cross_entropy,
    generator_gan_loss,
    is_anomalous,
    mse_01,
)


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight AlexNet written in torchvision's file format (stands in for the ImageNet weights)."""
    path = tmp_path_factory.mktemp("alexnet") / ALEXNET_FILE
    torch.manual_seed(0)
    torch.save(alexnet(weights=None).state_dict(), path)
    return path


def test_lpips_loads_the_backbone_file_and_is_frozen(alexnet_file: Path) -> None:
    lpips = build_lpips(str(alexnet_file))
    expected = torch.load(alexnet_file, weights_only=True)["features.3.weight"]
    assert torch.equal(getattr(lpips.net.slice2, "3").weight, expected)
    assert not any(p.requires_grad for p in lpips.parameters())
    lpips.train(True)
    assert not lpips.training
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert float(lpips(x, x).sum()) == pytest.approx(0.0, abs=1e-6)
    assert float(lpips(x, -x).mean()) > 0


def test_lpips_missing_or_bad_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=ALEXNET_FILE):
        build_lpips(str(tmp_path / ALEXNET_FILE))
    bad = tmp_path / "bad.pth"
    torch.save({"classifier.1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="5 conv layers"):
        build_lpips(str(bad))


def test_focal_cross_entropy_matches_its_definition() -> None:
    logits, target = torch.randn(2, 8, 3, 3), torch.randint(0, 8, (2, 3, 3))
    ce = F.cross_entropy(logits, target, reduction="none")
    p_t = torch.softmax(logits, 1).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(focal_cross_entropy(logits, target, 2.0), (1 - p_t) ** 2 * ce)
    torch.testing.assert_close(focal_cross_entropy(logits, target, 0.0), ce)


def test_mse_is_taken_on_01_images() -> None:
    x, y = torch.full((1, 3, 2, 2), -1.0), torch.ones(1, 3, 2, 2)
    assert float(mse_01(x, y)) == pytest.approx(1.0)


def test_gan_losses() -> None:
    zeros = torch.zeros(2, 1, 4, 4)
    assert float(generator_gan_loss(zeros)) == pytest.approx(math.log(2))
    real, fake = discriminator_loss(torch.full_like(zeros, 20.0), torch.full_like(zeros, -20.0))
    assert float(real) < 1e-6 and float(fake) < 1e-6


@pytest.mark.parametrize(("value", "bad"), [(1.0, False), (9999.0, False), (10001.0, True), (math.nan, True)])
def test_anomaly_rule(value: float, bad: bool) -> None:
    assert is_anomalous(torch.tensor(value)) is bad
    assert is_anomalous(torch.tensor(-math.inf))


class FakeOutput:
    """Just the fields DCVICLoss reads, with per-sample rates 1 and 3 bpp."""

    def __init__(self) -> None:
        self.x_hat = torch.zeros(2, 3, 4, 4)
        self.synthesis = type("S", (), {"out_vq_latent": torch.ones(2, 4, 2, 2), "vq_logits": torch.zeros(2, 8, 2, 2)})
        self.vq = type("V", (), {"latent": torch.zeros(2, 4, 2, 2), "indices": torch.zeros(2, 2, 2, dtype=torch.long)})

    def bpp_per_sample(self) -> torch.Tensor:
        return torch.tensor([1.0, 3.0])


def test_exp_beta_weighting_applies_to_rate_and_code_terms_only() -> None:
    x, out = torch.zeros(2, 3, 4, 4), FakeOutput()
    beta_rate, beta_vq = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 0.0])
    kwargs = dict(perceptual=None, rate_weight=0.5, lpips_weight=0.0, code_mse_weight=0.006, vq_ce_weight=0.003)
    plain = DCVICLoss(**kwargs)(x, out, beta_rate, beta_vq)
    weighted = DCVICLoss(**kwargs, focal_gamma=2.0, exp_beta_weighting=True)(x, out, beta_rate, beta_vq)
    assert float(plain["rate"]) == pytest.approx(0.5 * 2.0)
    assert float(weighted["rate"]) == pytest.approx(0.5 * (1.0 * 1 + math.e * 3) / 2)
    assert float(weighted["code_mse"]) == pytest.approx(0.006 * (math.exp(2.0) + 1) / 2)
    ce = math.log(8) * (1 - 1 / 8) ** 2
    assert float(weighted["vq_ce"]) == pytest.approx(0.003 * ce * (math.exp(2.0) + 1) / 2, rel=1e-5)
    assert float(weighted["mse"]) == float(plain["mse"])
    assert float(weighted["loss"]) == pytest.approx(sum(float(v) for k, v in weighted.items() if k != "loss"))


def test_uniform_sampler_uses_101_levels_including_both_ends() -> None:
    torch.manual_seed(0)
    beta_rate, beta_vq = UniformBetaSampler().sample(20000)
    levels_rate = torch.unique(torch.round(beta_rate / 3.0 * 100))
    levels_vq = torch.unique(torch.round(beta_vq / 3.5 * 100))
    assert levels_rate.tolist() == list(range(101)) and levels_vq.tolist() == list(range(101))
    assert float(beta_rate.max()) == pytest.approx(3.0) and float(beta_vq.max()) == pytest.approx(3.5)
    assert not torch.equal(beta_rate[:100], beta_vq[:100] / 3.5 * 3.0)  # independent draws
    assert set(UniformBetaSampler().validation_settings()) == {
        "rate_max_vq_000",
        "rate_max_vq_max",
        "rate_000_vq_000",
        "rate_000_vq_max",
    }


def test_selected_sampler_draws_whole_pairs() -> None:
    sampler = SelectedBetaSampler([2.29, 1.51, 0.16], [3.0, 2.25, 1.0])
    beta_rate, beta_vq = sampler.sample(500)
    pairs = {(round(float(r), 2), round(float(v), 2)) for r, v in zip(beta_rate, beta_vq, strict=True)}
    assert pairs == {(2.29, 3.0), (1.51, 2.25), (0.16, 1.0)}
    assert sampler.validation_settings() == {"idx0": (2.29, 3.0)}
    with pytest.raises(ValueError, match="equally long"):
        SelectedBetaSampler([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="outside"):
        SelectedBetaSampler([3.5], [1.0])
