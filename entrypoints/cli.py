"""``dcvic``: compress images to ``.dcvic`` files and back.

    dcvic compress photos/ -o compressed/ --checkpoint dcvic_patchgan.pt --quality 2
    dcvic decompress compressed/ -o decoded/ --checkpoint dcvic_patchgan.pt
    dcvic decompress kodim03.bin -o decoded/ --checkpoint dcvic_patchgan.pt --legacy

Every failure prints one ``dcvic: …`` line on stderr; the exit status is 0 when everything succeeded, 1 when
some input failed (the others are still processed) and 2 when nothing could start (bad arguments, model).
torch and compressai (seconds to import) are imported only once a model is needed, so a file whose header
claims more than ``--max-pixels`` is refused at once.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# compressai and taming script functions at import time; torch's deprecation notice for that would be the
# first line a user sees on stderr, where only our one-line errors belong.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from tqdm import tqdm  # noqa: E402

from lightning_modules.codec.files import (  # noqa: E402
    CONTAINER_SUFFIX,
    IMAGE_SUFFIXES,
    LEGACY_SUFFIX,
    collect_inputs,
    compress_file,
    decompress_file,
    refused_by_header,
    write_reports,
)
from lightning_modules.codec.limits import DEFAULT_MAX_PIXELS  # noqa: E402

if TYPE_CHECKING:
    from lightning_modules.codec.image_codec import DCVICCodec

EXIT_OK, EXIT_SOME_FAILED, EXIT_SETUP = 0, 1, 2


class CliError(Exception):
    """A problem that stops the whole command before any image is processed."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcvic", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    compress = commands.add_parser("compress", help="images (png/jpg/webp files or folders) → .dcvic files")
    _add_common(compress, "images or folders of images")
    compress.add_argument("--quality", "-q", type=int, help="quality index of the model's table (0 = lowest rate)")
    compress.add_argument("--beta-rate", type=float, help="explicit β_rate in [0, 3] (with --beta-vq)")
    compress.add_argument("--beta-vq", type=float, help="explicit β_vq in [0, 3.5] (with --beta-rate)")
    decompress = commands.add_parser("decompress", help=".dcvic (or the authors' .bin) files → PNG")
    _add_common(decompress, ".dcvic files or folders of them")
    decompress.add_argument("--legacy", action="store_true", help="inputs are the authors' .bin files")
    decompress.add_argument(
        "--legacy-eb-version",
        choices=("1.2.4", "1.2.8"),
        default="1.2.4",
        help="compressai version that wrote the legacy z stream (the authors used 1.2.4)",
    )
    decompress.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse files whose header claims more pixels (default {DEFAULT_MAX_PIXELS:,}, what Pillow and so "
        "`dcvic compress` accept)",
    )
    return parser


def _add_common(parser: argparse.ArgumentParser, inputs_help: str) -> None:
    parser.add_argument("inputs", nargs="+", help=inputs_help)
    parser.add_argument("--output", "-o", required=True, help="output folder (created if needed)")
    parser.add_argument("--checkpoint", required=True, help="dcvic model file (see entrypoints/convert_checkpoint.py)")
    parser.add_argument("--device", default="cpu", help="device of the image networks, e.g. cuda (default cpu)")


def load_codec(checkpoint: str, device: str) -> DCVICCodec:
    import torch

    from lightning_modules.codec.image_codec import DCVICCodec
    from lightning_modules.model_file import load_model_file

    try:
        model_file = load_model_file(checkpoint)
        model = model_file.build_model().to(torch.device(device))
        return DCVICCodec(model, model_file.quality_table, model_file.fingerprint())
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc


def find_inputs(paths: Sequence[str], suffixes: Sequence[str]) -> list[Path]:
    files = collect_inputs(paths, suffixes)
    if not files:
        raise CliError(f"no input files ({', '.join(suffixes)}) found in {', '.join(paths)}")
    return files


def run_compress(args: argparse.Namespace) -> int:
    from lightning_modules.codec.image_codec import resolve_conditioning

    files = find_inputs(args.inputs, IMAGE_SUFFIXES)
    codec = load_codec(args.checkpoint, args.device)
    try:
        conditioning = resolve_conditioning(codec.quality_table, args.quality, args.beta_rate, args.beta_vq)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    out = Path(args.output)
    records, failures = _for_each(
        "compress", files, lambda f: compress_file(codec, f, out / f"{f.stem}{CONTAINER_SUFFIX}", conditioning)
    )
    if records:
        csv_path, json_path = write_reports(records, out, "_bitrates")
        mean_bpp = sum(r.real_bpp for r in records) / len(records)
        print(f"compressed {len(records)} image(s), mean real bpp {mean_bpp:.5f}; see {csv_path} and {json_path}")
    return EXIT_SOME_FAILED if failures else EXIT_OK


def run_decompress(args: argparse.Namespace) -> int:
    files = find_inputs(args.inputs, (LEGACY_SUFFIX,) if args.legacy else (CONTAINER_SUFFIX,))
    refused = refused_by_header(files, args.legacy, args.max_pixels)  # before the model: a bomb costs nothing
    for path, reason in refused.items():
        print(f"dcvic: {path}: {reason}", file=sys.stderr)
    files = [f for f in files if f not in refused]
    if not files:
        return EXIT_SOME_FAILED
    codec = load_codec(args.checkpoint, args.device)
    out = Path(args.output)
    records, failures = _for_each(
        "decompress",
        files,
        lambda f: decompress_file(
            codec, f, out / f"{f.stem}.png", args.legacy, args.legacy_eb_version, args.max_pixels
        ),
    )
    if records:
        csv_path, _ = write_reports(records, out, "_decode_times")
        print(f"decoded {len(records)} file(s) into {out}; times in {csv_path}")
    return EXIT_SOME_FAILED if failures or refused else EXIT_OK


def _for_each(name: str, files: Sequence[Path], work: Callable[[Path], object]) -> tuple[list, int]:
    """Run ``work`` per file with a progress bar; a failing file is reported in one line and skipped."""
    records, failures = [], 0
    for path in tqdm(files, desc=name, unit="file", disable=len(files) < 2, file=sys.stderr):
        try:
            records.append(work(path))
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop (or traceback) the batch
            failures += 1
            tqdm.write(f"dcvic: {path}: {_describe(exc)}", file=sys.stderr)
    return records, failures


def _describe(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return message or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_compress(args) if args.command == "compress" else run_decompress(args)
    except KeyboardInterrupt:
        print("dcvic: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the user gets one line, never a traceback
        print(f"dcvic: {_describe(exc)}", file=sys.stderr)
        return EXIT_SETUP


if __name__ == "__main__":
    sys.exit(main())
