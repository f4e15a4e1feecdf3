"""What a large image costs under each tiling rule, from timed tiles (design §6.6).

Both tiled stages — the VQGAN encoder (compress) and the synthesis path (decompress) — run every tile of a grid
at one shape (the last tile is pulled back flush, never smaller). So this times one tile of each grid a rule
chooses for the image, ``--repeats`` times (median), and projects the stage as tiles × tile time. That makes a
4000×3000 comparison of the full-size network affordable on a laptop CPU, where the full round trip under the
reference rule takes well over an hour; ``benchmarks/codec_memory.py`` runs the real thing.

    python benchmarks/tile_costs.py                          # full-size network, 4000×3000, both rules
    python benchmarks/tile_costs.py --checkpoint model.pt    # a trained model file
    python benchmarks/tile_costs.py --quick                  # tiny network, 1536×2048

Writes ``benchmarks/results/tile_costs_<architecture>_<H>x<W>.json`` (``--out``; none with ``--quick``).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.harness import benchmark_parser, output_path, write_result  # noqa: E402
from lightning_modules.codec.image_codec import TILING_RULES, DCVICCodec, image_precision  # noqa: E402
from lightning_modules.model_file import RELEASED_QUALITY_TABLE, load_model_file  # noqa: E402
from lightning_modules.networks.dcvic import TINY_ARCHITECTURE, build_dcvic  # noqa: E402
from lightning_modules.networks.tiling import TileGrid  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: weight packing, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stage_costs(codec: DCVICCodec, height: int, width: int, repeats: int) -> dict:
    """Tiles and projected seconds of both tiled stages for a padded ``height × width`` image."""
    model, fast = codec.model, codec.fast
    vq_grid, y_grid = codec.tile_grids(height, width)
    y_h, y_w = height // 16, width // 16
    beta = torch.tensor([1.0])
    layout = torch.channels_last if fast else torch.contiguous_format

    def tile_shape(grid: TileGrid, size_h: int, size_w: int) -> tuple[int, int]:
        return min(grid.tile[0], size_h), min(grid.tile[1], size_w)

    vq_tile = tile_shape(vq_grid, height, width)
    y_tile = tile_shape(y_grid, y_h, y_w)
    x = torch.rand(1, 3, *vq_tile).mul(2).sub(1).contiguous(memory_format=layout)
    y_hat = torch.randn(1, model.latent_codec.y_channels, *y_tile).contiguous(memory_format=layout)

    def encode() -> None:
        with image_precision(x.device, codec.image_dtype):
            model.vq_model.encode_pre_quant(x, fast)

    def synthesize() -> None:
        with image_precision(y_hat.device, codec.image_dtype):
            model.synthesis(y_hat, beta, beta, fast_kernels=fast)

    result = {}
    for name, grid, tile, size, fn in (
        ("vq_encoder", vq_grid, vq_tile, (height, width), encode),
        ("synthesis", y_grid, y_tile, (y_h, y_w), synthesize),
    ):
        count = grid.tile_count(*size) if not grid.covers_whole(*size) else 1
        seconds = timed(fn, repeats)
        scale = 16 if name == "synthesis" else 1
        result[name] = {
            "tile_px": [tile[0] * scale, tile[1] * scale],
            "tiles": count,
            "pixels_computed_per_pixel": count * tile[0] * tile[1] / (size[0] * size[1]),
            "seconds_per_tile": seconds,
            "projected_seconds": count * seconds,
        }
        print(f"{codec.tiling:9s} {name:10s} {count:3d} tiles of {result[name]['tile_px']} px: "
              f"{seconds:.2f} s each, {count * seconds / 60:.1f} min", flush=True)  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--checkpoint", help="a dcvic model file (default: random weights)")
    parser.add_argument("--architecture", choices=("full", "tiny"), default="full")
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--fast", action="store_true", help="the codec's fast mode")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per tile shape after a warm-up")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    if args.quick:
        args.architecture, args.height, args.width = "tiny", 1536, 2048
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model_file = load_model_file(args.checkpoint)
        model, table = model_file.build_model(), model_file.quality_table
    else:
        torch.manual_seed(0)
        model, table = build_dcvic(**(TINY_ARCHITECTURE if args.architecture == "tiny" else {})), RELEASED_QUALITY_TABLE
    multiple = model.pad_multiple
    height, width = (math.ceil(n / multiple) * multiple for n in (args.height, args.width))
    rules = {}
    for rule in TILING_RULES:
        codec = DCVICCodec(model, table, b"\0" * 16, fast=args.fast, tiling=rule)
        rules[rule] = stage_costs(codec, height, width, args.repeats)
        rules[rule]["projected_round_trip_seconds"] = sum(rules[rule][s]["projected_seconds"] for s in rules[rule])
    report = {
        "image_hw": [args.height, args.width],
        "padded_hw": [height, width],
        "weights": args.checkpoint or f"random ({args.architecture} architecture)",
        "fast": args.fast,
        "threads": args.threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "protocol": "one warm-up call per tile shape, then the median of --repeats; stage = tiles × tile time",
        "rules": rules,
        "fitted_over_reference": rules["fitted"]["projected_round_trip_seconds"]
        / rules["reference"]["projected_round_trip_seconds"],
    }
    name = "checkpoint" if args.checkpoint else args.architecture
    suffix = "_fast" if args.fast else ""
    write_result(report, output_path(args, f"tile_costs_{name}_{args.height}x{args.width}{suffix}"))
    return report


if __name__ == "__main__":
    main()
