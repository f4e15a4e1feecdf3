"""Image files and pixels, one definition each: suffixes, reading, dtype conversion, atomic writes.

Every reader (the ``dcvic`` CLI, evaluation, the datamodules, the stage-2 validation set) goes through
:func:`load_rgb`, so all of them accept the same files and see a photo the way image viewers show it: the
EXIF orientation tag of a phone JPEG is applied before anything else looks at the pixels.

Pixels: uint8 RGB images become ``[-1, 1]`` floats with exactly ``Normalize(0.5, 0.5)(ToTensor()(img))``
(the reference's input transform, bit for bit) and come back to 8 bits by *truncation*
``uint8((x + 1) / 2 · 255)`` like the reference's PNG writer (design §8.1); the rounded variant is a second,
separately named function because it gives other numbers (evaluation reports both).

Writes go to a hidden temporary name in the target folder and are renamed into place, so a crash or a
failed write never leaves a file under the final name that a resumed run would trust.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torch import Tensor

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm"})
"""File suffixes (lower case) every command treats as images: what Pillow reads and writes losslessly or as JPEG."""

_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message names the file once and says why."""


# ---------------------------------------------------------------------------------------------------------
# Finding and reading images
# ---------------------------------------------------------------------------------------------------------


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def split_folder(
    folder: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES, recursive: bool = False
) -> tuple[list[Path], list[Path]]:
    """(files with one of ``suffixes``, every other file) of a folder, each sorted, so callers can report the rest."""
    wanted = {s.lower() for s in suffixes}
    files = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file())
    return [p for p in files if p.suffix.lower() in wanted], [p for p in files if p.suffix.lower() not in wanted]


def _reason(exc: BaseException) -> str:
    """Why Pillow failed, without the file name it puts into some messages (the caller names the file)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image format Pillow can decode"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def failure_line(path: str | Path, exc: BaseException) -> str:
    """``<path>: <first line of the error>``, naming the file once whether or not the error already does."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return message if str(path) in message else f"{path}: {message}"


def load_rgb(path: str | Path) -> Image.Image:
    """The decoded RGB image as viewers show it (EXIF orientation applied); :class:`ImageReadError` otherwise."""
    try:
        with Image.open(path) as image:
            oriented = ImageOps.exif_transpose(image)  # a decoded copy, independent of the file
    except _READ_ERRORS as exc:
        raise ImageReadError(f"{path}: cannot read image ({_reason(exc)})") from exc
    return oriented if oriented.mode == "RGB" else oriented.convert("RGB")


def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB of :func:`load_rgb`."""
    return np.asarray(load_rgb(path))


def oriented_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as viewers show the image, from the header only: nothing is decoded."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _READ_ERRORS as exc:
        raise ImageReadError(f"{path}: cannot read image ({_reason(exc)})") from exc
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


# ---------------------------------------------------------------------------------------------------------
# Layout and dtype
# ---------------------------------------------------------------------------------------------------------


def to_chw(image: np.ndarray | Image.Image) -> Tensor:
    """uint8 (H, W, 3) array or RGB image → uint8 (3, H, W) tensor (a copy)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def to_hwc(image: Tensor) -> np.ndarray:
    """uint8 (3, H, W) tensor → uint8 (H, W, 3) array, the layout Pillow and numpy image code use."""
    return image.permute(1, 2, 0).cpu().numpy()


def from_uint8(image: Tensor) -> Tensor:
    """uint8 (…, 3, H, W) → float32 in [-1, 1], exactly ``Normalize(0.5, 0.5)(ToTensor()(img))``."""
    return image.float().div(255).sub(0.5).div(0.5)


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float → uint8 by truncation ``uint8((x + 1) / 2 · 255)``: the reference's writer and PSNR."""
    return ((x.float().clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8)


def to_uint8_rounded(x: Tensor) -> Tensor:
    """[-1, 1] float → the nearest uint8 level (exact for images that came from 8 bits via :func:`from_uint8`)."""
    return ((x.float().clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)


def image_to_tensor(image: np.ndarray | Image.Image) -> Tensor:
    """uint8 (H, W, 3) RGB → the network input (1, 3, H, W) float32 in [-1, 1]."""
    return from_uint8(to_chw(image)).unsqueeze(0)


def tensor_to_image(x_hat: Tensor) -> np.ndarray:
    """A network output (1, 3, H, W) in [-1, 1] → uint8 (H, W, 3) RGB by truncation (the PNG the reference writes)."""
    return to_hwc(to_uint8(x_hat[0]))


# ---------------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name next to ``path`` to write to: renamed onto ``path`` if the block succeeds, removed if not.

    The name is hidden (``.<name>.<unique>.partial<suffix>``), unique per writer (parallel ranks and jobs
    never share one) and keeps the suffix, so ``np.save``, ``torch.save`` and Pillow see the real file type.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write bytes (or UTF-8 text) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def save_png(path: str | Path, image: np.ndarray | Tensor | Image.Image) -> Path:
    """A uint8 (H, W, 3) array, uint8 (3, H, W) tensor or PIL image → PNG at ``path``, atomically."""
    if isinstance(image, Tensor):
        image = to_hwc(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
