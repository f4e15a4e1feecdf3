"""``dcvic``: compress images to ``.dcvic`` files and back.

    dcvic compress photos/ -o compressed/ --checkpoint dcvic_patchgan.pt --quality 2
    dcvic compress photo.png -o compressed/ --checkpoint dcvic_patchgan.pt --target-bpp 0.08 --realism balanced
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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

import entrypoints  # noqa: F401 - first: its __init__ silences compressai's import-time warning on stderr
from lightning_modules.codec.files import (
    COMPRESS_REPORT,
    CONTAINER_SUFFIX,
    DECOMPRESS_REPORT,
    LEGACY_SUFFIX,
    CompressRecord,
    Inputs,
    collect_inputs,
    compress_file,
    compress_file_to_target,
    decompress_file,
    write_reports,
)
from lightning_modules.codec.image_codec import (
    DEFAULT_MEMORY_BUDGET_GB,
    TILING_RULES,
    Conditioning,
    DCVICCodec,
    resolve_conditioning,
)
from lightning_modules.codec.limits import DEFAULT_MAX_PIXELS, refused_by_header
from lightning_modules.codec.rate_control import DEFAULT_REALISM, REALISM_BETA_VQ, RateTarget, realism_beta_vq
from lightning_modules.images import IMAGE_SUFFIXES, failure_line
from lightning_modules.model_file import load_model_file
from lightning_modules.stage2.search import RULES

EXIT_OK, EXIT_SOME_FAILED, EXIT_SETUP = 0, 1, 2


class CliError(Exception):
    """A problem that stops the whole command before any image is processed."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcvic", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    compress = commands.add_parser(
        "compress", help=f"images ({'/'.join(sorted(s[1:] for s in IMAGE_SUFFIXES))} files or folders) → .dcvic files"
    )
    _add_common(compress, "images or folders of images")
    compress.add_argument("--quality", "-q", type=int, help="quality index of the model's table (0 = lowest rate)")
    compress.add_argument("--beta-rate", type=float, help="explicit β_rate (0…3 for the paper's model), with --beta-vq")
    compress.add_argument(
        "--beta-vq", type=float, help="explicit β_vq (0…3.5 for the paper's model), with --beta-rate or a target"
    )
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
    decompress.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse files whose header claims more pixels (default {DEFAULT_MAX_PIXELS:,}, what Pillow and so "
        "`dcvic compress` accept)",
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
    speed = parser.add_argument_group("speed (none of these changes the file format)")
    speed.add_argument(
        "--fast",
        action="store_true",
        help="channels-last, fused kernels and bf16 where the hardware has it: different bytes and pixels, "
        "decodable by either mode (default: exact, the reference's bytes)",
    )
    speed.add_argument(
        "--tiling",
        choices=TILING_RULES,
        default="fitted",
        help="images above 1024 px: fewest tiles within --memory-budget (default) or the reference's 512/256 px",
    )
    speed.add_argument(
        "--memory-budget",
        type=float,
        default=DEFAULT_MEMORY_BUDGET_GB,
        metavar="GB",
        help=f"memory the fitted tiles may use, model included (default {DEFAULT_MEMORY_BUDGET_GB:g})",
    )
    speed.add_argument(
        "--entropy-device",
        default="cpu",
        help="device of the entropy path (default cpu: files decode anywhere; else only on the same kind of device)",
    )


def load_codec(args: argparse.Namespace) -> DCVICCodec:
    try:
        model_file = load_model_file(args.checkpoint)
        model = model_file.build_model().to(torch.device(args.device))
        codec = DCVICCodec(
            model,
            model_file.quality_table,
            model_file.fingerprint(),
            fast=args.fast,
            tiling=args.tiling,
            memory_budget_gb=args.memory_budget,
            entropy_device=torch.device(args.entropy_device),
        )
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc
    if codec.note:
        print(f"dcvic: note: {codec.note}", file=sys.stderr)
    return codec


def find_inputs(paths: Sequence[str], suffixes: Iterable[str]) -> Inputs:
    inputs = collect_inputs(paths, suffixes)
    if not inputs.files:
        others = f" (only {len(inputs.skipped)} other file(s))" if inputs.skipped else ""
        raise CliError(f"no input files ({', '.join(sorted(suffixes))}) found in {', '.join(paths)}{others}")
    return inputs


def report_skipped(skipped: Sequence[Path], kind: str) -> None:
    """One line per file of an input folder that is not processed: nothing is left out silently."""
    for path in skipped:
        print(f"dcvic: {path}: skipped, not {kind} file", file=sys.stderr)


def skipped_note(skipped: int, failures: int, kind: str) -> str:
    """``; skipped 3 file(s): 2 not an image file, 1 failed`` for the summary line (empty when none were)."""
    parts = [f"{skipped} not {kind} file"] if skipped else []
    parts += [f"{failures} failed"] if failures else []
    return f"; skipped {skipped + failures} file(s): {', '.join(parts)}" if parts else ""


def run_compress(args: argparse.Namespace) -> int:
    rate_target = parse_rate_target(args)
    inputs = find_inputs(args.inputs, IMAGE_SUFFIXES)
    codec = load_codec(args)
    out = Path(args.output)
    if rate_target is None:
        conditioning = _fixed_conditioning(args, codec)
        work = lambda f: compress_file(codec, f, out / f"{f.stem}{CONTAINER_SUFFIX}", conditioning)  # noqa: E731
    else:
        beta_vq = args.beta_vq if args.beta_vq is not None else realism_beta_vq(args.realism or DEFAULT_REALISM)
        try:  # a bad beta_vq stops the command before any image, like a bad explicit pair
            codec.beta_range.check(0.0, beta_vq)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        work = lambda f: _to_target(codec, f, out, rate_target, beta_vq)  # noqa: E731
    report_skipped(inputs.skipped, "an image")
    records, failures = _for_each("compress", inputs.files, work)
    report = ""
    if records:
        csv_path, json_path = write_reports(records, out, COMPRESS_REPORT)
        mean_bpp = sum(r.real_bpp for r in records) / len(records)
        report = f", mean real bpp {mean_bpp:.5f}; see {csv_path} and {json_path}"
    print(f"compressed {len(records)} image(s){report}{skipped_note(len(inputs.skipped), failures, 'an image')}")
    return EXIT_SOME_FAILED if failures else EXIT_OK


def _fixed_conditioning(args: argparse.Namespace, codec: DCVICCodec) -> Conditioning:
    """``--quality`` or ``--beta-rate/--beta-vq``, checked against the model before any image is read."""
    if args.quality is not None and codec.quality_table is None:
        limits = codec.beta_range
        raise CliError(
            f"{args.checkpoint} has no quality table (no beta pairs were selected for it: a stage-1_x model); "
            f"give --beta-rate in [0, {limits.rate_max}] and --beta-vq in [0, {limits.vq_max}] instead of --quality"
        )
    try:
        return resolve_conditioning(codec.quality_table, args.quality, args.beta_rate, args.beta_vq, codec.beta_range)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


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
    suffix = LEGACY_SUFFIX if args.legacy else CONTAINER_SUFFIX
    inputs = find_inputs(args.inputs, (suffix,))
    refused = refused_by_header(inputs.files, args.legacy, args.max_pixels)  # before the model: a bomb costs nothing
    for path, reason in refused.items():
        print(f"dcvic: {path}: {reason}", file=sys.stderr)
    inputs = Inputs([f for f in inputs.files if f not in refused], inputs.skipped)
    if not inputs.files:
        return EXIT_SOME_FAILED
    codec = load_codec(args)
    out = Path(args.output)
    report_skipped(inputs.skipped, f"a {suffix}")
    records, failures = _for_each(
        "decompress",
        inputs.files,
        lambda f: decompress_file(
            codec, f, out / f"{f.stem}.png", args.legacy, args.legacy_eb_version, args.max_pixels
        ),
    )
    report = ""
    if records:
        csv_path, _ = write_reports(records, out, DECOMPRESS_REPORT)
        report = f" into {out}; times in {csv_path}"
    print(f"decoded {len(records)} file(s){report}{skipped_note(len(inputs.skipped), failures, f'a {suffix}')}")
    return EXIT_SOME_FAILED if failures or refused else EXIT_OK


def _for_each(name: str, files: Sequence[Path], work: Callable[[Path], object]) -> tuple[list, int]:
    """Run ``work`` per file with a progress bar; a failing file is reported in one line and skipped."""
    records, failures = [], 0
    for path in tqdm(files, desc=name, unit="file", disable=len(files) < 2, file=sys.stderr):
        try:
            records.append(work(path))
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop (or traceback) the batch
            failures += 1
            tqdm.write(f"dcvic: {failure_line(path, exc)}", file=sys.stderr)
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
