"""Training iterations per second of the full-size network (batch 6, 256² crops), fp32 and bf16 autocast.

Runs the real stage system (``+stage=<stage> network=full``) through Lightning on the scikit-image sample photos,
with random VQGAN / LPIPS backbones (speed does not depend on their values), and writes
``benchmarks/results/train_speed.json``::

    python benchmarks/train_speed.py --iterations 3 --warmup 1 --stage 1_2
    python benchmarks/train_speed.py --quick     # network=tiny, batch 2 of 64² crops: seconds, prints only
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import benchmark_parser, output_path, write_result  # noqa: E402
from entrypoints.runners import prepare_run  # noqa: E402
from entrypoints.train import CONFIG_DIR, quote_stage_choices  # noqa: E402

FULL = {"network": "full", "batch_size": 6, "crop": 256}
QUICK = {"network": "tiny", "batch_size": 2, "crop": 64}


class IterationTimer(L.Callback):
    """Wall time of each training batch (one generator iteration, all optimizer steps included)."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.durations.append(time.perf_counter() - self._start)
        print(f"iteration {len(self.durations)}: {self.durations[-1]:.1f} s", flush=True)


def measure(stage: str, bf16: bool, iterations: int, warmup: int, work_dir: Path, size: dict) -> dict:
    overrides = [
        f"+stage={stage}",
        f"network={size['network']}",
        "data=sample",
        f"data.batch_size={size['batch_size']}",
        f"data.crop_size={size['crop']}",
        "data.num_workers=0",
        "paths.vqgan_checkpoint=null",
        "paths.alexnet_weights=null",
        f"paths.runs_dir={work_dir / ('bf16' if bf16 else 'fp32')}",
        f"paths.cache_dir={work_dir / 'cache'}",
        f"max_iterations={iterations + warmup}",
        f"bf16={bf16}",
        "save_every=1000000",
        "trainer.limit_val_batches=0",
        "init.init_from=null",
        "init.load_discriminator=false",
        "init.load_optimizer_moments=false",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=quote_stage_choices(overrides))
    run = prepare_run(cfg)
    timer = IterationTimer()
    run.trainer.callbacks.append(timer)
    run.trainer.fit(run.system, datamodule=run.datamodule)
    timed = timer.durations[warmup:]
    return {
        "stage": stage,
        "precision": "bf16-autocast" if bf16 else "fp32",
        "iterations_timed": len(timed),
        "seconds_per_iteration": sum(timed) / len(timed),
        "iterations_per_second": len(timed) / sum(timed),
        "all_durations_s": timer.durations,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--stage", default="1_2", choices=["1_1", "1_2", "1_3", "3"])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per precision")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(args.stage, bf16, args.iterations, args.warmup, Path(tmp), size) for bf16 in (False, True)]
    report = {
        "benchmark": "train_speed",
        "network": "full (84.0 M trainable)" if size is FULL else "tiny (5.9 M parameters)",
        "batch_size": size["batch_size"],
        "crop": size["crop"],
        "device": device,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],  # shared machines skew timings
        "results": results,
    }
    write_result(report, output_path(args, "train_speed"))
    return report


if __name__ == "__main__":
    main()
