"""The pytorch-fid pipeline (the authors' calc_metrics.py) against the pytorch-fid package itself, on two folders of
256² scikit-image crops and degraded versions (blurred, then JPEG quality 5: what a codec at a very low rate leaves),
with one random-weight Inception file given to both (the real FID weights are not on this machine); and how far
torch-fidelity's pipeline is from it on the same data and weights."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from hydra import compose, initialize_config_dir
from PIL import Image, ImageFilter
from pytorch_fid import fid_score
from pytorch_fid.inception import InceptionV3

from entrypoints.train import CONFIG_DIR
from lightning_modules.evaluation import metrics
from lightning_modules.evaluation.metrics import (
    INCEPTION_FILE,
    PYTORCH_FID_FILE,
    PatchDistributionMetrics,
    PytorchFidInception,
    build_inception,
    build_pytorch_fid_inception,
)
from lightning_modules.evaluation.rate_distortion import read_image as load_rgb
from tests.support.metric_backbones import write_random_fid_inception

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "camera")


def write_folders(root: Path, count: int) -> tuple[Path, Path]:
    """``real/<photo>.png``: the photo's top-left 256² crop; ``fake/<photo>.png``: blurred, then JPEG quality 5."""
    real, fake = root / "real", root / "fake"
    real.mkdir(parents=True)
    fake.mkdir()
    for name in PHOTOS[:count]:
        image = getattr(skimage.data, name)()
        crop = Image.fromarray(image[:256, :256]).convert("RGB")
        crop.save(real / f"{name}.png")
        jpeg = io.BytesIO()
        crop.filter(ImageFilter.GaussianBlur(4)).save(jpeg, format="JPEG", quality=5)
        Image.open(jpeg).convert("RGB").save(fake / f"{name}.png")
    return real, fake


def ours(extractor: torch.nn.Module, real: Path, fake: Path) -> PatchDistributionMetrics:
    """Our stage-2 / evaluation path: uint8 pairs through the HiFiC patch metrics (one patch per 256² crop)."""
    distribution = PatchDistributionMetrics(extractor, min_images=2, kid_subsets=10, kid_subset_size=4)
    for path in sorted(real.glob("*.png")):
        distribution.update(load_rgb(fake / path.name), load_rgb(path))
    return distribution


def package_inception(weights: Path, hub: Path, monkeypatch: pytest.MonkeyPatch) -> InceptionV3:
    """pytorch-fid's own network, finding the same file in a torch hub cache (as its users get it)."""
    (hub / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, hub / "checkpoints" / PYTORCH_FID_FILE)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    return InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_fid_inception(tmp_path_factory.mktemp("weights") / "random_fid_inception.pth")


def test_features_equal_pytorch_fids_inception_and_differ_from_torch_fidelitys(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, fake = write_folders(tmp_path, 3)
    pipeline = ours(build_pytorch_fid_inception(weights), real, fake)
    model = package_inception(weights, tmp_path / "hub", monkeypatch)
    for folder, features in ((real, pipeline.real_features), (fake, pipeline.fake_features)):
        files = sorted(folder.glob("*.png"))
        reference = fid_score.get_activations(files, model, batch_size=len(files), dims=2048, num_workers=0)
        assert np.abs(torch.cat(features).numpy() - reference).max() < 1e-5
    # same weights, same crops: torch-fidelity's resize and scaling give other features
    fidelity = ours(build_inception(shutil.copyfile(weights, tmp_path / INCEPTION_FILE)), real, fake)
    gap = (torch.cat(fidelity.real_features) - torch.cat(pipeline.real_features)).abs().max()
    assert gap > 1e-3 * torch.cat(pipeline.real_features).abs().max()


@pytest.mark.slow  # four scipy sqrtm / eigvals of 2048² matrices: minutes on one loaded core
def test_fid_equals_pytorch_fid_score_and_reports_the_torch_fidelity_gap(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, fake = write_folders(tmp_path, len(PHOTOS))
    fid = ours(build_pytorch_fid_inception(weights), real, fake).compute()["FID"]
    package_inception(weights, tmp_path / "hub", monkeypatch)  # calculate_fid_given_paths builds its own from there
    reference = fid_score.calculate_fid_given_paths([str(fake), str(real)], 50, "cpu", 2048, num_workers=0)
    assert fid == pytest.approx(reference, abs=1e-3)
    fidelity = ours(build_inception(shutil.copyfile(weights, tmp_path / INCEPTION_FILE)), real, fake).compute()["FID"]
    report = {"images": len(PHOTOS), "pytorch_fid": fid, "package": float(reference), "torch_fidelity": fidelity}
    print("FID pipelines:", json.dumps(report))  # the numbers of the closing note
    assert np.isfinite(fidelity) and abs(fidelity - fid) > 1e-3 * fid


def test_missing_pytorch_fid_weights_is_one_line_naming_file_key_and_source(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty_hub"))
    with pytest.raises(FileNotFoundError) as error:
        build_pytorch_fid_inception()
    message = str(error.value)
    assert "\n" not in message and PYTORCH_FID_FILE in message and "+stage2.fid_features.weights=PATH" in message
    assert "github.com/mseitzer/pytorch-fid/releases" in message
    with pytest.raises(FileNotFoundError, match="metrics.inception_weights=PATH"):
        metrics.build_metric_suite(lpips=False, dists=False, fid_pipeline="pytorch-fid")
    with pytest.raises(ValueError, match="unknown FID pipeline 'tf'"):
        metrics.build_fid_features("tf")


def test_stage_2_selects_with_the_pytorch_fid_pipeline_and_evaluation_can(weights: Path) -> None:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        stage2 = compose("train", overrides=["+stage='2'"]).stage2
        select = compose("select", overrides=["model_file=m.pt", "val_set=v"])
    for node in (stage2.fid_features, select.fid_features):
        assert node._target_ == "lightning_modules.evaluation.metrics.build_pytorch_fid_inception"
    suite = metrics.build_metric_suite(
        lpips=False, dists=False, fid_pipeline="pytorch-fid", inception_weights=str(weights)
    )
    assert isinstance(suite.inception, PytorchFidInception)
