"""``last.ckpt`` every N *iterations* plus kept iterations (design §4.8), counted by the system, not ``global_step``.

Lightning's ``global_step`` advances once per optimizer step (two per iteration here, none when an iteration is
skipped), so ``ModelCheckpoint(every_n_train_steps=…)`` would save at the wrong times. Files::

    <dirpath>/last.ckpt            rewritten atomically every ``every_n_iterations`` and at the end
    <dirpath>/iter_<K>.ckpt        kept forever for K in ``keep_iterations``
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

LAST = "last.ckpt"


class IterationCheckpoint(L.Callback):
    def __init__(self, dirpath: str, every_n_iterations: int = 5000, keep_iterations: Sequence[int] = ()) -> None:
        if every_n_iterations < 1:
            raise ValueError(f"every_n_iterations must be >= 1, got {every_n_iterations}")
        self.dirpath = Path(dirpath)
        self.every_n_iterations = every_n_iterations
        self.keep_iterations = {int(k) for k in keep_iterations}

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        iteration = pl_module.iteration
        finished = iteration >= pl_module.max_iterations
        if iteration % self.every_n_iterations == 0 or finished or iteration in self.keep_iterations:
            self.save(trainer, iteration)

    def save(self, trainer: L.Trainer, iteration: int) -> None:
        """Write to a temporary name, then rename: a kill mid-write never corrupts ``last.ckpt``."""
        tmp = self.dirpath / f"{LAST}.partial"
        trainer.save_checkpoint(
            tmp, weights_only=False
        )  # the full state, for resuming; every rank calls, rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.last_path)
            if iteration in self.keep_iterations:
                shutil.copyfile(self.last_path, self.dirpath / f"iter_{iteration}.ckpt")
        trainer.strategy.barrier()
