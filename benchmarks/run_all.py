"""``make bench``: the quick version of every benchmark, one after the other (a few minutes on a laptop CPU).

    python benchmarks/run_all.py                 # quick runs; each prints its JSON report
    python benchmarks/run_all.py --write         # also write benchmarks/results/quick/<name>.json
    python benchmarks/run_all.py train_speed     # only the named ones

Each benchmark is a module of this folder that follows ``benchmarks/harness.py`` (``--quick``, ``--out``); it runs in
its own process (``python -m benchmarks.<name> --quick``), so one cannot skew another's memory or threads. Adding a
benchmark is one line in :data:`BENCHMARKS`. The full-size runs (minutes to an hour each) are the modules themselves,
without ``--quick``; they record their results in ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK_RESULTS = REPO / "benchmarks" / "results" / "quick"

BENCHMARKS: tuple[str, ...] = (
    "beta_search_evals",  # model evaluations per stage-2 rate search (toy curves)
    "train_speed",  # training iterations per second, fp32 and bf16
    "codec_memory",  # peak memory and time of compress / decompress
    "codec_speed",  # exact vs fast mode, alternating, medians
    "fast_mode_quality",  # PSNR and bpp of fast mode against exact mode on photos
    "tile_costs",  # a large image under both tiling rules, from timed tiles
    "stage0_vqgan",  # stage-0 VQGAN training speed and PSNR
)


def run(name: str, write: bool) -> tuple[str, float, int]:
    command = [sys.executable, "-m", f"benchmarks.{name}", "--quick"]
    if write:
        command += ["--out", str(QUICK_RESULTS / f"{name}.json")]
    print(f"[bench] {name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    code = subprocess.run(command, cwd=REPO).returncode
    return name, time.perf_counter() - start, code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--write", action="store_true", help="write JSON results under benchmarks/results/quick/")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {', '.join(BENCHMARKS)}")
    outcomes = [run(name, args.write) for name in args.names or BENCHMARKS]
    for name, seconds, code in outcomes:
        print(f"[bench] {name:<20} {seconds:7.1f} s  {'ok' if code == 0 else f'FAILED (exit {code})'}", flush=True)
    return 1 if any(code for _, _, code in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
