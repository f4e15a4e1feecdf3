"""Metrics only, over two folders (originals vs reconstructions), like the reference's ``calc_metrics.py``.

``python entrypoints/calc_metrics.py ORIGINALS RECONSTRUCTIONS [--bitstreams DIR] [key=value ...]``

Spec §6.7: every original needs a reconstruction with the same stem (``kodim01.png`` ↔ ``kodim01.png``,
or ``photo.jpg`` ↔ ``photo.png``). Writes ``<reconstructions>/_metrics.json`` (the reference's keys bpp,
PSNR, FID, LPIPS, DISTS, plus MS-SSIM and KID) and ``<reconstructions>/_per_image_metrics.csv``. PSNR is
computed on the PNGs as stored, so it follows the paper's truncation convention when the reconstructions
were written by truncation (ours are). bpp is the real size of the bitstream files with the same stem in
``--bitstreams`` (``.dcvic`` or the authors' ``.bin``), else the reference's ``_avg_bitrate.json``.
``key=value`` arguments override ``conf/metrics/<--metrics>.yaml`` (e.g. ``device=cuda vgg16_weights=...``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from entrypoints.evaluate import CONFIG_DIR, list_images, load_rgb  # noqa: E402
from lightning_modules.evaluation.metrics import MetricSuite  # noqa: E402

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
        original, fake = load_rgb(original_path), load_rgb(fake_path)
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
    table.to_csv(reconstructions / "_per_image_metrics.csv", index=False)
    result = {"bpp": float(table["bpp"].mean()) if "bpp" in table else reference_bpp(reconstructions)}
    result.update({name: float(table[name].mean()) for name in ("PSNR", "MS-SSIM", "LPIPS", "DISTS")})
    result.update(distribution.compute() if distribution is not None else {"FID": math.nan, "KID": math.nan})
    (reconstructions / "_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def load_suite(metrics_config: str, overrides: list[str]) -> MetricSuite:
    """Instantiate ``conf/metrics/<metrics_config>.yaml`` with ``key=value`` overrides."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(f"metrics/{metrics_config}", overrides=[f"metrics.{item}" for item in overrides])
    return instantiate(cfg.metrics)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("originals", type=Path, help="folder of original images")
    parser.add_argument("reconstructions", type=Path, help="folder of reconstructions (same stems, PNG)")
    parser.add_argument("--bitstreams", type=Path, default=None, help="folder of <stem>.dcvic/.bin files for bpp")
    parser.add_argument("--metrics", default="default", help="conf/metrics/<name>.yaml (default: all metrics)")
    parser.add_argument("overrides", nargs="*", help="metrics config overrides, e.g. device=cuda vgg16_weights=...")
    args = parser.parse_args(argv)
    result = calc_metrics(
        args.originals, args.reconstructions, load_suite(args.metrics, args.overrides), args.bitstreams
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
