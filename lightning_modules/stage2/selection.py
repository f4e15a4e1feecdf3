"""Stage 2 selection: score each found (beta_rate, beta_vq) pair and keep the best per target (design §5.3).

For every target bitrate and every ``beta_vq`` whose search met the tolerance, the validation crops are
reconstructed at the found pair (eval mode, cached VQ indices), then::

    score = alpha · PSNR − FID          (alpha = 2 in the paper)

with the reference's PSNR (mean of per-image PSNRs on truncated 8-bit outputs) and FID over HiFiC patches
(``lightning_modules.evaluation.metrics``). Outputs, in the reference's formats plus one for stage 3::

    <save_dir>/target_rate_<t>/result.csv         beta_vq, beta_rate, bpp, psnr, fid, score (best first)
    <save_dir>/beta_selection_results.csv         target_rate, selected_beta_vq, selected_beta_rate
    <save_dir>/selected_betas.yaml                a `betas` config (SelectedBetaSampler) for stage 3
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from lightning_modules.evaluation.metrics import PatchDistributionMetrics, psnr_per_image
from lightning_modules.images import from_uint8, save_png, to_uint8, to_uint8_rounded, write_atomic
from lightning_modules.networks.dcvic import DCVIC, bits_per_sample
from lightning_modules.stage2.search import read_best_search_row, search_csv_name

log = logging.getLogger(__name__)

SAMPLER_TARGET = "lightning_modules.training.beta_sampling.SelectedBetaSampler"
SELECTED_YAML = "selected_betas.yaml"
RESULT_COLUMNS = ["beta_vq", "beta_rate", "bpp", "psnr", "fid", "score"]


@dataclass(frozen=True)
class PairScore:
    beta_vq: float
    beta_rate: float
    bpp: float
    psnr: float
    fid: float
    score: float


@dataclass
class Selection:
    """The chosen pair per target (ascending bitrate = quality index 0, 1, …) and where it was written."""

    targets_bpp: list[float]
    chosen: list[PairScore]
    yaml_path: Path

    def as_betas_overrides(self) -> str:
        """The same table as command-line overrides of stage 3's ``betas=selected`` option."""
        rates = ",".join(f"{p.beta_rate:g}" for p in self.chosen)
        vqs = ",".join(f"{p.beta_vq:g}" for p in self.chosen)
        return f"betas.beta_rate=[{rates}] betas.beta_vq=[{vqs}]"


@torch.no_grad()
def reconstruct_and_measure(
    model: DCVIC,
    loader: DataLoader,
    beta_rate: float,
    beta_vq: float,
    distribution: PatchDistributionMetrics,
    image_dir: Path | None = None,
) -> tuple[float, float, float]:
    """(mean per-image bpp, mean per-image PSNR, FID) of the set reconstructed at one pair."""
    device = next(model.parameters()).device
    bpps: list[Tensor] = []
    psnrs: list[Tensor] = []
    names = iter(getattr(loader.dataset, "names", []))
    for x, indices in tqdm(loader, desc=f"reconstruct at beta_rate {beta_rate}, beta_vq {beta_vq}", leave=False):
        out = model(x.to(device), beta_rate, beta_vq, vq_indices=indices)
        q = out.entropy.q_likelihoods
        bpps.append((bits_per_sample(q["y"]) + bits_per_sample(q["z"])).cpu() / (x.shape[-2] * x.shape[-1]))
        fake, real = to_uint8(out.x_hat).cpu(), to_uint8_rounded(x)  # originals are exact 8-bit values
        psnrs.append(psnr_per_image(fake, real))
        for fake_image, real_image in zip(fake, real, strict=True):
            distribution.update(fake_image, real_image)
            if image_dir is not None:
                save_png(image_dir / f"{next(names)}.png", fake_image)
    fid = distribution.compute()["FID"]
    return float(torch.cat(bpps).mean()), float(torch.cat(psnrs).mean()), fid


def select_betas(
    model: DCVIC,
    loader: DataLoader,
    search_dir: str | Path,
    save_dir: str | Path,
    beta_vqs: Sequence[float],
    targets_bpp: Sequence[float],
    make_distribution: Callable[[], PatchDistributionMetrics],
    alpha: float = 2.0,
    tolerance: float = 0.001,
    save_images: bool = False,
) -> Selection:
    """Score every converged search result, write the reference CSVs and the stage-3 YAML."""
    search_dir, save_dir = Path(search_dir), Path(save_dir)
    scored: dict[tuple[float, float], PairScore] = {}
    chosen: list[PairScore] = []
    targets = sorted(float(t) for t in targets_bpp)
    for target in tqdm(targets, desc="targets", unit="target"):
        rows = []
        for beta_vq, beta_rate in found_pairs(search_dir, beta_vqs, target, tolerance):
            if (beta_vq, beta_rate) not in scored:
                image_dir = save_dir / "images" / f"beta_vq_{beta_vq:.2f}_beta_rate_{beta_rate:.3f}"
                bpp, psnr, fid = reconstruct_and_measure(
                    model, loader, beta_rate, beta_vq, make_distribution(), image_dir if save_images else None
                )
                scored[beta_vq, beta_rate] = PairScore(beta_vq, beta_rate, bpp, psnr, fid, alpha * psnr - fid)
            rows.append(scored[beta_vq, beta_rate])
        if not rows:
            raise ValueError(
                f"no beta_vq reached target {target} bpp within {tolerance} in {search_dir}: widen the beta_rate "
                "bounds, raise max_evals, or drop the target"
            )
        write_target_result(rows, save_dir / f"target_rate_{target:.3f}" / "result.csv")
        chosen.append(max(rows, key=lambda row: row.score))
    write_selection_csv(targets, chosen, save_dir / "beta_selection_results.csv")
    yaml_path = write_selected_yaml(chosen, targets, save_dir / SELECTED_YAML, alpha)
    return Selection(targets, chosen, yaml_path)


def found_pairs(
    search_dir: Path, beta_vqs: Sequence[float], target_bpp: float, tolerance: float
) -> list[tuple[float, float]]:
    """(beta_vq, beta_rate) of each search that met the tolerance; misses and failures are logged."""
    pairs = []
    for beta_vq in beta_vqs:
        path = search_dir / search_csv_name(beta_vq, target_bpp)
        if not path.is_file():
            log.warning("no search result %s: run the rate search for this pair first", path)
            continue
        best = read_best_search_row(path)
        if best is None:
            log.info("skip beta_vq %.2f at %.3f bpp: the search evaluated no point", beta_vq, target_bpp)
            continue
        if best["diff"] > tolerance:
            log.info("skip beta_vq %.2f at %.3f bpp: best diff %.5f > %g", beta_vq, target_bpp, best["diff"], tolerance)
            continue
        pairs.append((float(beta_vq), float(best["beta_rate"])))
    return pairs


def write_target_result(rows: Sequence[PairScore], path: Path) -> None:
    frame = pd.DataFrame([asdict(r) for r in rows], columns=RESULT_COLUMNS)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.sort_values("score", ascending=False, kind="stable").to_csv(path)  # best first; index: beta_vq order


def write_selection_csv(targets: Sequence[float], chosen: Sequence[PairScore], path: Path) -> None:
    rows = [
        {"target_rate": t, "selected_beta_vq": p.beta_vq, "selected_beta_rate": p.beta_rate}
        for t, p in zip(targets, chosen, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def write_selected_yaml(chosen: Sequence[PairScore], targets: Sequence[float], path: Path, alpha: float) -> Path:
    """A ``betas`` group option: quality index k = k-th lowest target bitrate."""
    table = OmegaConf.create(
        {"_target_": SAMPLER_TARGET, "beta_rate": [p.beta_rate for p in chosen], "beta_vq": [p.beta_vq for p in chosen]}
    )
    header = [f"# Stage-2 beta selection (score = {alpha:g}·PSNR − FID); quality index k = k-th row below."]
    header += [
        f"#   q{k}: target {t:g} bpp -> beta_rate {p.beta_rate:g}, beta_vq {p.beta_vq:g} "
        f"(bpp {p.bpp:.4f}, PSNR {p.psnr:.3f}, FID {p.fid:.3f})"
        for k, (t, p) in enumerate(zip(targets, chosen, strict=True))
    ]
    return write_atomic(path, "\n".join(header) + "\n" + OmegaConf.to_yaml(table))


class RandomPatchFeatures(nn.Module):
    """A fixed random conv feature map for FID in tests and CPU demos (no Inception weights needed).

    Runs through exactly the code path real Inception features take; its FID values are only comparable with
    each other, never with published numbers.
    """

    def __init__(self, num_features: int = 64, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 16, 8, stride=8)
        self.conv2 = nn.Conv2d(16, num_features, 4, stride=4)
        for conv in (self.conv1, self.conv2):
            conv.weight.data = torch.randn(conv.weight.shape, generator=generator) / conv.weight[0].numel() ** 0.5
            conv.bias.data.zero_()
        self.requires_grad_(False)

    def forward(self, patches_u8: Tensor) -> Tensor:
        return self.conv2(torch.relu(self.conv1(from_uint8(patches_u8)))).mean(dim=(2, 3))  # (B, num_features)
