"""Peak memory and time of compress and decompress on a large photo (default 4000×3000) on the CPU.

Each phase runs in its own child process, so each peak RSS (``ru_maxrss``) belongs to that phase alone; the
RSS after building the model is recorded as well, to separate the weights from the working memory.

    python benchmarks/codec_memory.py                          # full-size network, random weights
    python benchmarks/codec_memory.py --architecture tiny      # the 5.9 M-parameter test network
    python benchmarks/codec_memory.py --checkpoint dcvic.pt    # a real model file
    python benchmarks/codec_memory.py --tiling reference       # the authors' 512/256 px tiles (default: fitted)
    python benchmarks/codec_memory.py --quick                  # tiny network on 384×512: seconds, prints only

Writes ``benchmarks/results/codec_memory.json`` (or ``--out``); decompress reports the PSNR of the decoded
photo (8-bit, truncated as the CLI writes it), so two tiling rules can be compared on the same photo.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.harness import benchmark_parser, machine, output_path, write_result  # noqa: E402
from lightning_modules.codec.image_codec import TILING_RULES, DCVICCodec, resolve_conditioning  # noqa: E402
from lightning_modules.images import image_to_tensor, tensor_to_image  # noqa: E402
from lightning_modules.model_file import RELEASED_QUALITY_TABLE, ModelFile, load_model_file, save_model_file  # noqa: E402
from lightning_modules.networks.dcvic import DCVIC, TINY_ARCHITECTURE, build_dcvic  # noqa: E402

ARCHITECTURES = {"full": {}, "tiny": TINY_ARCHITECTURE}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def large_photo(height: int, width: int) -> np.ndarray:
    """scikit-image's astronaut, resized with Lanczos: real photo statistics at any size."""
    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.Resampling.LANCZOS))


def report_tiles(model: DCVIC, start: float) -> dict[str, list[int]]:
    """A line on stderr per tile of the two slow tiled stages (this benchmark runs for an hour on a CPU); returns
    the pixels each tile covered, per stage, filled in as they run."""
    areas: dict[str, list[int]] = {"vq_encoder": [], "synthesis": []}

    def counted(name: str, key: str, scale: int, fn: Callable) -> Callable:
        def wrapper(tile, *args, **kwargs):
            areas[key].append(tile.shape[-2] * tile.shape[-1] * scale**2)
            elapsed, rss = time.perf_counter() - start, peak_rss_mib()
            print(f"{name} {len(areas[key])}: {elapsed:.0f} s, peak RSS {rss:.0f} MiB", file=sys.stderr, flush=True)
            return fn(tile, *args, **kwargs)

        return wrapper

    model.vq_model.encode_pre_quant = counted("VQGAN encoder tile", "vq_encoder", 1, model.vq_model.encode_pre_quant)
    model.synthesis = counted("synthesis tile", "synthesis", 16, model.synthesis)
    return areas


def run_phase(
    phase: str, model_path: Path, work: Path, height: int, width: int, quality: int, options: dict | None = None
) -> dict:
    """One phase in this process; prints progress on stderr, returns its measurements."""
    codec = DCVICCodec.from_model_file(load_model_file(model_path), **(options or {}))
    result: dict = {"rss_after_model_mib": peak_rss_mib()}
    start = time.perf_counter()
    areas = report_tiles(codec.model, start)
    if phase == "compress":
        x = image_to_tensor(large_photo(height, width))
        container, code = codec.compress(x, resolve_conditioning(codec.quality_table, quality))
        data = container.to_bytes()
        (work / "image.dcvic").write_bytes(data)
        result.update(
            vq_encoder_tiles=len(areas["vq_encoder"]),
            vq_encoder_pixels_per_pixel=sum(areas["vq_encoder"]) / (height * width),
            bytes=len(data),
            real_bpp=8 * len(data) / (height * width),
            estimated_bpp=(code.estimated_z_bits + code.estimated_y_bits) / (height * width),
        )
    else:
        x_hat = codec.decompress((work / "image.dcvic").read_bytes())
        seconds = time.perf_counter() - start
        error = tensor_to_image(x_hat).astype(np.float64) - large_photo(height, width)
        result.update(decoded_shape=list(x_hat.shape), psnr_db=float(10 * np.log10(255**2 / np.mean(error**2))))
        result.update(synthesis_tiles=len(areas["synthesis"]))
        result.update(synthesis_pixels_per_pixel=sum(areas["synthesis"]) / (height * width))
        result.update(seconds=seconds, peak_rss_mib=peak_rss_mib())
        return result
    result.update(seconds=time.perf_counter() - start, peak_rss_mib=peak_rss_mib())
    return result


def main(argv: list[str] | None = None) -> dict | None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), help="default: full (tiny with --quick)")
    parser.add_argument("--checkpoint", help="a dcvic model file instead of random weights")
    parser.add_argument("--height", type=int, help="default 3000 (384 with --quick)")
    parser.add_argument("--width", type=int, help="default 4000 (512 with --quick)")
    parser.add_argument("--quality", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tiling", choices=TILING_RULES, default="fitted", help="the codec's tiling rule")
    parser.add_argument("--fast", action="store_true", help="the codec's fast mode")
    parser.add_argument("--phase", choices=("compress", "decompress"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick_defaults = {"architecture": "tiny", "height": 384, "width": 512}
    full_defaults = {"architecture": "full", "height": 3000, "width": 4000}
    for key, value in (quick_defaults if args.quick else full_defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    if args.phase:
        options = {"tiling": args.tiling, "fast": args.fast}
        result = run_phase(
            args.phase, Path(args.checkpoint), Path(args.work), args.height, args.width, args.quality, options
        )
        print(json.dumps(result))
        return None
    with tempfile.TemporaryDirectory() as work:
        model_path = Path(args.checkpoint) if args.checkpoint else Path(work) / "model.pt"
        if not args.checkpoint:
            torch.manual_seed(0)
            architecture = ARCHITECTURES[args.architecture]
            model_file = ModelFile(architecture, build_dcvic(**architecture).state_dict(), RELEASED_QUALITY_TABLE)
            save_model_file(model_path, model_file)
        phases = {phase: child(args, phase, model_path, Path(work)) for phase in ("compress", "decompress")}
    report = {
        "image_hw": [args.height, args.width],
        "weights": args.checkpoint or f"random ({args.architecture} architecture)",
        "threads": args.threads,
        "tiling": args.tiling,
        "fast": args.fast,
        "load_average": list(os.getloadavg()),
        "machine": machine(),
        **phases,
        "peak_rss_mib": max(p["peak_rss_mib"] for p in phases.values()),
    }
    write_result(report, output_path(args, "codec_memory"))
    return report


def child(args: argparse.Namespace, phase: str, model_path: Path, work: Path) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--checkpoint", str(model_path), "--work", str(work)]
    command += ["--height", str(args.height), "--width", str(args.width), "--quality", str(args.quality)]
    command += ["--threads", str(args.threads), "--tiling", args.tiling] + (["--fast"] if args.fast else [])
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "1"}  # as the dcvic command runs (entrypoints/cli.py)
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout  # progress: stderr
    return json.loads(output.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
