"""lightning_modules.images: every reader sees EXIF-rotated photos as viewers do, clear read errors, atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import ExifTags, Image

from datamodules.image_datamodule import TrainingImages, ValidationImages
from datamodules.image_files import folder_files
from lightning_modules.evaluation.rate_distortion import read_image
from lightning_modules.images import (
    IMAGE_SUFFIXES,
    ImageReadError,
    atomic_path,
    from_uint8,
    oriented_size,
    read_rgb,
    save_png,
    to_hwc,
    to_uint8_rounded,
    write_atomic,
)
from lightning_modules.networks.vqgan import FrozenVQGAN
from lightning_modules.stage2.validation_set import build_validation_set
from tests.support.codec_models import photo

ROWS, COLS = 80, 120  # as stored in the file; orientation 6 shows it COLS rows high and ROWS columns wide


@pytest.fixture
def rotated_jpeg(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A phone-style JPEG: pixels stored landscape, EXIF orientation 6 ("rotate 90° clockwise to display")."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(photo("astronaut", ROWS, COLS, top=40, left=180)).save(path, exif=exif, quality=95)
    with Image.open(path) as image:
        stored = np.asarray(image.convert("RGB"))  # the decoded pixels, before the orientation is applied
    return path, np.ascontiguousarray(np.rot90(stored, k=-1))  # what a viewer shows


def test_the_library_reader_applies_the_exif_orientation(rotated_jpeg) -> None:
    path, shown = rotated_jpeg
    assert shown.shape == (COLS, ROWS, 3)
    np.testing.assert_array_equal(read_rgb(path), shown)
    assert oriented_size(path) == (ROWS, COLS)  # (width, height), from the header alone


def test_evaluation_and_the_datamodules_see_the_rotated_image(rotated_jpeg) -> None:
    path, shown = rotated_jpeg
    assert torch.equal(read_image(path), torch.from_numpy(shown).permute(2, 0, 1))
    assert torch.equal(ValidationImages([path])[0], from_uint8(torch.from_numpy(shown).permute(2, 0, 1)))
    crop = to_hwc(to_uint8_rounded(TrainingImages([path], crop_size=ROWS)[0]))  # full width of the shown image
    windows = [shown[top : top + ROWS] for top in range(COLS - ROWS + 1)]
    assert any(np.array_equal(crop, w) or np.array_equal(crop, w[:, ::-1]) for w in windows)  # maybe flipped


def test_the_stage2_builder_crops_the_rotated_image(rotated_jpeg, tmp_path: Path) -> None:
    path, shown = rotated_jpeg
    torch.manual_seed(0)
    tokenizer = FrozenVQGAN(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)
    report = build_validation_set(path.parent, tmp_path / "set", tokenizer, num_images=1, crop_size=64)
    (plan,) = pd.read_csv(tmp_path / "set" / "crops.csv").itertuples()
    assert report.written == 1 and plan.top <= COLS - 64 and plan.left <= ROWS - 64
    crop = shown[plan.top : plan.top + 64, plan.left : plan.left + 64]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "set" / "phone.png")), crop)


def test_one_suffix_set_for_folders(tmp_path: Path) -> None:
    for suffix in (".bmp", ".tif", ".tiff", ".PNG"):
        Image.fromarray(photo("coffee", 8, 8)).save(tmp_path / f"a{suffix}")
    (tmp_path / "notes.txt").write_text("not an image")
    assert {".bmp", ".tif", ".tiff", ".png", ".jpg", ".webp"} <= IMAGE_SUFFIXES
    assert sorted(p.suffix for p in folder_files(str(tmp_path))) == [".PNG", ".bmp", ".tif", ".tiff"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "not an image format Pillow can decode"), (None, "No such file or directory")],
)
def test_a_read_error_names_the_file_once_and_says_why(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError) as error:
        read_rgb(path)
    assert str(error.value) == f"{path}: cannot read image ({reason})"


def test_a_truncated_image_is_a_read_error(tmp_path: Path) -> None:
    good = save_png(tmp_path / "good.png", photo("coffee", 64, 64))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageReadError, match="cut.png: cannot read image"):
        read_rgb(tmp_path / "cut.png")


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out" / "result.npy"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        np.save(tmp, np.zeros(3))  # the temporary keeps the suffix, so np.save writes exactly there
        assert tmp.is_file() and tmp.name.startswith(".") and tmp.suffix == ".npy"
        raise RuntimeError("killed mid-write")
    assert list(target.parent.iterdir()) == []


def test_atomic_writes_replace_and_keep_normal_permissions(tmp_path: Path) -> None:
    target = write_atomic(tmp_path / "table.csv", "a,b\n")
    write_atomic(target, b"a,b\n1,2\n")
    assert target.read_text() == "a,b\n1,2\n" and [p.name for p in tmp_path.iterdir()] == ["table.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
