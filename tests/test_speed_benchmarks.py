"""The speed benchmarks' quick versions run and report what their JSON promises (``make bench`` runs them too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def quick(name: str, out: Path) -> dict:
    command = [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_codec_speed_alternates_exact_and_fast_and_checks_their_files(tmp_path: Path) -> None:
    report = quick("codec_speed", tmp_path / "speed.json")
    assert set(report["variants"]) == {"exact", "fast"}
    for phases in report["variants"].values():
        assert set(phases) == {"forward", "compress", "decompress"}
        assert all(len(phase["runs_s"]) == report["rounds"] and phase["peak_rss_mib"] > 0 for phase in phases.values())
    assert set(report["ratios"]["fast/exact"]) == {"forward", "compress", "decompress"}
    assert "fast_bytes_equal_exact" in report["checks"]


@pytest.mark.slow
def test_fast_mode_quality_cross_decodes_every_file(tmp_path: Path) -> None:
    report = quick("fast_mode_quality", tmp_path / "quality.json")
    assert report["rows"] and "fast" in report["summary"]
    for row in report["rows"]:
        assert row["exact"]["exact_decoder_same_y_hat"] and row["exact"]["fast_decoder_same_y_hat"]
        assert row["fast"]["exact_decoder_same_y_hat"]


@pytest.mark.slow
def test_tile_costs_fitted_computes_fewer_pixels_than_reference(tmp_path: Path) -> None:
    report = quick("tile_costs", tmp_path / "tiles.json")
    for stage in ("vq_encoder", "synthesis"):
        fitted, reference = report["rules"]["fitted"][stage], report["rules"]["reference"][stage]
        assert fitted["pixels_computed_per_pixel"] < reference["pixels_computed_per_pixel"]
        assert reference["tile_px"] == [512, 512] and fitted["seconds_per_tile"] > 0


def test_codec_speed_on_a_gpu_also_times_the_entropy_path_there() -> None:
    """``--device cuda`` adds fast mode with the entropy path on the GPU; the CPU-only comparisons refuse a GPU."""
    from benchmarks.codec_speed import parse_args, variant_specs

    assert [name for name, _, _ in variant_specs(parse_args([]))] == ["exact", "fast"]
    on_gpu = [name for name, _, _ in variant_specs(parse_args(["--device", "cuda", "--fast-fp32"]))]
    assert on_gpu == ["exact", "fast", "fast_gpu_entropy", "fast_fp32"]
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda", "--baseline", str(REPO)])


@pytest.mark.slow
def test_the_gpu_check_runs_its_steps_on_a_cpu_at_toy_sizes(tmp_path: Path) -> None:
    """``benchmarks/gpu_check.sh`` as a dry run: every step's command line is right, and an unknown step fails."""
    env = {**os.environ, "QUICK": "1", "DEVICE": "cpu", "OUT": str(tmp_path), "STEPS": "codec train_1_3 nonsense"}
    env["PY"] = sys.executable
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout[-3000:]  # the unknown step
    assert "== codec-speed: exit 0" in done.stdout and "== train-speed-1_3: exit 0" in done.stdout
    assert "unknown step nonsense" in done.stdout
    speed = json.loads((tmp_path / "codec_speed_full_512x768_cpu.json").read_text())
    assert set(speed["variants"]) == {"exact", "fast"} and speed["device"] == "cpu"
    assert json.loads((tmp_path / "train_speed_1_3_cpu.json").read_text())["results"]
