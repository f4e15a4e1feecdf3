"""Per-sample (β_rate, β_vq) draws for training (design §4.3) and the fixed validation settings (design §7).

``UniformBetaSampler``: β_r = β_r,max·i/(L−1), β_v = β_v,max·j/(L−1), i, j ~ UniformInt{0..L−1} independently per
sample (L = 101 levels including both ends). ``SelectedBetaSampler``: one pair index k per sample from a table.
The maxima are the network's (``conf/betas/*.yaml`` interpolate ``${network.beta_rate_max}`` / ``beta_vq_max``).
``FixedBetaSampler``: given pairs, for replaying a recorded batch.

Table schema (``conf/betas/selected.yaml``, also written by the stage-2 beta search)::

    beta_rate: [2.29, 1.51, 1.12, 0.62, 0.16]   # quality 0 (highest rate) … 4
    beta_vq:   [3.0, 2.25, 2.0, 1.5, 1.0]        # same length
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lightning_modules.networks.conditioning import PAPER_BETA_RANGE, BetaRange

BetaPair = tuple[Tensor, Tensor]


class UniformBetaSampler:
    """Stages 1_2 / 1_3: 101-level uniform grid; validation at the four corners."""

    def __init__(
        self,
        levels: int = 101,
        beta_rate_max: float = PAPER_BETA_RANGE.rate_max,
        beta_vq_max: float = PAPER_BETA_RANGE.vq_max,
    ):
        if levels < 2:
            raise ValueError(f"need at least 2 beta levels, got {levels}")
        self.levels = levels
        self.beta_rate_max = beta_rate_max
        self.beta_vq_max = beta_vq_max

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> BetaPair:
        i = torch.randint(0, self.levels, (batch_size,), generator=generator)
        j = torch.randint(0, self.levels, (batch_size,), generator=generator)
        step = self.levels - 1
        return self.beta_rate_max * i.float() / step, self.beta_vq_max * j.float() / step

    def validation_settings(self) -> dict[str, tuple[float, float]]:
        r, v = self.beta_rate_max, self.beta_vq_max
        return {
            "rate_max_vq_000": (r, 0.0),
            "rate_max_vq_max": (r, v),
            "rate_000_vq_000": (0.0, 0.0),
            "rate_000_vq_max": (0.0, v),
        }

    def quality_table(self) -> dict[str, list[float]] | None:
        return None


class SelectedBetaSampler:
    """Stage 3: per sample one of the selected (β_rate, β_vq) pairs; validation at pair 0 only."""

    def __init__(
        self,
        beta_rate: Sequence[float],
        beta_vq: Sequence[float],
        beta_rate_max: float = PAPER_BETA_RANGE.rate_max,
        beta_vq_max: float = PAPER_BETA_RANGE.vq_max,
    ):
        beta_rate, beta_vq = [float(b) for b in beta_rate], [float(b) for b in beta_vq]
        if not beta_rate or len(beta_rate) != len(beta_vq):
            raise ValueError(f"beta_rate and beta_vq must be non-empty and equally long: {beta_rate}, {beta_vq}")
        limits = BetaRange(float(beta_rate_max), float(beta_vq_max))
        bad = [(r, v) for r, v in zip(beta_rate, beta_vq, strict=True) if not limits.contains(r, v)]
        if bad:
            raise ValueError(f"beta pairs outside the network's [0, {limits.rate_max}]×[0, {limits.vq_max}]: {bad}")
        self.table = {"beta_rate": beta_rate, "beta_vq": beta_vq}
        self.beta_rate = torch.tensor(beta_rate)
        self.beta_vq = torch.tensor(beta_vq)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> BetaPair:
        k = torch.randint(0, len(self.beta_rate), (batch_size,), generator=generator)
        return self.beta_rate[k], self.beta_vq[k]

    def validation_settings(self) -> dict[str, tuple[float, float]]:
        return {"idx0": (self.table["beta_rate"][0], self.table["beta_vq"][0])}

    def quality_table(self) -> dict[str, list[float]] | None:
        return {k: list(v) for k, v in self.table.items()}


class FixedBetaSampler:
    """The same given per-sample pairs on every draw: replays one recorded batch (training-parity tests)."""

    def __init__(self, beta_rate: Sequence[float], beta_vq: Sequence[float]):
        self.beta_rate = torch.tensor([float(b) for b in beta_rate])
        self.beta_vq = torch.tensor([float(b) for b in beta_vq])
        if not len(self.beta_rate) or self.beta_rate.shape != self.beta_vq.shape:
            raise ValueError(f"beta_rate and beta_vq must be non-empty and equally long: {beta_rate}, {beta_vq}")

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> BetaPair:
        if batch_size != len(self.beta_rate):
            raise ValueError(f"fixed betas hold {len(self.beta_rate)} pairs, the batch has {batch_size} samples")
        return self.beta_rate.clone(), self.beta_vq.clone()

    def validation_settings(self) -> dict[str, tuple[float, float]]:
        return {"fixed0": (float(self.beta_rate[0]), float(self.beta_vq[0]))}

    def quality_table(self) -> dict[str, list[float]] | None:
        return None


class NoBetaSampler:
    """Stage 1_1: the network has no conditioning."""

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[None, None]:
        return None, None

    def validation_settings(self) -> dict[str, tuple[None, None]]:
        return {"no_beta": (None, None)}

    def quality_table(self) -> dict[str, list[float]] | None:
        return None


def load_selected_betas(
    path: str, beta_rate_max: float = PAPER_BETA_RANGE.rate_max, beta_vq_max: float = PAPER_BETA_RANGE.vq_max
) -> SelectedBetaSampler:
    """A :class:`SelectedBetaSampler` from a YAML file with ``beta_rate`` / ``beta_vq`` lists (other keys ignored)."""
    from omegaconf import OmegaConf

    if not Path(path).is_file():
        raise FileNotFoundError(f"selected-beta file not found: {path} (write it with the stage-2 beta search)")
    table = OmegaConf.load(path)
    missing = [k for k in ("beta_rate", "beta_vq") if k not in table]
    if missing:
        raise ValueError(f"{path} lacks {missing}; expected keys beta_rate and beta_vq (lists of equal length)")
    return SelectedBetaSampler(list(table.beta_rate), list(table.beta_vq), beta_rate_max, beta_vq_max)
