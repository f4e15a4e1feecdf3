"""Image datasets and the LightningDataModule used by every training stage (design §4.1, §7).

Training: random 256² crop (reflect pad-if-needed) → horizontal flip → [-1, 1], batch 6, shuffled, drop_last.
Validation: full images (batch 1), optionally centre-cropped for quick CPU runs.
Images are read as viewers show them (EXIF orientation applied, :func:`lightning_modules.images.load_rgb`).
A file that cannot be decoded is skipped, counted and logged; training goes on with the next file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from lightning_modules.images import failure_line, from_uint8, load_rgb, to_chw

log = logging.getLogger(__name__)
FileLister = Callable[[], list[Path]]
READ_ERRORS = (OSError, ValueError, RuntimeError)  # load_rgb's ImageReadError is a ValueError


def to_signed_tensor(image: Image.Image) -> Tensor:
    """RGB image -> (3, H, W) float in [-1, 1], the last transform step (ToTensor + Normalize(0.5, 0.5))."""
    return from_uint8(to_chw(image))


def training_transform(crop_size: int) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.RandomCrop(crop_size, pad_if_needed=True, padding_mode="reflect"),
            transforms.RandomHorizontalFlip(p=0.5),
            to_signed_tensor,
        ]
    )


class TrainingImages(Dataset):
    """Random crops; an unreadable file is replaced by the next readable one (counted and logged per worker)."""

    def __init__(self, files: list[Path], crop_size: int = 256) -> None:
        self.files = files
        self.transform = training_transform(crop_size)
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        for offset in range(len(self.files)):
            path = self.files[(index + offset) % len(self.files)]
            try:
                return self.transform(load_rgb(path))
            except READ_ERRORS as exc:
                self.skipped += 1
                log.warning("skipping %s; %d skipped in this worker", failure_line(path, exc), self.skipped)
        raise RuntimeError(f"none of the {len(self.files)} training images could be read")


class ValidationImages(Dataset):
    """Whole images in [-1, 1]; unreadable files are dropped at set-up (counted and logged)."""

    def __init__(self, files: list[Path], center_crop: int | None = None) -> None:
        self.files = [p for p in files if self._readable(p)]
        self.skipped = len(files) - len(self.files)
        if self.skipped:
            log.warning("validation: skipped %d unreadable image(s) of %d", self.skipped, len(files))
        if not self.files:
            raise RuntimeError(f"none of the {len(files)} validation images could be read")
        steps = [transforms.CenterCrop(center_crop)] if center_crop else []
        self.transform = transforms.Compose([*steps, to_signed_tensor])

    @staticmethod
    def _readable(path: Path) -> bool:
        try:
            load_rgb(path)
            return True
        except READ_ERRORS as exc:
            log.warning("skipping validation image %s", failure_line(path, exc))
            return False

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(load_rgb(self.files[index]))


class RepeatedDataset(Dataset):
    """Repeat a tiny set so that one epoch is more than one batch (sample photos)."""

    def __init__(self, dataset: Dataset, repeat: int) -> None:
        self.dataset = dataset
        self.repeat = repeat

    def __len__(self) -> int:
        return len(self.dataset) * self.repeat

    def __getitem__(self, index: int) -> Tensor:
        return self.dataset[index % len(self.dataset)]


class ImageDataModule(L.LightningDataModule):
    """Listers are called in ``setup`` so that composing a config never walks a million-file directory."""

    def __init__(
        self,
        train_files: FileLister,
        val_files: FileLister,
        crop_size: int = 256,
        batch_size: int = 6,
        num_workers: int = 8,
        val_center_crop: int | None = None,
        train_repeat: int = 1,
    ) -> None:
        super().__init__()
        self.train_files = train_files
        self.val_files = val_files
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_center_crop = val_center_crop
        self.train_repeat = train_repeat
        self.train_set: Dataset | None = None
        self.val_set: ValidationImages | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            images = TrainingImages(self.train_files(), self.crop_size)
            self.train_set = RepeatedDataset(images, self.train_repeat) if self.train_repeat > 1 else images
        if self.val_set is None:
            self.val_set = ValidationImages(self.val_files(), self.val_center_crop)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=1, shuffle=False, num_workers=min(self.num_workers, 2))
