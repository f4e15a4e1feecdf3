"""Stage 2 glue between the model and the pure search/selection code (design §5).

``evaluate(beta_rate)`` for the search runs only the analysis and entropy stages with the cached VQ indices
(the VQGAN encoder and the whole synthesis path are skipped: they do not change the rate), in eval mode,
and returns the mean of the per-batch estimated bpp, exactly the reference's number.

One search job = one (beta_vq, target) pair: :func:`run_rate_search` writes the reference CSV and a JSON
record next to it. :func:`search_grid` runs one chain per ``beta_vq`` in worker processes (joblib): its targets
in order, each seeded with the points the earlier ones visited (:func:`run_beta_vq_searches`). The on-disk memo
only saves recomputing a point; it never steers a search, so the pairs found are the same for any number of
workers and whatever an earlier, interrupted run left in the memo (design §5.2). :func:`run_selection` scores
the found pairs; ``entrypoints.runners.run_stage2`` chains set building, the grid and the selection for
``train.py +stage=2``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from joblib import Parallel, delayed
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from lightning_modules.evaluation.metrics import FID_MIN_IMAGES, PatchDistributionMetrics
from lightning_modules.model_file import load_model_file
from lightning_modules.networks.dcvic import DCVIC, bits, pad_to_multiple
from lightning_modules.stage2.search import SEARCH_METHODS, BppMemo, SearchResult, search_csv_name, write_search_csv
from lightning_modules.stage2.selection import Selection, select_betas
from lightning_modules.stage2.validation_set import CachedVQDataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchSettings:
    """How each (beta_vq, target) job searches; the defaults are the reference's (design §5.2)."""

    method: str = "illinois"
    tolerance: float = 0.001
    beta_rate_min: float = 0.0
    beta_rate_max: float | None = None  # None: the model's own beta_rate range (its architecture's beta_rate_max)
    max_evals: int = 10
    decimals: int = 3
    batch_size: int = 16
    num_workers: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.method not in SEARCH_METHODS:
            raise ValueError(f"unknown search method {self.method!r}; choose one of {sorted(SEARCH_METHODS)}")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@functools.lru_cache(maxsize=2)
def load_eval_model(model_file: str, device: str) -> tuple[DCVIC, str]:
    """The model in eval mode and its weights fingerprint (cached: a worker process loads each file once)."""
    model_data = load_model_file(model_file)
    model = model_data.build_model().eval().to(resolve_device(device))
    return model, model_data.fingerprint().hex()


def validation_loader(val_set: str | Path, batch_size: int, num_workers: int = 0, limit: int | None = None):
    """Sorted, unshuffled batches. Workers are forked explicitly: a job may itself run in a joblib/loky worker,
    whose default start method ("loky") DataLoader workers cannot use; they live as long as the loader."""
    dataset = CachedVQDataset(val_set, limit=limit)
    if not num_workers:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        multiprocessing_context="fork",
        persistent_workers=True,
    )


@torch.no_grad()
def average_bpp(model: DCVIC, loader: Iterable[tuple[Tensor, Tensor]], beta_rate: float, beta_vq: float) -> float:
    """Mean over batches of the quantised-likelihood bpp (reference convention), synthesis skipped."""
    device = next(model.parameters()).device
    per_batch: list[float] = []
    for x, indices in tqdm(loader, desc=f"bpp at beta_rate {beta_rate}, beta_vq {beta_vq}", leave=False):
        x = x.to(device)
        n, _, h, w = x.shape
        x_in = pad_to_multiple(x, model.pad_multiple)
        vq = model.vq_encode(x_in, indices)
        y = model.analysis(x_in, vq, beta_rate, beta_vq)
        q = model.latent_codec(y, training=False).q_likelihoods
        per_batch.append(float((bits(q["y"]) + bits(q["z"])) / (n * h * w)))
    return sum(per_batch) / len(per_batch)


def memo_for(memo_root: str | Path, model_fingerprint: str, loader: DataLoader) -> BppMemo:
    """Memo namespace = (model weights, validation set content): a stale memo can never be reused."""
    return BppMemo(Path(memo_root) / f"model_{model_fingerprint[:12]}__valset_{loader.dataset.fingerprint()}")


def run_rate_search(
    model_file: str,
    val_set: str,
    search_dir: str,
    memo_root: str,
    beta_vq: float,
    target_bpp: float,
    settings: SearchSettings = SearchSettings(),
    val_limit: int | None = None,
    known: Mapping[float, float] | None = None,
) -> SearchResult:
    """One job: search, then write ``result_beta_vq_..._target_rate_....csv`` and its ``.json`` record.

    ``known`` (beta_rate -> bpp) seeds the Illinois bracket. The memo's contents are not used for that: which
    points other jobs have written by now depends on timing, and seeding from them made two runs of stage 2
    select different pairs from the same model.
    """
    model, fingerprint = load_eval_model(str(model_file), settings.device)
    loader = validation_loader(val_set, settings.batch_size, settings.num_workers, val_limit)
    memo = memo_for(memo_root, fingerprint, loader)
    evaluate = memo.evaluator(beta_vq, lambda beta_rate: average_bpp(model, loader, beta_rate, beta_vq))
    kwargs = dict(
        tolerance=settings.tolerance,
        lo=settings.beta_rate_min,
        hi=model.beta_range.rate_max if settings.beta_rate_max is None else settings.beta_rate_max,
        max_evals=settings.max_evals,
        decimals=settings.decimals,
    )
    if settings.method == "illinois":
        kwargs["known"] = dict(known or {})
    result = SEARCH_METHODS[settings.method](evaluate, target_bpp, **kwargs)
    csv_path = write_search_csv(result, beta_vq, Path(search_dir) / search_csv_name(beta_vq, target_bpp))
    record = {
        **result.to_dict(),
        "beta_vq": beta_vq,
        "model_fingerprint": fingerprint,
        "model_evaluations": memo.computed,
        "val_set": str(val_set),
        "num_images": len(loader.dataset),
    }
    csv_path.with_suffix(".json").write_text(json.dumps(record, indent=2))
    if not result.converged:
        log.warning("beta_vq %.2f, target %.3f: %s", beta_vq, target_bpp, result.reason)
    return result


def run_beta_vq_searches(
    model_file: str,
    val_set: str,
    search_dir: str,
    memo_root: str,
    beta_vq: float,
    targets_bpp: list[float],
    settings: SearchSettings = SearchSettings(),
    val_limit: int | None = None,
) -> list[SearchResult]:
    """Every target of one ``beta_vq`` in the given order, each seeded with the points the earlier ones visited:
    as cheap as a shared memo (``benchmarks/beta_search_evals.py``), and deterministic."""
    seen: dict[float, float] = {}
    results = []
    for target in targets_bpp:
        result = run_rate_search(model_file, val_set, search_dir, memo_root, beta_vq, target, settings, val_limit, seen)
        seen.update((step.beta_rate, step.avg_bpp) for step in result.steps)
        results.append(result)
    return results


def search_grid(
    model_file: str,
    val_set: str,
    search_dir: str,
    memo_root: str,
    beta_vqs: list[float],
    targets_bpp: list[float],
    settings: SearchSettings = SearchSettings(),
    workers: int = 1,
    val_limit: int | None = None,
) -> list[SearchResult]:
    """All (beta_vq, target) jobs, ``beta_vq`` outer like the reference: one chain per ``beta_vq`` over ``workers``
    processes."""
    chain = delayed(run_beta_vq_searches)
    chains = Parallel(n_jobs=workers, return_as="generator")(
        chain(model_file, val_set, search_dir, memo_root, bv, list(targets_bpp), settings, val_limit) for bv in beta_vqs
    )
    return [
        result
        for results in tqdm(chains, total=len(beta_vqs), desc="rate search", unit="beta_vq")
        for result in results
    ]


def run_selection(
    model_file: str,
    val_set: str,
    search_dir: str,
    save_dir: str,
    beta_vqs: list[float],
    targets_bpp: list[float],
    fid_features: nn.Module,
    alpha: float = 2.0,
    tolerance: float = 0.001,
    batch_size: int = 16,
    device: str = "cpu",
    fid_min_images: int = FID_MIN_IMAGES,
    save_images: bool = False,
    val_limit: int | None = None,
) -> Selection:
    """Load the model and the cached set, then :func:`select_betas` with HiFiC-patch FID on ``fid_features``."""
    model, fingerprint = load_eval_model(str(model_file), device)
    _check_search_provenance(Path(search_dir), fingerprint)
    loader = validation_loader(val_set, batch_size, limit=val_limit)
    device = str(next(model.parameters()).device)

    def make_distribution() -> PatchDistributionMetrics:
        return PatchDistributionMetrics(fid_features, min_images=fid_min_images, device=device)

    return select_betas(
        model, loader, search_dir, save_dir, beta_vqs, targets_bpp, make_distribution, alpha, tolerance, save_images
    )


def _check_search_provenance(search_dir: Path, fingerprint: str) -> None:
    """Refuse search results that another model produced (same file names, different weights)."""
    foreign = sorted(
        record.name
        for record in search_dir.glob("result_beta_vq_*.json")
        if json.loads(record.read_text()).get("model_fingerprint") != fingerprint
    )
    if foreign:
        raise ValueError(
            f"{len(foreign)} search results in {search_dir} come from another model (e.g. {foreign[0]}); "
            "search again with this model or point search_dir elsewhere"
        )
