"""Metrics on real photos (scikit-image): the paper's PSNR convention, the HiFiC patch protocol, and the
perceptual / distribution metrics run end to end on small random-weight backbones (nothing downloaded)."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import skimage.data
import torch
from torchvision.models.vgg import cfgs, make_layers

from lightning_modules.evaluation import metrics
from lightning_modules.evaluation.metrics import (
    INCEPTION_FILE,
    MS_SSIM_MIN_SIDE,
    VGG16_FILE,
    MetricSuite,
    PatchDistributionMetrics,
    build_dists,
    build_inception,
    build_lpips_metric,
    count_hific_patches,
    hific_patches,
    ms_ssim_per_image,
    psnr_per_image,
)
from lightning_modules.images import from_uint8, to_uint8, to_uint8_rounded
from lightning_modules.perceptual import ALEXNET_FILE
from lightning_modules.training.validation_metrics import validation_metrics
from tests.support.metric_backbones import (
    SmallPatchFeatures,
    small_dists,
    small_metric_suite,
    write_random_alexnet,
    write_random_fid_inception,
)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str) -> torch.Tensor:
    return torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).contiguous()


def distort(image: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(image.shape, generator=generator) * sigma
    return (image.float() + noise).clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory: pytest.TempPathFactory):
    return write_random_alexnet(tmp_path_factory.mktemp("weights") / ALEXNET_FILE)


# --- PSNR and pixel conventions -------------------------------------------------------------------------


def hand_psnr(reconstruction: np.ndarray, original: np.ndarray) -> float:
    err = reconstruction.astype(np.float64) - original.astype(np.float64)
    mse = (err**2).sum() / err.size  # Σerr² / 3HW
    return 20 * math.log10(255) - 10 * math.log10(mse)


@pytest.mark.parametrize("name", PHOTOS)
def test_psnr_matches_hand_computation(name: str) -> None:
    original = photo(name)
    reconstruction = distort(original, sigma=7.0)
    expected = hand_psnr(reconstruction.numpy(), original.numpy())
    assert psnr_per_image(reconstruction, original).item() == pytest.approx(expected, abs=1e-4)


def test_dataset_psnr_is_the_mean_of_per_image_values() -> None:
    pairs = [(distort(photo(n), sigma), photo(n)) for n, sigma in (("astronaut", 3.0), ("coffee", 20.0))]
    per_image = [psnr_per_image(r, o).item() for r, o in pairs]
    pooled_mse = sum(((r.double() - o.double()) ** 2).sum().item() for r, o in pairs) / sum(o.numel() for _, o in pairs)
    assert np.mean(per_image) == pytest.approx(np.mean([hand_psnr(r.numpy(), o.numpy()) for r, o in pairs]), abs=1e-4)
    assert np.mean(per_image) != pytest.approx(20 * math.log10(255) - 10 * math.log10(pooled_mse), abs=0.1)


def test_psnr_of_a_batch_is_per_image() -> None:
    original = photo("astronaut")[:, :128, :128]
    batch_recon = torch.stack([distort(original, 2.0), distort(original, 30.0)])
    values = psnr_per_image(batch_recon, torch.stack([original, original]))
    assert values.shape == (2,) and values[0] > values[1] + 10


def test_to_uint8_truncates_like_the_reference_and_rounds_when_asked() -> None:
    x = torch.tensor([2.7, 3.0, 254.6]) / 255 * 2 - 1  # (x + 1) / 2 * 255 = 2.7, 3.0, 254.6
    assert to_uint8(x).tolist()[0] == 2 and to_uint8(x).tolist()[2] == 254
    assert to_uint8_rounded(x).tolist() == [3, 3, 255]
    every_level = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8_rounded(from_uint8(every_level)), every_level)
    assert (every_level.int() - to_uint8(from_uint8(every_level)).int()).abs().max() <= 1


def test_truncated_and_rounded_psnr_differ_on_model_outputs() -> None:
    original = photo("coffee")[:, :160, :160]
    x_hat = from_uint8(original) - 0.6 / 255  # a model output 0.3 levels below the original
    truncated = psnr_per_image(to_uint8(x_hat), original).item()
    rounded = psnr_per_image(to_uint8_rounded(x_hat), original).item()
    assert rounded == math.inf  # rounding recovers every level
    assert truncated == pytest.approx(20 * math.log10(255), abs=0.05)  # truncation is off by one level


def test_inputs_must_be_matching_uint8_images() -> None:
    image = photo("chelsea")
    with pytest.raises(TypeError, match="uint8"):
        psnr_per_image(image.float(), image)
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr_per_image(image[:, :100], image)


def test_ms_ssim_on_photos_and_nan_below_its_minimum_size() -> None:
    original = photo("rocket")[:, 100:300, 200:400]
    assert ms_ssim_per_image(original, original).item() == pytest.approx(1.0, abs=1e-5)
    mild, strong = (ms_ssim_per_image(distort(original, s), original).item() for s in (5.0, 40.0))
    assert 1.0 > mild > strong > 0.0
    assert math.isnan(ms_ssim_per_image(original[:, :128, :128], original[:, :128, :128]).item())


@pytest.mark.parametrize("side", [MS_SSIM_MIN_SIDE - 1, MS_SSIM_MIN_SIDE])
def test_training_validation_and_evaluation_share_the_ms_ssim_minimum(side: int) -> None:
    """One constant, and the right one: 175 px is refused by torchmetrics, 176 px is scored by both users."""
    assert MS_SSIM_MIN_SIDE == 176
    original = photo("rocket")[:, 100 : 100 + side, 200 : 200 + side]
    x, x_hat = from_uint8(original)[None], from_uint8(distort(original, 5.0))[None]
    zeros = torch.zeros(1, 4, 2, 2)
    out = SimpleNamespace(  # the parts of a DCVICOutput that validation_metrics reads
        x_hat=x_hat,
        bpp=lambda: torch.tensor(0.1),
        vq_accuracy=lambda: torch.tensor(1.0),
        synthesis=SimpleNamespace(out_vq_latent=zeros),
        vq=SimpleNamespace(latent=zeros),
    )
    training = validation_metrics(x, out)
    evaluation = ms_ssim_per_image(to_uint8(x_hat), to_uint8(x)).item()  # both score truncated 8-bit values
    assert ("ms_ssim" in training) == (side >= MS_SSIM_MIN_SIDE) == math.isfinite(evaluation)
    if "ms_ssim" in training:
        assert training["ms_ssim"].item() == pytest.approx(evaluation, abs=1e-5)


# --- HiFiC patch protocol ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (256, 256, 1),  # one patch, shifted grid does not fit
        (255, 1000, 0),  # too short for any patch
        (384, 384, 2),  # 1 + 1 shifted
        (512, 512, 5),  # 4 + 1
        (512, 768, 8),  # Kodak landscape: 6 + 2
        (768, 512, 8),  # Kodak portrait
        (1365, 2048, 68),  # CLIC-like: 5·8 + 4·7
        (1356, 2040, 63),  # DIV2K-like: 5·7 + 4·7
        (300, 451, 1),  # chelsea
    ],
)
def test_patch_counts_for_both_grids(height: int, width: int, expected: int) -> None:
    assert count_hific_patches(height, width) == expected
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    assert hific_patches(image).shape == (expected, 3, 256, 256)


def test_patches_come_from_the_top_left_grid_then_the_shifted_grid() -> None:
    image = photo("astronaut")  # 512 × 512
    patches = hific_patches(image)
    assert torch.equal(patches[0], image[:, :256, :256])
    assert torch.equal(patches[1], image[:, :256, 256:])
    assert torch.equal(patches[3], image[:, 256:, 256:])
    assert torch.equal(patches[4], image[:, 128:384, 128:384])


# --- LPIPS / DISTS ----------------------------------------------------------------------------------------


def test_lpips_from_an_alexnet_file_runs_on_photos(alexnet_file) -> None:
    lpips = build_lpips_metric(alexnet_file)
    original = photo("chelsea")[:, 50:210, 150:310]
    scores = [lpips(from_uint8(distort(original, s))[None], from_uint8(original)[None]).item() for s in (0, 10, 40)]
    assert scores[0] == pytest.approx(0.0, abs=1e-6)
    assert 0 < scores[1] < scores[2]


def test_dists_with_a_small_vgg_runs_on_photos() -> None:
    dists = small_dists()
    crop = photo("coffee")[:, 100:260, 200:360]
    original = crop[None].float() / 255
    same = dists.score(original, original).item()
    mild, strong = (dists.score(distort(crop, s)[None].float() / 255, original).item() for s in (5, 40))
    assert same == pytest.approx(0.0, abs=1e-5)
    assert 0 < mild < strong


def test_build_dists_loads_a_vgg16_file(tmp_path) -> None:
    torch.manual_seed(1)
    features = make_layers(cfgs["D"])
    path = tmp_path / VGG16_FILE
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    dists = build_dists(path)
    assert torch.equal(dists.stage5[-2].weight, features[28].weight)  # conv5_3 lands in stage 5
    assert dists.chns == [3, 64, 128, 256, 512, 512]
    image = photo("astronaut")[None, :, :32, :32].float() / 255
    assert dists.score(image, image).item() == pytest.approx(0.0, abs=1e-5)


def test_missing_weight_files_are_named(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty_hub"))
    for build, file_name in ((build_dists, VGG16_FILE), (build_inception, INCEPTION_FILE)):
        with pytest.raises(FileNotFoundError, match=file_name):
            build()
    with pytest.raises(FileNotFoundError, match=ALEXNET_FILE):
        build_lpips_metric()
    with pytest.raises(FileNotFoundError, match="elsewhere.pth"):
        build_dists(tmp_path / "elsewhere.pth")


def test_metric_suite_scores_one_photo(alexnet_file) -> None:
    suite = small_metric_suite(alexnet_file)
    original = photo("rocket")[:, 100:300, 200:400]
    same = suite.score_image(original, original)
    assert same["PSNR"] == math.inf and same["MS-SSIM"] == pytest.approx(1.0, abs=1e-5)
    assert same["LPIPS"] == pytest.approx(0.0, abs=1e-6) and same["DISTS"] == pytest.approx(0.0, abs=1e-5)
    noisy = distort(original, 12.0)
    scores = suite.score_image(noisy, original)
    assert scores["PSNR"] == pytest.approx(psnr_per_image(noisy, original).item())
    assert scores["LPIPS"] > 0 and scores["DISTS"] > 0
    assert math.isnan(MetricSuite().score_image(noisy, original)["LPIPS"])


# --- FID / KID --------------------------------------------------------------------------------------------


def patch_metrics(min_images: int = 2) -> PatchDistributionMetrics:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # KID's memory note
        return PatchDistributionMetrics(SmallPatchFeatures(), min_images, kid_subsets=10, kid_subset_size=6)


def test_fid_and_kid_run_end_to_end_on_photo_patches() -> None:
    identical, degraded = patch_metrics(), patch_metrics()
    for name in PHOTOS:
        original = photo(name)
        identical.update(original, original)
        degraded.update(distort(original, 60.0), original)
    assert identical.num_patches == sum(count_hific_patches(*photo(n).shape[1:]) for n in PHOTOS) == 13
    same, different = identical.compute(), degraded.compute()
    assert same["FID"] == pytest.approx(0.0, abs=1e-3)
    assert abs(same["KID"]) < 1e-3
    assert different["FID"] > 1e-3 and different["FID"] > 100 * abs(same["FID"])
    assert different["KID"] > same["KID"]


def test_fid_is_not_reported_below_the_minimum_image_count() -> None:
    metric = patch_metrics(min_images=5)
    for name in PHOTOS:
        metric.update(photo(name), photo(name))
    assert math.isnan(metric.compute()["FID"])


def test_build_metric_suite_respects_switches() -> None:
    suite = metrics.build_metric_suite(lpips=False, dists=False, fid=False)
    assert suite.lpips is None and suite.dists is None and suite.distribution_metrics() is None


@pytest.mark.slow
def test_real_inception_path_with_random_weights(tmp_path) -> None:
    """torch-fidelity's Inception built by build_inception from a weights file (random here) feeds FID/KID."""
    weights = write_random_fid_inception(tmp_path / INCEPTION_FILE)  # torch-fidelity's file has the same layout
    distribution = PatchDistributionMetrics(build_inception(weights), min_images=2, kid_subset_size=4)
    for name in PHOTOS:
        distribution.update(distort(photo(name), 30.0), photo(name))
    result = distribution.compute()
    assert torch.cat(distribution.real_features).shape == (13, 2048)
    assert np.isfinite([result["FID"], result["KID"]]).all()
