"""Per-image rate control on real photos: does the real file meet targets inside each image's range, and at what cost?

For each model (a small trained one given as a model file, and the full-size network with random weights) and
each of six scikit-image photos (centre crops, 256² by default): the real bpp at beta_rate 0 and 3 (the range
this image reaches), three targets spread inside it on a log scale (20, 50, 80 %), one rate-controlled compress
per target (rule ``below``: the largest file not above the target, within 1 %; beta_vq 2.0 = ``balanced``), and
one fixed-beta compress of the same image for the time ratio. One CPU thread, so the times compare.

Run: ``python benchmarks/rate_control.py --trained-model runs/demo/stage_3/model.pt [--no-full] [--update]``
→ ``benchmarks/results/rate_control.json`` (``--update`` keeps the models of an earlier run).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.image_files import centre_crop  # noqa: E402
from lightning_modules.codec.image_codec import DCVICCodec, resolve_conditioning  # noqa: E402
from lightning_modules.codec.rate_control import RateTarget, compress_to_target, realism_beta_vq  # noqa: E402
from lightning_modules.images import image_to_tensor  # noqa: E402
from lightning_modules.model_file import load_model_file  # noqa: E402
from lightning_modules.networks.dcvic import build_dcvic  # noqa: E402

PHOTOS = {
    "astronaut": skimage.data.astronaut,
    "coffee": skimage.data.coffee,
    "chelsea": skimage.data.chelsea,
    "rocket": skimage.data.rocket,
    "motorcycle_left": lambda: skimage.data.stereo_motorcycle()[0],
    "retina": skimage.data.retina,
}
TARGET_FRACTIONS = (0.2, 0.5, 0.8)
TOLERANCE = 0.01
RULE = "below"
REALISM = "balanced"
FIXED_BETA_RATE = 1.5


def real_bpp(codec: DCVICCodec, x: torch.Tensor, beta_rate: float, beta_vq: float) -> tuple[float, float]:
    """``(bpp of the file, seconds)`` of one fixed-beta compress."""
    start = time.perf_counter()
    container, _ = codec.compress(x, resolve_conditioning({}, beta_rate=beta_rate, beta_vq=beta_vq))
    seconds = time.perf_counter() - start
    return 8 * len(container.to_bytes()) / (x.shape[-2] * x.shape[-1]), seconds


def meets(rule: str, achieved: float, target: float) -> bool:
    if rule == "below":
        return (1 - TOLERANCE) * target <= achieved <= target
    return abs(achieved - target) <= TOLERANCE * target


def bench_image(codec: DCVICCodec, name: str, image: np.ndarray, beta_vq: float) -> dict:
    x = image_to_tensor(image)
    ends = [real_bpp(codec, x, beta_rate, beta_vq)[0] for beta_rate in (0.0, 3.0)]
    low, high = min(ends), max(ends)
    _, fixed_seconds = real_bpp(codec, x, FIXED_BETA_RATE, beta_vq)
    targets = [float(np.exp(np.log(low) + f * (np.log(high) - np.log(low)))) for f in TARGET_FRACTIONS]
    rows = []
    for target in targets:
        start = time.perf_counter()
        result = compress_to_target(codec, x, RateTarget(target, tolerance=TOLERANCE, rule=RULE), beta_vq)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "target_bpp": target,
                "achieved_bpp": result.achieved_bpp,
                "relative_error": result.achieved_bpp / target - 1,
                "meets_rule": meets(RULE, result.achieved_bpp, target),
                "status": result.status,
                "beta_rate": result.container.beta_rate,
                "probes": result.probes,
                "seconds": seconds,
                "time_vs_fixed": seconds / fixed_seconds,
            }
        )
        print(f"  {name}: target {target:.5f} -> {result.achieved_bpp:.5f} bpp, {result.probes} probes, "
              f"{seconds:.1f} s ({seconds / fixed_seconds:.1f}x fixed)", flush=True)  # fmt: skip
    return {"image": name, "range_bpp": [low, high], "fixed_seconds": fixed_seconds, "targets": rows}


def bench_model(codec: DCVICCodec, label: str, source: str, size: int, beta_vq: float) -> dict:
    print(f"{label} ({source})", flush=True)
    images = [
        bench_image(codec, name, np.ascontiguousarray(centre_crop(load()[..., :3], size)), beta_vq)
        for name, load in PHOTOS.items()
    ]
    rows = [row for image in images for row in image["targets"]]
    return {
        "source": source,
        "summary": {
            "targets": len(rows),
            "met": sum(row["meets_rule"] for row in rows),
            "max_abs_relative_error": max(abs(row["relative_error"]) for row in rows),
            "mean_probes": float(np.mean([row["probes"] for row in rows])),
            "mean_seconds_rate_controlled": float(np.mean([row["seconds"] for row in rows])),
            "mean_seconds_fixed": float(np.mean([image["fixed_seconds"] for image in images])),
            "mean_time_vs_fixed": float(np.mean([row["time_vs_fixed"] for row in rows])),
            "mean_range_ratio": float(np.mean([image["range_bpp"][1] / image["range_bpp"][0] for image in images])),
        },
        "per_image": images,
    }


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trained-model", type=Path, help="a small trained dcvic model file (e.g. the demo's)")
    parser.add_argument("--trained-label", default="trained_tiny", help="its key in the results")
    parser.add_argument("--trained-note", default="", help="how that model was trained (kept in the results)")
    parser.add_argument("--no-full", action="store_true", help="skip the full-size random-weight network")
    parser.add_argument("--size", type=int, default=256, help="side of the centre crops")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "rate_control.json")
    parser.add_argument("--update", action="store_true", help="keep the other models already in --output")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    beta_vq = realism_beta_vq(REALISM)
    results: dict = {
        "photos": list(PHOTOS),
        "crop": args.size,
        "tolerance": TOLERANCE,
        "rule": RULE,
        "beta_vq": beta_vq,
        "target_fractions_of_log_range": list(TARGET_FRACTIONS),
        "threads": 1,
        "machine": f"{platform.processor() or platform.machine()}, shared CPU",
        "models": json.loads(args.output.read_text())["models"] if args.update and args.output.is_file() else {},
    }
    if args.trained_model is not None:
        codec = DCVICCodec.from_model_file(load_model_file(args.trained_model))
        source = f"{args.trained_model}: {args.trained_note}" if args.trained_note else str(args.trained_model)
        results["models"][args.trained_label] = bench_model(codec, args.trained_label, source, args.size, beta_vq)
    if not args.no_full:
        torch.manual_seed(0)
        codec = DCVICCodec(build_dcvic(), {})
        source = "build_dcvic() defaults (conf/network/full.yaml), random weights, seed 0"
        results["models"]["full_random"] = bench_model(codec, "full_random", source, args.size, beta_vq)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    for label, model in results["models"].items():
        print(label, json.dumps(model["summary"]), flush=True)
    print(args.output)
    return args.output


if __name__ == "__main__":
    main()
