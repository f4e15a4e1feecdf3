"""Random streams of a training run, per DDP rank, and their checkpoint state (design §4.3, §4.8).

Model initialisation draws from the global RNGs right after ``seed_everything(seed)`` in every process, so all
ranks build the same weights (DDP broadcasts rank 0's anyway). The draws that must *differ* between ranks:

* β draws: a dedicated ``torch.Generator`` per rank, seeded from ``SeedSequence([seed, rank, BETA_STREAM])``.
  It is independent of data loading, so a resumed run draws exactly the β a run that never stopped would have;
* quantisation noise (compressai draws it from the global torch RNG) and, with ``num_workers=0``, data
  augmentation: the global torch / numpy / Python RNGs are re-seeded with ``seed + rank`` once the ranks are
  known (rank 0 keeps ``seed``: exactly what Lightning's DDP already seeds every rank with). Loader workers are
  seeded by Lightning from the rank already (``seed_everything(workers=True)``).

A single-device run re-seeds nothing, so its global stream (init, noise, crops) is the one it always had.
Checkpoints hold every rank's states (:func:`gather_rank_states`); each rank restores its own.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

BETA_STREAM = 0xBE7A  # SeedSequence key of the β generator; the global RNGs use seed + rank


def run_seed() -> int:
    """The run's seed: ``PL_GLOBAL_SEED`` (set by ``seed_everything``), else torch's initial seed."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))


def seed_global_streams(seed: int, rank: int) -> None:
    """Global torch (CPU and CUDA), numpy and Python RNGs from ``seed + rank``: noise and in-process crops."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def seed_rank_streams(rank: int, world_size: int) -> int:
    """Re-seed the global streams per rank under DDP (no-op on one device); returns the run seed."""
    seed = run_seed()
    if world_size > 1:
        seed_global_streams(seed, rank)
    return seed


def beta_generator(seed: int, rank: int) -> torch.Generator:
    """A CPU generator for the β draws of one rank, independent of the global streams."""
    state = np.random.SeedSequence([seed, rank, BETA_STREAM]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def collect_rng_states() -> dict[str, Any]:
    """torch / numpy / Python RNG states as plain types, so ``torch.load(weights_only=True)`` can read them."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def gather_rank_states(states: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``states``, in rank order, on every rank (a collective: all ranks must call it)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [states]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, states)
    return gathered
