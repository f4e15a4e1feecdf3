"""Datasets: OpenImage layout, Kodak, folders, the scikit-image sample set, and skipping corrupt files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.image_datamodule import ImageDataModule, TrainingImages, ValidationImages
from datamodules.image_files import (
    folder_files,
    kodak_files,
    openimage_train_files,
    sample_files,
    sample_photo,
    split_off_held_out,
)


def write_image(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_openimage_listing_follows_subset_list(tmp_path: Path) -> None:
    for k in range(3):
        for i in range(2):
            write_image(tmp_path / f"train_{k}" / f"{i}.jpg", (40, 30))
    (tmp_path / "train_0" / "notes.txt").write_text("not an image")
    files = openimage_train_files(str(tmp_path), subset_list=[0, 2])
    assert [f.parent.name for f in files] == ["train_0", "train_0", "train_2", "train_2"]
    with pytest.raises(FileNotFoundError, match="train_7"):
        openimage_train_files(str(tmp_path), subset_list=[7])


def test_kodak_and_folder_errors_name_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="kodim01"):
        kodak_files(str(tmp_path / "kodak"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        folder_files(str(tmp_path))
    write_image(tmp_path / "sub" / "a.png", (8, 8))
    assert folder_files(str(tmp_path), recursive=True) == [tmp_path / "sub" / "a.png"]


def test_sample_set_uses_real_scikit_image_photos(tmp_path: Path) -> None:
    files = sample_files(str(tmp_path), names=["astronaut", "coffee"])
    assert [f.name for f in files] == ["astronaut.png", "coffee.png"]
    with Image.open(files[0]) as image:
        assert image.size == (512, 512) and image.mode == "RGB"
    assert sample_files(str(tmp_path), names=["astronaut"]) == files[:1]  # cached, not rewritten


def test_held_out_split_keeps_the_strip_out_of_the_training_part(tmp_path: Path) -> None:
    """The demo's held-out crops (design §4.1): no pixel of a crop is in the file every stage trains on."""
    photo = sample_photo("coffee")
    training_part, held_out = split_off_held_out(photo, 192)
    assert training_part.shape == (400, 408, 3) and held_out.shape == (192, 192, 3)
    assert np.array_equal(training_part, photo[:, :408]) and np.array_equal(held_out, photo[104:296, 408:])
    (written,) = sample_files(str(tmp_path), names=["coffee"], held_out_side=192)
    assert np.array_equal(np.asarray(Image.open(written)), training_part)
    with pytest.raises(ValueError, match="at most 300"):
        split_off_held_out(photo, 301)  # more than half the width would leave less to train on than to test


def test_training_crops_pad_small_images_and_span_signed_range(tmp_path: Path) -> None:
    small = write_image(tmp_path / "small.png", (40, 20))
    crop = TrainingImages([small], crop_size=32)[0]
    assert crop.shape == (3, 32, 32) and crop.dtype == torch.float32
    assert -1.0 <= float(crop.min()) < 0 < float(crop.max()) <= 1.0


def test_corrupt_images_are_skipped_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = write_image(tmp_path / "good.png", (64, 64))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    dataset = TrainingImages([bad, good], crop_size=32)
    with caplog.at_level(logging.WARNING):
        crop = dataset[0]
    assert crop.shape == (3, 32, 32) and dataset.skipped == 1
    assert "bad.jpg" in caplog.text
    validation = ValidationImages([bad, good])
    assert len(validation) == 1 and validation.skipped == 1


def test_datamodule_batches(tmp_path: Path) -> None:
    files = [write_image(tmp_path / f"{i}.png", (48, 40), seed=i) for i in range(3)]
    dm = ImageDataModule(lambda: files, lambda: files[:1], crop_size=32, batch_size=2, num_workers=0, train_repeat=4)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 6 and batches[0].shape == (2, 3, 32, 32)
    (val,) = list(dm.val_dataloader())
    assert val.shape == (1, 3, 40, 48)
