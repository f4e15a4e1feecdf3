"""Rate search on monotone toy curves, the reference CSV format, and the memo under concurrent writers."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.beta_search_evals import TOY_CURVES, mean_evaluations
from lightning_modules.stage2.search import (
    BppMemo,
    bisect_search,
    illinois_search,
    read_best_search_row,
    search_csv_name,
    write_search_csv,
)

METHODS = [bisect_search, illinois_search]


def paper_like(beta_rate: float) -> float:
    """Exponential fit through the published (0.164, 0.15) and (2.297, 0.05) operating points."""
    return 0.163 * math.exp(-0.515 * beta_rate)


def flat_then_steep(beta_rate: float) -> float:
    """A plateau at 0.1 bpp for beta_rate in [1, 2], linear on either side."""
    if beta_rate < 1.0:
        return 0.1 + 0.05 * (1.0 - beta_rate)
    if beta_rate <= 2.0:
        return 0.1
    return 0.1 - 0.04 * (beta_rate - 2.0)


def step_at_one(beta_rate: float) -> float:
    """Jumps from 0.12 to 0.08 at beta_rate 1: targets in between are unreachable at any tolerance."""
    return 0.12 - 0.001 * beta_rate if beta_rate < 1.0 else 0.08 - 0.001 * beta_rate


def test_bisect_follows_the_reference_steps():
    result = bisect_search(lambda b: 0.2 - 0.05 * b, target_bpp=0.1)
    # lo=0, hi=3 -> 1.5 (0.125 > target: lo) -> 2.25 (0.0875: hi) -> 1.875 (lo) -> round(2.0625, 3) = 2.062
    assert [s.beta_rate for s in result.steps][:4] == [1.5, 2.25, 1.875, 2.062]
    assert result.converged and result.best.diff <= 0.001
    assert [s.run_cnt for s in result.steps] == list(range(1, result.evaluations + 1))


def test_bisect_stops_after_ten_runs():
    result = bisect_search(lambda b: 0.2 - 0.05 * b, target_bpp=0.1, tolerance=1e-9)
    assert result.evaluations == 10 and not result.converged
    assert "10 evaluations used" in result.reason


@pytest.mark.parametrize("search", METHODS)
@pytest.mark.parametrize("target", [0.05, 0.075, 0.1, 0.125, 0.15])
def test_reaches_tolerance_on_a_smooth_curve(search, target):
    result = search(paper_like, target_bpp=target)
    assert result.converged, result.reason
    assert abs(paper_like(result.best.beta_rate) - target) <= 0.001
    assert all(0.0 <= s.beta_rate <= 3.0 and round(s.beta_rate, 3) == s.beta_rate for s in result.steps)


@pytest.mark.parametrize("search", METHODS)
@pytest.mark.parametrize("target", [0.0995, 0.1, 0.1008, 0.12, 0.07])
def test_flat_spot(search, target):
    result = search(flat_then_steep, target_bpp=target)
    assert result.converged, result.reason
    assert abs(flat_then_steep(result.best.beta_rate) - target) <= 0.001


@pytest.mark.parametrize("search", METHODS)
@pytest.mark.parametrize("target", [0.3, 0.01])
def test_unreachable_target_is_reported(search, target):
    result = search(paper_like, target_bpp=target)
    assert not result.converged
    assert "not reached" in result.reason and str(target) in result.reason


def test_illinois_spots_an_unreachable_target_in_two_evaluations():
    result = illinois_search(paper_like, target_bpp=0.01)
    assert result.evaluations == 2 and "outside the reachable" in result.reason


@pytest.mark.parametrize("search", METHODS)
def test_jump_across_the_target_is_reported_not_raised(search):
    result = search(step_at_one, target_bpp=0.1)
    assert not result.converged
    assert result.best.diff > 0.001 and "not reached" in result.reason
    assert abs(result.best.beta_rate - 1.0) < 0.01


def test_illinois_needs_fewer_evaluations_than_bisection():
    targets = np.linspace(0.045, 0.155, 23).tolist()
    for curve in TOY_CURVES.values():
        bisect_mean = mean_evaluations(bisect_search, curve, targets)
        illinois_mean = mean_evaluations(illinois_search, curve, targets)
        assert illinois_mean < bisect_mean


def test_known_points_narrow_the_bracket():
    first = illinois_search(paper_like, target_bpp=0.1)
    known = {s.beta_rate: s.avg_bpp for s in first.steps}
    calls: list[float] = []
    second = illinois_search(lambda b: calls.append(b) or paper_like(b), target_bpp=0.1, known=known)
    assert second.converged and len(calls) == 1  # re-reads the known answer only
    third = illinois_search(lambda b: calls.append(b) or paper_like(b), target_bpp=0.09, known=known)
    assert third.converged and third.evaluations < first.evaluations


def test_search_csv_matches_the_reference_layout(tmp_path: Path):
    result = bisect_search(paper_like, target_bpp=0.1)
    path = write_search_csv(result, 2.0, tmp_path / search_csv_name(2.0, 0.1))
    assert path.name == "result_beta_vq_2.00_target_rate_0.100.csv"
    frame = pd.read_csv(path, index_col=0)
    assert list(frame.columns) == ["run_cnt", "beta_vq", "beta_rate", "avg_bpp", "diff"]
    assert frame["diff"].is_monotonic_increasing and len(frame) == result.evaluations
    best = read_best_search_row(path)
    assert best["beta_rate"] == result.best.beta_rate and best["run_cnt"] == result.best.run_cnt


def test_best_row_rejects_a_foreign_csv(tmp_path: Path):
    path = tmp_path / "other.csv"
    pd.DataFrame({"a": [1]}).to_csv(path)
    with pytest.raises(ValueError, match="not a rate-search result"):
        read_best_search_row(path)


def test_memo_returns_stored_points_without_recomputing(tmp_path: Path):
    memo = BppMemo(tmp_path)
    calls: list[float] = []
    evaluate = memo.evaluator(1.5, lambda b: calls.append(b) or paper_like(b))
    assert evaluate(0.5) == evaluate(0.5) == paper_like(0.5)
    assert calls == [0.5] and memo.computed == 1
    assert BppMemo(tmp_path).get(1.5, 0.5) == paper_like(0.5) and BppMemo(tmp_path).get(2.0, 0.5) is None


def _memo_worker(root: str, log_path: str, worker: int, barrier) -> None:
    memo = BppMemo(root)

    def slow_compute(beta_rate: float) -> float:
        with open(log_path, "a") as log:
            log.write(f"{worker} {beta_rate}\n")
        return paper_like(beta_rate)

    barrier.wait()
    for k in range(40):
        beta_rate = round(0.025 * k, 3)
        memo.get_or_compute(0.25 * (k % 3), beta_rate, slow_compute)  # shared points ...
        memo.get_or_compute(3.0 + worker / 10, beta_rate, slow_compute)  # ... and private ones


def test_memo_is_safe_under_two_concurrent_writers(tmp_path: Path):
    context = mp.get_context("spawn")
    barrier = context.Barrier(2)
    log_path = tmp_path / "computed.log"
    workers = [
        context.Process(target=_memo_worker, args=(str(tmp_path / "memo"), str(log_path), w, barrier)) for w in range(2)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0
    memo = BppMemo(tmp_path / "memo")
    computed = [tuple(line.split()) for line in log_path.read_text().splitlines()]
    assert len(computed) == 40 + 2 * 40  # every shared point once, every private point once
    for k in range(40):
        beta_rate = round(0.025 * k, 3)
        for beta_vq in (0.25 * (k % 3), 3.0, 3.1):
            assert memo.get(beta_vq, beta_rate) == pytest.approx(paper_like(beta_rate))
    stray = [p for p in (tmp_path / "memo").rglob("*.partial")]
    assert not stray
    assert all(json.loads(p.read_text())["avg_bpp"] > 0 for p in (tmp_path / "memo").rglob("*.json"))
