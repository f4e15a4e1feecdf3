"""TensorBoard image grids: the original next to its reconstruction at every validation beta setting."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchvision.utils import make_grid


class ValidationImageGrid(L.Callback):
    """Logs ``val_images/<index>`` for the first ``num_images`` validation images: [original, recon per setting]."""

    def __init__(self, num_images: int = 2) -> None:
        self.num_images = num_images

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: dict[str, Tensor],
        batch: Tensor,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx >= self.num_images or not trainer.is_global_zero or not outputs:
            return
        tiles = [batch[0], *[recon[0] for recon in outputs.values()]]
        grid = make_grid(torch.stack(tiles).float().cpu(), nrow=len(tiles), normalize=True, value_range=(-1, 1))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                labels = ", ".join(["original", *outputs])
                logger.experiment.add_image(f"val_images/{batch_idx}", grid, pl_module.iteration)
                logger.experiment.add_text(f"val_images/{batch_idx}/columns", labels, pl_module.iteration)
