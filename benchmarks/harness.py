"""The command-line contract every benchmark follows, so ``run_all.py`` can run any of them the same way.

``--quick``: a version that finishes in well under a minute on a laptop CPU (small sizes, few iterations), to check
that the benchmark still runs and to see rough numbers. ``--out PATH``: where the JSON goes. A full run writes
``benchmarks/results/<name>.json`` by default (the recorded numbers the README quotes); a quick run writes only
when ``--out`` is given, so it never overwrites them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def benchmark_parser(doc: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds to a minute, rough numbers")
    parser.add_argument("--out", type=Path, help="JSON result file (default: results/<name>.json, none if --quick)")
    return parser


def output_path(args: argparse.Namespace, default_name: str) -> Path | None:
    """``--out``, else the recorded result of a full run, else (quick) nothing."""
    if args.out is not None:
        return args.out
    return None if args.quick else RESULTS / f"{default_name}.json"


def write_result(report: dict, path: Path | None) -> None:
    """Print the report; write it as JSON when a path is given."""
    print(json.dumps(report, indent=2), flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}", flush=True)


def machine() -> dict:
    """What a timing depends on: the CPU's name, the flags that pick fast mode's kernels, torch's version."""
    import torch

    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as info:
            lines = info.read().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    features = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if flag in flags]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": name, "cpu_features": features, "cpus": os.cpu_count(), "gpu": gpu, "torch": torch.__version__}
