"""Side-by-side codec speed: exact vs fast mode (vs another dcvic checkout, vs the authors' code), same weights,
same photo, alternating call by call, medians, peak RSS per phase.

Each variant lives in its own child process that loads the model once and then runs one phase per request, so
the variants take turns (A B A B …) and a busy machine slows them alike. Per phase: wall seconds, CPU seconds,
minor page faults, and the peak RSS of the phase (VmHWM reset before it, so it includes the resident model).

    python benchmarks/codec_speed.py                                  # full-size network, random weights, 512×768
    python benchmarks/codec_speed.py --quick                          # tiny network, 256×256, 2 rounds (make bench)
    python benchmarks/codec_speed.py --baseline /path/to/dcvic-checkout   # + that checkout's exact mode
    python benchmarks/codec_speed.py --device cuda   # image networks on the GPU; + fast with the entropy path there
    python benchmarks/codec_speed.py --checkpoint model.pt \\
        --authors /path/to/DC_VIC --authors-python /path/to/venv/bin/python \\
        --authors-config config/dc_vic_patchgan.yaml --authors-checkpoint dc_vic_patchgan.pth.tar

``--device cuda`` times exact (float32, cuDNN) and fast (bf16) with the entropy path on the CPU, the default that
keeps files portable, and ``fast_gpu_entropy``: fast with the entropy path on the GPU as well (files then decode only
on the same kind of GPU); each phase also records the GPU's peak allocated memory.
``--authors`` needs the authors' checkpoint of the same weights as ``--checkpoint`` (e.g. our converter's input)
and a checkout of their code that loads in its environment. Writes
``benchmarks/results/codec_speed_<name>_<H>x<W>.json`` (``--out``; none with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("forward", "compress", "decompress")


# --- child side: one variant, one phase per request ---


def phase_meter() -> tuple[float, float, int]:
    """Wall clock, CPU seconds and minor faults now; resets the peak RSS (VmHWM) where Linux allows it, and the
    GPU's peak memory where a GPU is in use."""
    import resource

    import torch

    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime, usage.ru_minflt


def phase_result(start: tuple[float, float, int], **extra) -> dict:
    import resource

    import torch

    if torch.cuda.is_initialized():  # every phase ends on the CPU already (bytes, x̂); this makes it explicit
        torch.cuda.synchronize()
        extra["gpu_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    usage = resource.getrusage(resource.RUSAGE_SELF)
    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    hwm = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM")), None)
    return dict(
        seconds=time.perf_counter() - start[0],
        cpu_seconds=usage.ru_utime + usage.ru_stime - start[1],
        minor_faults=usage.ru_minflt - start[2],
        peak_rss_mib=hwm if hwm is not None else usage.ru_maxrss / 1024,
        **extra,
    )


def dcvic_child(args: argparse.Namespace) -> None:
    """A dcvic checkout (``args.code``): its codec in exact mode, or ours in fast mode."""
    sys.path.insert(0, args.code)
    import numpy as np
    import torch

    from lightning_modules.codec.image_codec import DCVICCodec, resolve_conditioning
    from lightning_modules.images import image_to_tensor
    from lightning_modules.model_file import load_model_file

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    options = {
        "exact": {},
        "baseline": {},
        "fast": {"fast": True},
        "fast_fp32": {"fast": True, "precision": torch.float32},
        "fast_gpu_entropy": {"fast": True, "entropy_device": device},
    }
    model_file = load_model_file(args.checkpoint)
    model = model_file.build_model().to(device)
    codec = DCVICCodec(model, model_file.quality_table, model_file.fingerprint(), **options[args.child])
    x = image_to_tensor(np.load(args.image))
    conditioning = resolve_conditioning(codec.quality_table, args.quality)
    beta_rate, beta_vq = conditioning.betas()
    work = Path(args.work)
    serve(
        {
            "forward": lambda: forward(codec, x, beta_rate, beta_vq),
            "compress": lambda: compress(codec, x, conditioning, work / f"{args.child}.dcvic"),
            "decompress": lambda: decompress(codec, work / f"{args.decode}.dcvic", work / f"{args.child}.npy"),
        },
        {"note": getattr(codec, "note", None)},
    )


def forward(codec, x, beta_rate, beta_vq) -> dict:
    """The evaluation forward (estimated rates, no bitstream), in the codec's precision and layout."""
    import contextlib

    import torch

    dtype = getattr(codec, "image_dtype", None)  # None: float32, and any checkout without fast mode
    x = x.to(codec.device)
    options = {}
    if getattr(codec, "fast", False):
        x = x.clone(memory_format=torch.channels_last)
        options["fast_kernels"] = True
    autocast = torch.autocast(x.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        out = codec.model(x, beta_rate, beta_vq, **options)
    return {"estimated_bpp": float(out.bpp())}  # float(): waits for the GPU, if any


def compress(codec, x, conditioning, target: Path) -> dict:
    container, _ = codec.compress(x, conditioning)
    data = container.to_bytes()
    target.write_bytes(data)
    return {"bytes": len(data), "bpp": 8 * len(data) / (x.shape[-2] * x.shape[-1])}


def decompress(codec, source: Path, target: Path) -> dict:
    import numpy as np

    from lightning_modules.codec.container import Container

    x_hat, _ = codec.decode_container(Container.from_bytes(source.read_bytes()))
    np.save(target, x_hat.numpy())
    return {"decoded": source.stem}


def authors_child(args: argparse.Namespace) -> None:
    """The authors' code (``args.code``), driven like their ``scripts/compress.py``; run by their Python."""
    os.chdir(args.code)
    sys.path.insert(0, args.code)
    import numpy as np
    import torch
    from src.models import build_comp_model  # the authors' package
    from src.utils.options import BaseConfig

    torch.set_num_threads(args.threads)
    cfg_dict, cfg_text, _ = BaseConfig._file2dict_yaml(args.authors_config)
    options = {"config_path": args.authors_config, "model_path": args.checkpoint, "device": "cpu", "is_train": False}
    opt = BaseConfig(BaseConfig._merge_a_into_b(options, cfg_dict), cfg_text=cfg_text, filename=args.authors_config)
    model = build_comp_model(opt).to("cpu")
    model.load_learned_weight(ckpt_path=args.checkpoint)
    model.codec_setup()
    x = (torch.from_numpy(np.load(args.image)).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
    state: dict = {}

    betas = {
        name: torch.tensor([getattr(model, f"selected_{name}")[args.quality]]) for name in ("beta_rate", "beta_vq")
    }

    def run_forward() -> dict:
        with torch.no_grad():
            model.run_model(x, is_train=False, **betas)
        return {}

    def run_compress() -> dict:
        state["strings"] = model.compress(x, quality_ind=args.quality)["string_list"]
        return {"bytes": sum(len(s) for s in state["strings"])}

    def run_decompress() -> dict:
        model.decompress(state["strings"])
        return {}

    serve({"forward": run_forward, "compress": run_compress, "decompress": run_decompress}, {"note": None})


def serve(phases: dict, hello: dict) -> None:
    """Answer ``phase`` lines on stdin with one JSON line each, until stdin closes."""
    print(json.dumps({"ready": True, **hello}), flush=True)
    for line in sys.stdin:
        start = phase_meter()
        extra = phases[line.strip()]()
        print(json.dumps(phase_result(start, **extra)), flush=True)


# --- parent side ---


class Variant:
    """A child process serving one variant."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.hello = self._reply()

    def run(self, phase: str) -> dict:
        self.process.stdin.write(phase + "\n")
        self.process.stdin.flush()
        return self._reply()

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"variant {self.name} stopped (see its stderr above)")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def variant_specs(args: argparse.Namespace) -> list[tuple[str, str, bool]]:
    """(name, code checkout, huge pages) of each dcvic variant the options ask for."""
    specs = [("exact", str(REPO), True), ("fast", str(REPO), True)]
    if args.device != "cpu":
        specs.append(("fast_gpu_entropy", str(REPO), True))
    if args.fast_fp32:
        specs.append(("fast_fp32", str(REPO), True))
    if args.baseline:
        specs.append(("baseline", str(Path(args.baseline).resolve()), False))
    return specs


def start_variants(args: argparse.Namespace, model_path: Path, image: Path, work: Path) -> list[Variant]:
    common = ["--checkpoint", str(model_path), "--image", str(image), "--work", str(work)]
    common += ["--threads", str(args.threads), "--quality", str(args.quality)]
    variants = []
    for name, code, huge_pages in variant_specs(args):
        env = {**os.environ, "PYTHONPATH": code}
        if huge_pages:  # what our entry points set (entrypoints/cli.py); a baseline runs as it did
            env["THP_MEM_ALLOC_ENABLE"] = "1"
        else:
            env.pop("THP_MEM_ALLOC_ENABLE", None)
        decode = "exact" if name == "baseline" else name
        command = [sys.executable, __file__, "--child", name, "--code", code, "--decode", decode, *common]
        command += ["--device", args.device]
        variants.append(Variant(name, command, env))
    if args.authors:
        command = [args.authors_python, __file__, "--child", "authors", "--code", str(Path(args.authors).resolve())]
        command += [*common[:2], "--image", str(image), "--work", str(work), "--threads", str(args.threads)]
        command += ["--quality", str(args.quality), "--authors-config", args.authors_config]
        command[command.index("--checkpoint") + 1] = str(Path(args.authors_checkpoint).resolve())
        variants.append(Variant("authors", command, dict(os.environ)))
    return variants


def alternate(variants: list[Variant], rounds: int, phases: tuple[str, ...]) -> dict[str, dict[str, list[dict]]]:
    """Round 0 warms up and is not counted; then A B A B … per phase, each phase before the next."""
    runs: dict[str, dict[str, list[dict]]] = {v.name: {p: [] for p in phases} for v in variants}
    for round_index in range(rounds + 1):
        for phase in phases:
            for variant in variants:
                result = variant.run(phase)
                if round_index:
                    runs[variant.name][phase].append(result)
                print(f"round {round_index} {phase:10s} {variant.name:8s} {result['seconds']:.2f} s", file=sys.stderr)
    return runs


def summarise(runs: dict[str, dict[str, list[dict]]]) -> dict:
    summary: dict = {}
    for name, phases in runs.items():
        summary[name] = {}
        for phase, results in phases.items():
            summary[name][phase] = {
                "median_s": statistics.median(r["seconds"] for r in results),
                "median_cpu_s": statistics.median(r["cpu_seconds"] for r in results),
                "median_minor_faults": statistics.median(r["minor_faults"] for r in results),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
                "runs_s": [round(r["seconds"], 3) for r in results],
                **{k: v for k, v in results[-1].items() if k not in ("seconds", "cpu_seconds", "minor_faults")},
            }
    reference = "baseline" if "baseline" in summary else "exact"
    ratios = {}
    for name in summary:
        if name != reference:
            ratios[f"{name}/{reference}"] = {
                p: summary[name][p]["median_s"] / summary[reference][p]["median_s"] for p in summary[name]
            }
    if reference == "baseline":
        for name in (n for n in summary if n.startswith("fast")):
            ratios[f"{name}/exact"] = {
                p: summary[name][p]["median_s"] / summary["exact"][p]["median_s"] for p in summary[name]
            }
    return {"variants": summary, "ratios": ratios}


def file_checks(work: Path, names: list[str]) -> dict:
    """Exact bytes vs the baseline's, and fast vs exact decodes of each other's files."""
    import numpy as np

    checks: dict = {}
    exact = (work / "exact.dcvic").read_bytes()
    if "baseline" in names:
        checks["exact_bytes_equal_baseline"] = exact == (work / "baseline.dcvic").read_bytes()
    for name in (n for n in names if n.startswith("fast")):
        checks[f"{name}_bytes_equal_exact"] = exact == (work / f"{name}.dcvic").read_bytes()
    if "baseline" in names:
        a, b = np.load(work / "exact.npy"), np.load(work / "baseline.npy")
        checks["exact_vs_baseline_decoded_max_abs_diff"] = float(np.abs(a - b).max())
    return checks


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def write_inputs(args: argparse.Namespace, work: Path) -> tuple[Path, Path, str]:
    """The photo as uint8 HWC (.npy) and, without ``--checkpoint``, a model file with seeded random weights."""
    import numpy as np
    import skimage.data
    import torch
    from PIL import Image

    sys.path.insert(0, str(REPO))
    from lightning_modules.model_file import RELEASED_QUALITY_TABLE, ModelFile, save_model_file
    from lightning_modules.networks.dcvic import TINY_ARCHITECTURE, build_dcvic

    astronaut = skimage.data.astronaut()
    photo = np.concatenate([astronaut, astronaut[:, :256]], axis=1)  # 512×768, as the golden timing anchor
    if (args.height, args.width) != photo.shape[:2]:
        photo = np.asarray(Image.fromarray(astronaut).resize((args.width, args.height), Image.Resampling.LANCZOS))
    image = work / "image.npy"
    np.save(image, photo)
    if args.checkpoint:
        return Path(args.checkpoint).resolve(), image, str(args.checkpoint)
    architecture = TINY_ARCHITECTURE if args.architecture == "tiny" else {}
    torch.manual_seed(0)
    model_path = work / "model.pt"
    save_model_file(
        model_path, ModelFile(dict(architecture), build_dcvic(**architecture).state_dict(), RELEASED_QUALITY_TABLE)
    )
    return model_path, image, f"random, seed 0 ({args.architecture} architecture)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks.harness import benchmark_parser

    parser = benchmark_parser(__doc__)  # --quick: tiny network, 256×256, 2 rounds (make bench)
    parser.add_argument("--architecture", choices=("full", "tiny"), default="full")
    parser.add_argument("--checkpoint", help="a dcvic model file instead of random weights")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--quality", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--device", default="cpu", help="device of the image networks (cuda: also fast_gpu_entropy, see above)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--baseline", help="another dcvic checkout (e.g. an older commit): its exact mode is timed")
    parser.add_argument(
        "--fast-fp32", action="store_true", help="also time fast mode's kernels in float32 (precision=torch.float32)"
    )
    parser.add_argument("--authors", help="a checkout of the authors' DC_VIC code")
    parser.add_argument("--authors-python", default=sys.executable, help="the Python of the authors' environment")
    parser.add_argument("--authors-config", default="config/dc_vic_patchgan.yaml")
    parser.add_argument("--authors-checkpoint", help="the authors' checkpoint holding the --checkpoint weights")
    for hidden in ("--child", "--code", "--image", "--work", "--decode"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.architecture, args.height, args.width, args.rounds = "tiny", 256, 256, min(args.rounds, 2)
    if args.device != "cpu" and (args.baseline or args.authors):
        parser.error("--baseline and --authors time the CPU only")
    if args.authors and not (args.checkpoint and args.authors_checkpoint):
        parser.error("--authors needs --checkpoint and --authors-checkpoint (the same weights in both formats)")
    if "decompress" in args.phases and "compress" not in args.phases:
        parser.error("decompress decodes the file compress writes: give both phases")
    return args


def main(argv: list[str] | None = None) -> None:
    import torch

    sys.path.insert(0, str(REPO))
    from benchmarks.harness import machine, output_path, write_result

    args = parse_args(argv)
    if args.child:
        (authors_child if args.child == "authors" else dcvic_child)(args)
        return
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_path, image, weights = write_inputs(args, work)
        variants = start_variants(args, model_path, image, work)
        try:
            runs = alternate(variants, args.rounds, tuple(args.phases))
        finally:
            for variant in variants:
                variant.close()
        names = [v.name for v in variants]
        checks = file_checks(work, names) if {"compress", "decompress"} <= set(args.phases) else {}
    name = "quick" if args.quick else f"{args.architecture if not args.checkpoint else 'checkpoint'}"
    suffix = "" if args.device == "cpu" else f"_{torch.device(args.device).type}"  # cuda:1 → _cuda
    report = {
        "image_hw": [args.height, args.width],
        "weights": weights,
        "quality": args.quality,
        "threads": args.threads,
        "rounds": args.rounds,
        "protocol": "one warm-up round, then variants alternate call by call per phase; medians",
        "device": args.device,
        "machine": {**machine(), "load_average_before": load_before},
        "load_average_after": load_average(),
        "notes": {v.name: v.hello.get("note") for v in variants if v.hello.get("note")},
        **summarise(runs),
        "checks": checks,
    }
    write_result(report, output_path(args, f"codec_speed_{name}_{args.height}x{args.width}{suffix}"))


if __name__ == "__main__":
    main()
