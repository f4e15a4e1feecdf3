"""BD-rate / BD-metric between two RD summary CSVs: ``python entrypoints/bd_rate.py ANCHOR.csv TEST.csv``.

Both files need ``bpp`` and metric columns (PSNR, LPIPS, DISTS, FID), and may hold several curves told apart by
their ``model`` column: an evaluation's ``summary.csv`` or a published ``benchmarks/reference_results/dcvic_*.csv``.
Every (anchor curve, test curve, metric) gets one row in ``--output`` (default ``bd_rate.csv`` beside TEST),
and the table is printed. Negative BD-rate: the test curve needs fewer bits for the same quality.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.evaluation.bd_rate import (  # noqa: E402
    BD_METRICS,
    BD_RATE_FILE,
    bd_table,
    curves_by_model,
    format_bd_table,
    write_bd_table,
)


def read_curves(path: Path) -> dict[str, pd.DataFrame]:
    try:
        return curves_by_model(pd.read_csv(path))
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("anchor", type=Path, help="summary CSV of the reference curve(s)")
    parser.add_argument("test", type=Path, help="summary CSV of the curve(s) to compare")
    parser.add_argument("--output", "-o", type=Path, help=f"result CSV (default: {BD_RATE_FILE} beside TEST)")
    parser.add_argument("--metrics", nargs="+", default=list(BD_METRICS), help="metric columns to compare")
    parser.add_argument("--method", choices=("akima", "pchip", "cubic"), default="akima", help="interpolation")
    args = parser.parse_args(argv)
    try:
        table = bd_table(read_curves(args.anchor), read_curves(args.test), args.metrics, args.method)
    except ValueError as exc:
        print(f"bd_rate: {exc}", file=sys.stderr)
        return 2
    output = write_bd_table(table, args.output or args.test.parent / BD_RATE_FILE)
    print(format_bd_table(table))
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
