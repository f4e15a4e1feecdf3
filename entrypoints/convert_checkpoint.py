"""Convert the authors' DC-VIC checkpoint (and optionally its discriminator) into a dcvic model file.

python entrypoints/convert_checkpoint.py --comp-model dc_vic_patchgan.pth.tar --out dcvic_patchgan.pt
"""

from __future__ import annotations

import argparse
import sys

import entrypoints  # noqa: F401 - first: its __init__ silences compressai's import-time warning
from lightning_modules.conversion import ConversionError, convert_authors_checkpoint
from lightning_modules.model_file import RELEASED_QUALITY_TABLE, save_model_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comp-model", required=True, help="authors' file holding {'iter', 'comp_model'}")
    parser.add_argument("--discriminator", help="authors' file holding {'iter', 'discriminator'} (optional)")
    parser.add_argument("--out", required=True, help="dcvic model file to write")
    parser.add_argument("--beta-rate", type=float, nargs="+", default=RELEASED_QUALITY_TABLE["beta_rate"])
    parser.add_argument("--beta-vq", type=float, nargs="+", default=RELEASED_QUALITY_TABLE["beta_vq"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if len(args.beta_rate) != len(args.beta_vq):
        print("error: --beta-rate and --beta-vq need the same number of values", file=sys.stderr)
        return 2
    try:
        model_file, report = convert_authors_checkpoint(
            args.comp_model, args.discriminator, {"beta_rate": args.beta_rate, "beta_vq": args.beta_vq}
        )
    except (FileNotFoundError, ConversionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    save_model_file(args.out, model_file)
    print(f"{report.summary()}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
