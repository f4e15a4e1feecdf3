"""The speed benchmarks' quick versions run and report what their JSON promises (``make bench`` runs them too)."""

from __future__ import annotations

import json
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
