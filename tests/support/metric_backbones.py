"""Small random-weight stand-ins for the metric backbones (VGG16 of DISTS, Inception of FID/KID, AlexNet).

They go through the same code as the real networks: DISTS' stages are cut from a VGG-shaped stack with
VGG16's layer layout, the patch extractor takes uint8 patches like torch-fidelity's Inception, and the
AlexNet is written to a file in torchvision's key layout and loaded by the real LPIPS builder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import alexnet, inception_v3
from torchvision.models.vgg import make_layers

from lightning_modules.evaluation.metrics import DistsNetwork, MetricSuite, build_lpips_metric

# VGG16's "D" layout (same layer indices) with narrow widths.
SMALL_VGG_LAYOUT = [8, 8, "M", 16, 16, "M", 16, 16, 16, "M", 32, 32, 32, "M", 32, 32, 32, "M"]


def small_dists(seed: int = 0) -> DistsNetwork:
    torch.manual_seed(seed)
    features = make_layers(SMALL_VGG_LAYOUT)
    channels = 3 + 8 + 16 + 16 + 32 + 32
    alpha = torch.rand(1, channels, 1, 1) * 0.1 + 0.05
    beta = torch.rand(1, channels, 1, 1) * 0.1 + 0.05
    return DistsNetwork(features, alpha, beta)


class SmallPatchFeatures(nn.Module):
    """uint8 (B, 3, 256, 256) → (B, 24) features, like the FID Inception's interface."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 12, 8, stride=8), nn.ReLU(), nn.Conv2d(12, 24, 4, stride=4), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, patches: Tensor) -> Tensor:
        if patches.dtype != torch.uint8:
            raise TypeError("the FID feature extractor takes uint8 patches")
        return self.net(patches.float() / 127.5 - 1).flatten(1)


def write_random_alexnet(path: Path, seed: int = 0) -> Path:
    """torchvision AlexNet ``features.*`` tensors (random) in a file, as the real weights file lays them out."""
    torch.manual_seed(seed)
    torch.save({f"features.{k}": v for k, v in alexnet().features.state_dict().items()}, path)
    return path


def write_random_fid_inception(path: Path, seed: int = 0) -> Path:
    """Random weights in the FID Inception's key layout (pytorch-fid's and torch-fidelity's files share it).

    He-normal convolutions and identity batch norms keep pool3 features of order 0.1-1 through the 94 layers, so
    FIDs between photo sets are far from zero (torchvision's default init shrinks them towards 0).
    """
    state = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False).state_dict()
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in state.items():
        if tensor.dim() == 4:
            state[name] = torch.randn(tensor.shape, generator=generator) * (2 / tensor[0].numel()) ** 0.5
        elif name == "fc.weight":
            state[name] = torch.randn(tensor.shape, generator=generator) / tensor.shape[1] ** 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def small_metric_suite(alexnet_file: Path, fid_min_images: int = 2, kid_subset_size: int = 4) -> MetricSuite:
    return MetricSuite(
        lpips=build_lpips_metric(alexnet_file),
        dists=small_dists(),
        inception=SmallPatchFeatures(),
        fid_min_images=fid_min_images,
        kid_subsets=10,
        kid_subset_size=kid_subset_size,
        patch_batch_size=4,
    )
