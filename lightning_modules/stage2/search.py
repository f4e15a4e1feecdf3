"""Rate search: find the ``beta_rate`` that hits a target bpp for a fixed ``beta_vq`` (design §5.2).

One search for two callers: stage 2 (estimated bpp averaged over the validation crops, ``|bpp - target| <=
0.001``) and per-image rate control (:mod:`lightning_modules.codec.rate_control`: the real file size, within
1 % of the target and, by default, not above it). Both methods see the model only through
``evaluate(beta_rate) -> bpp``; what counts as a hit is the :class:`SearchResult`'s ``rule`` and
``tolerance``. They assume what training makes true, that the rate falls as ``beta_rate`` rises; the
bracketed phase only needs a sign change, so it also works on curves that rise. Candidates are rounded to
``decimals`` (3 like the reference in stage 2), so the two methods share memo entries.

* :func:`bisect_search` is the authors' procedure, step for step (bounds 0..3, the model's beta_rate range in the
  jobs; midpoint rounded to 3 decimals, stop when ``|bpp - target| <= 0.001`` or after 10 runs).
* :func:`illinois_search` (the default) works on ``log bpp``, which the rate makes close to linear in
  ``beta_rate``: it starts at the midpoint (or at both bounds, ``start="bounds"``), steps along the secant
  (a prior slope before there are two points) until the target is bracketed or a bound proves it
  unreachable, then runs regula falsi with the Illinois fix (halving the stale end's value when one side
  repeats, so flat spots cannot stall it).
  Points the earlier targets of the same ``beta_vq`` visited seed the bracket for free. Same tolerance, fewer
  model evaluations: ``benchmarks/beta_search_evals.py``.

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
"""``beta_rate -> bpp`` at a fixed ``beta_vq`` (stage 2: estimated, averaged; rate control: one real file)."""

RULES = ("closest", "below")
"""What a hit is: ``closest``: ``|bpp - target| <= tolerance``; ``below``: ``target - tolerance <= bpp <= target``."""

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
    rule: str = "closest"

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown search rule {self.rule!r}; choose one of {list(RULES)}")

    @property
    def aim(self) -> float:
        """The bpp the root finding steers to: the target, or the middle of ``[target - tolerance, target]``."""
        return self.target_bpp - self.tolerance / 2 if self.rule == "below" else self.target_bpp

    def accepts(self, bpp: float) -> bool:
        if self.rule == "below":
            return self.target_bpp - self.tolerance <= bpp <= self.target_bpp
        return abs(bpp - self.target_bpp) <= self.tolerance

    @property
    def best(self) -> SearchStep | None:
        """The best point evaluated by the rule (``below``: the largest not above the target, else the smallest);
        None when known points proved the target unreachable before any step."""
        if self.rule == "below":
            under = [step for step in self.steps if step.avg_bpp <= self.target_bpp]
            if under:
                return max(under, key=lambda step: (step.avg_bpp, -step.run_cnt))
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
        if self.result.accepts(bpp):
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
    rule: str = "closest",
) -> SearchResult:
    """The reference's binary search (design §5.2), including its rounding and its 10-run cap."""
    result = SearchResult("bisect", target_bpp, tolerance, rule=rule)
    record = _Recorder(evaluate, result)
    while result.evaluations < max_evals:
        beta_rate = round((lo + hi) / 2, decimals)
        bpp = record(beta_rate)
        if result.converged:
            return result
        if bpp > result.aim:
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
    rule: str = "closest",
    start: str = "midpoint",
) -> SearchResult:
    """Bracketed secant with the Illinois fix, on ``log bpp`` (near-linear in ``beta_rate`` in practice).

    Bracketing starts at the midpoint (shared by every target, like bisection) and steps along the secant of
    the points seen so far (``log_slope_prior``, d log bpp / d beta_rate, before there are two), clipped to the
    bounds, so reaching a bound proves the target unreachable. ``start="bounds"`` evaluates ``hi`` and ``lo``
    first instead: two points that give the reachable range and the first secant (rate control, where
    "nearest achievable" needs the range anyway). ``known`` (beta_rate -> bpp, e.g. the points earlier targets
    of this beta_vq visited) seeds the points and may answer outright. ``evaluations`` counts points visited;
    with a memo behind ``evaluate`` the model only runs for points no job has computed yet.
    """
    if start not in ("midpoint", "bounds"):
        raise ValueError(f"start must be 'midpoint' or 'bounds', got {start!r}")
    result = SearchResult("illinois", target_bpp, tolerance, rule=rule)
    record = _Recorder(evaluate, result)
    points = {br: bpp for br, bpp in (known or {}).items() if lo <= br <= hi}
    hit = [br for br, bpp in points.items() if result.accepts(bpp)]
    if hit:  # re-read through ``evaluate`` (a memo hit in real runs) so the result lists it
        record(min(hit, key=lambda br: abs(points[br] - result.aim)))
        return result
    bounds = (lo, hi)
    while result.evaluations < max_evals and not result.converged:
        bracket = _bracket(points, result.aim)
        if bracket is not None:
            return _illinois_loop(record, result, *bracket, max_evals, decimals)
        unvisited = [bound for bound in (hi, lo) if bound not in points] if start == "bounds" else []
        x = unvisited[0] if unvisited else _bracketing_step(points, result.aim, bounds, log_slope_prior, decimals)
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
    """The narrowest pair of neighbouring points on opposite sides of the target, as ``(beta_rate, log gap)``.

    On a falling curve that is ``(max beta_rate above, min beta_rate below)``; a rising stretch works too.
    """
    ordered = [(br, _gap(bpp, target_bpp)) for br, bpp in sorted(points.items()) if bpp != target_bpp]
    pairs = [(a, b) for a, b in zip(ordered[:-1], ordered[1:], strict=True) if (a[1] > 0) != (b[1] > 0)]
    return min(pairs, key=lambda pair: pair[1][0] - pair[0][0]) if pairs else None


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
    (a, fa), (b, fb) = low, high  # log gaps of opposite signs (on a falling curve fa > 0 > fb)
    last_side = 0
    while result.evaluations < max_evals:
        x = round(b - fb * (b - a) / (fb - fa), decimals)
        if not a < x < b:
            x = round((a + b) / 2, decimals)
        if not a < x < b:
            result.reason = _failure_reason(result, a, b, f"no {decimals}-decimal beta_rate left between")
            return result
        fx = _gap(record(x), result.aim)
        if result.converged:
            return result
        if (fx > 0) == (fa > 0):
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
