"""Run one stage of the recipe: ``python entrypoints/train.py +stage=<0|1_1|1_2|1_3|2|3>`` (see README).

Re-running the same command resumes from ``<run_dir>/checkpoints/last.ckpt``; a fresh run starts from
``init_from`` (the predecessor stage's run directory by default). The finished stage is exported as
``<run_dir>/model.pt``.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from entrypoints.preflight import exit_on_config_problems, fail
from entrypoints.quiet import log_lightning_through_root

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


NO_STAGE = "no stage selected: add +stage=1_1 (or 0, 1_2, 1_3, 2, 3) to the command line"


def run_stage(cfg: DictConfig) -> Path:
    """Run the stage's ``runner`` (conf/stage/<S>.yaml): DC-VIC training, VQGAN training or stage-2 selection."""
    if cfg.get("stage_name") is None:
        raise ValueError(NO_STAGE)
    return instantiate(cfg.runner)(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    if cfg.get("stage_name") is None:
        fail("train.py", NO_STAGE)
    exit_on_config_problems(cfg, "train.py")  # unset or missing input files: one line, before anything is built
    log_lightning_through_root()
    run_stage(cfg)


if __name__ == "__main__":
    sys.argv = quote_stage_choices(sys.argv)
    main()
