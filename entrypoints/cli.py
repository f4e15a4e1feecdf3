"""``dcvic``: compress images to ``.dcvic`` files and back.

    dcvic compress photos/ -o compressed/ --checkpoint dcvic_patchgan.pt --quality 2
    dcvic compress photo.png -o compressed/ --checkpoint dcvic_patchgan.pt --target-bpp 0.08 --realism balanced
    dcvic decompress compressed/ -o decoded/ --checkpoint dcvic_patchgan.pt
    dcvic decompress kodim03.bin -o decoded/ --checkpoint dcvic_patchgan.pt --legacy

Every failure prints one ``dcvic: …`` line on stderr; the exit status is 0 when everything succeeded, 1 when
some input failed (the others are still processed) and 2 when nothing could start (bad arguments, model).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

# compressai and taming script functions at import time; torch's deprecation notice for that would be the
# first line a user sees on stderr, where only our one-line errors belong.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lightning_modules.codec.files import (  # noqa: E402
    CONTAINER_SUFFIX,
    IMAGE_SUFFIXES,
    LEGACY_SUFFIX,
    CompressRecord,
    collect_inputs,
    compress_file,
    compress_file_to_target,
    decompress_file,
    write_reports,
)
from lightning_modules.codec.image_codec import DCVICCodec, resolve_conditioning  # noqa: E402
from lightning_modules.codec.rate_control import (  # noqa: E402
    DEFAULT_REALISM,
    REALISM_BETA_VQ,
    RateTarget,
    realism_beta_vq,
)
from lightning_modules.model_file import load_model_file  # noqa: E402
from lightning_modules.stage2.search import RULES  # noqa: E402

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
    compress.add_argument("--beta-vq", type=float, help="explicit β_vq in [0, 3.5] (with --beta-rate or a target)")
    _add_rate_control(compress)
    decompress = commands.add_parser("decompress", help=".dcvic (or the authors' .bin) files → PNG")
    _add_common(decompress, ".dcvic files or folders of them")
    decompress.add_argument("--legacy", action="store_true", help="inputs are the authors' .bin files")
    decompress.add_argument(
        "--legacy-eb-version",
        choices=("1.2.4", "1.2.8"),
        default="1.2.4",
        help="compressai version that wrote the legacy z stream (the authors used 1.2.4)",
    )
    return parser


def _add_rate_control(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("rate control (per image: search β_rate so the real file meets the target)")
    target = group.add_mutually_exclusive_group()
    target.add_argument("--target-bpp", type=float, help="target bits per pixel of the file, container included")
    target.add_argument("--target-bytes", type=float, help="target file size in bytes")
    group.add_argument(
        "--realism",
        choices=sorted(REALISM_BETA_VQ),
        help=f"β_vq by name ({', '.join(f'{k} = {v}' for k, v in REALISM_BETA_VQ.items())}; default "
        f"{DEFAULT_REALISM}), or give --beta-vq",
    )
    group.add_argument("--tolerance", type=float, default=0.01, help="fraction of the target (default 0.01)")
    group.add_argument(
        "--target-rule",
        choices=RULES,
        default="below",
        help="below: the largest file not above the target (default); closest: the nearest either side",
    )


def _add_common(parser: argparse.ArgumentParser, inputs_help: str) -> None:
    parser.add_argument("inputs", nargs="+", help=inputs_help)
    parser.add_argument("--output", "-o", required=True, help="output folder (created if needed)")
    parser.add_argument("--checkpoint", required=True, help="dcvic model file (see entrypoints/convert_checkpoint.py)")
    parser.add_argument("--device", default="cpu", help="device of the image networks, e.g. cuda (default cpu)")


def load_codec(checkpoint: str, device: str) -> DCVICCodec:
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
    rate_target = parse_rate_target(args)
    files = find_inputs(args.inputs, IMAGE_SUFFIXES)
    codec = load_codec(args.checkpoint, args.device)
    out = Path(args.output)
    if rate_target is None:
        try:
            conditioning = resolve_conditioning(codec.quality_table, args.quality, args.beta_rate, args.beta_vq)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        records, failures = _for_each(
            "compress", files, lambda f: compress_file(codec, f, out / f"{f.stem}{CONTAINER_SUFFIX}", conditioning)
        )
    else:
        beta_vq = args.beta_vq if args.beta_vq is not None else realism_beta_vq(args.realism or DEFAULT_REALISM)
        try:  # a bad beta_vq stops the command before any image, like a bad explicit pair
            resolve_conditioning(codec.quality_table, beta_rate=0.0, beta_vq=beta_vq)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        records, failures = _for_each("compress", files, lambda f: _to_target(codec, f, out, rate_target, beta_vq))
    if records:
        csv_path, json_path = write_reports(records, out, "_bitrates")
        mean_bpp = sum(r.real_bpp for r in records) / len(records)
        print(f"compressed {len(records)} image(s), mean real bpp {mean_bpp:.5f}; see {csv_path} and {json_path}")
    return EXIT_SOME_FAILED if failures else EXIT_OK


def parse_rate_target(args: argparse.Namespace) -> RateTarget | None:
    """The per-image target of ``--target-bpp`` / ``--target-bytes`` (None: a fixed quality or beta pair)."""
    value = args.target_bpp if args.target_bpp is not None else args.target_bytes
    if value is None:
        if args.realism is not None:
            raise CliError("--realism chooses β_vq for a target: give --target-bpp or --target-bytes too")
        return None
    flag = "--target-bpp" if args.target_bpp is not None else "--target-bytes"
    if args.quality is not None or args.beta_rate is not None:
        raise CliError(f"{flag} chooses β_rate per image: leave out --quality and --beta-rate")
    if args.realism is not None and args.beta_vq is not None:
        raise CliError("give either --realism or --beta-vq, not both")
    try:
        return RateTarget(value, "bpp" if args.target_bpp is not None else "bytes", args.tolerance, args.target_rule)
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}") from exc


def _to_target(codec: DCVICCodec, path: Path, out: Path, rate_target: RateTarget, beta_vq: float) -> CompressRecord:
    record = compress_file_to_target(codec, path, out / f"{path.stem}{CONTAINER_SUFFIX}", rate_target, beta_vq)
    if record.rate_message:  # the nearest achievable file was written: say so, in one line
        tqdm.write(f"dcvic: {path}: {record.rate_message}", file=sys.stderr)
    return record


def run_decompress(args: argparse.Namespace) -> int:
    files = find_inputs(args.inputs, (LEGACY_SUFFIX,) if args.legacy else (CONTAINER_SUFFIX,))
    codec = load_codec(args.checkpoint, args.device)
    out = Path(args.output)
    records, failures = _for_each(
        "decompress",
        files,
        lambda f: decompress_file(codec, f, out / f"{f.stem}.png", args.legacy, args.legacy_eb_version),
    )
    if records:
        csv_path, _ = write_reports(records, out, "_decode_times")
        print(f"decoded {len(records)} file(s) into {out}; times in {csv_path}")
    return EXIT_SOME_FAILED if failures else EXIT_OK


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
