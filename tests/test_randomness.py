"""Per-rank random streams without a Trainer: β generators differ by rank and not from the global stream, a
checkpoint round trip restores the β stream exactly, and older single-process checkpoints still load."""

from __future__ import annotations

import torch

from lightning_modules.training.randomness import beta_generator, collect_rng_states, seed_rank_streams
from tests.test_training_system import rate_distortion


def test_beta_generators_differ_per_rank_and_from_the_global_stream() -> None:
    draws = [torch.randint(0, 101, (16,), generator=beta_generator(0, rank)) for rank in (0, 1)]
    torch.manual_seed(0)
    assert not torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], torch.randint(0, 101, (16,)))
    assert torch.equal(draws[0], torch.randint(0, 101, (16,), generator=beta_generator(0, 0)))


def test_one_device_keeps_the_global_stream_and_ddp_ranks_get_seed_plus_rank(monkeypatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")  # what seed_everything(5) leaves for every process
    torch.manual_seed(5)
    before = torch.get_rng_state()
    assert seed_rank_streams(rank=0, world_size=1) == 5 and torch.equal(torch.get_rng_state(), before)
    seed_rank_streams(rank=1, world_size=2)
    rank_1 = torch.rand(4)
    torch.manual_seed(6)
    assert torch.equal(rank_1, torch.rand(4))


def test_checkpoint_round_trip_restores_the_beta_stream_and_reads_old_checkpoints() -> None:
    system = rate_distortion()
    checkpoint: dict = {"state_dict": {}}
    system.on_save_checkpoint(checkpoint)
    assert isinstance(checkpoint["dcvic_rng_states"], list) and len(checkpoint["dcvic_rng_states"]) == 1
    expected = system.sample_betas(6)
    system.sample_betas(6)
    system.restore_rank_rng_states(checkpoint["dcvic_rng_states"])  # what on_load_checkpoint does for this rank
    assert all(torch.equal(a, b) for a, b in zip(system.sample_betas(6), expected, strict=True))
    old = collect_rng_states()  # checkpoints before per-rank states held one dict and no β state
    after_old = torch.rand(3)
    system.restore_rank_rng_states(old)
    assert torch.equal(torch.rand(3), after_old)
