"""The demo pipeline in miniature: every stage for a handful of iterations, then the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datamodules.image_files import SAMPLE_TRAIN, sample_photo
from entrypoints import demo
from lightning_modules.images import read_rgb

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
    args = ["--runs-dir", str(tmp_path), *MINIATURE, "held_out_side=96"]
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
    held_out = sorted((report / "held_out").glob("*.png"))
    assert [path.stem for path in held_out] == sorted(SAMPLE_TRAIN)  # one crop per training photo, 96² each
    assert all(read_rgb(path).shape == (96, 96, 3) for path in held_out)
    assert len(list((report / "evaluation" / "bitstreams" / "q0").glob("*.dcvic"))) == len(SAMPLE_TRAIN)
    training_parts = Path(demo.stage_config("1_1", tmp_path, "demo", args[2:]).training_parts_dir)
    for crop in held_out:  # every stage trained on the photo without the strip its held-out crop comes from
        photo = sample_photo(crop.stem)
        assert read_rgb(demo.REPO / training_parts / crop.name).shape == (photo.shape[0], photo.shape[1] - 96, 3)

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


def test_unseen_photos_are_recorded_for_scale_and_decide_no_check():
    held_out = pd.DataFrame({"bpp": [0.03, 0.06], "PSNR": [18.0, 19.5]})
    unseen = pd.DataFrame({"bpp": [0.04, 0.05], "PSNR": [13.0, 13.1]})  # below the threshold, a flat gain
    checks = demo.report_checks(held_out, [2.0, 0.5], unseen_summary=unseen)
    assert checks["unseen_photos"] == {
        "names": list(demo.UNSEEN_PHOTOS),
        "real_bpp_by_quality": [0.04, 0.05],
        "psnr_by_quality": [13.0, 13.1],
    }
    assert checks["psnr_above_threshold"] and checks["psnr_gain_met"] and checks["bpp_ratio_met"]
    last = demo.check_lines(checks)[-1]
    assert last.startswith("for scale, not checked") and "13.00 -> 13.10 dB" in last and "NO" not in last


def test_unseen_crops_are_centre_crops_of_photos_the_demo_never_trains_on():
    assert not set(demo.UNSEEN_PHOTOS) & set(SAMPLE_TRAIN)
    crops = demo.unseen_crops(64)
    assert list(crops) == list(demo.UNSEEN_PHOTOS) and all(crop.shape == (64, 64, 3) for crop in crops.values())
    retina = sample_photo("retina")
    assert np.array_equal(crops["retina"], retina[673:737, 673:737])


def test_the_detail_window_is_the_originals_busiest_region():
    """reconstructions.png enlarges one window per image, chosen from the original alone: its most textured part."""
    rng = np.random.default_rng(0)
    side = demo.DETAIL_SIDE
    image = np.full((192, 192, 3), 90, dtype=np.uint8)  # a held-out crop's size
    top, left = side // 4, 3 * side // 4  # on the window grid
    image[top : top + side, left : left + side] = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)  # texture
    assert demo.busiest_window(image) == (top, left)
    assert demo.busiest_window(image[:64, :64], side=64) == (0, 0)  # an image no larger than the window
