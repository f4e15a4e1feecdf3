"""The ``dcvic`` command: folders in, files out, reports, and one clean line per error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import ExifTags, Image

from entrypoints.cli import main
from lightning_modules.codec.container import Container
from lightning_modules.codec.image_codec import fast_dtype
from lightning_modules.evaluation.rate_distortion import list_images
from lightning_modules.images import IMAGE_SUFFIXES
from tests.support.codec_models import photo, write_model_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_file(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(photo("astronaut", 64, 96, top=100, left=150)).save(folder / "astronaut.png")
    Image.fromarray(photo("coffee", 40, 40, top=100, left=200)).save(folder / "coffee.jpg", quality=95)
    Image.fromarray(photo("chelsea", 48, 64, top=50, left=150)).save(folder / "chelsea.webp", lossless=True)
    (folder / "notes.txt").write_text("not an image: skipped, and said so")
    return folder


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_folder_round_trip_with_reports(photos: Path, model_path: Path, tmp_path: Path, capsys) -> None:
    packed, unpacked = tmp_path / "packed", tmp_path / "unpacked"
    code, out, err = run(
        ["compress", str(photos), "-o", str(packed), "--checkpoint", str(model_path), "-q", "1"], capsys
    )
    assert code == 0, err
    assert sorted(p.name for p in packed.glob("*.dcvic")) == ["astronaut.dcvic", "chelsea.dcvic", "coffee.dcvic"]
    table = pd.read_csv(packed / "_bitrates.csv")
    row = table.set_index(table["image"].map(lambda p: Path(p).stem)).loc["astronaut"]
    size = (packed / "astronaut.dcvic").stat().st_size
    assert row["real_bits"] == 8 * size == row["header_bits"] + row["z_bits"] + row["y_bits"]
    assert row["real_bpp"] == pytest.approx(8 * size / (64 * 96))
    assert row["estimated_bpp"] > 0 and row["seconds"] > 0
    summary = json.loads((packed / "_bitrates.json").read_text())
    assert summary["images"] == 3 and summary["avg_bpp"] == pytest.approx(table["real_bpp"].mean())
    assert "mean real bpp" in out

    code, _, err = run(["decompress", str(packed), "-o", str(unpacked), "--checkpoint", str(model_path)], capsys)
    assert code == 0, err
    assert "skipped" not in err  # the compress reports next to the .dcvic files are ours, not stray inputs
    decoded = np.asarray(Image.open(unpacked / "astronaut.png"))
    assert decoded.shape == (64, 96, 3) and decoded.dtype == np.uint8
    assert (unpacked / "_decode_times.csv").is_file()


def test_explicit_betas(photos: Path, model_path: Path, tmp_path: Path, capsys) -> None:
    argv = ["compress", str(photos / "astronaut.png"), "-o", str(tmp_path), "--checkpoint", str(model_path)]
    code, _, err = run([*argv, "--beta-rate", "0.5", "--beta-vq", "1.5"], capsys)
    assert code == 0, err
    container = Container.from_bytes((tmp_path / "astronaut.dcvic").read_bytes())
    assert (container.quality_index, container.beta_rate, container.beta_vq) == (255, 0.5, 1.5)


def test_fast_files_decode_with_the_exact_decoder(photos: Path, model_path: Path, tmp_path: Path, capsys) -> None:
    """``--fast`` changes how the networks run, not the format; ``--tiling reference`` is accepted; exact and fast
    decodes of one file agree closely. Where bf16 is not native, fast mode says once that it stays float32."""
    packed = tmp_path / "packed"
    argv = ["compress", str(photos / "astronaut.png"), "-o", str(packed), "--checkpoint", str(model_path), "-q", "3"]
    code, _, err = run([*argv, "--fast", "--tiling", "reference", "--memory-budget", "4"], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("dcvic: note:")]
    assert len(notes) == (0 if fast_dtype(torch.device("cpu")) else 1)
    decoded = {}
    for mode in ("exact", "fast"):
        options = ["--fast"] if mode == "fast" else []
        target = tmp_path / mode
        code, _, err = run(
            ["decompress", str(packed), "-o", str(target), "--checkpoint", str(model_path), *options], capsys
        )
        assert code == 0, err
        decoded[mode] = np.asarray(Image.open(target / "astronaut.png")).astype(int)
    difference = np.abs(decoded["exact"] - decoded["fast"])
    if fast_dtype(torch.device("cpu")) is None:  # float32 fast mode: float rounding only
        assert difference.max() <= 2
    else:  # native bf16: 8-bit mantissas, and a near-tied VQ index may flip one 8×8 block
        assert difference.mean() <= 2


def test_quality_needs_a_selected_table(photos: Path, tmp_path: Path, capsys) -> None:
    """A stage-1_x model carries no quality table: --quality is refused in one line that says what to give."""
    stage_1 = write_model_file(tmp_path / "stage_1_3.pt", quality_table=None)
    argv = ["compress", str(photos / "astronaut.png"), "-o", str(tmp_path / "out"), "--checkpoint", str(stage_1)]
    code, _, err = run([*argv, "-q", "2"], capsys)
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "out").exists()
    assert "has no quality table" in err and "--beta-rate in [0, 3.0] and --beta-vq in [0, 3.5]" in err
    code, _, err = run([*argv, "--beta-rate", "1.0", "--beta-vq", "2.0"], capsys)
    assert code == 0, err
    code, _, err = run([*argv, "--beta-rate", "3.2", "--beta-vq", "2.0"], capsys)
    assert code == 2 and "beta_rate must lie in [0, 3.0]" in err


def test_bad_images_are_reported_and_skipped(photos: Path, model_path: Path, tmp_path: Path, capsys) -> None:
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    good = (photos / "astronaut.png").read_bytes()
    (photos / "truncated.png").write_bytes(good[: len(good) // 2])
    out_dir = tmp_path / "packed"
    code, out, err = run(
        ["compress", str(photos), "-o", str(out_dir), "--checkpoint", str(model_path)] + ["-q", "0"], capsys
    )
    assert code == 1
    lines = [line for line in err.splitlines() if "cannot read image" in line]
    assert len(lines) == 2 and all(line.startswith("dcvic: ") for line in lines)
    assert "Traceback" not in err
    assert not (out_dir / "broken.dcvic").exists() and not (out_dir / "truncated.dcvic").exists()
    assert len(pd.read_csv(out_dir / "_bitrates.csv")) == 3
    assert not [p for p in out_dir.iterdir() if "partial" in p.name]
    assert "compressed 3 image(s)" in out and "skipped 3 file(s): 1 not an image file, 2 failed" in out


def test_every_skipped_file_is_reported_and_counted(photos: Path, model_path: Path, tmp_path: Path, capsys) -> None:
    (photos / "raw.cr2").write_bytes(b"a camera raw file the codec does not read")
    (photos / "subfolder").mkdir()
    code, out, err = run(
        ["compress", str(photos), "-o", str(tmp_path / "out"), "--checkpoint", str(model_path), "-q", "0"], capsys
    )
    assert code == 0, err
    skipped = sorted(line for line in err.splitlines() if "skipped" in line)
    assert skipped == [f"dcvic: {photos / name}: skipped, not an image file" for name in ("notes.txt", "raw.cr2")]
    assert out.strip().endswith("; skipped 2 file(s): 2 not an image file")


def test_an_error_names_the_file_once(photos: Path, model_path: Path, tmp_path: Path, capsys) -> None:
    empty = photos / "empty.png"
    empty.write_bytes(b"")
    code, _, err = run(
        ["compress", str(empty), "-o", str(tmp_path / "out"), "--checkpoint", str(model_path), "-q", "0"], capsys
    )
    assert code == 1
    assert err.count(str(empty)) == 1 and err.count("empty.png") == 1
    assert err.startswith(f"dcvic: {empty}: cannot read image (")


def test_every_image_suffix_is_compressed_and_evaluation_lists_the_same_files(
    model_path: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for suffix in sorted(IMAGE_SUFFIXES):  # .bmp and .tif(f) included: one suffix set for every reader
        Image.fromarray(photo("coffee", 24, 40, top=100, left=200)).save(folder / f"coffee_{suffix[1:]}{suffix}")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code, _, err = run(["compress", str(folder), "-o", str(out), "--checkpoint", str(model_path), "-q", "0"], capsys)
    assert code == 0, err
    compressed = sorted(p.stem for p in out.glob("*.dcvic"))
    assert {".bmp", ".tif", ".tiff"} <= IMAGE_SUFFIXES and len(compressed) == len(IMAGE_SUFFIXES)
    assert compressed == [p.stem for p in list_images(folder)]


def test_an_exif_rotated_jpeg_is_coded_the_way_viewers_show_it(model_path: Path, tmp_path: Path, capsys) -> None:
    stored = photo("chelsea", 32, 48, top=50, left=150)  # 32 rows × 48 columns as stored in the file
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "rotate 90° clockwise to display", as phones write it
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    packed, unpacked = tmp_path / "packed", tmp_path / "unpacked"
    argv = ["--checkpoint", str(model_path)]
    assert run(["compress", str(tmp_path / "phone.jpg"), "-o", str(packed), *argv, "-q", "0"], capsys)[0] == 0
    assert run(["decompress", str(packed / "phone.dcvic"), "-o", str(unpacked), *argv], capsys)[0] == 0
    assert np.asarray(Image.open(unpacked / "phone.png")).shape == (48, 32, 3)


def test_bad_bitstreams_are_reported(photos: Path, model_path: Path, tmp_path: Path, capsys) -> None:
    packed, unpacked = tmp_path / "packed", tmp_path / "unpacked"
    assert (
        run(
            ["compress", str(photos / "coffee.jpg"), "-o", str(packed), "--checkpoint", str(model_path), "-q", "2"],
            capsys,
        )[0]
        == 0
    )
    data = (packed / "coffee.dcvic").read_bytes()
    (packed / "truncated.dcvic").write_bytes(data[:-10])
    (packed / "version.dcvic").write_bytes(data[:4] + b"\x07" + data[5:])
    other_model = write_model_file(tmp_path / "other.pt", seed=3)
    code, _, err = run(["decompress", str(packed), "-o", str(unpacked), "--checkpoint", str(model_path)], capsys)
    assert code == 1
    assert "truncated.dcvic: truncated file" in err
    assert "version.dcvic: .dcvic format version 7 is not supported" in err
    assert sorted(p.name for p in unpacked.glob("*.png")) == ["coffee.png"]
    code, _, err = run(
        ["decompress", str(packed / "coffee.dcvic"), "-o", str(unpacked), "--checkpoint", str(other_model)], capsys
    )
    assert code == 1 and "decode it with the checkpoint that compressed it" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compress", "{photos}", "-o", "{out}", "--checkpoint", "{missing}", "-q", "0"], "model file not found"),
        (["compress", "{photos}", "-o", "{out}", "--checkpoint", "{model}", "-q", "9"], "out of range"),
        (["compress", "{photos}", "-o", "{out}", "--checkpoint", "{model}"], "give a quality index"),
        (["compress", "{missing}", "-o", "{out}", "--checkpoint", "{model}", "-q", "0"], "no such file or folder"),
        (["decompress", "{photos}", "-o", "{out}", "--checkpoint", "{model}"], "no input files"),
        (
            ["compress", "{photos}", "-o", "{out}", "--checkpoint", "{photos}/astronaut.png", "-q", "0"],
            "not a readable model",
        ),
        (
            ["compress", "{photos}", "-o", "{out}", "--checkpoint", "{model}", "-q", "0", "--memory-budget", "0"],
            "memory_budget_gb must be positive",
        ),  # fmt: skip
    ],
)
def test_setup_errors_are_one_line(argv, message, photos: Path, model_path: Path, tmp_path: Path, capsys) -> None:
    paths = dict(photos=photos, out=tmp_path / "out", model=model_path, missing=tmp_path / "missing.pt")
    code, _, err = run([a.format(**paths) for a in argv], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("dcvic: ") and message in err


def test_console_entry_point_runs_without_traceback(tmp_path: Path) -> None:
    """The real process: a corrupt file ends in one stderr line and a non-zero status."""
    (tmp_path / "junk.dcvic").write_bytes(b"DCVC\x01" + b"\0" * 10)
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "decompress", str(tmp_path / "junk.dcvic"), "-o", str(tmp_path),
         "--checkpoint", str(tmp_path / "none.pt")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("dcvic: DC-VIC model file not found")
    assert "Traceback" not in result.stderr
