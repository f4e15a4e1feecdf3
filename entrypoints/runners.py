"""Stage runners: the Hydra side of each stage, chosen by the stage config's ``runner`` key.

``conf/stage/<S>.yaml`` sets ``runner: {_target_: entrypoints.runners.<fn>, _partial_: true}``;
``entrypoints/train.py`` instantiates it and calls it with the composed config. The library under
``lightning_modules/`` never sees a Hydra config: everything is instantiated here.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_modules.stage2.jobs import SearchSettings, resolve_device, run_selection, search_grid
from lightning_modules.stage2.validation_set import build_validation_set, tokenizer_from_model_file
from lightning_modules.training.batch_policy import BatchPlan, plan_batches
from lightning_modules.training.stage_init import (
    LAST_CHECKPOINT,
    MODEL_FILE,
    export_model_file,
    initialize_from_predecessor,
    resolve_model_file,
)
from lightning_modules.training.system import DCVICSystem
from lightning_modules.training.vqgan import VQGAN_FILE, export_taming_checkpoint

log = logging.getLogger(__name__)
ITERATION_KEYS = ("max_iterations", "eval_every", "save_every")  # root keys counted in iterations


def apply_batch_policy(cfg: DictConfig, ranks: int) -> tuple[DictConfig, BatchPlan]:
    """A copy of ``cfg`` with the per-rank ``data.batch_size`` and, when opted in, rescaled iteration counts
    (stop, checkpoints, validation, scheduler milestones, ``module.disc_start``) or learning rates."""
    policy = cfg.batch_policy
    global_batch = cfg.data.get("global_batch_size")
    plan = plan_batches(ranks, cfg.data.batch_size, global_batch, policy.reference_batch, policy.rescale)
    resolved = copy.deepcopy(cfg)
    with open_dict(resolved):
        resolved.data.pop("global_batch_size", None)
        resolved.data.batch_size = plan.per_rank
        for key in ITERATION_KEYS:
            resolved[key] = plan.iterations(cfg[key])
        resolved.keep_iterations = [plan.iterations(k) for k in cfg.keep_iterations]
        if "disc_start" in resolved.module:
            resolved.module.disc_start = plan.iterations(cfg.module.disc_start)
        for node in resolved.optim.values():
            if "milestones" in node:
                node.milestones = [plan.iterations(m) for m in node.milestones]
            if "total_iters" in node:
                node.total_iters = plan.iterations(node.total_iters)
            if "lr" in node:
                node.lr = plan.learning_rate(node.lr)
    lrs = {name: float(node.lr) for name, node in cfg.optim.items() if "lr" in node}
    if rank_zero_only.rank == 0:
        log.info(plan.describe(cfg.max_iterations, lrs))
    return resolved, plan


def trainer_ranks(trainer: L.Trainer) -> int:
    """Processes that each load a batch: devices per node × nodes (Lightning's DDP world size)."""
    return trainer.num_devices * trainer.num_nodes


def build_trainer(cfg: DictConfig) -> L.Trainer:
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    return instantiate(cfg.trainer, logger=instantiate(cfg.logger), callbacks=callbacks)


def trainer_with_batch_policy(cfg: DictConfig) -> tuple[L.Trainer, DictConfig]:
    """The trainer (it knows the ranks) and the config with the batch policy applied; the trainer is rebuilt
    when iteration counts were rescaled, because its validation interval and checkpoint callback count them."""
    trainer = build_trainer(cfg)
    resolved, plan = apply_batch_policy(cfg, trainer_ranks(trainer))
    if plan.rescales_iterations:
        trainer = build_trainer(resolved)
    return trainer, resolved


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
    trainer, cfg = trainer_with_batch_policy(cfg)
    L.seed_everything(cfg.seed, workers=True)
    system = build_system(cfg)
    datamodule = instantiate(cfg.data)
    last = run_dir / LAST_CHECKPOINT
    resume_from = last if last.is_file() else None
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    elif cfg.init.init_from is not None:
        initialize_from_predecessor(system, **OmegaConf.to_container(cfg.init, resolve=True))
    return TrainingRun(run_dir, system, datamodule, trainer, resume_from)


def train_dcvic(cfg: DictConfig) -> Path:
    """Fit one stage and export ``model.pt``; returns the run directory. Calling it again after a crash resumes."""
    run = prepare_run(cfg)
    run.trainer.fit(run.system, datamodule=run.datamodule, ckpt_path=run.resume_from, weights_only=True)
    if run.trainer.is_global_zero and run.system.iteration >= run.system.max_iterations:
        source = f"dcvic stage {cfg.stage_name} ({run.run_dir}, {run.system.iteration} iterations)"
        path = export_model_file(run.system, network_architecture(cfg), run.run_dir / MODEL_FILE, source)
        log.info("wrote %s", path)
    return run.run_dir


def train_vqgan(cfg: DictConfig) -> Path:
    """Stage 0 from a composed ``train.yaml`` config: fit (resuming from ``last.ckpt``), export ``vqgan.ckpt``."""
    run_dir = Path(cfg.run_dir)
    trainer, cfg = trainer_with_batch_policy(cfg)
    L.seed_everything(cfg.seed, workers=True)
    system = instantiate(
        cfg.module,
        vqgan=instantiate(cfg.network),
        discriminator=instantiate(cfg.discriminator),
        optimizer=instantiate(cfg.optim.optimizer),
        disc_optimizer=instantiate(cfg.optim.disc_optimizer),
    )
    last = run_dir / LAST_CHECKPOINT
    resume_from = last if last.is_file() else None
    trainer.fit(system, datamodule=instantiate(cfg.data), ckpt_path=resume_from, weights_only=True)
    path = run_dir / VQGAN_FILE
    if trainer.is_global_zero and system.iteration >= system.max_iterations:
        export_taming_checkpoint(system, path)
        log.info("wrote %s (%d iterations)", path, system.iteration)
    return path


def run_stage2(cfg: DictConfig) -> Path:
    """Stage 2 as a stage of ``entrypoints/train.py`` (``+stage=2``): returns ``<run_dir>/selected_betas.yaml``.

    Builds (or completes) the cached validation set, runs the whole (beta_vq, target) grid over
    ``stage2.workers`` processes and selects one pair per target into ``run_dir``; re-running after a crash
    reuses the crops and every memoised bpp.
    """
    stage, run_dir = cfg.stage2, Path(cfg.run_dir)
    model_file = str(resolve_model_file(stage.model_file))
    settings: SearchSettings = instantiate(stage.search)
    device = resolve_device(settings.device)
    tokenizer = tokenizer_from_model_file(model_file)
    build_validation_set(
        stage.images,
        stage.val_set,
        tokenizer,
        stage.num_images,
        stage.crop_size,
        stage.val_seed,
        stage.image_pattern,
        device,
    )
    beta_vqs, targets = [float(b) for b in stage.beta_vqs], [float(t) for t in stage.targets_bpp]
    search_dir = run_dir / "search"
    search_grid(
        model_file, stage.val_set, str(search_dir), str(run_dir / "memo"), beta_vqs, targets, settings, stage.workers
    )
    selection = run_selection(
        model_file,
        stage.val_set,
        str(search_dir),
        str(run_dir),
        beta_vqs,
        targets,
        instantiate(stage.fid_features),
        stage.alpha,
        settings.tolerance,
        settings.batch_size,
        device,
        stage.fid_min_images,
        stage.save_images,
    )
    log.info("stage 2 selected %s -> %s", selection.as_betas_overrides(), selection.yaml_path)
    return selection.yaml_path
