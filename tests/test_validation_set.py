"""The stage-2 validation-set builder: seeded crops, cached indices, resumability and bad inputs."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import data

from lightning_modules.images import image_to_tensor
from lightning_modules.networks.vqgan import FrozenVQGAN
from lightning_modules.stage2.validation_set import CachedVQDataset, build_validation_set, iter_crop_plans

CROP = 64


@pytest.fixture(scope="module")
def tokenizer() -> FrozenVQGAN:
    torch.manual_seed(0)
    return FrozenVQGAN(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "validation"
    folder.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).convert("RGB").resize((96, 80)).save(folder / f"{name}.jpg")
    Image.fromarray(data.camera()[:40, :40]).convert("RGB").save(folder / "too_small.jpg")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


def test_crop_positions_follow_the_reference_random_streams(image_dir: Path):
    plans = list(iter_crop_plans(image_dir, CROP, seed=3))
    files = sorted(image_dir.glob("*.jpg"))
    np.random.seed(3)  # the reference seeds the global generators and shuffles the sorted listing
    np.random.shuffle(files)
    random.seed(3)
    expected = []
    for path in files:
        if path.stem in ("too_small", "corrupt"):
            continue
        top, left = random.randint(0, 80 - CROP), random.randint(0, 96 - CROP)
        expected.append((path.stem, top, left))
    assert [(p.name, p.top, p.left) for p in plans] == expected


def test_builds_crops_with_their_vq_indices(image_dir: Path, tmp_path: Path, tokenizer: FrozenVQGAN):
    report = build_validation_set(image_dir, tmp_path / "set", tokenizer, num_images=3, crop_size=CROP, seed=0)
    assert report.written == 3 and report.reused == 0
    dataset = CachedVQDataset(tmp_path / "set")
    assert len(dataset) == 3 and "too_small" not in dataset.names
    manifest = pd.read_csv(tmp_path / "set" / "crops.csv")
    for row in manifest.itertuples():
        png = np.asarray(Image.open(tmp_path / "set" / f"{row.name}.png"))
        source = np.asarray(Image.open(row.source).convert("RGB"))
        np.testing.assert_array_equal(png, source[row.top : row.top + CROP, row.left : row.left + CROP])
        cached = np.load(tmp_path / "set" / f"{row.name}.npy")
        assert cached.dtype == np.uint8 and cached.shape == (CROP // 8, CROP // 8)
        with torch.no_grad():
            fresh = tokenizer.encode(image_to_tensor(png)).indices[0]
        np.testing.assert_array_equal(cached, fresh.numpy())


def test_rerun_only_fills_in_what_is_missing(image_dir: Path, tmp_path: Path, tokenizer: FrozenVQGAN):
    out = tmp_path / "set"
    build_validation_set(image_dir, out, tokenizer, num_images=2, crop_size=CROP, seed=0)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    victim = sorted(out.glob("*.npy"))[0]
    victim.unlink()
    report = build_validation_set(image_dir, out, tokenizer, num_images=3, crop_size=CROP, seed=0)
    assert (report.written, report.reused) == (2, 1)
    again = {p.name: p.read_bytes() for p in out.iterdir()}
    assert all(again[name] == content for name, content in first.items() if name != "crops.csv")


def test_corrupt_and_small_images_are_skipped_with_a_report(image_dir: Path, tmp_path: Path, tokenizer):
    (image_dir / "truncated.jpg").write_bytes((image_dir / "coffee.jpg").read_bytes()[:300])
    report = build_validation_set(image_dir, tmp_path / "set", tokenizer, num_images=10, crop_size=CROP, seed=0)
    assert report.total == 3
    assert sorted(Path(p).name for p in report.unreadable) == ["corrupt.jpg", "truncated.jpg"]


def test_missing_folder_and_missing_indices_are_clear_errors(tmp_path: Path, tokenizer: FrozenVQGAN):
    with pytest.raises(FileNotFoundError, match="no images matching"):
        build_validation_set(tmp_path / "nowhere", tmp_path / "set", tokenizer, crop_size=CROP)
    (tmp_path / "broken").mkdir()
    Image.new("RGB", (CROP, CROP)).save(tmp_path / "broken" / "a.png")
    with pytest.raises(FileNotFoundError, match="lack their .npy"):
        CachedVQDataset(tmp_path / "broken")
