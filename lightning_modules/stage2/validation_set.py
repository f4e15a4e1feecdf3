"""Stage-2 validation set: seeded 256×256 crops saved as PNG next to their VQGAN indices (design §5.1).

The crop positions follow the reference's random streams exactly: the sorted listing is shuffled by
``np.random.RandomState(seed)``, and for every image at least ``crop_size`` on both sides Python's
``random.Random(seed)`` draws ``top`` then ``left`` (inclusive bounds). Images too small draw nothing.
Sizes and crops are of the image as viewers show it (EXIF orientation applied, like every reader here); for
a rotated phone JPEG that differs from the reference, which crops the stored, unrotated pixels.

Every crop is written as ``<stem>.png`` + ``<stem>.npy`` (uint8, (crop/8, crop/8)), each file atomically,
so re-running the builder only fills in what is missing, with the same crops. ``crops.csv`` records where
every crop came from. :class:`CachedVQDataset` reads the set back for the rate search and selection.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from lightning_modules.images import ImageReadError, atomic_path, image_to_tensor, load_rgb, oriented_size, save_png
from lightning_modules.model_file import load_model_file
from lightning_modules.networks.vqgan import FrozenVQGAN

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropPlan:
    name: str
    source: str
    top: int
    left: int


@dataclass
class ValidationSetReport:
    out_dir: str
    written: int = 0
    reused: int = 0
    unreadable: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.written + self.reused


def iter_crop_plans(
    image_dir: str | Path,
    crop_size: int = 256,
    seed: int = 0,
    pattern: str = "*.jpg",
    unreadable: list[str] | None = None,
) -> Iterator[CropPlan]:
    """Crop positions in the reference's order; unreadable files draw nothing and are appended to ``unreadable``."""
    image_dir = Path(image_dir)
    files = sorted(image_dir.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no images matching {pattern!r} in {image_dir}")
    np.random.RandomState(seed).shuffle(files)
    rng = random.Random(seed)
    for path in files:
        try:
            width, height = oriented_size(path)
        except ImageReadError as exc:
            log.warning("skipping %s", exc)
            if unreadable is not None:
                unreadable.append(str(path))
            continue
        if min(width, height) < crop_size:
            continue
        top = rng.randint(0, height - crop_size)
        left = rng.randint(0, width - crop_size)
        yield CropPlan(path.stem, str(path), top, left)


def tokenizer_from_model_file(path: str | Path) -> FrozenVQGAN:
    """The frozen VQGAN stored inside a dcvic model file (the one the searched model will decode with)."""
    return load_model_file(path).build_model().vq_model


def build_validation_set(
    image_dir: str | Path,
    out_dir: str | Path,
    tokenizer: FrozenVQGAN,
    num_images: int = 2000,
    crop_size: int = 256,
    seed: int = 0,
    pattern: str = "*.jpg",
    device: str = "cpu",
) -> ValidationSetReport:
    """Write (or complete) ``num_images`` crops with their VQGAN indices under ``out_dir``."""
    if tokenizer.n_embed > 256:
        raise ValueError(f"indices are cached as uint8, which needs n_embed <= 256 (got {tokenizer.n_embed})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer.to(device).eval()
    report = ValidationSetReport(str(out_dir))
    kept: list[CropPlan] = []
    with tqdm(total=num_images, desc="validation crops", unit="crop") as bar:
        for plan in iter_crop_plans(image_dir, crop_size, seed, pattern, report.unreadable):
            if len(kept) == num_images:
                break
            try:
                wrote = _materialise(plan, out_dir, crop_size, tokenizer, device)
            except ImageReadError as exc:
                log.warning("skipping %s", exc)
                report.unreadable.append(plan.source)
                continue
            report.written += wrote
            report.reused += not wrote
            kept.append(plan)
            bar.update()
    if len(kept) < num_images:
        log.warning("only %d of %d crops: %s has too few images >= %d px", len(kept), num_images, image_dir, crop_size)
    pd.DataFrame([asdict(plan) for plan in kept]).to_csv(out_dir / "crops.csv", index=False)
    return report


def _materialise(plan: CropPlan, out_dir: Path, crop_size: int, tokenizer: FrozenVQGAN, device: str) -> bool:
    """Write one crop and its indices unless both exist; returns whether anything was written."""
    png, npy = out_dir / f"{plan.name}.png", out_dir / f"{plan.name}.npy"
    if png.is_file() and npy.is_file():
        return False
    box = (plan.left, plan.top, plan.left + crop_size, plan.top + crop_size)
    crop = load_rgb(plan.source).crop(box)
    with torch.no_grad():
        indices = tokenizer.encode(image_to_tensor(crop).to(device)).indices[0]  # (crop/8, crop/8)
    with atomic_path(npy) as tmp:
        np.save(tmp, indices.cpu().numpy().astype(np.uint8))
    save_png(png, crop)
    return True


class CachedVQDataset(Dataset):
    """``(image in [-1, 1], VQ indices as int64)`` pairs of a built validation set, in sorted name order."""

    def __init__(self, root: str | Path, limit: int | None = None) -> None:
        self.root = Path(root)
        pngs = sorted(p for p in self.root.glob("*.png") if not p.name.startswith("."))
        if not pngs:
            raise FileNotFoundError(
                f"no validation crops in {self.root}; build them with `python entrypoints/build_val_set.py`"
            )
        missing = [p.name for p in pngs if not p.with_suffix(".npy").is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} crops in {self.root} lack their .npy indices, e.g. {missing[0]}")
        self.pngs = pngs[:limit] if limit else pngs

    def __len__(self) -> int:
        return len(self.pngs)

    @property
    def names(self) -> list[str]:
        return [p.stem for p in self.pngs]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        png = self.pngs[index]
        x = image_to_tensor(load_rgb(png))[0]
        indices = torch.from_numpy(np.load(png.with_suffix(".npy")).astype(np.int64))
        return x, indices

    def fingerprint(self) -> str:
        """Short content hash (names, indices, PNG sizes): memo entries are only valid for this exact set."""
        digest = hashlib.sha256()
        for png in self.pngs:
            digest.update(png.name.encode())
            digest.update(png.with_suffix(".npy").read_bytes())
            digest.update(str(png.stat().st_size).encode())
        return digest.hexdigest()[:12]
