"""File listings for the training and validation sets (design §4.1).

Each function returns a sorted list of image paths or raises with the directory it looked in and how to get the data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
OPENIMAGE_HINT = (
    "download OpenImages V6 training images (e.g. with the CVDF/open-images 'downloader.py') into "
    "<root>/train_0 … <root>/train_9 and set paths.openimage_root"
)
KODAK_HINT = "download the 24 Kodak PNGs (kodim01.png … kodim24.png, r0k.us/graphics/kodak) and set paths.kodak_root"
SAMPLE_TRAIN = ("astronaut", "rocket", "immunohistochemistry", "coffee", "chelsea")


def _require_dir(path: Path, hint: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"image directory not found: {path}. To get it: {hint}")
    return path


def _non_empty(files: list[Path], where: str, hint: str) -> list[Path]:
    if not files:
        raise FileNotFoundError(f"no images found in {where}. {hint}")
    return files


def openimage_train_files(root: str, subset_list: Sequence[int] = tuple(range(10))) -> list[Path]:
    """``<root>/train_<k>/*.jpg`` for every k in ``subset_list``, sorted (the DataLoader shuffles)."""
    files: list[Path] = []
    for k in subset_list:
        files += sorted(_require_dir(Path(root) / f"train_{k}", OPENIMAGE_HINT).glob("*.jpg"))
    return _non_empty(files, f"{root}/train_{{{','.join(map(str, subset_list))}}}", OPENIMAGE_HINT)


def kodak_files(root: str) -> list[Path]:
    files = sorted(_require_dir(Path(root), KODAK_HINT).glob("*.png"))
    return _non_empty(files, root, KODAK_HINT)


def folder_files(root: str, recursive: bool = False) -> list[Path]:
    """Every image (by suffix) in a folder; ``recursive`` descends into sub-folders."""
    hint = f"put images ({', '.join(IMAGE_SUFFIXES)}) into {root}"
    pattern = "**/*" if recursive else "*"
    files = [p for p in _require_dir(Path(root), hint).glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES]
    return _non_empty(sorted(files), root, hint)


def sample_files(cache_dir: str, names: Sequence[str] = SAMPLE_TRAIN) -> list[Path]:
    """Real photos shipped inside scikit-image's wheel, written once as PNG into ``cache_dir``."""
    from skimage import data

    out_dir = Path(cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name in names:
        path = out_dir / f"{name}.png"
        if not path.is_file():
            array = np.asarray(getattr(data, name)())
            if array.dtype != np.uint8:
                array = (np.clip(array, 0, 1) * 255).astype(np.uint8)
            tmp = path.with_name(f"{name}.{os.getpid()}.partial.png")  # ranks may race here
            Image.fromarray(array).convert("RGB").save(tmp)
            tmp.replace(path)
        files.append(path)
    return files
