"""File listings for the training and validation sets (design §4.1).

Each function returns a sorted list of image paths or raises with the directory it looked in and how to get the data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.util import img_as_ubyte

from lightning_modules.images import IMAGE_SUFFIXES, save_png, split_folder

log = logging.getLogger(__name__)
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
    """Every image (by suffix) in a folder; ``recursive`` descends into sub-folders. Other files are logged."""
    hint = f"put images ({', '.join(sorted(IMAGE_SUFFIXES))}) into {root}"
    images, others = split_folder(_require_dir(Path(root), hint), recursive=recursive)
    if others:
        log.warning("skipping %d file(s) in %s that are not images, e.g. %s", len(others), root, others[0])
    return _non_empty(images, root, hint)


def sample_files(cache_dir: str, names: Sequence[str] = SAMPLE_TRAIN) -> list[Path]:
    """Real photos shipped inside scikit-image's wheel, written once as PNG into ``cache_dir``."""
    from skimage import data

    out_dir = Path(cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name in names:
        path = out_dir / f"{name}.png"
        if not path.is_file():  # ranks may race here: each writes its own temporary file
            save_png(path, Image.fromarray(img_as_ubyte(np.asarray(getattr(data, name)()))).convert("RGB"))
        files.append(path)
    return files
