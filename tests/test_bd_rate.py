"""BD-rate / BD-metric: known answers on synthetic curves, undefined cases, the CSV entrypoint against the
published DC-VIC Kodak curve, and ``bd_rate.csv`` plus target-rate points from ``evaluate``."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage.data
from PIL import Image

from entrypoints.bd_rate import main as bd_rate_main
from lightning_modules.evaluation.bd_rate import BD_COLUMNS, bd_compare, bd_table, curves_by_model
from lightning_modules.evaluation.rate_distortion import REFERENCE_DIR, evaluate, write_summary
from lightning_modules.evaluation.rate_targets import target_settings
from lightning_modules.perceptual import ALEXNET_FILE
from tests.support.codec_models import write_model_file
from tests.support.metric_backbones import small_metric_suite, write_random_alexnet

KODAK = pd.read_csv(REFERENCE_DIR / "dcvic_kodak.csv")
PATCHGAN = KODAK[KODAK["model"] == "dc_vic_patchgan"].reset_index(drop=True)


def shifted(curve: pd.DataFrame, rate_factor: float = 1.0, **offsets: float) -> pd.DataFrame:
    out = curve.assign(bpp=curve["bpp"] * rate_factor)
    for metric, offset in offsets.items():
        out[metric] = out[metric] + offset
    return out


@pytest.mark.parametrize("method", ["akima", "pchip", "cubic"])
@pytest.mark.parametrize("metric", ["PSNR", "LPIPS", "DISTS"])
def test_ten_percent_fewer_bits_at_equal_quality_is_minus_ten_percent(metric, method) -> None:
    result = bd_compare(PATCHGAN, shifted(PATCHGAN, 0.9), metric, method=method)
    assert result.bd_rate_percent == pytest.approx(-10.0, abs=1e-9)
    # same quality at 10 % fewer bits is better quality at equal rate: PSNR up, LPIPS / DISTS down
    assert result.bd_metric > 0 if metric == "PSNR" else result.bd_metric < 0


def test_a_constant_metric_offset_is_the_bd_metric() -> None:
    better = shifted(PATCHGAN, PSNR=0.5, LPIPS=-0.01, DISTS=-0.002)
    results = {m: bd_compare(PATCHGAN, better, m) for m in ("PSNR", "LPIPS", "DISTS")}
    assert results["PSNR"].bd_metric == pytest.approx(0.5, abs=1e-9)
    assert results["LPIPS"].bd_metric == pytest.approx(-0.01, abs=1e-9)
    assert results["DISTS"].bd_metric == pytest.approx(-0.002, abs=1e-9)
    assert all(r.bd_rate_percent < 0 for r in results.values())  # better quality at each rate: fewer bits


def test_two_point_curves_on_a_log_linear_rd_law() -> None:
    """PSNR = 10·log10(bpp) + c: 1 dB is a factor 10^0.1 in rate, so +1 dB at equal rate is -20.57 % rate."""
    rates = np.array([0.05, 0.2])
    anchor = pd.DataFrame({"bpp": rates, "PSNR": 10 * np.log10(rates) + 30})
    test = pd.DataFrame({"bpp": rates, "PSNR": 10 * np.log10(rates) + 31})
    result = bd_compare(anchor, test, "PSNR")
    assert result.bd_metric == pytest.approx(1.0, abs=1e-9)
    assert result.bd_rate_percent == pytest.approx((10**-0.1 - 1) * 100, abs=1e-9)


def test_undefined_comparisons_are_nan_with_a_reason() -> None:
    zigzag = PATCHGAN.assign(PSNR=[25.0, 27.0, 26.0, 28.0, 29.0])
    assert "not strictly monotone" in bd_compare(PATCHGAN, zigzag, "PSNR").note
    one_point = PATCHGAN.iloc[:1]
    result = bd_compare(PATCHGAN, one_point, "PSNR")
    assert math.isnan(result.bd_rate_percent) and "at least 2" in result.note
    no_fid = PATCHGAN.assign(FID=math.nan)
    assert "0 point" in bd_compare(no_fid, no_fid, "FID").note
    far = shifted(PATCHGAN, 10.0, PSNR=20.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the package's warning becomes the note, not a warning
        result = bd_compare(PATCHGAN, far, "PSNR")
    assert math.isnan(result.bd_rate_percent) and "overlap" in result.note


def test_table_covers_every_curve_pair_and_common_metric() -> None:
    table = bd_table(curves_by_model(KODAK), {"ours": shifted(PATCHGAN, 0.9)})
    assert list(table.columns) == BD_COLUMNS
    assert set(table["anchor"]) == {"dc_vic_patchgan", "dc_vic_oasis"} and set(table["test"]) == {"ours"}
    assert set(table["metric"]) == {"PSNR", "LPIPS", "DISTS"}  # Kodak has no FID
    row = table[(table["anchor"] == "dc_vic_patchgan") & (table["metric"] == "PSNR")].iloc[0]
    assert row["bd_rate_percent"] == pytest.approx(-10.0) and row["anchor_points"] == row["test_points"] == 5


def test_entrypoint_compares_a_summary_csv_with_the_published_kodak_curve(tmp_path: Path, capsys) -> None:
    rows = shifted(PATCHGAN, 1.1, LPIPS=0.0).assign(model="ours", setting=[f"q{q}" for q in range(5)])
    write_summary(rows.to_dict("records"), tmp_path / "summary.csv")  # the real summary layout
    assert bd_rate_main([str(REFERENCE_DIR / "dcvic_kodak.csv"), str(tmp_path / "summary.csv")]) == 0
    table = pd.read_csv(tmp_path / "bd_rate.csv")
    patchgan = table[table["anchor"] == "dc_vic_patchgan"].set_index("metric")
    assert patchgan.loc[["PSNR", "LPIPS", "DISTS"], "bd_rate_percent"].tolist() == pytest.approx([10.0] * 3)
    assert "FID" not in patchgan.index  # the Kodak curves publish none (Kodak is too small for FID)
    assert "BD-rate" in capsys.readouterr().out


def test_entrypoint_refuses_a_file_without_rates_in_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert bd_rate_main([str(tmp_path / "other.csv"), str(REFERENCE_DIR / "dcvic_kodak.csv")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_evaluate_samples_target_rates_and_writes_bd_rate_csv(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.ascontiguousarray(skimage.data.astronaut()[40:104, 200:264])).save(photos / "astronaut.png")
    Image.fromarray(np.ascontiguousarray(skimage.data.coffee()[100:164, 300:364])).save(photos / "coffee.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        suite = small_metric_suite(write_random_alexnet(tmp_path / ALEXNET_FILE), fid_min_images=2)
    targets = target_settings([0.9, 1.2], realism="realism", tolerance=0.02)
    out = tmp_path / "evaluation"
    summary = evaluate(
        write_model_file(tmp_path / "tiny.pt"), photos, out, suite, qualities=[], targets=targets,
        model_name="tiny", reference_dataset="kodak",
    )  # fmt: skip
    assert summary["setting"].tolist() == ["t0.9000_bv3.000", "t1.2000_bv3.000"]
    assert summary["target_bpp"].tolist() == [0.9, 1.2] and summary["quality"].isna().all()
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == 4 and (per_image["beta_vq"] == 3.0).all() and (per_image["probes"] >= 2).all()
    sizes = [(out / "bitstreams" / r["setting"] / f"{Path(r['image']).stem}.dcvic").stat().st_size for _, r in
             per_image.iterrows()]  # fmt: skip
    assert per_image["bpp"].tolist() == pytest.approx([8 * s / 64**2 for s in sizes])  # achieved, real files
    hit = per_image["rate_status"] == "hit"
    assert (abs(per_image["bpp"][hit] - per_image["target_bpp"][hit]) <= 0.02 * per_image["target_bpp"][hit]).all()
    assert (
        summary["targets_hit"].tolist()
        == per_image.groupby("setting")["rate_status"].agg(lambda s: int((s == "hit").sum())).tolist()
    )
    table = pd.read_csv(out / "bd_rate.csv")
    assert list(table.columns) == BD_COLUMNS and set(table["test"]) == {"tiny"}
    assert {"dc_vic_patchgan", "dc_vic_oasis", "MS-ILLM"} <= set(table["anchor"])
