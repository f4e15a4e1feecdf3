"""Run one stage of the recipe: ``python entrypoints/train.py +stage=<0|1_1|1_2|1_3|2|3>`` (see README).

Re-running the same command resumes from ``<run_dir>/checkpoints/last.ckpt``; a fresh run starts from
``init_from`` (the predecessor stage's run directory by default). The finished stage is exported as
``<run_dir>/model.pt``.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.stage2 import run_stage2  # noqa: E402
from lightning_modules.stage_init import (  # noqa: E402
    LAST_CHECKPOINT,
    MODEL_FILE,
    export_model_file,
    initialize_from_predecessor,
)
from lightning_modules.system import DCVICSystem  # noqa: E402
from lightning_modules.vqgan_system import train_vqgan  # noqa: E402

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


STAGE_OVERRIDE = re.compile(r"^(\+{0,2}stage)=(.+)$")


def quote_stage_choices(argv: list[str]) -> list[str]:
    """``+stage=1_1,1_2`` -> ``+stage='1_1','1_2'``: Hydra would parse ``1_1`` as the integer 11 and refuse it."""
    quoted = []
    for arg in argv:
        match = STAGE_OVERRIDE.match(arg)
        if match:
            choices = [c if c[:1] in "'\"" else f"'{c}'" for c in match.group(2).split(",")]
            arg = f"{match.group(1)}={','.join(choices)}"
        quoted.append(arg)
    return quoted


def build_system(cfg: DictConfig) -> DCVICSystem:
    """Wire network, loss, betas, (discriminator) and optimizer factories into the stage's LightningModule."""
    parts: dict = {
        "network": instantiate(cfg.network),
        "loss": instantiate(cfg.loss),
        "betas": instantiate(cfg.betas),
    }
    if cfg.get("discriminator"):
        parts["discriminator"] = instantiate(cfg.discriminator)
    factories = {name: instantiate(factory) for name, factory in cfg.optim.items()}
    return instantiate(cfg.module, **parts, **factories)


def network_architecture(cfg: DictConfig) -> dict:
    architecture = OmegaConf.to_container(cfg.network, resolve=True)
    architecture.pop("_target_")
    return architecture


@dataclass
class TrainingRun:
    """Everything ``train`` fits, built but not started (tests inspect the system before and after)."""

    run_dir: Path
    system: DCVICSystem
    datamodule: L.LightningDataModule
    trainer: L.Trainer
    resume_from: Path | None


def prepare_run(cfg: DictConfig) -> TrainingRun:
    """Build the stage; load the predecessor's weights unless ``last.ckpt`` exists (then ``fit`` resumes)."""
    if cfg.get("stage_name") is None:
        raise ValueError("no stage selected: add +stage=1_1 (or 0, 1_2, 1_3, 2, 3) to the command line")
    run_dir = Path(cfg.run_dir)
    L.seed_everything(cfg.seed, workers=True)
    system = build_system(cfg)
    datamodule = instantiate(cfg.data)
    last = run_dir / LAST_CHECKPOINT
    resume_from = last if last.is_file() else None
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    elif cfg.init.init_from is not None:
        initialize_from_predecessor(system, **OmegaConf.to_container(cfg.init, resolve=True))
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    trainer = instantiate(cfg.trainer, logger=instantiate(cfg.logger), callbacks=callbacks)
    return TrainingRun(run_dir, system, datamodule, trainer, resume_from)


def train(cfg: DictConfig) -> Path:
    """Fit one stage and export ``model.pt``; returns the run directory. Calling it again after a crash resumes."""
    run = prepare_run(cfg)
    run.trainer.fit(run.system, datamodule=run.datamodule, ckpt_path=run.resume_from)
    if run.trainer.is_global_zero and run.system.iteration >= run.system.max_iterations:
        source = f"dcvic stage {cfg.stage_name} ({run.run_dir}, {run.system.iteration} iterations)"
        path = export_model_file(run.system, network_architecture(cfg), run.run_dir / MODEL_FILE, source)
        log.info("wrote %s", path)
    return run.run_dir


def run_stage(cfg: DictConfig) -> Path:
    """Stage 0 trains the VQGAN, stage 2 selects beta pairs (no training), every other stage trains DC-VIC."""
    if cfg.get("stage_name") == "0":
        return train_vqgan(cfg)
    if cfg.get("stage_name") == "2":
        return run_stage2(cfg)
    return train(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    run_stage(cfg)


if __name__ == "__main__":
    sys.argv = quote_stage_choices(sys.argv)
    main()
