"""Composing the training config the way ``entrypoints/train.py`` does, for tests that build runs from it."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from entrypoints.train import CONFIG_DIR, quote_stage_choices


def compose_train(overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` with command-line style overrides (``+stage=…`` choices quoted like the CLI does)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=quote_stage_choices(overrides))
