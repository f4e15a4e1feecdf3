"""Metrics only, over two folders (originals vs reconstructions), like the reference's ``calc_metrics.py``.

``python entrypoints/calc_metrics.py ORIGINALS RECONSTRUCTIONS [--bitstreams DIR] [key=value ...]``

Design §6.7: every original needs a reconstruction with the same stem (``kodim01.png`` ↔ ``kodim01.png``,
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
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lightning_modules.evaluation.folder_metrics import calc_metrics
from lightning_modules.evaluation.metrics import MetricSuite

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


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
