"""Stage-2 selection: reconstruct the validation set at every found pair, score alpha·PSNR − FID (design §5.3).

    python entrypoints/select_betas.py model_file=... val_set=... output_dir=<same as the search>

Writes the reference CSVs and ``<save_dir>/selected_betas.yaml``, which stage 3 reads with
``python entrypoints/train.py +stage=3 betas=from_file betas.path=<save_dir>/selected_betas.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig

from entrypoints.preflight import exit_on_config_problems
from lightning_modules.stage2.jobs import resolve_device, run_selection

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="select")
def main(cfg: DictConfig) -> None:
    exit_on_config_problems(cfg, "select_betas.py")
    selection = run_selection(
        model_file=to_absolute_path(cfg.model_file),
        val_set=to_absolute_path(cfg.val_set),
        search_dir=to_absolute_path(cfg.search_dir),
        save_dir=to_absolute_path(cfg.save_dir),
        beta_vqs=list(cfg.beta_vqs),
        targets_bpp=list(cfg.targets_bpp),
        fid_features=instantiate(cfg.fid_features),
        alpha=cfg.alpha,
        tolerance=cfg.tolerance,
        batch_size=cfg.batch_size,
        device=resolve_device(cfg.device),
        fid_min_images=cfg.fid_min_images,
        save_images=cfg.save_images,
        val_limit=cfg.val_limit,
    )
    for quality, (target, pair) in enumerate(zip(selection.targets_bpp, selection.chosen, strict=True)):
        log.info(
            "q%d: target %.3f bpp -> beta_rate %g, beta_vq %g (score %.3f)",
            quality,
            target,
            pair.beta_rate,
            pair.beta_vq,
            pair.score,
        )
    log.info("stage 3: +stage=3 betas=from_file betas.path=%s", selection.yaml_path)


if __name__ == "__main__":
    main()
