"""RD points at target rates: each image coded at its own ``beta_rate`` (issue 13).

A quality index gives every image the same betas and so a different rate; sampling a curve at target bpps
instead (e.g. the paper's 0.05 … 0.15) puts the curves of different models at the same rates, image by image,
which is what BD-rate and a table comparison want. Each per-image row keeps the achieved (real) bpp next to the
target; rate control itself is :func:`lightning_modules.codec.rate_control.compress_to_target`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pandas as pd
from torch import Tensor

from lightning_modules.codec.container import Container
from lightning_modules.codec.image_codec import Conditioning, DCVICCodec
from lightning_modules.codec.rate_control import DEFAULT_REALISM, RateTarget, compress_to_target, realism_beta_vq
from lightning_modules.networks.latent_codec import LatentCode

TARGET_SUMMARY_COLUMNS = ["target_bpp", "targets_hit", "probes", "search_seconds"]


class FixedSetting(Protocol):
    """An RD point with one conditioning for every image (``entrypoints/evaluate.py``'s ``Setting``)."""

    label: str
    conditioning: Conditioning


@dataclass(frozen=True)
class TargetSetting:
    """An RD point at a target rate: one ``beta_vq``, the ``beta_rate`` searched per image."""

    label: str
    target: RateTarget
    beta_vq: float

    @property
    def conditioning(self) -> Conditioning:
        """What is common to every image: no quality index, this ``beta_vq`` (``beta_rate`` NaN: per image)."""
        return Conditioning(None, math.nan, self.beta_vq)


def target_settings(
    target_bpps: Sequence[float] = (),
    beta_vq: float | None = None,
    realism: str = DEFAULT_REALISM,
    tolerance: float = 0.01,
    rule: str = "below",
) -> list[TargetSetting]:
    """One setting per target bpp, at ``beta_vq`` or the realism preference's (``conf/evaluate.yaml: targets``)."""
    beta_vq = float(beta_vq) if beta_vq is not None else realism_beta_vq(realism)
    return [
        TargetSetting(f"t{float(t):.4f}_bv{beta_vq:.3f}", RateTarget(float(t), "bpp", tolerance, rule), beta_vq)
        for t in target_bpps
    ]


def compress_setting(
    codec: DCVICCodec, x: Tensor, setting: FixedSetting | TargetSetting
) -> tuple[Container, LatentCode, dict]:
    """Code ``x`` at a setting; the dict holds the per-image columns rate control adds (empty when fixed)."""
    if isinstance(setting, TargetSetting):
        result = compress_to_target(codec, x, setting.target, setting.beta_vq)
        return result.container, result.code, {**result.record_fields(), "beta_rate": result.container.beta_rate}
    container, code = codec.compress(x, setting.conditioning)
    return container, code, {}


def target_summary(setting: FixedSetting | TargetSetting, per_image: pd.DataFrame) -> dict:
    """A target setting's summary extras: the target, how many images met it, mean beta_rate, probes, time."""
    if not isinstance(setting, TargetSetting) or per_image.empty:
        return {}
    return {
        "target_bpp": setting.target.value,
        "targets_hit": int((per_image["rate_status"] == "hit").sum()),
        "beta_rate": float(per_image["beta_rate"].mean()),
        "probes": float(per_image["probes"].mean()),
        "search_seconds": float(per_image["search_seconds"].mean()),
    }
