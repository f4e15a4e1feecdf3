"""Each stage trains a few iterations on CPU (tiny network): finite losses, exactly the design's parameters change,
and every stage starts from its predecessor's ``model.pt`` (design §4.9)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from entrypoints.runners import TrainingRun, network_architecture, prepare_run
from lightning_modules.model_file import RELEASED_QUALITY_TABLE, load_model_file
from lightning_modules.training.stage_init import LAST_CHECKPOINT, MODEL_FILE, export_model_file
from tests.support.configs import compose_train

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]
ITERATIONS = 2


def stage_config(stage: str, runs_dir: Path, *extra: str):
    overrides = [
        f"+stage={stage}",
        "network=tiny",
        "data=sample",
        "data.crop_size=64",
        "data.batch_size=2",
        f"paths.runs_dir={runs_dir}",
        f"paths.cache_dir={runs_dir.parent / 'cache'}",
        f"max_iterations={ITERATIONS}",
        "log_every=1",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "callbacks.progress=null",
        *extra,
    ]
    return compose_train(overrides)


def parameters(run: TrainingRun) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in run.system.named_parameters() if not n.startswith("loss.")}


def fit(run: TrainingRun) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    before = parameters(run)
    run.trainer.fit(run.system, datamodule=run.datamodule, ckpt_path=run.resume_from)
    return before, parameters(run)


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


def assert_finite_losses(run: TrainingRun, names: set[str]) -> None:
    logged = {k: float(v) for k, v in run.trainer.logged_metrics.items() if k.startswith("train/")}
    assert names <= {k.removeprefix("train/") for k in logged}, logged
    assert all(math.isfinite(v) for v in logged.values()), logged


def export(run: TrainingRun, cfg) -> None:
    export_model_file(run.system, network_architecture(cfg), run.run_dir / MODEL_FILE, "test")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("training") / "runs"


def never_trained(name: str) -> bool:
    return name.startswith(("network.vq_model.", "network.decoder.conv4.", "network.decoder.beta_ft_list.8."))


def test_stage_1_1_trains_everything_but_the_vqgan(runs_dir: Path) -> None:
    run = prepare_run(stage_config("1_1", runs_dir, "keep_iterations=[1]"))
    before, after = fit(run)
    assert run.system.iteration == ITERATIONS
    assert run.trainer.global_step == 2 * ITERATIONS  # main + aux optimizer step per iteration
    assert changed(before, after) == {n for n in before if not never_trained(n)}
    assert_finite_losses(run, {"loss", "rate", "mse", "lpips", "code_mse", "vq_ce", "aux", "qbpp"})
    assert not any(n.startswith("network.encoder.mlp") for n in before)  # stage 1_1 is unconditioned
    kept = torch.load(run.run_dir / "checkpoints" / "iter_1.ckpt", weights_only=True)
    assert kept["dcvic_iteration"] == 1 and kept["global_step"] == 2
    export(run, stage_config("1_1", runs_dir))


def test_stage_1_2_loads_1_1_non_strictly(runs_dir: Path) -> None:
    predecessor = load_model_file(runs_dir / "dcvic" / "stage_1_1" / MODEL_FILE).state_dict
    run = prepare_run(stage_config("1_2", runs_dir))
    state = run.system.network.state_dict()
    new_keys = set(state) - set(predecessor)
    assert new_keys and all(k.split(".")[1] in ("mlp", "beta_ft_list", "init_fuse") for k in new_keys)
    assert all(torch.equal(state[k], v) for k, v in predecessor.items())
    before, after = fit(run)
    assert changed(before, after) == {n for n in before if not never_trained(n)}
    assert_finite_losses(run, {"loss", "rate", "code_mse", "vq_ce"})
    export(run, stage_config("1_2", runs_dir))


def test_stage_1_3_trains_only_the_synthesis_side_and_the_discriminator(runs_dir: Path) -> None:
    predecessor = load_model_file(runs_dir / "dcvic" / "stage_1_2" / MODEL_FILE).state_dict
    run = prepare_run(stage_config("1_3", runs_dir))
    assert all(torch.equal(run.system.network.state_dict()[k], v) for k, v in predecessor.items())
    before, after = fit(run)
    trainable = ("network.decoder.", "network.vq_estimator.", "network.fusion_module.", "discriminator.")
    assert changed(before, after) == {n for n in before if n.startswith(trainable) and not never_trained(n)}
    assert_finite_losses(run, {"loss", "mse", "lpips", "gan", "code_mse", "vq_ce", "d_real", "d_fake", "d_total"})
    assert run.trainer.global_step == 2 * ITERATIONS  # G + D step per iteration
    export(run, stage_config("1_3", runs_dir))
    assert load_model_file(runs_dir / "dcvic" / "stage_1_3" / MODEL_FILE).discriminator is not None


def test_stage_3_loads_discriminator_and_adam_moments_with_fresh_lr(runs_dir: Path) -> None:
    previous = load_model_file(runs_dir / "dcvic" / "stage_1_3" / MODEL_FILE)
    moments = torch.load(runs_dir / "dcvic" / "stage_1_3" / LAST_CHECKPOINT, weights_only=False)["optimizer_states"]
    run = prepare_run(stage_config("3", runs_dir, "betas=selected", "optim.optimizer.lr=5e-5"))
    disc = run.system.discriminator.state_dict()
    assert all(torch.equal(disc[k], v) for k, v in previous.discriminator.items())
    assert all(torch.equal(run.system.network.state_dict()[k], v) for k, v in previous.state_dict.items())
    before, after = fit(run)
    g_opt = run.trainer.optimizers[0]
    assert g_opt.param_groups[0]["lr"] == pytest.approx(5e-5)
    steps = {int(s["step"]) for s in g_opt.state.values()}
    previous_steps = {int(s["step"]) for s in moments[0]["state"].values()}
    assert steps == {max(previous_steps) + ITERATIONS}  # the moments continued, not restarted
    trainable = ("network.decoder.", "network.vq_estimator.", "network.fusion_module.", "discriminator.")
    assert changed(before, after) == {n for n in before if n.startswith(trainable) and not never_trained(n)}
    export(run, stage_config("3", runs_dir, "betas=selected"))
    assert load_model_file(runs_dir / "dcvic" / "stage_3" / MODEL_FILE).quality_table == RELEASED_QUALITY_TABLE
