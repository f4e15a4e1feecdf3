"""Metrics only, over two folders (originals vs reconstructions), like the reference's ``calc_metrics.py``.

Design §6.7: every original needs a reconstruction with the same stem (``kodim01.png`` ↔ ``kodim01.png``,
or ``photo.jpg`` ↔ ``photo.png``). PSNR is computed on the PNGs as stored, so it follows the paper's truncation
convention when the reconstructions were written by truncation (ours are). bpp is the real size of the
bitstream files with the same stem (``.dcvic`` or the authors' ``.bin``), else the reference's
``_avg_bitrate.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from lightning_modules.evaluation.metrics import MetricSuite
from lightning_modules.evaluation.rate_distortion import list_images, read_image
from lightning_modules.images import atomic_path, write_atomic

BITSTREAM_SUFFIXES = (".dcvic", ".bin")


def pair_images(originals: Path, reconstructions: Path) -> list[tuple[Path, Path]]:
    """(original, reconstruction) pairs matched by stem; any original without a partner is an error."""
    fakes = {path.stem: path for path in list_images(reconstructions)}
    pairs, missing = [], []
    for original in list_images(originals):
        if original.stem in fakes:
            pairs.append((original, fakes[original.stem]))
        else:
            missing.append(original.name)
    if missing:
        raise ValueError(f"{len(missing)} originals have no reconstruction in {reconstructions}: {missing[:5]}")
    return pairs


def bitstream_bpp(bitstreams: Path, stem: str, pixels: int) -> float:
    """``8 · file size / pixels`` of ``<stem>.dcvic`` or ``<stem>.bin``."""
    for suffix in BITSTREAM_SUFFIXES:
        path = bitstreams / f"{stem}{suffix}"
        if path.is_file():
            return 8 * path.stat().st_size / pixels
    raise FileNotFoundError(f"no bitstream {stem}{{{','.join(BITSTREAM_SUFFIXES)}}} in {bitstreams}")


def reference_bpp(reconstructions: Path) -> float:
    """The reference compress.py's ``_avg_bitrate.json`` average, NaN when absent."""
    path = reconstructions / "_avg_bitrate.json"
    return float(json.loads(path.read_text())["avg_bpp"]) if path.is_file() else math.nan


def calc_metrics(
    originals: str | Path,
    reconstructions: str | Path,
    suite: MetricSuite,
    bitstreams: str | Path | None = None,
) -> dict[str, float]:
    """Score every pair, write ``_per_image_metrics.csv`` and ``_metrics.json`` into ``reconstructions``."""
    originals, reconstructions = Path(originals), Path(reconstructions)
    distribution = suite.distribution_metrics()
    rows = []
    for original_path, fake_path in tqdm(pair_images(originals, reconstructions), desc="metrics", unit="img"):
        original, fake = read_image(original_path), read_image(fake_path)
        if original.shape != fake.shape:
            raise ValueError(
                f"{fake_path} is {tuple(fake.shape[1:])} but {original_path} is {tuple(original.shape[1:])}"
            )
        row = {"image": original_path.name, "height": original.shape[1], "width": original.shape[2]}
        if bitstreams is not None:
            row["bpp"] = bitstream_bpp(Path(bitstreams), original_path.stem, original.shape[1] * original.shape[2])
        rows.append({**row, **suite.score_image(fake, original)})
        if distribution is not None:
            distribution.update(fake, original)
    table = pd.DataFrame(rows)
    with atomic_path(reconstructions / "_per_image_metrics.csv") as tmp:
        table.to_csv(tmp, index=False)
    result = {"bpp": float(table["bpp"].mean()) if "bpp" in table else reference_bpp(reconstructions)}
    result.update({name: float(table[name].mean()) for name in ("PSNR", "MS-SSIM", "LPIPS", "DISTS")})
    result.update(distribution.compute() if distribution is not None else {"FID": math.nan, "KID": math.nan})
    write_atomic(reconstructions / "_metrics.json", json.dumps(result, indent=2) + "\n")
    return result
