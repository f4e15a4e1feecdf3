"""LPIPS-AlexNet (design §4.2 "Perceptual"), built from torchmetrics without any download.

torchmetrics ships the LPIPS linear-layer weights but fetches the AlexNet backbone from the torchvision hub. We build
the network with a random backbone (``pnet_rand=True``) and load the torchvision ``alexnet-owt-7be5be79.pth`` file
from a configurable path instead, so an offline machine either works or fails with a message naming the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.functional.image.lpips import _NoTrainLpips

log = logging.getLogger(__name__)

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_HINT = (
    f"download torchvision's AlexNet ImageNet weights ({ALEXNET_FILE}) from "
    f"https://download.pytorch.org/models/{ALEXNET_FILE} and set paths.alexnet_weights to its path"
)
# torchvision ``features.<i>`` index -> torchmetrics' LPIPS slice holding that layer.
_ALEXNET_SLICES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3, 8: 4, 9: 4, 10: 5, 11: 5}


def alexnet_backbone_state(path: str | Path) -> dict[str, Tensor]:
    """Rename torchvision AlexNet ``features.*`` keys to torchmetrics LPIPS ``net.slice<k>.*`` keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AlexNet backbone weights for LPIPS not found: {path}. To get them: {ALEXNET_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader error means the file is not a state dict
        raise ValueError(f"{path} is not a readable AlexNet state dict ({exc}). {ALEXNET_HINT}") from exc
    renamed = {}
    for key, value in state.items():
        section, index, name = (key.split(".") + ["", ""])[:3]
        if section == "features":
            renamed[f"net.slice{_ALEXNET_SLICES[int(index)]}.{index}.{name}"] = value
    if len(renamed) != 10:
        raise ValueError(f"{path} does not hold AlexNet's 5 conv layers (found {len(renamed)} tensors). {ALEXNET_HINT}")
    return renamed


def build_lpips(backbone_weights: str | None, spatial: bool = False) -> nn.Module:
    """LPIPS(net='alex', version 0.1) taking images in [-1, 1]; always in eval mode, all weights frozen.

    ``backbone_weights=None`` keeps a *random* AlexNet (CPU demos and tests only, chosen by ``paths=cpu_demo``;
    a log line says so).
    """
    lpips = _NoTrainLpips(net="alex", pretrained=True, pnet_rand=True, spatial=spatial)
    if backbone_weights is None:
        log.info("LPIPS uses a random AlexNet backbone (paths.alexnet_weights is null: CPU demos and tests only)")
    else:
        result = lpips.load_state_dict(alexnet_backbone_state(backbone_weights), strict=False)
        if result.unexpected_keys:
            raise ValueError(f"unexpected AlexNet keys {result.unexpected_keys} in {backbone_weights}")
    return lpips.requires_grad_(False).eval()
