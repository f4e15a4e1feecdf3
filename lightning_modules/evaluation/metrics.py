"""Evaluation metrics computed the way the DC-VIC paper computed them (design §6.7, §7).

* PSNR: 8-bit images, ``MSE = Σerr² / 3HW`` per image, the reported value is the mean of per-image PSNRs.
  Model outputs become 8-bit by **truncation** ``uint8((x + 1) / 2 · 255)`` like the reference's PNG writer
  (:func:`lightning_modules.images.to_uint8`); the rounded variant (``to_uint8_rounded``) is reported separately.
* MS-SSIM on 8-bit values (data range 255), LPIPS-AlexNet on [-1, 1], DISTS on [0, 1], all full resolution,
  one image at a time (the images of a dataset differ in size).
* FID and KID with the HiFiC patch protocol: non-overlapping 256² patches of the top-left grid plus those of
  the grid shifted by 128 px in both axes, Inception-v3 pool3 features from one of two pipelines that differ in
  resize, input scaling and weight file, and so in their FIDs:

  - ``pytorch-fid`` (:func:`build_pytorch_fid_inception`): the authors' ``calc_metrics.py`` (pytorch-fid 0.3.0):
    ``x / 255``, ``F.interpolate(299, bilinear, align_corners=False)``, ``2x − 1``, scipy ``sqrtm`` FID;
    the default of stage 2, so beta selection matches theirs;
  - ``torch-fidelity`` (:func:`build_inception`): TF-1.x-style bilinear resize of the uint8 image (no half-pixel
    centres, unlike pytorch-fid), ``(x − 128) / 128``, torchmetrics' FID.

Every backbone is passed in as a module, so tests inject small random-weight networks into the very code
that scores real runs; the ``build_*`` functions load the real weights from a given path or from the torch
hub cache and never download (a missing file is an error naming it and saying where to get it).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytorch_fid.inception as pytorch_fid_inception
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from torch import Tensor, nn
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
)
from torchmetrics.functional.image.dists import _PATH_WEIGHT_DISTS, DISTSNetwork, L2pooling
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.image.kid import KernelInceptionDistance
from torchvision.models.vgg import cfgs as vgg_configs
from torchvision.models.vgg import make_layers

from lightning_modules.images import from_uint8
from lightning_modules.perceptual import ALEXNET_FILE, build_lpips

PATCH_SIZE = 256
PATCH_SHIFT = 128
FID_MIN_IMAGES = 50
# torchmetrics' MS-SSIM (the one training validation and evaluation both call): 5 scales, an 11-tap Gaussian
# window (sigma 1.5). Between scales the image is average-pooled by 2, so the coarsest scale is side // 16 px
# wide and the window must fit there: side // 16 >= 11, i.e. side >= 176. (torchmetrics' error message says
# "larger than 160", the product 10 · 16, but its check is ``side // 16 > 10``: 161 to 175 px raise.)
MS_SSIM_SCALES = 5
MS_SSIM_WINDOW = 11
MS_SSIM_MIN_SIDE = MS_SSIM_WINDOW * 2 ** (MS_SSIM_SCALES - 1)
VGG16_FILE = "vgg16-397923af.pth"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's layout of the FID Inception
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's
FID_PIPELINES = ("pytorch-fid", "torch-fidelity")
# file -> (where to get it, its key in conf/metrics)
WEIGHT_SOURCES = {
    ALEXNET_FILE: (f"https://download.pytorch.org/models/{ALEXNET_FILE} (torchvision AlexNet)", "alexnet_weights"),
    VGG16_FILE: (f"https://download.pytorch.org/models/{VGG16_FILE} (torchvision VGG16)", "vgg16_weights"),
    INCEPTION_FILE: (
        f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE} (torch-fidelity)",
        "inception_weights",
    ),
    PYTORCH_FID_FILE: (f"{pytorch_fid_inception.FID_WEIGHTS_URL} (pytorch-fid 0.3.0)", "inception_weights"),
}
# torchvision VGG16 ``features`` index ranges of DISTS' five stages; a max-pool sits between them.
_DISTS_STAGES = ((0, 4), (5, 9), (10, 16), (17, 23), (24, 30))


# ---------------------------------------------------------------------------------------------------------
# Full-reference metrics
# ---------------------------------------------------------------------------------------------------------


def _batched(image: Tensor) -> Tensor:
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W) or (3, H, W), got shape {tuple(image.shape)}")
    return image


def _check_pair(reconstruction: Tensor, original: Tensor) -> tuple[Tensor, Tensor]:
    reconstruction, original = _batched(reconstruction), _batched(original)
    if reconstruction.shape != original.shape:
        raise ValueError(f"shape mismatch: reconstruction {tuple(reconstruction.shape)} vs {tuple(original.shape)}")
    for name, image in (("reconstruction", reconstruction), ("original", original)):
        if image.dtype != torch.uint8:
            raise TypeError(f"{name} must be uint8 (convert model outputs with to_uint8), got {image.dtype}")
    return reconstruction, original


def psnr_per_image(reconstruction: Tensor, original: Tensor) -> Tensor:
    """(N,) PSNR in dB of uint8 images (N, 3, H, W): ``20·log10(255) − 10·log10(Σerr² / 3HW)``.

    Average the result over the dataset to get the paper's PSNR (mean of per-image values, not of MSEs).
    """
    reconstruction, original = _check_pair(reconstruction, original)
    return peak_signal_noise_ratio(
        reconstruction.double(), original.double(), data_range=255.0, reduction="none", dim=(1, 2, 3)
    ).float()


def ms_ssim_per_image(reconstruction: Tensor, original: Tensor) -> Tensor:
    """(N,) MS-SSIM on 8-bit values; NaN for images whose short side is below :data:`MS_SSIM_MIN_SIDE`."""
    reconstruction, original = _check_pair(reconstruction, original)
    if min(original.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return torch.full((original.shape[0],), math.nan)
    return multiscale_structural_similarity_index_measure(
        reconstruction.float(), original.float(), data_range=255.0, reduction="none"
    ).float()


# ---------------------------------------------------------------------------------------------------------
# HiFiC patch protocol
# ---------------------------------------------------------------------------------------------------------


def count_hific_patches(height: int, width: int) -> int:
    """Number of 256² patches :func:`hific_patches` takes from an H×W image (both grids)."""
    shifted = (max(height - PATCH_SHIFT, 0) // PATCH_SIZE) * (max(width - PATCH_SHIFT, 0) // PATCH_SIZE)
    return (height // PATCH_SIZE) * (width // PATCH_SIZE) + shifted


def _grid_patches(image: Tensor, offset: int) -> Tensor:
    cropped = image[:, offset:, offset:]
    rows, cols = cropped.shape[1] // PATCH_SIZE, cropped.shape[2] // PATCH_SIZE
    if not rows or not cols:
        return image.new_empty((0, image.shape[0], PATCH_SIZE, PATCH_SIZE))
    cropped = cropped[:, : rows * PATCH_SIZE, : cols * PATCH_SIZE]
    # (3, rows, cols, 256, 256) -> (rows * cols, 3, 256, 256), raster order
    patches = cropped.unfold(1, PATCH_SIZE, PATCH_SIZE).unfold(2, PATCH_SIZE, PATCH_SIZE)
    return patches.permute(1, 2, 0, 3, 4).reshape(rows * cols, image.shape[0], PATCH_SIZE, PATCH_SIZE)


def hific_patches(image: Tensor) -> Tensor:
    """(3, H, W) → (P, 3, 256, 256): the top-left grid, then the grid shifted by 128 px (raster order)."""
    if image.dim() != 3:
        raise ValueError(f"expected one image (3, H, W), got shape {tuple(image.shape)}")
    return torch.cat([_grid_patches(image, 0), _grid_patches(image, PATCH_SHIFT)])


# ---------------------------------------------------------------------------------------------------------
# Backbones: real weights from a path or the torch hub cache, never downloaded
# ---------------------------------------------------------------------------------------------------------


ConfigKeys = str | tuple[str, ...] | None


def resolve_weight_file(path: str | Path | None, file_name: str, config_key: ConfigKeys = None) -> Path:
    """``path``, or ``<torch hub dir>/checkpoints/<file_name>`` when ``None``; a missing file is a one-line error
    naming the file, the config key(s) that set it (``metrics.<key>`` unless given) and where to get it."""
    resolved = Path(path) if path is not None else Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if not resolved.is_file():
        source, key = WEIGHT_SOURCES.get(file_name, (file_name, "<weights path>"))
        keys = (config_key,) if isinstance(config_key, str) else config_key or (f"metrics.{key}",)
        hint = "" if config_key else " (metrics=pixel evaluates bpp, PSNR and MS-SSIM only)"
        raise FileNotFoundError(
            f"metric weights not found: {resolved} (expected {file_name}). Nothing is downloaded at run time: "
            f"fetch it once from {source} into the torch hub cache or pass {' or '.join(k + '=PATH' for k in keys)}"
            + hint
        )
    return resolved


class DistsNetwork(DISTSNetwork):
    """torchmetrics' DISTS (its L2 pooling and scoring ``forward``) around a VGG ``features`` stack passed in.

    torchmetrics' own constructor always fetches VGG16 from the internet; taking the stack as an argument lets
    :func:`build_dists` load a local file and lets tests pass a narrow random VGG with the same layer layout.
    """

    def __init__(self, vgg_features: nn.Sequential, alpha: Tensor, beta: Tensor) -> None:
        nn.Module.__init__(self)
        layers = list(vgg_features.children())
        self.chns = [3] + [_last_conv_channels(layers[start:stop]) for start, stop in _DISTS_STAGES]
        for index, (start, stop) in enumerate(_DISTS_STAGES):
            pooling = [L2pooling(channels=self.chns[index])] if index else []
            setattr(self, f"stage{index + 1}", nn.Sequential(*pooling, *layers[start:stop]))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1))
        expected = (1, sum(self.chns), 1, 1)
        if alpha.shape != expected or beta.shape != expected:
            raise ValueError(f"DISTS alpha/beta must have shape {expected}, got {alpha.shape} and {beta.shape}")
        self.alpha = nn.Parameter(alpha.clone())
        self.beta = nn.Parameter(beta.clone())
        self.requires_grad_(False).eval()

    def score(self, reconstruction: Tensor, original: Tensor) -> Tensor:
        """(N,) DISTS of [0, 1] images."""
        return self(reconstruction, original).reshape(-1)


def _last_conv_channels(layers: list[nn.Module]) -> int:
    convs = [layer for layer in layers if isinstance(layer, nn.Conv2d)]
    if not convs:
        raise ValueError("a DISTS stage holds no convolution: the VGG features do not have VGG16's layout")
    return convs[-1].out_channels


def build_dists(vgg16_weights: str | Path | None = None, alpha_beta_weights: str | Path | None = None) -> DistsNetwork:
    """DISTS with torchvision's VGG16 (:data:`VGG16_FILE`) and the alpha/beta file torchmetrics ships."""
    vgg_path = resolve_weight_file(vgg16_weights, VGG16_FILE)
    features = make_layers(vgg_configs["D"])
    state = torch.load(vgg_path, map_location="cpu", weights_only=True)
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")})
    alpha_beta = torch.load(alpha_beta_weights or _PATH_WEIGHT_DISTS, map_location="cpu", weights_only=True)
    return DistsNetwork(features, alpha_beta["alpha"], alpha_beta["beta"])


def build_inception(weights: str | Path | None = None, config_key: ConfigKeys = None) -> nn.Module:
    """The FID Inception-v3 (2048-d pool3) of torch-fidelity, from :data:`INCEPTION_FILE`; takes uint8 images.

    ``antialias=False`` keeps torch-fidelity's TF-1.x bilinear resize (no half-pixel centres). That is *not*
    pytorch-fid's resize, which the authors' numbers come from: use :func:`build_pytorch_fid_inception` for those.
    """
    path = resolve_weight_file(weights, INCEPTION_FILE, config_key)
    return NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=["2048"],
        feature_extractor_weights_path=str(path),
        antialias=False,
    )


class PytorchFidInception(nn.Module):
    """pytorch-fid 0.3.0's ``InceptionV3`` pool3 on uint8 patches, as the authors' ``calc_metrics.py`` runs it.

    They write the patches as PNG (lossless) and call ``calculate_fid_given_paths``: ``ToTensor`` (x / 255), then
    inside ``InceptionV3`` ``F.interpolate(299, bilinear, align_corners=False)`` and ``2x − 1``; the FID is
    ``calculate_frechet_distance`` of ``np.mean`` / ``np.cov`` of the float64 features (fake first, then real).
    """

    def __init__(self, inception: pytorch_fid_inception.InceptionV3) -> None:
        super().__init__()
        self.inception = inception.requires_grad_(False).eval()

    def forward(self, patches: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) → (B, 2048)."""
        if patches.dtype != torch.uint8:
            raise TypeError(f"the FID feature extractor takes uint8 patches, got {patches.dtype}")
        return self.inception(patches.float().div(255))[0].flatten(1)  # ToTensor's scaling, bit for bit

    @staticmethod
    def frechet_distance(real: Tensor, fake: Tensor) -> float:
        """pytorch-fid's own Fréchet distance (scipy ``sqrtm``) of (N, D) feature sets."""
        fake_np, real_np = fake.double().cpu().numpy(), real.double().cpu().numpy()
        moments = [(np.mean(f, axis=0), np.cov(f, rowvar=False)) for f in (fake_np, real_np)]
        return float(calculate_frechet_distance(*moments[0], *moments[1]))


def build_pytorch_fid_inception(
    weights: str | Path | None = None,
    config_key: ConfigKeys = ("+stage2.fid_features.weights", "+fid_features.weights"),  # train.py, select_betas.py
) -> PytorchFidInception:
    """pytorch-fid's FID Inception with the weights of :data:`PYTORCH_FID_FILE` (a path, else the torch hub cache).

    pytorch-fid fetches its weights through ``load_state_dict_from_url`` (download when not cached); the builder
    hands it the resolved file instead, so nothing is ever downloaded, and builds its network unchanged.
    """
    path = resolve_weight_file(weights, PYTORCH_FID_FILE, config_key)
    state = torch.load(path, map_location="cpu", weights_only=True)
    with mock.patch.object(pytorch_fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state):
        inception = pytorch_fid_inception.InceptionV3([pytorch_fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    return PytorchFidInception(inception)


def build_fid_features(
    pipeline: str = "pytorch-fid", weights: str | Path | None = None, config_key: ConfigKeys = None
) -> nn.Module:
    """The FID feature extractor of one of :data:`FID_PIPELINES` (module docstring: how they differ)."""
    if pipeline == "pytorch-fid":
        return build_pytorch_fid_inception(weights, config_key)  # None: named as metrics.inception_weights
    if pipeline == "torch-fidelity":
        return build_inception(weights, config_key)
    raise ValueError(f"unknown FID pipeline {pipeline!r}: choose one of {', '.join(FID_PIPELINES)}")


def build_lpips_metric(backbone_weights: str | Path | None = None) -> nn.Module:
    """LPIPS-AlexNet for *evaluation*: unlike training's demo mode, a random backbone is never acceptable."""
    return build_lpips(str(resolve_weight_file(backbone_weights, ALEXNET_FILE)))


# ---------------------------------------------------------------------------------------------------------
# Distribution metrics over patches
# ---------------------------------------------------------------------------------------------------------


class _PrecomputedFeatures(nn.Identity):
    """Lets torchmetrics' FID/KID take features we extract once for both of them."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features


def torchmetrics_frechet_distance(real: Tensor, fake: Tensor) -> float:
    """torchmetrics' FID of (N, D) feature sets (float64 moments, eigenvalue square root)."""
    metric = FrechetInceptionDistance(feature=_PrecomputedFeatures(real.shape[1]))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


class PatchDistributionMetrics:
    """FID and KID between originals and reconstructions over HiFiC patches (design §6.7).

    ``feature_extractor`` maps uint8 (B, 3, 256, 256) patches to (B, D) features (Inception pool3 for real
    numbers). Features are extracted once per patch and kept (float64, CPU) for both metrics. The FID is the
    extractor's own ``frechet_distance(real, fake)`` when it has one (pytorch-fid's pipeline), else torchmetrics'.
    """

    def __init__(
        self,
        feature_extractor: nn.Module,
        min_images: int = FID_MIN_IMAGES,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.extractor = feature_extractor.to(self.device).eval()
        self.frechet_distance = getattr(feature_extractor, "frechet_distance", torchmetrics_frechet_distance)
        self.min_images = min_images
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.batch_size = batch_size
        self.real_features: list[Tensor] = []
        self.fake_features: list[Tensor] = []
        self.num_images = 0
        self.num_patches = 0

    @torch.inference_mode()
    def _features(self, patches: Tensor) -> Tensor:
        chunks = [self.extractor(chunk.to(self.device)) for chunk in patches.split(self.batch_size)]
        return torch.cat(chunks).reshape(patches.shape[0], -1).double().cpu()

    def update(self, reconstruction: Tensor, original: Tensor) -> None:
        """Add one image pair, uint8 (3, H, W) each."""
        reconstruction, original = _check_pair(reconstruction, original)
        self.num_images += 1
        patches = [hific_patches(image[0]) for image in (original, reconstruction)]
        if not len(patches[0]):
            return
        self.num_patches += len(patches[0])
        self.real_features.append(self._features(patches[0]))
        self.fake_features.append(self._features(patches[1]))

    def kernel_inception_distance(self, real: Tensor, fake: Tensor) -> tuple[float, float]:
        with warnings.catch_warnings():  # KID keeps every feature by design; its memory note is expected
            warnings.filterwarnings("ignore", message=".*will save all extracted features", category=UserWarning)
            kid = KernelInceptionDistance(
                feature=_PrecomputedFeatures(real.shape[1]),
                subsets=self.kid_subsets,
                subset_size=min(self.kid_subset_size, self.num_patches),  # KID needs subsets ≤ samples
            )
        kid.update(real, real=True)
        kid.update(fake, real=False)
        mean, std = kid.compute()
        return float(mean), float(std)

    def compute(self) -> dict[str, float]:
        """``{"FID", "KID", "KID_std"}``; NaN below ``min_images`` images (the paper gives Kodak no FID)."""
        if self.num_images < self.min_images or self.num_patches < 2:
            return {"FID": math.nan, "KID": math.nan, "KID_std": math.nan}
        real, fake = torch.cat(self.real_features), torch.cat(self.fake_features)
        kid_mean, kid_std = self.kernel_inception_distance(real, fake)
        return {"FID": self.frechet_distance(real, fake), "KID": kid_mean, "KID_std": kid_std}


# ---------------------------------------------------------------------------------------------------------
# The suite evaluation runs
# ---------------------------------------------------------------------------------------------------------


@dataclass
class MetricSuite:
    """The networks evaluation scores with; ``None`` leaves a metric out (reported as NaN)."""

    lpips: nn.Module | None = None
    dists: DistsNetwork | None = None
    inception: nn.Module | None = None
    device: str = "cpu"
    fid_min_images: int = FID_MIN_IMAGES
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    patch_batch_size: int = 32

    def __post_init__(self) -> None:
        for network in (self.lpips, self.dists):
            if network is not None:
                network.to(self.device).eval()

    @torch.inference_mode()
    def score_image(self, reconstruction: Tensor, original: Tensor) -> dict[str, float]:
        """Per-image metrics of uint8 (3, H, W) images: PSNR, MS-SSIM, LPIPS, DISTS."""
        reconstruction, original = _check_pair(reconstruction, original)
        scores = {
            "PSNR": float(psnr_per_image(reconstruction, original)[0]),
            "MS-SSIM": float(ms_ssim_per_image(reconstruction, original)[0]),
            "LPIPS": math.nan,
            "DISTS": math.nan,
        }
        recon, orig = reconstruction.to(self.device), original.to(self.device)
        if self.lpips is not None:
            scores["LPIPS"] = float(self.lpips(from_uint8(recon), from_uint8(orig)).reshape(-1)[0])
        if self.dists is not None:
            scores["DISTS"] = float(self.dists.score(recon.float() / 255, orig.float() / 255)[0])
        return scores

    def distribution_metrics(self) -> PatchDistributionMetrics | None:
        """A fresh FID/KID accumulator for one dataset and setting, or ``None`` without an Inception."""
        if self.inception is None:
            return None
        return PatchDistributionMetrics(
            self.inception,
            self.fid_min_images,
            self.kid_subsets,
            self.kid_subset_size,
            self.patch_batch_size,
            self.device,
        )


def build_metric_suite(
    device: str = "cpu",
    lpips: bool = True,
    dists: bool = True,
    fid: bool = True,
    alexnet_weights: str | None = None,
    vgg16_weights: str | None = None,
    dists_alpha_beta_weights: str | None = None,
    inception_weights: str | None = None,
    fid_min_images: int = FID_MIN_IMAGES,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    patch_batch_size: int = 32,
    fid_pipeline: str = "torch-fidelity",
) -> MetricSuite:
    """The real networks (Hydra ``conf/metrics``); weight paths ``None`` mean the torch hub cache."""
    return MetricSuite(
        lpips=build_lpips_metric(alexnet_weights) if lpips else None,
        dists=build_dists(vgg16_weights, dists_alpha_beta_weights) if dists else None,
        inception=build_fid_features(fid_pipeline, inception_weights) if fid else None,
        device=device,
        fid_min_images=fid_min_images,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        patch_batch_size=patch_batch_size,
    )
