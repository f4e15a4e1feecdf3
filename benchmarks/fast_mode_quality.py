"""What fast mode costs in quality: exact vs fast (and forced bf16) on real photos, same model, same quality.

Per photo and mode: the real bpp of the file, the PSNR of the decoded 8-bit image, and the cross-decodes (a fast
file decoded by the exact codec and the reverse: the ŷ must be identical, design §6.1).

    python benchmarks/fast_mode_quality.py --checkpoint runs/demo/stage_3/model.pt     # a trained model (demo)
    python benchmarks/fast_mode_quality.py --quick                                     # tiny random network

``--bf16`` also runs fast mode in bf16 on a CPU without native bf16 (emulated, slow: for the quality number only).
Writes ``benchmarks/results/fast_mode_quality.json`` (``--out``; none with ``--quick``).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.harness import benchmark_parser, output_path, write_result  # noqa: E402
from datamodules.image_files import centre_crop, sample_photo  # noqa: E402
from lightning_modules.codec.container import Container  # noqa: E402
from lightning_modules.codec.image_codec import DCVICCodec, fast_dtype, resolve_conditioning  # noqa: E402
from lightning_modules.images import image_to_tensor, tensor_to_image  # noqa: E402
from lightning_modules.model_file import RELEASED_QUALITY_TABLE, ModelFile, load_model_file  # noqa: E402
from lightning_modules.networks.dcvic import TINY_ARCHITECTURE, build_dcvic  # noqa: E402

# scikit-image's colour photos; the demo trains on astronaut, rocket, immunohistochemistry, coffee and chelsea
PHOTOS = ("retina", "stereo_motorcycle", "hubble_deep_field", "astronaut", "coffee", "chelsea", "rocket")


def load_photo(name: str, side: int) -> np.ndarray:
    return np.ascontiguousarray(centre_crop(sample_photo(name), side))


def psnr(decoded: np.ndarray, original: np.ndarray) -> float:
    error = decoded.astype(np.float64) - original.astype(np.float64)
    return float(10 * np.log10(255**2 / max(np.mean(error**2), 1e-12)))


def main(argv: list[str] | None = None) -> dict:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--checkpoint", help="a dcvic model file (default: tiny random network)")
    parser.add_argument("--quality", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--side", type=int, default=512, help="centre crop of each photo (default 512)")
    parser.add_argument("--photos", nargs="+", default=list(PHOTOS))
    parser.add_argument("--bf16", action="store_true", help="also fast mode forced to bf16 (emulated on this CPU)")
    args = parser.parse_args(argv)
    if args.quick:
        args.side, args.photos, args.quality = 128, args.photos[:2], args.quality[:1]
    if args.checkpoint:
        model_file = load_model_file(args.checkpoint)
    else:
        torch.manual_seed(0)
        model_file = ModelFile(dict(TINY_ARCHITECTURE), build_dcvic(**TINY_ARCHITECTURE).state_dict())
    table = model_file.quality_table or RELEASED_QUALITY_TABLE

    def codec(**options) -> DCVICCodec:
        return DCVICCodec(model_file.build_model(), table, model_file.fingerprint(), **options)

    codecs = {"exact": codec(), "fast": codec(fast=True)}
    if args.bf16:
        codecs["fast_bf16"] = codec(fast=True, precision=torch.bfloat16)
    rows = []
    for name in args.photos:
        original = load_photo(name, args.side)
        x = image_to_tensor(original)
        for quality in args.quality:
            conditioning = resolve_conditioning(table, quality)
            row: dict = {"photo": name, "shape": list(original.shape[:2]), "quality": quality}
            files = {}
            for mode, coder in codecs.items():
                start = time.perf_counter()
                container, code = coder.compress(x, conditioning)
                files[mode] = (container.to_bytes(), code.y_hat)
                x_hat, _ = coder.decode_container(Container.from_bytes(files[mode][0]))
                row[mode] = {
                    "bpp": 8 * len(files[mode][0]) / (original.shape[0] * original.shape[1]),
                    "psnr_db": psnr(tensor_to_image(x_hat), original),
                    "round_trip_s": time.perf_counter() - start,
                }
            for mode in codecs:  # every file decodes to the ŷ its encoder used, with the exact decoder
                _, y_hat = codecs["exact"].decode_container(Container.from_bytes(files[mode][0]))
                row[mode]["exact_decoder_same_y_hat"] = bool(torch.equal(y_hat, files[mode][1]))
            _, y_hat = codecs["fast"].decode_container(Container.from_bytes(files["exact"][0]))
            row["exact"]["fast_decoder_same_y_hat"] = bool(torch.equal(y_hat, files["exact"][1]))
            for mode in codecs:
                if mode != "exact":
                    row[mode]["psnr_change_db"] = row[mode]["psnr_db"] - row["exact"]["psnr_db"]
                    row[mode]["bpp_change"] = row[mode]["bpp"] - row["exact"]["bpp"]
            print(f"{name} q{quality}: " + ", ".join(f"{m} {row[m]['psnr_db']:.3f} dB" for m in codecs), flush=True)
            rows.append(row)
    summary = {
        mode: {
            "max_abs_psnr_change_db": max(abs(r[mode]["psnr_change_db"]) for r in rows),
            "median_psnr_change_db": statistics.median(r[mode]["psnr_change_db"] for r in rows),
            "median_bpp_change": statistics.median(r[mode]["bpp_change"] for r in rows),
        }
        for mode in codecs
        if mode != "exact"
    }
    report = {
        "weights": args.checkpoint or "random (tiny architecture)",
        "native_fast_dtype": str(fast_dtype(torch.device("cpu"))),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "summary": summary,
        "rows": rows,
    }
    write_result(report, output_path(args, "fast_mode_quality"))
    return report


if __name__ == "__main__":
    main()
