"""Stage 0 on a CPU: how fast does a tiny VQGAN train, and what reconstruction PSNR does it reach when?

Runs the real ``+stage=0 data=sample network=vqgan_tiny`` training (``lightning_modules.training.vqgan.train_vqgan``)
for ``--iterations``, validating every ``--eval-every`` iterations on sample photos that are *not* in its training
list, then reads ``val/psnr`` back from the run's TensorBoard events.

Run: ``python -m benchmarks.stage0_vqgan [--iterations 1500] [--crop 32] [--batch 8] [--lr 2e-3] [--threads 1]``
-> ``benchmarks/results/stage0_vqgan_<crop>px_b<batch>_lr<lr>_<data|taming>_codebook_<threads>t.json``;
``--quick``: 40 iterations, batch 4, validation on 64² crops, printed only.
On a shared machine wall time is noisy (the load average is recorded with it); ``cpu_s_per_iteration`` (process
CPU time, validation included) is not, and with ``--threads 1`` it is the wall time per iteration of an otherwise
idle core; ``psnr_at_minutes`` converts it. A curve point's ``iteration`` is the TensorBoard step of the
validation: batches trained so far, minus one.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks.harness import benchmark_parser, output_path, write_result
from entrypoints.runners import train_vqgan
from entrypoints.train import CONFIG_DIR, quote_stage_choices

QUICK = {"iterations": 40, "eval_every": 20, "batch": 4, "val_crop": 64}
TRAIN_PHOTOS = "[astronaut,rocket,immunohistochemistry,hubble_deep_field]"
HELD_OUT_PHOTOS = "[coffee,chelsea]"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--crop", type=int, default=32, help="training crop size (pixels)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam lr of the VQGAN (and of the critic)")
    parser.add_argument("--codebook-from-data", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--eval-every", type=int, default=100, help="iterations between validations")
    parser.add_argument("--val-crop", type=int, default=256, help="centre crop of the held-out photos")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = robust to a busy machine)")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    return args


def overrides(args: argparse.Namespace, runs_dir: Path) -> list[str]:
    """The demo-sized stage 0: no GAN in so few iterations (taming also trains L1 + codebook first)."""
    return [
        "+stage=0",
        "data=sample",
        "network=vqgan_tiny",
        f"paths.runs_dir={runs_dir}",
        f"data.train_files.names={TRAIN_PHOTOS}",
        f"data.val_files.names={HELD_OUT_PHOTOS}",
        f"data.crop_size={args.crop}",
        f"data.batch_size={args.batch}",
        f"data.val_center_crop={args.val_crop}",
        "data.train_repeat=1000",
        f"max_iterations={args.iterations}",
        f"eval_every={args.eval_every}",
        "log_every=10",
        f"optim.optimizer.lr={args.lr}",
        f"optim.disc_optimizer.lr={args.lr}",
        "module.disc_start=1000000",
        "module.dead_code_window=100",
        f"module.codebook_from_data={args.codebook_from_data}",
        "callbacks.iteration_checkpoint=null",
    ]


def psnr_curve(tensorboard_dir: Path, start: float) -> list[dict[str, float]]:
    events = EventAccumulator(str(tensorboard_dir)).Reload()
    return [
        {"iteration": e.step, "wall_s": round(e.wall_time - start, 1), "psnr_db": round(e.value, 2)}
        for e in events.Scalars("val/psnr")
    ]


def at_minutes(curve: list[dict[str, float]], seconds_per_iteration: float, minutes: float) -> dict | None:
    """The last validation an idle machine reaches within ``minutes`` at ``seconds_per_iteration``."""
    done = [point for point in curve if point["iteration"] * seconds_per_iteration <= minutes * 60]
    return done[-1] if done else None


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("DCVIC_CACHE_DIR", str(Path(tmp) / "cache"))
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=quote_stage_choices(overrides(args, Path(tmp) / "runs")))
        load_before = os.getloadavg()
        start, cpu_start = time.time(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
        train_vqgan(cfg)
        wall, cpu = time.time() - start, resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu_start
        curve = psnr_curve(Path(cfg.run_dir) / "tensorboard", start)
    cpu_per_iteration = cpu / args.iterations
    result = {
        "what": "stage 0, network=vqgan_tiny (ch 32, ch_mult 1-1-2-2, 1 res block, 256 codes x 4), L1 + codebook",
        "settings": {k: v for k, v in vars(args).items() if k != "out"}
        | {"train_photos": TRAIN_PHOTOS, "held_out_photos": HELD_OUT_PHOTOS},
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "wall_s": round(wall, 1),
        "wall_s_per_iteration": round(wall / args.iterations, 3),
        "cpu_s_per_iteration": round(cpu_per_iteration, 3),
        "psnr_at_minutes": {m: at_minutes(curve, cpu_per_iteration, m) for m in (1, 2, 3, 4)},
        "curve": curve,
    }
    init = "data" if args.codebook_from_data else "taming"
    name = f"stage0_vqgan_{args.crop}px_b{args.batch}_lr{args.lr:g}_{init}_codebook_{args.threads}t"
    write_result(result, output_path(args, name))
    return result


if __name__ == "__main__":
    main()
