"""Build the stage-2 validation set: seeded 256² crops + cached VQGAN indices (design §5.1). Resumable.

    python entrypoints/build_val_set.py --images <openimage_root>/validation \\
        --model-file runs/dcvic/stage_1_3/model.pt --out data/val/vq_f8_n256/crop_256_2000_seed_0

The VQGAN is the one inside the dcvic model file (``--model-file``) or a taming checkpoint
(``--vqgan-checkpoint``, the latent-diffusion vq-f8-n256 ``model.ckpt``). Re-running fills in missing crops.
"""

from __future__ import annotations

import argparse
import logging
import sys

import entrypoints  # noqa: F401 - first: its __init__ silences compressai's import-time warning
from lightning_modules.networks.vqgan import load_vqgan
from lightning_modules.stage2.jobs import resolve_device
from lightning_modules.stage2.validation_set import build_validation_set, tokenizer_from_model_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="folder of source images (OpenImages validation/)")
    parser.add_argument("--out", required=True, help="output folder for <name>.png + <name>.npy")
    tokenizer = parser.add_mutually_exclusive_group(required=True)
    tokenizer.add_argument("--model-file", help="dcvic model file whose frozen VQGAN encodes the crops")
    tokenizer.add_argument("--vqgan-checkpoint", help="taming/latent-diffusion vq-f8-n256 model.ckpt")
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pattern", default="*.jpg", help="glob of source images inside --images")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        tokenizer = tokenizer_from_model_file(args.model_file) if args.model_file else load_vqgan(args.vqgan_checkpoint)
        report = build_validation_set(
            args.images,
            args.out,
            tokenizer,
            args.num_images,
            args.crop_size,
            args.seed,
            args.pattern,
            resolve_device(args.device),
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{report.total} crops in {report.out_dir} ({report.written} new, {report.reused} already there, "
        f"{len(report.unreadable)} unreadable sources skipped)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
