"""Stage-2 rate search, one Hydra job per (beta_vq, target bpp) (design §5.2).

    python entrypoints/rate_search.py model_file=... val_set=... beta_vq=2.0 target_bpp=0.1   # one job
    python entrypoints/rate_search.py -m model_file=... val_set=...                           # paper grid

``-m`` sweeps ``hydra.sweeper.params`` (the grid of ``conf/stage2_grid/``, 14 beta_vq × 5 targets) on the joblib
launcher; jobs share an on-disk memo of (beta_rate, beta_vq) -> bpp. ``search=bisect`` reproduces the authors'
procedure exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from entrypoints.preflight import exit_on_config_problems
from lightning_modules.stage2.jobs import run_rate_search

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def sweep_values(values: list) -> str:
    """``[0.25, 0.5]`` -> ``"0.25,0.5"``: Hydra's sweeper takes a comma list, the grid file holds YAML lists."""
    return ",".join(str(v) for v in values)


OmegaConf.register_new_resolver("sweep", sweep_values, replace=True)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="search")
def main(cfg: DictConfig) -> dict:
    exit_on_config_problems(cfg, "rate_search.py")
    result = run_rate_search(
        model_file=to_absolute_path(cfg.model_file),
        val_set=to_absolute_path(cfg.val_set),
        search_dir=to_absolute_path(cfg.search_dir),
        memo_root=to_absolute_path(cfg.memo_dir),
        beta_vq=float(cfg.beta_vq),
        target_bpp=float(cfg.target_bpp),
        settings=instantiate(cfg.search),
        val_limit=cfg.val_limit,
    )
    best = result.best
    status = "converged" if result.converged else f"NOT converged: {result.reason}"
    found = f"beta_rate {best.beta_rate} ({best.avg_bpp:.5f} bpp)" if best else "no point evaluated"
    log.info(
        "beta_vq %.2f target %.3f -> %s, %d points: %s", cfg.beta_vq, cfg.target_bpp, found, result.evaluations, status
    )
    return result.to_dict()


if __name__ == "__main__":
    main()
