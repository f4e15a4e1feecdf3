"""evaluate.py and calc_metrics.py end to end: a tiny random-weight model file, real bitstreams, small
scikit-image photos, small random-weight metric backbones (nothing downloaded)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage.data
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import lightning_modules.evaluation.rate_distortion as evaluate_module
from entrypoints.calc_metrics import main as calc_metrics_main
from entrypoints.evaluate import CONFIG_DIR
from lightning_modules.codec.image_codec import DCVICCodec
from lightning_modules.evaluation.folder_metrics import calc_metrics
from lightning_modules.evaluation.metrics import MetricSuite, psnr_per_image
from lightning_modules.evaluation.rate_distortion import (
    REFERENCE_COLUMNS,
    PerImageLog,
    evaluate,
    make_settings,
    read_image,
)
from lightning_modules.images import to_uint8
from lightning_modules.model_file import RELEASED_QUALITY_TABLE, ModelFile, load_model_file, save_model_file
from lightning_modules.networks.dcvic import TINY_ARCHITECTURE, build_dcvic
from lightning_modules.perceptual import ALEXNET_FILE
from tests.support.metric_backbones import small_metric_suite, write_random_alexnet

REPO_ROOT = Path(__file__).resolve().parents[1]


def save_photo(folder: Path, name: str, array: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    state = build_dcvic(**TINY_ARCHITECTURE).state_dict()
    model = ModelFile(TINY_ARCHITECTURE, state, quality_table=RELEASED_QUALITY_TABLE)  # as a converted release
    return save_model_file(tmp_path_factory.mktemp("model") / "tiny.pt", model)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    save_photo(folder, "astronaut.png", skimage.data.astronaut()[40:104, 200:264])  # 64 × 64
    save_photo(folder, "coffee.png", skimage.data.coffee()[100:148, 300:364])  # 48 × 64: padded, then cropped
    return folder


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> MetricSuite:
    alexnet = write_random_alexnet(tmp_path_factory.mktemp("weights") / ALEXNET_FILE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return small_metric_suite(alexnet, fid_min_images=2)


@pytest.fixture(scope="module")
def evaluated(model_file: Path, photos: Path, suite: MetricSuite, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("evaluation")
    summary = evaluate(
        model_file,
        photos,
        out,
        suite,
        qualities=[0],
        beta_pairs=[[1.0, 2.0]],
        model_name="tiny",
        dataset="photos",
        reference_dataset="kodak",
        tensorboard_dir=out / "tb",
    )
    return out, summary


def test_writes_the_summary_in_the_reference_schema(evaluated) -> None:
    out, summary = evaluated
    table = pd.read_csv(out / "summary.csv")
    assert list(table.columns[: len(REFERENCE_COLUMNS)]) == REFERENCE_COLUMNS
    assert table["model"].tolist() == ["tiny", "tiny"]
    assert table["quality"].iloc[0] == 0 and math.isnan(table["quality"].iloc[1])  # explicit pair: no index
    assert table[["beta_rate", "beta_vq"]].iloc[1].tolist() == pytest.approx([1.0, 2.0])
    assert table["images"].tolist() == [2, 2] and table["setting"].tolist() == ["q0", "br1.000_bv2.000"]
    assert table["FID"].isna().all()  # 64-px photos hold no 256² patch


def test_bpp_is_the_real_file_size_and_the_files_decode_to_the_scored_pngs(evaluated, model_file, photos) -> None:
    out, _ = evaluated
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == 4 and set(per_image["setting"]) == {"q0", "br1.000_bv2.000"}
    for row in per_image.to_dict("records"):
        stem = Path(row["image"]).stem
        bitstream = out / "bitstreams" / row["setting"] / f"{stem}.dcvic"
        assert row["bytes"] == bitstream.stat().st_size
        assert row["bpp"] == pytest.approx(8 * bitstream.stat().st_size / (row["height"] * row["width"]))
        reconstruction = read_image(out / "reconstructions" / row["setting"] / f"{stem}.png")
        original = read_image(photos / row["image"])
        assert row["PSNR"] == pytest.approx(psnr_per_image(reconstruction, original).item(), abs=1e-5)
        assert np.isfinite([row["PSNR_rounded"], row["LPIPS"], row["DISTS"], row["estimated_bpp"]]).all()
    codec = DCVICCodec.from_model_file(load_model_file(model_file))  # one file decoded again, independently
    bitstream = out / "bitstreams" / "br1.000_bv2.000" / "coffee.dcvic"
    decoded = to_uint8(codec.decompress(bitstream.read_bytes())[0])
    assert torch.equal(decoded, read_image(out / "reconstructions" / "br1.000_bv2.000" / "coffee.png"))


def test_summary_values_are_means_over_images(evaluated) -> None:
    out, summary = evaluated
    per_image = pd.read_csv(out / "per_image.csv")
    q0 = per_image[per_image["setting"] == "q0"]
    for metric in ("bpp", "PSNR", "PSNR_rounded", "LPIPS", "DISTS"):
        assert summary[metric].iloc[0] == pytest.approx(q0[metric].mean())


def test_rd_plots_and_tensorboard(evaluated) -> None:
    out, _ = evaluated
    for metric in ("PSNR", "LPIPS", "DISTS"):
        with Image.open(out / f"rd_{metric}.png") as plot:
            assert plot.format == "PNG" and plot.size[0] > 300
    assert not (out / "rd_FID.png").exists()
    events = EventAccumulator(str(out / "tb")).Reload()
    assert {"evaluate/photos/q0/PSNR", "evaluate/photos/br1.000_bv2.000/bpp"} <= set(events.Tags()["scalars"])
    assert "evaluate/photos/rd_PSNR" in events.Tags()["images"]


def test_a_rerun_resumes_without_recoding(evaluated, model_file, photos, suite, monkeypatch) -> None:
    out, summary = evaluated

    def must_not_code(*args, **kwargs):
        raise AssertionError("a finished image was coded again")

    monkeypatch.setattr(evaluate_module, "code_image", must_not_code)
    again = evaluate(model_file, photos, out, suite, qualities=[0], beta_pairs=[[1.0, 2.0]], model_name="tiny")
    pd.testing.assert_frame_equal(again, summary)
    assert len(pd.read_csv(out / "per_image.csv")) == 4


def test_the_log_read_back_holds_only_this_models_rows(tmp_path) -> None:
    """A folder evaluated again with retrained weights (the demo's --rerun-from) keeps the old rows in the file;
    whoever reads the table back (the demo's reconstruction grid) must get the new model's numbers only."""
    path = tmp_path / "per_image.csv"
    row = {"pixels_sha256": "ab", "image": "a.png"}
    PerImageLog(path, "0012").append({**row, "setting": "q0", "bpp": 0.5})  # all digits: read back as text
    new = PerImageLog(path, "9f00")
    new.append({**row, "setting": "q0", "bpp": 0.1})
    new.append({**row, "setting": "q1", "bpp": 0.2})
    table = PerImageLog(path, "9f00").table()
    assert table["bpp"].tolist() == [0.1, 0.2] and set(table["fingerprint"]) == {"9f00"}
    assert PerImageLog(path, "9f00").table("q1")["bpp"].tolist() == [0.2]
    assert PerImageLog(path, "0012").table()["bpp"].tolist() == [0.5]


def test_an_image_replaced_under_the_same_name_is_scored_again(model_file, suite, tmp_path) -> None:
    folder, out = tmp_path / "images", tmp_path / "evaluation"
    save_photo(folder, "photo.png", skimage.data.astronaut()[40:104, 200:264])
    first = evaluate(model_file, folder, out, suite, qualities=[0], model_name="tiny")
    save_photo(folder, "photo.png", skimage.data.coffee()[100:148, 300:364])  # new pixels, other size
    second = evaluate(model_file, folder, out, suite, qualities=[0], model_name="tiny")
    rows = pd.read_csv(out / "per_image.csv")
    assert len(rows) == 2 and rows["pixels_sha256"].nunique() == 2
    assert (rows.iloc[-1]["height"], rows.iloc[-1]["width"]) == (48, 64)
    assert second["bpp"].iloc[0] == pytest.approx(rows.iloc[-1]["bpp"]) != first["bpp"].iloc[0]


def test_a_corrupt_image_stops_with_its_name_and_keeps_finished_rows(model_file, suite, tmp_path) -> None:
    folder = tmp_path / "images"
    save_photo(folder, "a_good.png", skimage.data.chelsea()[:64, :64])
    (folder / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="b_broken.png"):
        evaluate(model_file, folder, tmp_path / "out", suite, qualities=[2])
    assert pd.read_csv(tmp_path / "out" / "per_image.csv")["image"].tolist() == ["a_good.png"]


def test_a_failure_mid_write_leaves_no_bitstream_that_looks_finished(model_file, tmp_path, monkeypatch) -> None:
    codec = DCVICCodec.from_model_file(load_model_file(model_file))
    (setting,) = make_settings(codec.quality_table, [0], [])
    original = torch.from_numpy(skimage.data.coffee()[100:132, 300:348]).permute(2, 0, 1).contiguous()
    write_bytes = Path.write_bytes

    def disk_full(self: Path, data: bytes) -> int:
        write_bytes(self, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    bitstream = tmp_path / "bitstreams" / "q0" / "coffee.dcvic"
    with pytest.raises(OSError, match="No space left"):
        evaluate_module.code_image(codec, original, setting, bitstream)
    assert list(bitstream.parent.iterdir()) == []  # neither a half bitstream nor a temporary file


def test_bad_arguments_fail_before_any_coding(model_file, photos, suite, tmp_path) -> None:
    with pytest.raises(ValueError, match="no published results"):
        evaluate(model_file, photos, tmp_path, suite, reference_dataset="imagenet")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        evaluate(tmp_path / "missing.pt", photos, tmp_path, suite)
    with pytest.raises(ValueError, match="out of range"):
        evaluate(model_file, photos, tmp_path, suite, qualities=[7])
    with pytest.raises(FileNotFoundError, match="image folder"):
        evaluate(model_file, tmp_path / "nowhere", tmp_path, suite)


def test_config_composes_and_builds_the_pixel_suite(model_file, photos) -> None:
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "evaluate", overrides=[f"model_file={model_file}", f"images={photos}", "metrics=pixel", "device=cpu"]
        )
    assert cfg.metrics.device == "cpu" and cfg.qualities == [0, 1, 2, 3, 4]
    suite = instantiate(cfg.metrics)
    assert isinstance(suite, MetricSuite) and suite.lpips is None and suite.inception is None


# --- metrics-only mode ------------------------------------------------------------------------------------


@pytest.fixture
def two_folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    originals, fakes, bitstreams = tmp_path / "real", tmp_path / "fake", tmp_path / "bits"
    bitstreams.mkdir()
    generator = np.random.default_rng(0)
    for name, array in (
        ("astronaut", skimage.data.astronaut()[:256, :256]),
        ("rocket", skimage.data.rocket()[:256, :320]),
    ):
        save_photo(originals, f"{name}.png", array)
        noisy = np.clip(array + generator.normal(0, 8, array.shape), 0, 255).astype(np.uint8)
        save_photo(fakes, f"{name}.png", noisy)
        (bitstreams / f"{name}.dcvic").write_bytes(bytes(1000))
    return originals, fakes, bitstreams


def test_calc_metrics_over_two_folders(two_folders, suite) -> None:
    originals, fakes, bitstreams = two_folders
    result = calc_metrics(originals, fakes, suite, bitstreams)
    assert json.loads((fakes / "_metrics.json").read_text()) == pytest.approx(result, nan_ok=True)
    per_image = pd.read_csv(fakes / "_per_image_metrics.csv")
    expected_bpp = [8 * 1000 / (h * w) for h, w in zip(per_image["height"], per_image["width"], strict=True)]
    assert per_image["bpp"].tolist() == pytest.approx(expected_bpp)
    psnrs = [psnr_per_image(read_image(fakes / n), read_image(originals / n)).item() for n in per_image["image"]]
    assert result["PSNR"] == pytest.approx(np.mean(psnrs), abs=1e-5)
    assert np.isfinite([result[k] for k in ("bpp", "LPIPS", "DISTS", "FID", "KID", "MS-SSIM")]).all()


def test_calc_metrics_cli_and_missing_partners(two_folders) -> None:
    originals, fakes, _ = two_folders
    calc_metrics_main([str(originals), str(fakes), "--metrics", "pixel"])
    result = json.loads((fakes / "_metrics.json").read_text())
    assert math.isnan(result["bpp"]) and math.isnan(result["LPIPS"]) and result["PSNR"] > 20
    (fakes / "rocket.png").unlink()
    with pytest.raises(ValueError, match="rocket.png"):
        calc_metrics_main([str(originals), str(fakes), "--metrics", "pixel"])


@pytest.fixture
def photos_256(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    save_photo(images, "astronaut.png", skimage.data.astronaut()[:256, :256])
    save_photo(images, "coffee.png", skimage.data.coffee()[:256, :256])
    return images


@pytest.mark.slow
def test_fid_and_kid_through_evaluate(model_file, photos_256, suite, tmp_path) -> None:
    summary = evaluate(model_file, photos_256, tmp_path / "run", suite, qualities=[0])
    assert np.isfinite(summary[["FID", "KID", "MS-SSIM"]].iloc[0].to_numpy(dtype=float)).all()
    assert (tmp_path / "run" / "rd_FID.png").is_file()


@pytest.mark.slow
def test_hydra_entrypoint(model_file, photos_256, tmp_path) -> None:
    images = photos_256
    out = tmp_path / "run"
    command = [
        sys.executable,
        str(REPO_ROOT / "entrypoints" / "evaluate.py"),
        f"model_file={model_file}",
        f"images={images}",
        "metrics=pixel",
        "qualities=[0]",
        f"hydra.run.dir={out}",
    ]
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True)
    assert pd.read_csv(out / "summary.csv")["bpp"].iloc[0] > 0
    assert (out / "rd_PSNR.png").is_file() and (out / "rd_MS-SSIM.png").is_file()
