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


def sample_photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled photos as uint8 RGB (H, W, 3); of a stereo pair, the left view."""
    from skimage import data

    image = getattr(data, name)()
    image = image[0] if isinstance(image, tuple) else image
    return np.asarray(Image.fromarray(img_as_ubyte(image)).convert("RGB"))


def centre_crop(image: np.ndarray, side: int) -> np.ndarray:
    """The ``side × side`` square at the image's centre (the whole extent where the image is smaller)."""
    height, width = image.shape[:2]
    top, left = max(height - side, 0) // 2, max(width - side, 0) // 2
    return image[top : top + side, left : left + side]


def split_off_held_out(image: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(training part, held-out crop): the photo's right-hand ``side`` columns are never trained on, and the
    held-out crop is the ``side × side`` square at that strip's vertical centre (design §4.1).

    Held-out crops cut this way are in-distribution for a prior trained in minutes on the training parts, while
    not one of their pixels is seen in training.
    """
    height, width = image.shape[:2]
    if not 0 < side <= min(height, width // 2):
        raise ValueError(f"held-out side {side} must be positive and at most {min(height, width // 2)} here")
    return image[:, : width - side], centre_crop(image[:, width - side :], side)


def sample_files(cache_dir: str, names: Sequence[str] = SAMPLE_TRAIN, held_out_side: int = 0) -> list[Path]:
    """Real photos shipped inside scikit-image's wheel, written once as PNG into ``cache_dir``.

    ``held_out_side > 0`` writes only each photo's training part (:func:`split_off_held_out`); use a ``cache_dir``
    of its own per side, since a cached file is not rewritten.
    """
    out_dir = Path(cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name in names:
        path = out_dir / f"{name}.png"
        if not path.is_file():  # ranks may race here: each writes its own temporary file
            photo = sample_photo(name)
            save_png(path, split_off_held_out(photo, held_out_side)[0] if held_out_side else photo)
        files.append(path)
    return files
