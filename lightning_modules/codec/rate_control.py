"""Per-image rate control: the ``beta_rate`` whose *real* file meets a size target (issue 13).

One DC-VIC model covers a continuous range of rates, so "this image, this many bytes" is a 1-D search::

    x ─pad 64─ VQGAN ─ PreparedImage                                        once per image
    β_rate ─ encoder(x, β) ─ hyperprior + ChARM + rANS ─ Container ─ len     once per probe (no synthesis)
    stage-2 search (lightning_modules.stage2.search.illinois_search) on the real bpp, both bounds first

The bound probes (``β_rate`` = 3 and 0) give the image's reachable range: a target outside it ends with the
nearest achievable file and a one-line message, never an error. The chosen file is the probe's own container
(explicit betas, quality 255), so a decoder needs nothing new and decodes exactly what a fixed-beta compress
with that pair would have written.

Realism preferences name points of the β_vq axis (higher β_vq weights the VQ-code losses, so the output leans
on the VQGAN codebook: more texture, less fidelity). They span the β_vq the paper's stage 2 selected, 1.00 at
its highest rate (q4) to 3.00 at its lowest (q0): ``fidelity`` = 1.0, ``balanced`` = 2.0, ``realism`` = 3.0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from torch import Tensor

from lightning_modules.codec.container import Container
from lightning_modules.codec.image_codec import DCVICCodec, resolve_conditioning
from lightning_modules.networks.latent_codec import LatentCode
from lightning_modules.stage2.search import RULES, SearchResult, illinois_search

REALISM_BETA_VQ: dict[str, float] = {"fidelity": 1.0, "balanced": 2.0, "realism": 3.0}
DEFAULT_REALISM = "balanced"
TARGET_UNITS = ("bpp", "bytes")


def realism_beta_vq(preference: str) -> float:
    """The β_vq a named realism preference stands for (see the module docstring)."""
    if preference not in REALISM_BETA_VQ:
        raise ValueError(f"unknown realism preference {preference!r}; choose one of {sorted(REALISM_BETA_VQ)}")
    return REALISM_BETA_VQ[preference]


@dataclass(frozen=True)
class RateTarget:
    """A per-image size budget: ``value`` bpp or bytes (container included), hit within ``tolerance`` × value.

    ``rule="below"``: the largest file not above the target; ``"closest"``: the nearest on either side.
    """

    value: float
    unit: str = "bpp"
    tolerance: float = 0.01
    rule: str = "below"

    def __post_init__(self) -> None:
        if self.unit not in TARGET_UNITS:
            raise ValueError(f"a target is in {' or '.join(TARGET_UNITS)}, not {self.unit!r}")
        if not (math.isfinite(self.value) and self.value > 0):
            raise ValueError(f"the target must be a positive number of {self.unit}, got {self.value:g}")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"the tolerance is a fraction of the target in (0, 1), got {self.tolerance:g}")
        if self.rule not in RULES:
            raise ValueError(f"unknown target rule {self.rule!r}; choose one of {list(RULES)}")

    def bpp(self, pixels: int) -> float:
        return self.value if self.unit == "bpp" else 8 * self.value / pixels

    def __str__(self) -> str:
        return f"{self.value:g} {self.unit}"


@dataclass
class RateControlResult:
    """The chosen file and how the search got there; ``message`` is one line, empty when the target was met."""

    container: Container
    code: LatentCode
    data: bytes
    target: RateTarget
    target_bpp: float
    pixels: int
    search: SearchResult
    search_seconds: float
    status: str
    message: str

    @property
    def achieved_bpp(self) -> float:
        return 8 * len(self.data) / self.pixels

    @property
    def probes(self) -> int:
        return self.search.evaluations

    def record_fields(self) -> dict[str, float | int | str]:
        """The per-image columns rate control adds to ``_bitrates.csv`` and ``per_image.csv``."""
        return {
            "target_bpp": self.target_bpp,
            "target_bytes": self.target_bpp * self.pixels / 8,
            "probes": self.probes,
            "search_seconds": self.search_seconds,
            "rate_status": self.status,
            "rate_message": self.message,
        }


def compress_to_target(
    codec: DCVICCodec,
    x: Tensor,
    target: RateTarget,
    beta_vq: float,
    max_probes: int = 20,
    decimals: int = 4,
) -> RateControlResult:
    """Search ``beta_rate`` so the real file of ``x`` (1, 3, H, W) in [-1, 1] meets ``target`` at ``beta_vq``.

    The padding and the VQGAN encoding are computed once; each probe runs the compression encoder and the
    entropy path with its rANS coder and measures the container's bytes. ``decimals`` is the ``beta_rate`` grid
    (4: steps far below 1 % of the rate on trained models). ``max_probes`` bounds the worst case: a trained model
    needs about 4 (the two bounds, then the secant), a random-weight one, whose rate wiggles with beta_rate, more.
    """
    beta_range = codec.beta_range
    beta_range.check(0.0, beta_vq)
    if max_probes < 2:
        raise ValueError(f"rate control needs at least 2 probes (the two bounds), got {max_probes}")
    height, width = x.shape[-2:]
    pixels = height * width
    target_bpp = target.bpp(pixels)
    image = codec.prepare(x)
    probes: dict[float, tuple[Container, LatentCode, bytes]] = {}

    def real_bpp(beta_rate: float) -> float:
        if beta_rate not in probes:
            conditioning = resolve_conditioning(
                codec.quality_table, beta_rate=beta_rate, beta_vq=beta_vq, beta_range=beta_range
            )
            container, code = codec.compress_prepared(image, conditioning)
            probes[beta_rate] = container, code, container.to_bytes()
        return 8 * len(probes[beta_rate][2]) / pixels

    start = time.perf_counter()
    search = illinois_search(
        real_bpp,
        target_bpp,
        tolerance=target.tolerance * target_bpp,
        lo=0.0,
        hi=beta_range.rate_max,
        max_evals=max_probes,
        decimals=decimals,
        rule=target.rule,
        start="bounds",
    )
    seconds = time.perf_counter() - start
    best = search.best
    container, code, data = probes[best.beta_rate]
    status, message = _outcome(search, target, target_bpp, pixels, beta_range.rate_max)
    return RateControlResult(container, code, data, target, target_bpp, pixels, search, seconds, status, message)


def _outcome(
    search: SearchResult, target: RateTarget, target_bpp: float, pixels: int, rate_max: float
) -> tuple[str, str]:
    """``(status, one-line message)``: hit, below_range, above_range or missed (the size jumps over the window)."""
    best = search.best
    if search.converged:
        return "hit", ""
    bounds = [step.avg_bpp for step in search.steps if step.beta_rate in (0.0, rate_max)]
    wrote = f"wrote {_size(best.avg_bpp, target, pixels)} at beta_rate {best.beta_rate:g}"
    if target_bpp < min(bounds):
        return "below_range", f"target {target} is below this image's smallest file; {wrote} (the nearest)"
    if target_bpp > max(bounds):
        return "above_range", f"target {target} is above this image's largest file; {wrote} (the nearest)"
    window = f"within {target.tolerance:.1%}" + (" below" if target.rule == "below" else "")
    return "missed", f"no file {window} target {target} after {search.evaluations} probes; {wrote}"


def _size(bpp: float, target: RateTarget, pixels: int) -> str:
    return f"{bpp:.5f} bpp" if target.unit == "bpp" else f"{round(bpp * pixels / 8)} bytes"
