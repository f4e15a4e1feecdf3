"""dcvic model files: one self-describing ``torch.save`` dict that the codec, evaluation and training load.

Layout (``FORMAT = "dcvic-model"``)::

    {"format": "dcvic-model", "version": 1,
     "architecture": {build_dcvic keyword arguments},
     "state_dict": {...},                      # DCVIC.state_dict(), vq_model included
     "discriminator": {...} | None,            # BetaConditionedPatchGAN.state_dict()
     "quality_table": {"beta_rate": [...], "beta_vq": [...]} | None,
     "source": "free text: where the weights came from"}

A quality table is only ever one that somebody selected for these weights: stage 2's pairs (stage 3 trains on them
and writes them), or the pairs of a converted release. Stage 1_x files carry none (``None``): their rate per beta
pair was never measured, so ``--quality`` on them is refused and explicit betas are asked for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_modules.images import atomic_path
from lightning_modules.networks.conditioning import PAPER_BETA_RANGE, BetaRange
from lightning_modules.networks.dcvic import DCVIC, build_dcvic
from lightning_modules.networks.discriminator import BetaConditionedPatchGAN

FORMAT = "dcvic-model"
VERSION = 1
QualityTable = dict[str, list[float]]
RELEASED_QUALITY_TABLE: QualityTable = {
    "beta_rate": [2.29, 1.51, 1.12, 0.62, 0.16],
    "beta_vq": [3.0, 2.25, 2.0, 1.5, 1.0],
}
DCVIC_DOWNLOAD_HINT = (
    "convert the authors' release (dc_vic_patchgan.pth.tar or dc_vic_oasis.pth.tar, linked from the README of "
    "github.com/iwa-shi/DC_VIC) with `python entrypoints/convert_checkpoint.py --comp-model FILE --out OUT.pt`, "
    "or train one with `python entrypoints/train.py`"
)


@dataclass
class ModelFile:
    architecture: dict[str, Any]
    state_dict: dict[str, Tensor]
    quality_table: QualityTable | None = None
    discriminator: dict[str, Tensor] | None = None
    source: str = ""

    @property
    def beta_range(self) -> BetaRange:
        """The architecture's beta range (files written before it was recorded there have the paper's)."""
        return BetaRange(
            float(self.architecture.get("beta_rate_max", PAPER_BETA_RANGE.rate_max)),
            float(self.architecture.get("beta_vq_max", PAPER_BETA_RANGE.vq_max)),
        )

    def build_model(self) -> DCVIC:
        model = build_dcvic(**self.architecture)
        model.load_state_dict(self.state_dict, strict=True)
        return model

    def build_discriminator(self) -> BetaConditionedPatchGAN:
        if self.discriminator is None:
            raise ValueError("this model file holds no discriminator weights")
        condition_features = self.discriminator["mlp.0.weight"].shape[1]  # 2 betas × (2·L + 1)
        disc = BetaConditionedPatchGAN(
            ndf=self.discriminator["main.0.weight"].shape[0],
            cond_ch=self.discriminator["mlp.2.weight"].shape[0],
            fourier_freqs=(condition_features // 2 - 1) // 2,
            beta_rate_max=self.beta_range.rate_max,
            beta_vq_max=self.beta_range.vq_max,
        )
        disc.load_state_dict(self.discriminator, strict=True)
        return disc

    def fingerprint(self) -> bytes:
        """16-byte SHA-256 prefix over the learned weights: bitstreams carry it to refuse foreign models."""
        return weights_fingerprint(self.state_dict)


def weights_fingerprint(state_dict: dict[str, Tensor]) -> bytes:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        if value.is_floating_point() and value.numel() and not key.startswith("entropy_model_y."):
            digest.update(key.encode())
            digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.digest()[:16]


def save_model_file(path: str | Path, model_file: ModelFile) -> Path:
    """Atomic write: a crash never leaves a half-written model file under the final name."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": model_file.architecture,
        "state_dict": model_file.state_dict,
        "discriminator": model_file.discriminator,
        "quality_table": model_file.quality_table,
        "source": model_file.source,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_model_file(path: str | Path) -> ModelFile:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DC-VIC model file not found: {path}. To get one: {DCVIC_DOWNLOAD_HINT}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(f"{path} is not a readable model file ({type(exc).__name__}: {exc})") from exc
    if isinstance(data, dict) and data.get("format") == FORMAT:
        if data.get("version") != VERSION:
            raise ValueError(f"{path}: model file version {data.get('version')} is not supported (want {VERSION})")
        return ModelFile(
            architecture=dict(data["architecture"]),
            state_dict=data["state_dict"],
            quality_table=None if data.get("quality_table") is None else dict(data["quality_table"]),
            discriminator=data.get("discriminator"),
            source=data.get("source", ""),
        )
    if isinstance(data, dict) and "comp_model" in data:
        raise ValueError(f"{path} is an authors' DC-VIC checkpoint; convert it first: {DCVIC_DOWNLOAD_HINT}")
    raise ValueError(f"{path} is not a dcvic model file (no format '{FORMAT}'). {DCVIC_DOWNLOAD_HINT}")
