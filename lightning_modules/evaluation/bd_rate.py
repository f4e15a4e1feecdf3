"""BD-rate and BD-metric between rate-distortion curves (Bjøntegaard, VCEG-M33), via the ``bjontegaard`` package.

For an anchor curve and a test curve (``bpp`` and a metric per point):

* **BD-rate** (%): the mean relative bitrate difference at equal quality, over the quality range both curves
  cover; negative means the test codec needs fewer bits.
* **BD-metric**: the mean metric difference at equal log-rate, over the rate range both cover (BD-PSNR for
  PSNR); its sign is the metric's own (for LPIPS, DISTS and FID a negative value is an improvement).

The integrals are the package's (Akima interpolation by default, as its authors recommend; ``pchip`` is the
JVET/CTC choice). Lower-is-better metrics are negated before interpolation so every curve rises with rate,
which the package requires. A pair that cannot be compared (fewer than two points, a metric that is not
monotone in rate, no overlap) gets NaN and a ``note`` saying why, never an exception.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import bjontegaard
import numpy as np
import pandas as pd

BD_METRICS = ("PSNR", "LPIPS", "DISTS", "FID")
LOWER_IS_BETTER = frozenset({"LPIPS", "DISTS", "FID", "KID"})
BD_RATE_FILE = "bd_rate.csv"
BD_COLUMNS = ["anchor", "test", "metric", "bd_rate_percent", "bd_metric", "anchor_points", "test_points", "note"]


@dataclass(frozen=True)
class BdResult:
    anchor: str
    test: str
    metric: str
    bd_rate_percent: float
    bd_metric: float
    anchor_points: int
    test_points: int
    note: str = ""


def rd_points(curve: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(bpp, quality)`` sorted by rate; quality is the metric, negated when lower is better."""
    if metric not in curve or "bpp" not in curve:
        return np.empty(0), np.empty(0)
    points = curve[["bpp", metric]].dropna().sort_values("bpp")
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    return points["bpp"].to_numpy(float), sign * points[metric].to_numpy(float)


def bd_compare(
    anchor: pd.DataFrame, test: pd.DataFrame, metric: str, names: tuple[str, str] = ("anchor", "test"), method="akima"
) -> BdResult:
    """BD-rate and BD-metric of ``test`` against ``anchor`` for one metric (NaN with a note when undefined)."""
    (rate_a, quality_a), (rate_t, quality_t) = rd_points(anchor, metric), rd_points(test, metric)

    def result(bd_rate: float, bd_metric: float, note: str = "") -> BdResult:
        return BdResult(*names, metric, bd_rate, bd_metric, len(rate_a), len(rate_t), note)

    problem = _unusable(rate_a, quality_a, "anchor") or _unusable(rate_t, quality_t, "test")
    if problem:
        return result(math.nan, math.nan, problem)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = (rate_a, quality_a, rate_t, quality_t, method)
        bd_rate = float(bjontegaard.bd_rate(*args, require_matching_points=False))
        bd_metric = float(bjontegaard.bd_psnr(*args, require_matching_points=False))
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    return result(bd_rate, sign * bd_metric, "; ".join(dict.fromkeys(str(w.message) for w in caught)))


def _unusable(rate: np.ndarray, quality: np.ndarray, role: str) -> str:
    if len(rate) < 2:
        return f"{role} has {len(rate)} point(s) with this metric; BD needs at least 2"
    if np.any(np.diff(rate) <= 0) or np.any(np.diff(quality) <= 0):
        return f"{role}'s metric is not strictly monotone in rate; BD is undefined"
    return ""


def bd_table(
    anchors: Mapping[str, pd.DataFrame],
    tests: Mapping[str, pd.DataFrame],
    metrics: Sequence[str] = BD_METRICS,
    method: str = "akima",
) -> pd.DataFrame:
    """Every (anchor, test, metric) combination, one row each, in the ``bd_rate.csv`` layout."""
    rows = [
        asdict(bd_compare(anchor, test, metric, (anchor_name, test_name), method))
        for anchor_name, anchor in anchors.items()
        for test_name, test in tests.items()
        for metric in metrics
        if metric in anchor and metric in test
    ]
    return pd.DataFrame(rows, columns=BD_COLUMNS)


def curves_by_model(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A summary CSV (ours or a published ``dcvic_*.csv``) split into one curve per ``model``."""
    if "bpp" not in summary:
        raise ValueError("not an RD summary: it has no bpp column")
    if "model" not in summary:
        return {"curve": summary}
    return {str(name): table for name, table in summary.groupby("model", sort=False)}


def write_bd_table(table: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def format_bd_table(table: pd.DataFrame) -> str:
    """The table as printed after an evaluation's summary."""
    if table.empty:
        return "BD-rate: no curves with a common metric"
    shown = table.assign(
        bd_rate_percent=table["bd_rate_percent"].map(lambda v: f"{v:+.2f} %" if math.isfinite(v) else "n/a"),
        bd_metric=table["bd_metric"].map(lambda v: f"{v:+.4f}" if math.isfinite(v) else "n/a"),
    )
    return "BD-rate (negative: fewer bits than the anchor) and BD-metric (at equal rate):\n" + shown.to_string(
        index=False
    )
