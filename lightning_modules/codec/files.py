"""File-level codec work behind the ``dcvic`` command: image I/O, atomic writes, per-image records, reports.

Outputs are written to a temporary name in the target folder and renamed into place, so an interrupted or
failed run never leaves a half-written ``.dcvic`` or ``.png`` that looks finished.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from lightning_modules.codec.container import Container, read_image_size
from lightning_modules.codec.limits import DEFAULT_MAX_PIXELS, DecodeLimitError, check_pixel_limit

if TYPE_CHECKING:  # the codec imports torch and compressai (seconds): only where a file is really coded
    from lightning_modules.codec.image_codec import Conditioning, DCVICCodec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CONTAINER_SUFFIX = ".dcvic"
LEGACY_SUFFIX = ".bin"


class InputError(ValueError):
    """An input that is missing, unreadable, or not what the command expects."""


def collect_inputs(paths: Sequence[str | Path], suffixes: Sequence[str]) -> list[Path]:
    """Files as given, folders expanded to their matching files (sorted, not recursive)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes))
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    stems = [f.stem for f in files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise InputError(f"several inputs would write the same output name: {', '.join(duplicates)}")
    return files


def read_image(path: Path) -> np.ndarray:
    """uint8 HWC RGB; any unreadable, truncated or oversized image becomes an :class:`InputError`."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as exc:
        raise InputError(f"{path}: cannot read image ({exc})") from exc


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class CompressRecord:
    """One row of the compress CSV; ``real_bpp`` counts every byte of the file."""

    image: str
    output: str
    height: int
    width: int
    quality_index: int | None
    beta_rate: float
    beta_vq: float
    header_bits: int
    z_bits: int
    y_bits: int
    real_bits: int
    real_bpp: float
    estimated_z_bits: float
    estimated_y_bits: float
    estimated_bpp: float
    seconds: float


def compress_file(codec: DCVICCodec, source: Path, target: Path, conditioning: Conditioning) -> CompressRecord:
    from lightning_modules.codec.image_codec import image_to_tensor

    image = read_image(source)
    start = time.perf_counter()
    container, code = codec.compress(image_to_tensor(image), conditioning)
    data = container.to_bytes()
    write_atomic(target, data)
    pixels = image.shape[0] * image.shape[1]
    return CompressRecord(
        image=str(source),
        output=str(target),
        height=image.shape[0],
        width=image.shape[1],
        quality_index=conditioning.quality_index,
        beta_rate=conditioning.beta_rate,
        beta_vq=conditioning.beta_vq,
        header_bits=8 * container.header_bytes,
        z_bits=8 * len(container.z_string),
        y_bits=8 * len(container.y_string),
        real_bits=8 * len(data),
        real_bpp=8 * len(data) / pixels,
        estimated_z_bits=code.estimated_z_bits,
        estimated_y_bits=code.estimated_y_bits,
        estimated_bpp=(code.estimated_z_bits + code.estimated_y_bits) / pixels,
        seconds=time.perf_counter() - start,
    )


@dataclass
class DecompressRecord:
    file: str
    output: str
    height: int
    width: int
    seconds: float


def decompress_file(
    codec: DCVICCodec,
    source: Path,
    target: Path,
    legacy: bool = False,
    legacy_eb_version: str = "1.2.4",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecompressRecord:
    from lightning_modules.codec.image_codec import tensor_to_image

    try:
        data = source.read_bytes()
    except OSError as exc:
        raise InputError(f"{source}: cannot read ({exc.strerror})") from exc
    start = time.perf_counter()
    if legacy:
        x_hat, _ = codec.decompress_legacy(data, legacy_eb_version, max_pixels)
    else:
        x_hat, _ = codec.decode_container(Container.from_bytes(data), max_pixels)
    image = tensor_to_image(x_hat)
    write_png(target, image)
    return DecompressRecord(str(source), str(target), image.shape[0], image.shape[1], time.perf_counter() - start)


def refused_by_header(files: Sequence[Path], legacy: bool, max_pixels: int) -> dict[Path, str]:
    """Files whose header alone claims more than ``max_pixels``, with the reason: found from their first bytes,
    before any model is loaded. Unreadable headers are left to the full parse, which says what is wrong."""
    refused: dict[Path, str] = {}
    for path in files:
        try:
            with path.open("rb") as handle:
                size = read_image_size(handle.read(64), legacy)
            if size is not None:
                check_pixel_limit(*size, max_pixels)
        except OSError:
            continue
        except DecodeLimitError as exc:
            refused[path] = str(exc)
    return refused


def write_reports(records: Iterable[CompressRecord | DecompressRecord], folder: Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.csv`` with one row per image and ``<stem>.json`` with means (``avg_bpp`` for compress)."""
    import pandas as pd  # a second to import: not on the path that refuses a file by its header

    table = pd.DataFrame([asdict(r) for r in records])
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    write_atomic(csv_path, table.to_csv(index=False).encode())
    summary: dict[str, float | int] = {"images": len(table)}
    if len(table):
        numeric = table.select_dtypes("number").drop(columns=["height", "width", "quality_index"], errors="ignore")
        summary.update({f"mean_{k}": float(v) for k, v in numeric.mean().items()})
        if "real_bpp" in table:
            summary["avg_bpp"] = float(table["real_bpp"].mean())
    write_atomic(json_path, json.dumps(summary, indent=2).encode())
    return csv_path, json_path
