"""How many model evaluations each rate-search method needs, on monotone toy bpp(beta_rate) curves.

Two measurements, both at the reference tolerance (0.001 bpp) and 3-decimal beta_rate:

* ``per_search``: each target searched on its own (no memo), mean/max evaluations over a grid of targets;
* ``per_sweep``: the paper's 5 targets (``conf/stage2_grid/paper.yaml``) searched one after the other on the same
  curve with a shared memo (as the stage-2 jobs do): distinct points the model had to evaluate.

Run: ``python -m benchmarks.beta_search_evals`` -> ``benchmarks/results/beta_search_evals.json``; ``--quick`` uses
every fourth grid target (see ``benchmarks/harness.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from benchmarks.harness import benchmark_parser, output_path, write_result
from lightning_modules.stage2.search import SearchResult, bisect_search, illinois_search

Curve = Callable[[float], float]

TOY_CURVES: dict[str, Curve] = {
    "exponential_paper_fit": lambda b: 0.163 * math.exp(-0.515 * b),
    "linear": lambda b: 0.16 - 0.04 * b,
    "logistic": lambda b: 0.04 + 0.12 / (1.0 + math.exp(3.0 * (b - 1.5))),
    "plateau_1.0_to_1.4": lambda b: 0.163 * math.exp(-0.515 * (min(b, 1.0) + max(b - 1.4, 0.0))),
}
GRID_TARGETS = np.round(np.arange(0.045, 0.1551, 0.005), 4).tolist()
PAPER_TARGETS_BPP = list(
    OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/stage2_grid/paper.yaml").targets_bpp
)
SEARCHES: dict[str, Callable[..., SearchResult]] = {"bisect": bisect_search, "illinois": illinois_search}


def mean_evaluations(search: Callable[..., SearchResult], curve: Curve, targets: list[float]) -> float:
    return float(np.mean([search(curve, target_bpp=t).evaluations for t in targets]))


def per_search(curve: Curve, targets: list[float]) -> dict:
    out = {}
    for method, search in SEARCHES.items():
        results = [search(curve, target_bpp=t) for t in targets]
        out[method] = {
            "mean_evaluations": float(np.mean([r.evaluations for r in results])),
            "max_evaluations": max(r.evaluations for r in results),
            "converged": sum(r.converged for r in results),
        }
    return out


def per_sweep(curve: Curve) -> dict:
    """Distinct evaluated points for the 5 paper targets sharing one memo (a dict here)."""
    out = {}
    for method, search in SEARCHES.items():
        memo: dict[float, float] = {}

        def memoised(beta_rate: float, memo: dict[float, float] = memo) -> float:
            return memo.setdefault(beta_rate, curve(beta_rate))

        for target in PAPER_TARGETS_BPP:
            kwargs = {"known": dict(memo)} if method == "illinois" else {}
            search(memoised, target_bpp=target, **kwargs)
        out[method] = {"distinct_points": len(memo)}
    return out


def main(argv: list[str] | None = None) -> dict:
    args = benchmark_parser(__doc__).parse_args(argv)
    targets = GRID_TARGETS[::4] if args.quick else GRID_TARGETS
    results = {
        "tolerance_bpp": 0.001,
        "beta_rate_bounds": [0.0, 3.0],
        "grid_targets": targets,
        "per_search": {name: per_search(curve, targets) for name, curve in TOY_CURVES.items()},
        "per_sweep_paper_targets": {name: per_sweep(curve) for name, curve in TOY_CURVES.items()},
    }
    for method in SEARCHES:
        results[f"overall_mean_evaluations_{method}"] = float(
            np.mean([results["per_search"][name][method]["mean_evaluations"] for name in TOY_CURVES])
        )
    write_result(results, output_path(args, "beta_search_evals"))
    return results


if __name__ == "__main__":
    main()
