"""The batch policy: a global batch split over ranks (refused when it does not divide), a per-rank batch, the
opt-in rescale rules, and the one start-up line comparing the run with the paper's recipe (batch 6 on one GPU)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from entrypoints.runners import apply_batch_policy, prepare_run
from lightning_modules.training.batch_policy import plan_batches
from tests.test_training_stages import stage_config as training_stage

pytestmark = pytest.mark.filterwarnings("ignore")
TWO_CPU_RANKS = ("trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "init.init_from=null")


def stage_config(tmp_path: Path, stage: str, *extra: str):
    """test_training_stages' tiny CPU stage, at the stage's own iteration counts and batch 6 per rank."""
    return training_stage(stage, tmp_path / "runs", "max_iterations=500000", "data.batch_size=6", *extra)


def test_a_global_batch_is_split_over_the_ranks() -> None:
    plan = plan_batches(2, batch_size=6, global_batch_size=6)
    assert (plan.ranks, plan.per_rank, plan.global_batch) == (2, 3, 6)
    per_rank = plan_batches(4, batch_size=6)
    assert (per_rank.per_rank, per_rank.global_batch, per_rank.factor) == (6, 24, 4.0)


def test_a_global_batch_that_does_not_divide_is_one_clear_line() -> None:
    with pytest.raises(ValueError) as error:
        plan_batches(2, batch_size=6, global_batch_size=7)
    message = str(error.value)
    assert "\n" not in message
    assert "data.global_batch_size=7 does not split evenly over 2 rank(s)" in message
    with pytest.raises(ValueError, match="batch_policy.rescale='linear' is not one of none, iterations, lr"):
        plan_batches(2, batch_size=6, rescale="linear")


def test_rescale_rules_keep_images_seen_or_scale_the_learning_rate() -> None:
    iterations = plan_batches(4, batch_size=6, rescale="iterations")
    assert iterations.iterations(500_000) == 125_000 and iterations.learning_rate(1e-4) == 1e-4
    assert iterations.global_batch * iterations.iterations(500_000) == 6 * 500_000
    lr = plan_batches(4, batch_size=6, rescale="lr")
    assert lr.iterations(500_000) == 500_000 and lr.learning_rate(1e-4) == pytest.approx(4e-4)
    assert plan_batches(2, batch_size=6, global_batch_size=6, rescale="iterations").iterations(300_000) == 300_000


def test_two_ranks_with_global_batch_6_load_3_each_and_log_one_startup_line(tmp_path, caplog) -> None:
    cfg = stage_config(tmp_path, "1_1", *TWO_CPU_RANKS, "data.global_batch_size=6")
    with caplog.at_level(logging.INFO, logger="entrypoints.runners"):
        run = prepare_run(cfg)
    assert run.datamodule.batch_size == 3
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("batch: ")]
    assert lines == [
        "batch: 2 rank(s) x 3 per rank = global batch 6; 500000 iterations, 3,000,000 images seen, "
        "lr optimizer=0.0001 aux_optimizer=0.001; the recipe at the paper's batch 6 on 1 GPU: 500000 iterations, "
        "3,000,000 images, lr optimizer=0.0001 aux_optimizer=0.001; images seen x1, rescale=none"
    ]
    with pytest.raises(ValueError, match="data.global_batch_size=7 does not split evenly over 2 rank"):
        prepare_run(stage_config(tmp_path, "1_1", *TWO_CPU_RANKS, "data.global_batch_size=7"))


def test_iterations_rule_rescales_every_iteration_count_of_the_run(tmp_path, caplog) -> None:
    """Global 12 on 2 ranks is twice the paper's batch: stop, milestones, checkpoints and validation come at half."""
    overrides = (*TWO_CPU_RANKS, "data.global_batch_size=12", "batch_policy.rescale=iterations")
    with caplog.at_level(logging.INFO, logger="entrypoints.runners"):
        run = prepare_run(stage_config(tmp_path, "1_2", *overrides))
    assert run.datamodule.batch_size == 6 and run.system.max_iterations == 250_000
    assert run.system.scheduler_factory.keywords["milestones"] == [150_000]
    assert run.trainer.val_check_interval == 5_000
    checkpoint = next(c for c in run.trainer.callbacks if hasattr(c, "keep_iterations"))
    assert checkpoint.every_n_iterations == 2_500 and checkpoint.keep_iterations == {150_000, 250_000}
    assert "250000 iterations, 3,000,000 images seen" in caplog.text and "images seen x1," in caplog.text


def test_lr_rule_and_a_single_device_run(tmp_path) -> None:
    cfg = stage_config(tmp_path, "1_3", "data.batch_size=3", "batch_policy.rescale=lr")
    resolved, plan = apply_batch_policy(cfg, ranks=1)
    assert (plan.global_batch, resolved.data.batch_size, "global_batch_size" in resolved.data) == (3, 3, False)
    assert resolved.optim.optimizer.lr == resolved.optim.disc_optimizer.lr == pytest.approx(0.5e-4)
    assert resolved.max_iterations == cfg.max_iterations == 500_000
    unchanged, _ = apply_batch_policy(stage_config(tmp_path, "1_3"), ranks=1)
    assert unchanged.optim.optimizer.lr == 1e-4 and unchanged.data.batch_size == 6
