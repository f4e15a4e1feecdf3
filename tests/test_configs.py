"""Every stage composes with every network / data choice; required paths fail at compose time."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from entrypoints.train import CONFIG_DIR, quote_stage_choices
from lightning_modules.model_file import RELEASED_QUALITY_TABLE
from lightning_modules.networks.dcvic import TINY_ARCHITECTURE
from lightning_modules.training.beta_sampling import SelectedBetaSampler, load_selected_betas

STAGES = ["1_1", "1_2", "1_3", "3"]
MISSING = (MissingMandatoryValue, InterpolationToMissingValueError)


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=quote_stage_choices(list(overrides)), return_hydra_config=True)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("network", ["full", "tiny"])
@pytest.mark.parametrize("data", ["openimage", "kodak", "folder", "sample"])
def test_every_stage_composes(stage: str, network: str, data: str) -> None:
    cfg = compose_train(f"+stage={stage}", f"network={network}", f"data={data}")
    assert cfg.stage_name == stage
    assert cfg.run_dir.endswith(f"dcvic/stage_{stage}")
    assert cfg.hydra.run.dir == cfg.run_dir
    assert cfg.network.dual_conditioned == (stage != "1_1")
    assert bool(cfg.discriminator) == (stage in ("1_3", "3"))


def test_stage_specific_settings() -> None:
    s11, s12, s13, s3 = (compose_train(f"+stage={s}") for s in STAGES)
    assert s11.optim.scheduler.total_iters == 50000 and s11.optim.scheduler.start_factor == 0.1
    assert list(s12.optim.scheduler.milestones) == [300000] and s12.loss.exp_beta_weighting
    assert s12.init.init_from.endswith("dcvic/stage_1_1") and "decoder.init_fuse.*" in s12.init.allowed_missing
    assert list(s13.optim.disc_scheduler.milestones) == [400000] and s13.loss.gan_weight == 0.01
    assert s13.init.init_from.endswith("stage_1_2") and not s13.init.allowed_missing
    assert list(s3.optim.scheduler.milestones) == [300000] and s3.init.load_optimizer_moments
    assert s3.betas.path.endswith("dcvic/stage_2/selected_betas.yaml")  # stage 2's output by convention
    released = compose_train("+stage=3", "betas=selected").betas
    assert OmegaConf.to_container(released)["beta_rate"] == RELEASED_QUALITY_TABLE["beta_rate"]
    assert OmegaConf.to_container(released)["beta_vq"] == RELEASED_QUALITY_TABLE["beta_vq"]


def test_full_network_requires_real_weight_paths() -> None:
    cfg = compose_train("+stage=1_1")
    with pytest.raises(MISSING):
        _ = cfg.network.vqgan_checkpoint
    with pytest.raises(MISSING):
        _ = cfg.loss.perceptual.backbone_weights
    with pytest.raises(MISSING):
        _ = cfg.data.train_files.root


def test_tiny_network_matches_tiny_architecture() -> None:
    network = OmegaConf.to_container(compose_train("network=tiny").network, resolve=True)
    for key, value in TINY_ARCHITECTURE.items():
        assert network[key] == (list(value) if isinstance(value, tuple) else value), key
    assert network["vqgan_checkpoint"] is None


def test_wrong_key_is_rejected() -> None:
    with pytest.raises(Exception, match="no_such_key"):
        compose_train("+stage=1_1", "trainer.no_such_key=1")


def test_stage_choices_are_quoted_for_hydra() -> None:
    argv = ["train.py", "+stage=1_1,1_2,1_3", "network=tiny", "stage='3'"]
    assert quote_stage_choices(argv) == ["train.py", "+stage='1_1','1_2','1_3'", "network=tiny", "stage='3'"]


def test_stage_3_accepts_a_betas_file(tmp_path: Path) -> None:
    table = tmp_path / "selected.yaml"
    table.write_text("beta_rate: [2.0, 0.5]\nbeta_vq: [3.0, 1.0]\n")
    cfg = compose_train("+stage=3", "betas=from_file", f"betas.path={table}")
    sampler = load_selected_betas(cfg.betas.path)
    assert isinstance(sampler, SelectedBetaSampler)
    assert sampler.quality_table() == {"beta_rate": [2.0, 0.5], "beta_vq": [3.0, 1.0]}
    table.write_text("beta_rate: [2.0]\n")
    with pytest.raises(ValueError, match="beta_vq"):
        load_selected_betas(str(table))
