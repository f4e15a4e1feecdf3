"""A callback for subprocess tests: writes, per rank and iteration, what the run drew (β, quantisation noise, the
augmented batch) to ``<path>/rank<r>.jsonl``, and can hold a run still right after one iteration's β draw.

Added on the command line: ``+callbacks.probe._target_=tests.support.draw_probe.DrawProbe
+callbacks.probe.path=DIR [+callbacks.probe.hold_at_iteration=K]``. Holding (then killing) at iteration K leaves
``last.ckpt`` at iteration K − 1 and records the β the killed run drew for K, which a resumed run must draw again.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor


def digest(tensor: Tensor) -> str:
    return hashlib.sha1(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class DrawProbe(L.Callback):
    def __init__(self, path: str, hold_at_iteration: int | None = None) -> None:
        self.path = Path(path)
        self.hold_at_iteration = hold_at_iteration
        self.rank = 0
        self.record: dict[str, Any] = {}

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path / f"rank{self.rank}.jsonl", "a") as file:
            file.write(json.dumps(record) + "\n")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Runs after a resumed checkpoint restored the RNGs: records their state, then wraps the draws."""
        self.rank = trainer.global_rank
        self.path.mkdir(parents=True, exist_ok=True)
        self.write({"event": "fit_start", "torch_rng": digest(torch.get_rng_state())})
        sample_betas = pl_module.sample_betas

        def recorded_betas(batch_size: int) -> tuple[Tensor | None, Tensor | None]:
            beta_rate, beta_vq = sample_betas(batch_size)
            self.record["betas"] = [beta_rate.tolist(), beta_vq.tolist()] if beta_rate is not None else None
            if self.record["iteration"] == self.hold_at_iteration:
                self.write({**self.record, "event": "held"})
                while True:  # the test kills the whole process group now
                    time.sleep(1)
            return beta_rate, beta_vq

        pl_module.sample_betas = recorded_betas
        for name in ("entropy_model_y", "entropy_model_z"):
            self.wrap_quantize(getattr(pl_module.network, name), name)

    def wrap_quantize(self, entropy_model: torch.nn.Module, name: str) -> None:
        quantize = entropy_model.quantize

        def recorded_quantize(inputs: Tensor, mode: str, means: Tensor | None = None) -> Tensor:
            outputs = quantize(inputs, mode, means)
            if mode == "noise":
                noise = (outputs - inputs).detach()
                self.record.setdefault(f"noise_{name}", []).append(digest(noise))
                self.record.setdefault(f"noise_{name}_head", noise.flatten()[:4].tolist())
            return outputs

        entropy_model.quantize = recorded_quantize

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Tensor, *args) -> None:
        self.record = {"event": "iteration", "iteration": pl_module.iteration + 1, "batch": digest(batch)}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.write(self.record)
