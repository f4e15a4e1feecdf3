"""DDP sanity check: after training every rank must hold bit-identical weights.

Gathers each rank's weights fingerprint, writes them to ``<path>`` (JSON, rank 0) and fails loudly on a mismatch,
which would mean gradients were not all-reduced (e.g. a parameter left outside DDP's bookkeeping).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from lightning_modules.model_file import weights_fingerprint


class RankConsistencyCheck(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {k: v for k, v in pl_module.state_dict().items() if not k.startswith("loss.")}
        digest = torch.tensor(list(weights_fingerprint(state)), dtype=torch.int64, device=pl_module.device)
        gathered = trainer.strategy.all_gather(digest).reshape(-1, digest.numel())
        fingerprints = [bytes(row.tolist()).hex() for row in gathered.cpu()]
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"iteration": pl_module.iteration, "fingerprints": fingerprints}))
        if len(set(fingerprints)) != 1:
            raise RuntimeError(f"ranks hold different weights after training: {fingerprints}")
