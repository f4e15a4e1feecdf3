"""Rate-distortion evaluation on real bitstreams (design §6.7): RD tables, per-image records, plots.

For every requested quality index (or explicit beta pair) each image is compressed to a ``.dcvic`` file and
decompressed from those bytes; bpp is the real file size. Per image we score PSNR (8-bit truncation, the
paper's convention, plus the rounded variant), MS-SSIM, LPIPS and DISTS; per setting FID/KID over HiFiC
patches (datasets of at least 50 images). :func:`evaluate` writes::

    <output_dir>/per_image.csv               one row per (setting, image), appended as soon as it is scored
    <output_dir>/summary.csv                 model, quality, bpp, PSNR, FID, LPIPS, DISTS, then extras
    <output_dir>/rd_<metric>.png             our curve over the published DC-VIC and MS-ILLM curves
    <output_dir>/bd_rate.csv                 BD-rate / BD-metric against them (with ``reference_dataset``)
    <output_dir>/bitstreams/<setting>/*.dcvic, reconstructions/<setting>/*.png

``targets.target_bpps=[0.05,0.1]`` adds points at target rates: each image gets the beta_rate whose real
file meets the target (``lightning_modules/evaluation/rate_targets.py``).

Re-running with the same ``output_dir`` resumes: scored images are skipped (their PNGs feed FID/KID again),
unless the image's pixels changed since (a new crop under the same name is scored again).
Every file is written atomically, so a crash never leaves a bitstream or PNG that a resumed run would trust.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from lightning_modules.codec.image_codec import Conditioning, DCVICCodec, resolve_conditioning
from lightning_modules.evaluation.bd_rate import (
    BD_RATE_FILE,
    LOWER_IS_BETTER,
    bd_table,
    curves_by_model,
    write_bd_table,
)
from lightning_modules.evaluation.metrics import MetricSuite, PatchDistributionMetrics, psnr_per_image
from lightning_modules.evaluation.rate_targets import (
    TARGET_SUMMARY_COLUMNS,
    TargetSetting,
    compress_setting,
    target_summary,
)
from lightning_modules.images import (
    IMAGE_SUFFIXES,
    atomic_path,
    from_uint8,
    read_rgb,
    save_png,
    split_folder,
    to_chw,
    to_uint8,
    to_uint8_rounded,
    write_atomic,
)
from lightning_modules.model_file import load_model_file

log = logging.getLogger(__name__)
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_results"
REFERENCE_COLUMNS = ["model", "quality", "bpp", "PSNR", "FID", "LPIPS", "DISTS"]
EXTRA_COLUMNS = [
    "PSNR_rounded",
    "MS-SSIM",
    "KID",
    "KID_std",
    "estimated_bpp",
    "beta_rate",
    "beta_vq",
    "images",
    "setting",
    *TARGET_SUMMARY_COLUMNS,
]
PER_IMAGE_METRICS = ["bpp", "estimated_bpp", "PSNR", "PSNR_rounded", "MS-SSIM", "LPIPS", "DISTS"]
PLOT_METRICS = ["PSNR", "MS-SSIM", "LPIPS", "DISTS", "FID", "KID"]
# Published curves per dataset: our file of DC-VIC's numbers and MS-ILLM's dataset label.
REFERENCE_DATASETS = {
    "kodak": ("dcvic_kodak.csv", "kodak"),
    "clic2020": ("dcvic_clic.csv", "clic2020"),
    "div2k": ("dcvic_div2k.csv", "div2k"),
}


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder, sorted by name (the reference processes ``*.png`` sorted); others are logged."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    images, others = split_folder(folder)
    if not images:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    if others:
        log.warning("skipping %d file(s) of %s that are not images: %s", len(others), folder, [p.name for p in others])
    return images


def read_image(path: str | Path) -> torch.Tensor:
    """An image file → uint8 (3, H, W) RGB as viewers show it; an unreadable file is a ValueError naming it."""
    return to_chw(read_rgb(path))


@dataclass(frozen=True)
class Setting:
    """One point of the RD curve: its label in file names and tables, and the conditioning it codes with."""

    label: str
    conditioning: Conditioning


def make_settings(
    quality_table: dict[str, list[float]],
    qualities: Sequence[int],
    beta_pairs: Sequence[Sequence[float]],
    targets: Sequence[TargetSetting] = (),
) -> list[Setting | TargetSetting]:
    """Quality indices of the model's table, then explicit (beta_rate, beta_vq) pairs, then target rates."""
    settings = [Setting(f"q{q}", resolve_conditioning(quality_table, quality=int(q))) for q in qualities]
    for pair in beta_pairs:
        if len(pair) != 2:
            raise ValueError(f"a beta pair is [beta_rate, beta_vq], got {list(pair)}")
        conditioning = resolve_conditioning(quality_table, beta_rate=float(pair[0]), beta_vq=float(pair[1]))
        settings.append(Setting(f"br{pair[0]:.3f}_bv{pair[1]:.3f}", conditioning))
    settings.extend(targets)
    if not settings:
        raise ValueError("nothing to evaluate: give qualities, beta_pairs and/or targets.target_bpps")
    return settings


# ---------------------------------------------------------------------------------------------------------
# Per-image records, resumable
# ---------------------------------------------------------------------------------------------------------


class PerImageLog:
    """``per_image.csv``: one row appended per scored image, read back to resume.

    Rows are keyed by the model's weight fingerprint too, so a folder reused with other weights recomputes
    instead of mixing two models' numbers, and record the digest of the image's pixels, so an image replaced
    under the same name is scored again; a row cut short by a crash (no bpp) counts as not done.
    """

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.rows: dict[tuple[str, str], dict] = {}
        if path.is_file() and path.stat().st_size:
            table = pd.read_csv(path, dtype={"fingerprint": str, "pixels_sha256": str}).dropna(subset=["bpp"])
            for row in table[table["fingerprint"] == fingerprint].to_dict("records"):
                self.rows[(row["setting"], row["image"])] = row

    def done(self, setting: str, image: str, pixels_sha256: str) -> bool:
        row = self.rows.get((setting, image))
        return row is not None and row.get("pixels_sha256") == pixels_sha256

    def append(self, row: dict) -> None:
        row = {"fingerprint": self.fingerprint, **row}
        has_header = self.path.is_file() and self.path.stat().st_size > 0
        pd.DataFrame([row]).to_csv(self.path, mode="a", header=not has_header, index=False)
        self.rows[(row["setting"], row["image"])] = row

    def table(self, setting: str | None = None) -> pd.DataFrame:
        """This model's rows, one per (setting, image): the latest; of one setting, or of all."""
        return pd.DataFrame([row for (label, _), row in self.rows.items() if setting in (None, label)])


def code_image(
    codec: DCVICCodec, original: torch.Tensor, setting: Setting, bitstream: Path
) -> tuple[dict, torch.Tensor]:
    """Compress to a real file and decompress its bytes; returns rate facts and the [-1, 1] reconstruction."""
    height, width = original.shape[-2:]
    start = time.perf_counter()
    container, code, extras = compress_setting(codec, from_uint8(original).unsqueeze(0), setting)
    encode_s = time.perf_counter() - start
    write_atomic(bitstream, container.to_bytes())  # a crash mid-write leaves no bitstream a rerun would trust
    start = time.perf_counter()
    x_hat = codec.decompress(bitstream.read_bytes())
    decode_s = time.perf_counter() - start
    pixels = height * width
    rate = {
        "height": height,
        "width": width,
        "bytes": bitstream.stat().st_size,
        "bpp": 8 * bitstream.stat().st_size / pixels,
        "estimated_bpp": (code.estimated_y_bits + code.estimated_z_bits) / pixels,
        "encode_s": encode_s,
        "decode_s": decode_s,
        **extras,
    }
    return rate, x_hat[0]


# ---------------------------------------------------------------------------------------------------------
# Running a setting
# ---------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationRun:
    """Everything one evaluation needs; :meth:`run_setting` is resumable image by image."""

    codec: DCVICCodec
    suite: MetricSuite
    images: list[Path]
    output_dir: Path
    model_name: str

    def run_setting(self, setting: Setting, log_file: PerImageLog) -> dict:
        """Code and score every image at one setting; returns its summary row."""
        distribution = self.suite.distribution_metrics()
        for path in tqdm(self.images, desc=f"{self.model_name} {setting.label}", unit="img"):
            recon_path = self.output_dir / "reconstructions" / setting.label / f"{path.stem}.png"
            original = read_image(path)
            digest = hashlib.sha256(original.numpy().tobytes()).hexdigest()
            if log_file.done(setting.label, path.name, digest) and recon_path.is_file():
                reconstruction = read_image(recon_path)
            else:
                reconstruction = self._code_and_score(setting, path, original, digest, recon_path, log_file)
            if distribution is not None:
                distribution.update(reconstruction, original)
        return summary_row(self.model_name, setting, log_file.table(setting.label), distribution)

    def _code_and_score(
        self,
        setting: Setting,
        path: Path,
        original: torch.Tensor,
        pixels_sha256: str,
        recon_path: Path,
        log_file: PerImageLog,
    ) -> torch.Tensor:
        bitstream = self.output_dir / "bitstreams" / setting.label / f"{path.stem}.dcvic"
        rate, x_hat = code_image(self.codec, original, setting, bitstream)
        reconstruction = to_uint8(x_hat)  # truncation: the PNG the reference would write
        save_png(recon_path, reconstruction)
        scores = self.suite.score_image(reconstruction, original)
        scores["PSNR_rounded"] = float(psnr_per_image(to_uint8_rounded(x_hat), original)[0])
        row = {
            "model": self.model_name,
            "setting": setting.label,
            "image": path.name,
            "pixels_sha256": pixels_sha256,
            **asdict(setting.conditioning),
        }
        log_file.append({**row, **rate, **scores})
        return reconstruction


def summary_row(
    model_name: str, setting: Setting, per_image: pd.DataFrame, distribution: PatchDistributionMetrics | None
) -> dict:
    """Means of the per-image values (the paper's averaging) plus the dataset-level FID/KID."""
    row = {"model": model_name, "quality": setting.conditioning.quality_index}
    row.update({name: float(per_image[name].mean()) for name in PER_IMAGE_METRICS if name in per_image})
    row.update(distribution.compute() if distribution is not None else {"FID": math.nan, "KID": math.nan})
    conditioning = setting.conditioning
    row.update(
        beta_rate=conditioning.beta_rate, beta_vq=conditioning.beta_vq, images=len(per_image), setting=setting.label
    )
    row.update(target_summary(setting, per_image))
    return row


def write_summary(rows: list[dict], path: Path) -> pd.DataFrame:
    """The reference schema first (``model, quality, bpp, PSNR, FID, LPIPS, DISTS``), our extras after."""
    table = pd.DataFrame(rows)
    for column in REFERENCE_COLUMNS + EXTRA_COLUMNS:
        if column not in table:
            table[column] = math.nan
    table["quality"] = table["quality"].astype("Int64")
    table = table[REFERENCE_COLUMNS + EXTRA_COLUMNS]
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return table


# ---------------------------------------------------------------------------------------------------------
# Published curves and plots
# ---------------------------------------------------------------------------------------------------------


def load_reference_curves(dataset: str | None, reference_dir: Path = REFERENCE_DIR) -> dict[str, pd.DataFrame]:
    """Published curves for ``dataset`` (kodak, clic2020, div2k) keyed by model; none when ``None``."""
    if dataset is None:
        return {}
    if dataset not in REFERENCE_DATASETS:
        raise ValueError(f"no published results for dataset {dataset!r}; choose one of {sorted(REFERENCE_DATASETS)}")
    dcvic_file, msillm_label = REFERENCE_DATASETS[dataset]
    curves = {name: table for name, table in pd.read_csv(reference_dir / dcvic_file).groupby("model")}
    msillm = pd.read_csv(reference_dir / "msillm_subset.csv")
    msillm = msillm[msillm["dataset"] == msillm_label].rename(
        columns={
            "psnr": "PSNR",
            "fid": "FID",
            "kid": "KID",
            "lpips": "LPIPS",
            "dists": "DISTS",
            "ms_ssim": "MS-SSIM",
        }
    )
    curves["MS-ILLM"] = msillm
    return curves


def plot_rd_curves(
    summary: pd.DataFrame, references: dict[str, pd.DataFrame], output_dir: Path, dataset: str = ""
) -> list[Path]:
    """One ``rd_<metric>.png`` per metric we have values for, with every published curve that has it."""
    written = []
    for metric in PLOT_METRICS:
        ours = summary.dropna(subset=[metric, "bpp"]).sort_values("bpp")
        if ours.empty:
            continue
        fig = Figure(figsize=(5.5, 4))  # no pyplot: importing the library never picks a GUI backend
        ax = fig.subplots()
        for name, table in references.items():
            points = table.dropna(subset=[metric]).sort_values("bpp") if metric in table else table.iloc[:0]
            if not points.empty:
                ax.plot(points["bpp"], points[metric], "--o", markersize=3, label=f"{name} (published)")
        for model, table in ours.groupby("model"):
            ax.plot(table["bpp"], table[metric], "-s", linewidth=2, label=f"{model} (this run)")
        arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        ax.set(xlabel="bpp (real file size)", ylabel=metric, title=f"{dataset} {metric} ({arrow})".strip())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        path = output_dir / f"rd_{metric}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        written.append(path)
    return written


def log_to_tensorboard(summary: pd.DataFrame, plots: list[Path], log_dir: str | Path, dataset: str, step: int) -> None:
    """Scalars ``evaluate/<dataset>/<setting>/<metric>`` and the RD plots as images, at ``step``."""
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for row in summary.to_dict("records"):
            for metric in ["bpp", *PLOT_METRICS, "PSNR_rounded"]:
                if not pd.isna(row[metric]):
                    writer.add_scalar(f"evaluate/{dataset}/{row['setting']}/{metric}", row[metric], step)
        for path in plots:
            image = read_rgb(path)
            writer.add_image(f"evaluate/{dataset}/{path.stem}", image, step, dataformats="HWC")


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


def evaluate(
    model_file: str | Path,
    images: str | Path,
    output_dir: str | Path,
    suite: MetricSuite,
    qualities: Sequence[int] = (0, 1, 2, 3, 4),
    beta_pairs: Sequence[Sequence[float]] = (),
    targets: Sequence[TargetSetting] = (),
    model_name: str = "dcvic",
    dataset: str = "custom",
    reference_dataset: str | None = None,
    device: str = "cpu",
    tensorboard_dir: str | Path | None = None,
    tensorboard_step: int = 0,
    fast: bool = False,
    tiling: str = "fitted",
) -> pd.DataFrame:
    """Run every setting over the folder, write the CSVs and plots; returns the summary table.

    ``fast`` and ``tiling`` are the codec's speed switches (:class:`DCVICCodec`); exact mode is the default."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    references = load_reference_curves(reference_dataset)  # fail on a bad name before hours of coding
    model_data = load_model_file(model_file)
    model = model_data.build_model().to(device)
    codec = DCVICCodec(model, model_data.quality_table, model_data.fingerprint(), fast=fast, tiling=tiling)
    if codec.note:
        log.warning(codec.note)
    settings = make_settings(model_data.quality_table, qualities, beta_pairs, targets)
    run = EvaluationRun(codec, suite, list_images(images), output_dir, model_name)
    log_file = PerImageLog(output_dir / "per_image.csv", codec.fingerprint.hex())
    rows = [run.run_setting(setting, log_file) for setting in settings]
    summary = write_summary(rows, output_dir / "summary.csv")
    plots = plot_rd_curves(summary, references, output_dir, dataset)
    if references:
        write_bd_table(bd_table(references, curves_by_model(summary)), output_dir / BD_RATE_FILE)
    if tensorboard_dir is not None:
        log_to_tensorboard(summary, plots, tensorboard_dir, dataset, tensorboard_step)
    log.info("wrote %s, %s and %d plots", output_dir / "summary.csv", output_dir / "per_image.csv", len(plots))
    return summary
