"""A progress bar in the recipe's own unit: ``iteration 340/900 · 5.1 it/s · loss 0.412 · qbpp 0.0813, ETA 0:01:23``.

Lightning's bars count batches of an epoch ("Epoch 27: 10/25"), which mean nothing when the systems stop at
``max_iterations`` and count ``iteration`` themselves (``lightning_modules/training/system.py``, and the VQGAN
system of stage 0). This bar reads those two counters, so it is right after a resume too (the rate and ETA
count only the iterations of this process). On a terminal it redraws one line; in a log file (no TTY) it writes
one line per ``refresh_rate`` iterations instead of carriage-return noise.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import ProgressBar

DEFAULT_METRICS = ("train/loss", "train/g_loss", "train/qbpp")
"""Shown when logged: the DC-VIC systems' total loss and rate, stage 0's generator loss."""


def format_duration(seconds: float) -> str:
    """``83`` -> ``0:01:23``; ``?`` while unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def progress_line(iteration: int, max_iterations: int, rate: float | None, metrics: dict[str, float]) -> str:
    """The bar's text, e.g. ``iteration 340/900 · 5.1 it/s · loss 0.412, ETA 0:01:50``."""
    parts = [f"iteration {iteration}/{max_iterations}"]
    parts.append(f"{rate:.3g} it/s" if rate else "? it/s")
    parts += [f"{name.rsplit('/', 1)[-1]} {value:.4g}" for name, value in metrics.items()]
    eta = (max_iterations - iteration) / rate if rate else math.inf
    return " · ".join(parts) + f", ETA {format_duration(eta)}"


class IterationProgressBar(ProgressBar):
    """Replaces ``TQDMProgressBar`` (``conf/callbacks/default.yaml``); needs ``pl_module.iteration`` /
    ``max_iterations``.

    ``refresh_rate``: iterations between updates. ``metrics``: logged keys to show (those not logged yet are left
    out). The rate is measured over the last ``window`` updates, so it follows a change of speed.
    """

    def __init__(
        self,
        refresh_rate: int = 10,
        metrics: Sequence[str] = DEFAULT_METRICS,
        window: int = 10,
        stream: TextIO | None = None,
    ) -> None:
        super().__init__()
        if refresh_rate < 1:
            raise ValueError(f"refresh_rate must be >= 1, got {refresh_rate}")
        self.refresh_rate = refresh_rate
        self.metrics = tuple(metrics)
        self.stream = stream
        self._enabled = True
        self._samples: deque[tuple[float, int]] = deque(maxlen=max(2, window + 1))
        self._open_line = False
        self._validation_start = 0.0

    # --- ProgressBar protocol ---

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        self._write(sep.join(str(a) for a in args), final=True)

    # --- hooks ---

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._samples.clear()
        self._samples.append((time.monotonic(), pl_module.iteration))
        self._show(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        iteration = pl_module.iteration
        if iteration % self.refresh_rate == 0 or iteration >= pl_module.max_iterations:
            self._samples.append((time.monotonic(), iteration))
            self._show(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validation_start = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            seconds = time.monotonic() - self._validation_start
            self.print(f"validation at iteration {pl_module.iteration}: {seconds:.1f} s")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._open_line:  # end the redrawn line, so what follows starts on its own
            self._stream().write("\n")
            self._open_line = False

    # --- drawing ---

    def rate(self) -> float | None:
        """Iterations per second over the recent updates; ``None`` before two distinct samples exist."""
        (t0, i0), (t1, i1) = self._samples[0], self._samples[-1]
        return (i1 - i0) / (t1 - t0) if i1 > i0 and t1 > t0 else None

    def current_metrics(self, trainer: L.Trainer) -> dict[str, float]:
        logged = trainer.callback_metrics
        return {name: float(logged[name]) for name in self.metrics if name in logged}

    def _show(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        line = progress_line(pl_module.iteration, pl_module.max_iterations, self.rate(), self.current_metrics(trainer))
        self._write(line, final=False)

    def _stream(self) -> TextIO:
        return self.stream or sys.stdout  # where Hydra's log lines go too, so the two keep their order

    def _write(self, text: str, final: bool) -> None:
        """``final``: a line of its own (kept); otherwise the bar, redrawn in place on a terminal."""
        if not self._enabled:
            return
        stream = self._stream()
        if not stream.isatty():
            stream.write(text + "\n")
        elif final:
            stream.write(("\n" if self._open_line else "") + text + "\n")
            self._open_line = False
        else:
            stream.write(f"\r{text}\033[K")
            self._open_line = True
        stream.flush()
