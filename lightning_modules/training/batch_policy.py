"""How many images one iteration sees across ranks × nodes, and the opt-in rules that keep a recipe comparable.

The paper's recipe is batch 6 on one GPU (design §4.1, §4.8). Under DDP every rank loads its own batch, so a
per-rank batch of 6 on 4 GPUs is a global batch of 24 at the paper's learning rate and iteration count. A run
chooses one of:

* a per-rank batch (``data.batch_size``; global = ranks × per-rank), or
* a global batch (``data.global_batch_size``), split evenly over the ranks (refused when it does not divide);

and, when its global batch differs from the reference, optionally one rescale rule (factor k = global / reference):

* ``iterations``: iteration counts (stop, schedules, checkpoints, validation) × 1/k: images seen stay the recipe's;
* ``lr``: learning rates × k (the linear scaling rule), iteration counts unchanged;
* ``none``: nothing changes; the start-up line says how far the run is from the recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

RescaleRule = Literal["none", "iterations", "lr"]
RESCALE_RULES = ("none", "iterations", "lr")


@dataclass(frozen=True)
class BatchPlan:
    """Per-rank and global batch of a run, and the recipe it is compared with."""

    ranks: int
    per_rank: int
    reference_batch: int
    rescale: RescaleRule = "none"

    @property
    def global_batch(self) -> int:
        return self.ranks * self.per_rank

    @property
    def factor(self) -> float:
        """k = global / reference batch."""
        return self.global_batch / self.reference_batch

    @property
    def rescales_iterations(self) -> bool:
        return self.rescale == "iterations" and self.factor != 1

    def iterations(self, count: int) -> int:
        """An iteration count of the recipe as this run counts it (× 1/k under ``iterations``, at least 1)."""
        if not self.rescales_iterations or count <= 0:
            return count
        return max(1, round(count / self.factor))

    def learning_rate(self, lr: float) -> float:
        return lr * self.factor if self.rescale == "lr" else lr

    def describe(self, recipe_iterations: int, recipe_lrs: Mapping[str, float]) -> str:
        """The one start-up line: this run's batch, iterations, images seen and lr against the recipe's."""
        iterations = self.iterations(recipe_iterations)
        seen, recipe_seen = self.global_batch * iterations, self.reference_batch * recipe_iterations
        lrs = " ".join(f"{name}={self.learning_rate(lr):.3g}" for name, lr in recipe_lrs.items())
        recipe_lr = " ".join(f"{name}={lr:.3g}" for name, lr in recipe_lrs.items())
        return (
            f"batch: {self.ranks} rank(s) x {self.per_rank} per rank = global batch {self.global_batch}; "
            f"{iterations} iterations, {seen:,} images seen, lr {lrs}; the recipe at the paper's batch "
            f"{self.reference_batch} on 1 GPU: {recipe_iterations} iterations, {recipe_seen:,} images, lr {recipe_lr}; "
            f"images seen x{seen / max(recipe_seen, 1):.3g}, rescale={self.rescale}"
        )


def plan_batches(
    ranks: int,
    batch_size: int,
    global_batch_size: int | None = None,
    reference_batch: int = 6,
    rescale: str = "none",
) -> BatchPlan:
    """The run's :class:`BatchPlan`; a global batch that does not split evenly over ``ranks`` is one clear error."""
    if rescale not in RESCALE_RULES:
        raise ValueError(f"batch_policy.rescale={rescale!r} is not one of {', '.join(RESCALE_RULES)}")
    if ranks < 1 or reference_batch < 1:
        raise ValueError(f"need at least 1 rank and a positive reference batch, got {ranks} and {reference_batch}")
    if global_batch_size is None:
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be positive, got {batch_size}")
        return BatchPlan(ranks, batch_size, reference_batch, rescale)  # type: ignore[arg-type]
    if global_batch_size < 1 or global_batch_size % ranks:
        raise ValueError(
            f"data.global_batch_size={global_batch_size} does not split evenly over {ranks} rank(s) "
            f"(trainer.devices x trainer.num_nodes): use a positive multiple of {ranks}, or a per-rank "
            "data.batch_size with data.global_batch_size=null"
        )
    return BatchPlan(ranks, global_batch_size // ranks, reference_batch, rescale)  # type: ignore[arg-type]
