"""Stage 2 rate search: find the ``beta_rate`` that hits a target bpp for a fixed ``beta_vq`` (design §5.2).

Both methods see the model only through ``evaluate(beta_rate) -> avg bpp`` and assume what training makes
true: the estimated rate falls as ``beta_rate`` rises. Candidates are rounded to 3 decimals like the
reference, so the two methods share memo entries and their answers are directly comparable.

* :func:`bisect_search` is the authors' procedure, step for step (bounds 0..3, the model's beta_rate range in the
  jobs; midpoint rounded to 3 decimals, stop when ``|bpp - target| <= 0.001`` or after 10 runs).
* :func:`illinois_search` (the default) works on ``log bpp``, which the rate makes close to linear in
  ``beta_rate``: it starts at the midpoint, steps along the secant (a prior slope before there are two
  points) until the target is bracketed or a bound proves it unreachable, then runs regula falsi with the
  Illinois fix (halving the stale end's value when one side repeats, so flat spots cannot stall it).
  Points other jobs already memoised seed the bracket for free. Same tolerance, fewer model evaluations:
  ``benchmarks/beta_search_evals.py``.

:class:`BppMemo` stores one JSON file per (beta_vq, beta_rate) point, written atomically under a per-point
``flock``: concurrent jobs wait for a point another job is computing instead of recomputing it.
"""

from __future__ import annotations

import fcntl
import json
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from lightning_modules.images import write_atomic
from lightning_modules.networks.conditioning import PAPER_BETA_RANGE

Evaluate = Callable[[float], float]
"""``beta_rate -> average estimated bpp`` at a fixed ``beta_vq``."""

SEARCH_CSV_COLUMNS = ["run_cnt", "beta_vq", "beta_rate", "avg_bpp", "diff"]


@dataclass(frozen=True)
class SearchStep:
    run_cnt: int
    beta_rate: float
    avg_bpp: float
    diff: float


@dataclass
class SearchResult:
    """Every evaluated point in order, and whether the tolerance was met (``reason`` says why not)."""

    method: str
    target_bpp: float
    tolerance: float
    steps: list[SearchStep] = field(default_factory=list)
    converged: bool = False
    reason: str = ""

    @property
    def best(self) -> SearchStep | None:
        """The closest point evaluated; None when known points proved the target unreachable before any step."""
        return min(self.steps, key=lambda step: step.diff) if self.steps else None

    @property
    def evaluations(self) -> int:
        return len(self.steps)

    def to_dict(self) -> dict:
        best = self.best
        return {**asdict(self), "best": asdict(best) if best else None, "evaluations": self.evaluations}


class _Recorder:
    """Wraps ``evaluate`` so each call becomes a numbered :class:`SearchStep`."""

    def __init__(self, evaluate: Evaluate, result: SearchResult) -> None:
        self.evaluate = evaluate
        self.result = result

    def __call__(self, beta_rate: float) -> float:
        bpp = float(self.evaluate(beta_rate))
        step = SearchStep(len(self.result.steps) + 1, beta_rate, bpp, abs(bpp - self.result.target_bpp))
        self.result.steps.append(step)
        if step.diff <= self.result.tolerance:
            self.result.converged = True
        return bpp


def bisect_search(
    evaluate: Evaluate,
    target_bpp: float,
    tolerance: float = 0.001,
    lo: float = 0.0,
    hi: float = PAPER_BETA_RANGE.rate_max,
    max_evals: int = 10,
    decimals: int = 3,
) -> SearchResult:
    """The reference's binary search (design §5.2), including its rounding and its 10-run cap."""
    result = SearchResult("bisect", target_bpp, tolerance)
    record = _Recorder(evaluate, result)
    while result.evaluations < max_evals:
        beta_rate = round((lo + hi) / 2, decimals)
        bpp = record(beta_rate)
        if result.converged:
            return result
        if bpp > target_bpp:
            lo = beta_rate
        else:
            hi = beta_rate
    result.reason = _failure_reason(result, lo, hi, f"{max_evals} evaluations used")
    return result


def illinois_search(
    evaluate: Evaluate,
    target_bpp: float,
    tolerance: float = 0.001,
    lo: float = 0.0,
    hi: float = PAPER_BETA_RANGE.rate_max,
    max_evals: int = 10,
    decimals: int = 3,
    known: Mapping[float, float] | None = None,
    log_slope_prior: float = -0.5,
) -> SearchResult:
    """Bracketed secant with the Illinois fix, on ``log bpp`` (near-linear in ``beta_rate`` in practice).

    Bracketing starts at the midpoint (shared by every target, like bisection) and steps along the secant of
    the points seen so far (``log_slope_prior``, d log bpp / d beta_rate, before there are two), clipped to the
    bounds, so reaching a bound proves the target unreachable. ``known`` (beta_rate -> bpp, e.g. the memo's
    points for this beta_vq) seeds the points and may answer outright. ``evaluations`` counts points visited;
    with a memo behind ``evaluate`` the model only runs for points no job has computed yet.
    """
    result = SearchResult("illinois", target_bpp, tolerance)
    record = _Recorder(evaluate, result)
    points = {br: bpp for br, bpp in (known or {}).items() if lo <= br <= hi}
    hit = [br for br, bpp in points.items() if abs(bpp - target_bpp) <= tolerance]
    if hit:  # re-read through ``evaluate`` (a memo hit in real runs) so the result lists it
        record(min(hit, key=lambda br: abs(points[br] - target_bpp)))
        return result
    bounds = (lo, hi)
    while result.evaluations < max_evals and not result.converged:
        bracket = _bracket(points, target_bpp)
        if bracket is not None:
            return _illinois_loop(record, result, *bracket, max_evals, decimals)
        x = _bracketing_step(points, target_bpp, bounds, log_slope_prior, decimals)
        if x is None:
            result.reason = _failure_reason(result, lo, hi, "target outside the reachable bpp range")
            return result
        points[x] = record(x)
    if not result.converged:
        result.reason = _failure_reason(result, lo, hi, f"{max_evals} evaluations used")
    return result


def _gap(bpp: float, target_bpp: float) -> float:
    """Signed distance to the target in log space (positive: rate too high, raise beta_rate)."""
    return math.log(max(bpp, 1e-12) / target_bpp)


def _bracket(points: Mapping[float, float], target_bpp: float) -> tuple[tuple, tuple] | None:
    above = [br for br, bpp in points.items() if bpp > target_bpp]
    below = [br for br, bpp in points.items() if bpp < target_bpp]
    if not above or not below or max(above) >= min(below):
        return None
    a, b = max(above), min(below)
    return (a, _gap(points[a], target_bpp)), (b, _gap(points[b], target_bpp))


def _bracketing_step(
    points: Mapping[float, float], target_bpp: float, bounds: tuple[float, float], slope_prior: float, decimals: int
) -> float | None:
    """Next point towards the target from the nearest seen point, or None once a bound has proved it unreachable."""
    lo, hi = bounds
    if not points:
        return round((lo + hi) / 2, decimals)
    too_high = all(bpp > target_bpp for bpp in points.values())  # all on one side, or no bracket exists
    edge = max(points) if too_high else min(points)
    if edge == (hi if too_high else lo):
        return None
    slope = slope_prior
    if len(points) >= 2:
        near = sorted(points, reverse=too_high)[:2]
        slope = (_gap(points[near[0]], 1.0) - _gap(points[near[1]], 1.0)) / (near[0] - near[1])
        if slope >= 0:  # a flat (or non-monotone) stretch says nothing about the distance: try the bound
            return hi if too_high else lo
    x = round(min(max(edge - _gap(points[edge], target_bpp) / slope, lo), hi), decimals)
    if x == edge:  # the step is below the grid resolution: move one grid step
        x = round(edge + (10.0**-decimals if too_high else -(10.0**-decimals)), decimals)
    return x


def _illinois_loop(
    record: _Recorder,
    result: SearchResult,
    low: tuple[float, float],
    high: tuple[float, float],
    max_evals: int,
    decimals: int,
) -> SearchResult:
    """Regula falsi inside ``[a, b]``; halving the retained end's gap (Illinois) keeps it superlinear."""
    (a, fa), (b, fb) = low, high  # log gaps: fa > 0 > fb (bpp above the target at a, below it at b)
    last_side = 0
    while result.evaluations < max_evals:
        x = round(b - fb * (b - a) / (fb - fa), decimals)
        if not a < x < b:
            x = round((a + b) / 2, decimals)
        if not a < x < b:
            result.reason = _failure_reason(result, a, b, f"no {decimals}-decimal beta_rate left between")
            return result
        fx = _gap(record(x), result.target_bpp)
        if result.converged:
            return result
        if fx > 0:
            a, fa = x, fx
            fb = fb / 2 if last_side > 0 else fb
            last_side = 1
        else:
            b, fb = x, fx
            fa = fa / 2 if last_side < 0 else fa
            last_side = -1
    result.reason = _failure_reason(result, a, b, f"{max_evals} evaluations used")
    return result


def _failure_reason(result: SearchResult, lo: float, hi: float, cause: str) -> str:
    best = result.best
    where = f"best beta_rate {best.beta_rate} gives {best.avg_bpp:.5f} bpp" if best else "nothing evaluated"
    return (
        f"tolerance {result.tolerance} not reached for target {result.target_bpp}: {cause} "
        f"(bracket [{lo}, {hi}]; {where})"
    )


SEARCH_METHODS: dict[str, Callable[..., SearchResult]] = {"bisect": bisect_search, "illinois": illinois_search}


# --- on-disk memo --------------------------------------------------------------------------------------------


class BppMemo:
    """``(beta_vq, beta_rate) -> avg bpp`` for one (model, validation set), one JSON file per point.

    Keys are the values formatted to 4 decimals, as in the reference's in-memory dict.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.computed = 0

    def path(self, beta_vq: float, beta_rate: float) -> Path:
        return self.root / f"beta_vq_{beta_vq:.4f}" / f"beta_rate_{beta_rate:.4f}.json"

    def get(self, beta_vq: float, beta_rate: float) -> float | None:
        path = self.path(beta_vq, beta_rate)
        return json.loads(path.read_text())["avg_bpp"] if path.is_file() else None

    def known(self, beta_vq: float) -> dict[float, float]:
        """All memoised points for one ``beta_vq`` (what another job already paid for)."""
        folder = self.path(beta_vq, 0.0).parent
        points = (json.loads(p.read_text()) for p in sorted(folder.glob("beta_rate_*.json")))
        return {point["beta_rate"]: point["avg_bpp"] for point in points}

    def get_or_compute(self, beta_vq: float, beta_rate: float, compute: Evaluate) -> float:
        """Memoised ``compute(beta_rate)``; a job that finds the point being computed waits for it."""
        path = self.path(beta_vq, beta_rate)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(path.with_suffix(".lock")):
            cached = self.get(beta_vq, beta_rate)
            if cached is not None:
                return cached
            avg_bpp = float(compute(beta_rate))
            write_atomic(path, json.dumps({"beta_vq": beta_vq, "beta_rate": beta_rate, "avg_bpp": avg_bpp}))
            self.computed += 1
            return avg_bpp

    def evaluator(self, beta_vq: float, compute: Evaluate) -> Evaluate:
        return lambda beta_rate: self.get_or_compute(beta_vq, beta_rate, compute)


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --- the reference's result files ----------------------------------------------------------------------------


def search_csv_name(beta_vq: float, target_bpp: float) -> str:
    return f"result_beta_vq_{beta_vq:.2f}_target_rate_{target_bpp:.3f}.csv"


def write_search_csv(result: SearchResult, beta_vq: float, path: str | Path) -> Path:
    """``run_cnt, beta_vq, beta_rate, avg_bpp, diff`` with the pandas index, sorted by ``diff`` (design §5.2)."""
    rows = [
        {"run_cnt": s.run_cnt, "beta_vq": beta_vq, "beta_rate": s.beta_rate, "avg_bpp": s.avg_bpp, "diff": s.diff}
        for s in result.steps
    ]
    frame = pd.DataFrame(rows, columns=SEARCH_CSV_COLUMNS).sort_values("diff", kind="stable")  # index: run order
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path)
    return path


def read_best_search_row(path: str | Path) -> pd.Series | None:
    """The row with the smallest ``diff`` of a search CSV (ours or the reference's); None if it has no rows."""
    path = Path(path)
    frame = pd.read_csv(path, index_col=0)
    missing = set(SEARCH_CSV_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{path} is not a rate-search result (missing columns {sorted(missing)})")
    return None if frame.empty else frame.loc[frame["diff"].idxmin()]
