"""Decode memory: measured peak against the decoder's own estimate (``DCVICCodec.decode_bytes``).

The decoder refuses a file whose estimated memory exceeds what the process can get; this checks that the
estimate is not below what a decode really takes (an OOM kill instead of a clear error), nor far above it
(refusing decodes that would fit). Each size runs in a child process with random weights: the file is
coded from a random ``y`` (no image encoder needed), decoded to a PNG in memory, and the peak RSS above the
RSS before the decode (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) is compared.

    python benchmarks/decode_memory.py --architecture tiny --sizes 256x256 1024x1024 1536x1280
    python benchmarks/decode_memory.py --architecture full --sizes 512x512

Writes ``benchmarks/results/decode_memory_<architecture>.json`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_modules.codec.container import Container  # noqa: E402
from lightning_modules.codec.image_codec import DCVICCodec  # noqa: E402
from lightning_modules.images import tensor_to_image  # noqa: E402
from lightning_modules.model_file import RELEASED_QUALITY_TABLE  # noqa: E402
from lightning_modules.networks.dcvic import TINY_ARCHITECTURE, build_dcvic  # noqa: E402

ARCHITECTURES = {"full": {}, "tiny": TINY_ARCHITECTURE}


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def crafted_file(codec: DCVICCodec, height: int, width: int, seed: int = 0) -> bytes:
    """A real-format file for a ``height × width`` image, coded from a random ``y`` (σ ≈ 3, ~1 bit/symbol)."""
    y_size = codec._y_size(height, width)
    generator = torch.Generator().manual_seed(seed)
    y = 3 * torch.randn(1, codec.model.latent_codec.y_channels, *y_size, generator=generator)
    code = codec.model.latent_codec.compress(y)
    return Container(codec.fingerprint, height, width, 2, 1.12, 2.0, code.z_string, code.y_string).to_bytes()


def measure(architecture: str, height: int, width: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    codec = DCVICCodec(build_dcvic(**ARCHITECTURES[architecture]).eval(), RELEASED_QUALITY_TABLE)
    codec.decompress(crafted_file(codec, 64, 64))  # warm-up: allocator pools, kernels
    data = crafted_file(codec, height, width)
    container = Container.from_bytes(data)
    estimate = codec.decode_bytes(height, width, (len(container.z_string), len(container.y_string)))
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = status_kib("VmRSS")
    start = time.perf_counter()
    x_hat = codec.decompress(data)
    Image.fromarray(tensor_to_image(x_hat)).save(io.BytesIO(), format="PNG")
    seconds = time.perf_counter() - start
    measured = (status_kib("VmHWM") - before) * 1024
    return {
        "image_hw": [height, width],
        "file_bytes": len(data),
        "seconds": round(seconds, 2),
        "rss_before_decode_mib": round(before / 1024),
        "measured_decode_mib": round(measured / 2**20, 1),
        "estimated_decode_mib": round(estimate / 2**20, 1),
        "estimate_over_measured": round(estimate / max(measured, 1), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="tiny")
    parser.add_argument("--sizes", nargs="+", default=["256x256", "1024x1024", "1536x1280"], help="HxW")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        height, width = map(int, args.child.split("x"))
        print(json.dumps(measure(args.architecture, height, width, args.threads)))
        return
    results = []
    for size in args.sizes:
        command = [sys.executable, __file__, "--architecture", args.architecture, "--threads", str(args.threads)]
        output = subprocess.run([*command, "--child", size], check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    report = {"architecture": args.architecture, "threads": args.threads, "results": results}
    output = Path(args.output or REPO / "benchmarks" / "results" / f"decode_memory_{args.architecture}.json")
    output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
