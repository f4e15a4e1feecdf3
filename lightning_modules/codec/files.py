"""File-level codec work behind the ``dcvic`` command: inputs, per-image records, reports.

Images are read and outputs written through :mod:`lightning_modules.images` (the suffixes every command
accepts, EXIF orientation, atomic writes: an interrupted or failed run never leaves a half-written ``.dcvic``
or ``.png`` that looks finished).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from lightning_modules.codec.container import EXPLICIT_BETAS, Container
from lightning_modules.codec.image_codec import Conditioning, DCVICCodec
from lightning_modules.codec.limits import DEFAULT_MAX_PIXELS
from lightning_modules.codec.rate_control import RateTarget, compress_to_target
from lightning_modules.images import image_to_tensor, read_rgb, save_png, split_folder, tensor_to_image, write_atomic
from lightning_modules.networks.latent_codec import LatentCode

CONTAINER_SUFFIX = ".dcvic"
LEGACY_SUFFIX = ".bin"
COMPRESS_REPORT, DECOMPRESS_REPORT = "_bitrates", "_decode_times"
REPORT_NAMES = {f"{stem}{suffix}" for stem in (COMPRESS_REPORT, DECOMPRESS_REPORT) for suffix in (".csv", ".json")}


class InputError(ValueError):
    """An input that is missing, unreadable, or not what the command expects."""


@dataclass
class Inputs:
    """The files a command will process, and the other files of its input folders (reported, never dropped)."""

    files: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def collect_inputs(paths: Sequence[str | Path], suffixes: Iterable[str]) -> Inputs:
    """Files as given, folders expanded to their files with one of ``suffixes`` (sorted, not recursive).

    Every other file of a folder is listed in :attr:`Inputs.skipped`, so the caller can say what it left out,
    except the reports :func:`write_reports` puts next to the outputs (decompressing a compress folder is normal).
    """
    inputs = Inputs()
    for path in map(Path, paths):
        if path.is_dir():
            matching, others = split_folder(path, suffixes)
            inputs.files.extend(matching)
            inputs.skipped.extend(other for other in others if other.name not in REPORT_NAMES)
        elif path.is_file():
            inputs.files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    stems = [f.stem for f in inputs.files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise InputError(f"several inputs would write the same output name: {', '.join(duplicates)}")
    return inputs


@dataclass
class CompressRecord:
    """One row of the compress CSV; ``real_bpp`` counts every byte of the file (with a target: the achieved rate).

    The last six columns are filled by rate control (:mod:`.rate_control`) and empty at a fixed quality.
    """

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
    target_bpp: float | None = None
    target_bytes: float | None = None
    probes: int | None = None
    search_seconds: float | None = None
    rate_status: str | None = None
    rate_message: str | None = None


def compress_file(codec: DCVICCodec, source: Path, target: Path, conditioning: Conditioning) -> CompressRecord:
    image = read_rgb(source)
    start = time.perf_counter()
    container, code = codec.compress(image_to_tensor(image), conditioning)
    return _write_compressed(source, target, image.shape, container, container.to_bytes(), code, start)


def compress_file_to_target(
    codec: DCVICCodec, source: Path, target: Path, rate_target: RateTarget, beta_vq: float
) -> CompressRecord:
    """Rate control per image: the file the search chose, and its target, probes and search time."""
    image = read_rgb(source)
    start = time.perf_counter()
    result = compress_to_target(codec, image_to_tensor(image), rate_target, beta_vq)
    record = _write_compressed(source, target, image.shape, result.container, result.data, result.code, start)
    return replace(record, **result.record_fields())


def _write_compressed(
    source: Path,
    target: Path,
    shape: tuple[int, ...],
    container: Container,
    data: bytes,
    code: LatentCode,
    start: float,
) -> CompressRecord:
    write_atomic(target, data)
    pixels = shape[0] * shape[1]
    return CompressRecord(
        image=str(source),
        output=str(target),
        height=shape[0],
        width=shape[1],
        quality_index=None if container.quality_index == EXPLICIT_BETAS else container.quality_index,
        beta_rate=container.beta_rate,
        beta_vq=container.beta_vq,
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
    save_png(target, image)
    return DecompressRecord(str(source), str(target), image.shape[0], image.shape[1], time.perf_counter() - start)


def write_reports(records: Iterable[CompressRecord | DecompressRecord], folder: Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.csv`` with one row per image and ``<stem>.json`` with means (``avg_bpp`` for compress)."""
    table = pd.DataFrame([asdict(r) for r in records])
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    write_atomic(csv_path, table.to_csv(index=False))
    summary: dict[str, float | int] = {"images": len(table)}
    if len(table):
        numeric = table.select_dtypes("number").drop(columns=["height", "width", "quality_index"], errors="ignore")
        summary.update({f"mean_{k}": float(v) for k, v in numeric.mean().items()})
        if "real_bpp" in table:
            summary["avg_bpp"] = float(table["real_bpp"].mean())
    write_atomic(json_path, json.dumps(summary, indent=2))
    return csv_path, json_path
