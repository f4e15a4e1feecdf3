"""Start a stage from its predecessor's output (design §4.9) and export a finished stage as a dcvic model file.

Run-directory convention: stage ``S`` of run ``E`` (``run_name``) lives in ``<runs_dir>/E/stage_S/`` and, when finished,
holds ``model.pt`` (weights, discriminator, quality table) and ``checkpoints/last.ckpt`` (Lightning state, incl.
optimizer moments). ``init_from`` names either such a run directory or a model file.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_modules.model_file import ModelFile, load_model_file, save_model_file
from lightning_modules.training.system import DCVICSystem

log = logging.getLogger(__name__)
MODEL_FILE = "model.pt"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def resolve_model_file(init_from: str | Path) -> Path:
    path = Path(init_from)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"predecessor weights not found: {path}. Run the previous stage first (it writes <run_dir>/{MODEL_FILE}) "
            "or set init_from to a run directory or dcvic model file"
        )
    return path


def load_network_weights(system: DCVICSystem, model_file: ModelFile, allowed_missing: Sequence[str]) -> None:
    """Strict unless ``allowed_missing`` lists key patterns (fnmatch) that may keep their fresh initialisation."""
    result = system.network.load_state_dict(model_file.state_dict, strict=not allowed_missing)
    disallowed = [k for k in result.missing_keys if not any(fnmatch.fnmatch(k, pat) for pat in allowed_missing)]
    if disallowed or result.unexpected_keys:
        raise ValueError(
            f"predecessor weights do not fit this stage: missing {disallowed[:8]} ({len(disallowed)}), "
            f"unexpected {result.unexpected_keys[:8]} ({len(result.unexpected_keys)})"
        )
    if result.missing_keys:
        log.info("kept fresh initialisation for %d allowed-missing keys", len(result.missing_keys))


def start_new_conditioning(network: torch.nn.Module, rate_gain_at_max: float | None = None) -> None:
    """Identity start for the encoder's and decoder's beta modules (a no-op for a network without them), or with
    ``rate_gain_at_max`` the rate-gain start (design §4.5). Called before the predecessor's weights load, so
    modules the predecessor has keep its weights."""
    for part in (network.encoder, network.decoder):
        if not part.dual_conditioned:
            continue
        if rate_gain_at_max is None:
            part.start_conditioning_as_identity()
        else:
            part.start_conditioning_as_rate_gain(rate_gain_at_max)


def load_optimizer_states(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / LAST_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"optimizer states requested but {path} does not exist (init_from must be a run dir)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # our checkpoints hold plain types only
    return checkpoint["optimizer_states"]


def initialize_from_predecessor(
    system: DCVICSystem,
    init_from: str | Path,
    allowed_missing: Sequence[str] = (),
    load_discriminator: bool = False,
    load_optimizer_moments: bool = False,
    identity_conditioning: bool = False,
    rate_gain_at_max: float | None = None,
) -> None:
    """Load the predecessor's network (and discriminator / Adam moments for stage 3) into a fresh system.

    ``identity_conditioning`` (the CPU demo): beta-conditioning modules that the predecessor lacks start as the
    identity, so stage 1_2 begins as exactly the stage 1_1 function (design §4.5); later stages load them.
    ``rate_gain_at_max`` (with it) makes the encoder's last and the decoder's first beta module a gain on ``y``
    falling linearly in beta_rate to this value at its maximum (and its inverse), so the rate falls with
    beta_rate from the first step.
    """
    if rate_gain_at_max is not None and not identity_conditioning:
        raise ValueError("init.rate_gain_at_max needs init.identity_conditioning: true (it starts from the identity)")
    if rate_gain_at_max is not None and not 0 < rate_gain_at_max:
        raise ValueError(f"init.rate_gain_at_max must be positive (the decoder divides by it), got {rate_gain_at_max}")
    model_file = load_model_file(resolve_model_file(init_from))
    if identity_conditioning:
        start_new_conditioning(system.network, rate_gain_at_max)
    load_network_weights(system, model_file, allowed_missing)
    if load_discriminator:
        if model_file.discriminator is None:
            raise ValueError(f"{init_from} holds no discriminator weights, but this stage loads them")
        system.discriminator.load_state_dict(model_file.discriminator, strict=True)
    if load_optimizer_moments:
        system.set_pending_optimizer_states(load_optimizer_states(Path(init_from)))
    log.info("initialised from %s", init_from)


def export_model_file(system: DCVICSystem, architecture: dict[str, Any], path: str | Path, source: str) -> Path:
    """Final stage weights as a dcvic model file (the VQGAN is included; no checkpoint path is needed to build).

    The quality table is the pairs the stage trained on when it had selected ones (stage 3), else none: a
    stage 1_x model has never been measured at any pair, so it must not claim the released table.
    """
    discriminator = getattr(system, "discriminator", None)
    model_file = ModelFile(
        architecture={**architecture, "vqgan_checkpoint": None},
        state_dict={k: v.detach().cpu() for k, v in system.network.state_dict().items()},
        quality_table=system.betas.quality_table(),
        discriminator=None if discriminator is None else {k: v.cpu() for k, v in discriminator.state_dict().items()},
        source=source,
    )
    return save_model_file(path, model_file)
