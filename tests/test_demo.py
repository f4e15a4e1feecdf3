"""The demo pipeline in miniature: every stage for a handful of iterations, then the report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from entrypoints import demo

MINIATURE = [
    "demo_iterations.stage_0=30",
    "demo_iterations.stage_1_1=10",
    "demo_iterations.stage_1_2=20",
    "demo_iterations.stage_1_3=5",
    "demo_iterations.stage_3=5",
    "stage2.num_images=3",
    "++stage2.crop_size=128",  # a key only stage 2 has
]


@pytest.mark.slow
def test_miniature_demo_runs_every_stage_and_reuses_them(tmp_path, capsys):
    args = ["--runs-dir", str(tmp_path), "--image-size", "96", *MINIATURE]
    assert demo.main(args) == 0
    report = tmp_path / "demo" / "report"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(report)
    for stage in demo.STAGES:
        assert demo.stage_output(tmp_path, "demo", stage).is_file()
    for stage in set(demo.STAGES) - {"2"}:  # stage 2 trains nothing, so it has no TensorBoard log
        assert (report / "tensorboard" / f"stage_{stage}").is_dir()
    rd = pd.read_csv(report / "rd.csv")
    assert list(rd["setting"]) == [f"q{q}" for q in range(5)]
    assert (rd["bpp"] > 0).all() and rd["PSNR"].notna().all()
    assert (report / "reconstructions.png").stat().st_size > 10_000
    assert (report / "rd_PSNR.png").is_file()
    checks = json.loads((report / "checks.json").read_text())
    assert checks["real_bpp_by_quality"] == pytest.approx(list(rd["bpp"]), rel=1e-12)  # rd.csv: a text round trip
    assert checks["min_psnr_db"] == pytest.approx(rd["PSNR"].min(), rel=1e-12)
    assert checks["psnr_gain_db"] == pytest.approx(rd["PSNR"].iloc[-1] - rd["PSNR"].iloc[0], rel=1e-9)
    assert {"bpp_ratio_met", "psnr_gain_met", "selection_monotone", "vqgan_reconstruction_psnr_db"} <= checks.keys()
    assert len(list((report / "evaluation" / "bitstreams" / "q0").glob("*.dcvic"))) == len(demo.HELD_OUT)

    model_time = demo.stage_output(tmp_path, "demo", "3").stat().st_mtime
    assert demo.main(args) == 0  # second run: every stage reused, only the report is redone
    assert "stage 1_2: reusing" in capsys.readouterr().out
    assert demo.stage_output(tmp_path, "demo", "3").stat().st_mtime == model_time


def test_stage2_targets_span_the_reachable_range():
    targets, tolerance = demo.stage2_targets(0.04, 0.05, max_tolerance=0.001)
    assert targets == sorted(targets) and targets[0] == 0.04 and targets[-1] == 0.05 and len(set(targets)) == 5
    assert tolerance == pytest.approx(0.001)  # 1/10 of the range
    _, wide_tolerance = demo.stage2_targets(0.034, 0.088, max_tolerance=0.001)
    assert wide_tolerance == 0.001  # 1/10 of this range would be 0.0054: capped at stage 2's own tolerance
    flat_targets, flat_tolerance = demo.stage2_targets(0.05, 0.04, max_tolerance=0.001)
    assert len(flat_targets) == 5 and flat_tolerance == 1.0


def test_report_checks_flag_a_rate_that_does_not_rise_and_a_low_psnr():
    good = demo.report_checks(pd.DataFrame({"bpp": [0.03, 0.04, 0.05], "PSNR": [18.0, 18.5, 19.0]}), [2.0, 1.0, 0.5])
    assert good["real_bpp_rises_with_quality"] and good["psnr_above_threshold"] and good["min_psnr_db"] == 18.0
    assert good["bpp_ratio_highest_to_lowest"] == pytest.approx(5 / 3) and good["bpp_ratio_met"]
    assert good["psnr_gain_db"] == pytest.approx(1.0) and good["psnr_gain_met"] and good["selection_monotone"]
    bad = demo.report_checks(pd.DataFrame({"bpp": [0.03, 0.05, 0.04], "PSNR": [12.0, 18.5, 12.5]}), [2.0, 2.0, 0.5])
    assert not bad["real_bpp_rises_with_quality"] and not bad["psnr_above_threshold"]
    assert not bad["bpp_ratio_met"] and not bad["psnr_gain_met"] and not bad["selection_monotone"]
    lines = demo.check_lines(bad)
    assert len(lines) == 5 and all("NO" in line or "BELOW" in line for line in lines)
    assert "selection_monotone" not in demo.report_checks(pd.DataFrame({"bpp": [0.03], "PSNR": [18.0]}))


def test_the_detail_window_is_the_originals_busiest_region():
    """reconstructions.png enlarges one window per image, chosen from the original alone: its most textured part."""
    rng = np.random.default_rng(0)
    image = np.full((384, 384, 3), 90, dtype=np.uint8)
    image[224:352, 64:192] = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)  # texture on a flat ground
    assert demo.busiest_window(image) == (224, 64)
    assert demo.busiest_window(image[:96, :96], side=96) == (0, 0)  # an image no larger than the window
