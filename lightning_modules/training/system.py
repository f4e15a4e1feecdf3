"""Shared training logic of the DC-VIC systems: iteration counting, bf16 forward, validation, resume state.

Lightning's ``global_step`` counts optimizer steps (two or more per iteration here, none in a skipped one), so the
systems keep their own ``iteration`` counter: one per training batch, skipped or not, exactly like the reference's
iteration loop. It is saved in every checkpoint together with the RNG states and drives stopping and checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lightning_modules.networks.dcvic import DCVIC, DCVICOutput
from lightning_modules.training.beta_sampling import (
    FixedBetaSampler,
    NoBetaSampler,
    SelectedBetaSampler,
    UniformBetaSampler,
)
from lightning_modules.training.losses import DCVICLoss, is_anomalous
from lightning_modules.training.randomness import (
    beta_generator,
    collect_rng_states,
    gather_rank_states,
    restore_rng_states,
    run_seed,
    seed_rank_streams,
)
from lightning_modules.training.validation_metrics import validation_metrics

BetaSampler = UniformBetaSampler | SelectedBetaSampler | FixedBetaSampler | NoBetaSampler
NEVER_RUN_PREFIXES = ("decoder.conv4.", "decoder.beta_ft_list.8.")
PERCEPTUAL_PREFIX = "loss.perceptual."
log = logging.getLogger(__name__)


def freeze_never_run(network: DCVIC) -> None:
    """``decoder.conv4`` and the decoder's last FT never execute; frozen so DDP needs no unused-parameter search."""
    for name, param in network.named_parameters():
        if name.startswith(NEVER_RUN_PREFIXES):
            param.requires_grad_(False)


class DCVICSystem(L.LightningModule):
    """Base class: subclasses build optimizers and write ``training_iteration`` (one generator iteration)."""

    def __init__(
        self,
        network: DCVIC,
        loss: DCVICLoss,
        betas: BetaSampler,
        max_iterations: int,
        bf16: bool = False,
        log_every: int = 100,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.network = network
        self.loss = loss
        self.betas = betas
        self.max_iterations = max_iterations
        self.bf16 = bf16
        self.log_every = log_every
        self.iteration = 0
        self.beta_generator = beta_generator(run_seed(), 0)  # per rank from setup("fit") on
        freeze_never_run(network)

    def setup(self, stage: str) -> None:
        """Per-rank random streams, once the rank is known and before a resumed checkpoint restores them."""
        if stage != "fit":
            return
        seed = seed_rank_streams(self.global_rank, self.trainer.world_size)
        self.beta_generator = beta_generator(seed, self.global_rank)

    # --- forward ---

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def forward_train(
        self, x: Tensor, beta_rate: Tensor | None, beta_vq: Tensor | None, fix_entropy_models: bool = False
    ) -> DCVICOutput:
        """Training forward on crops: image transforms optionally in bf16, hyperprior + ChARM always in float32."""
        n, _, h, w = x.shape
        vq = self.network.vq_encode(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not fix_entropy_models):
            with self._autocast(x.device):
                y = self.network.analysis(x, vq, beta_rate, beta_vq)
            entropy = self.network.latent_codec(y.float(), training=True)
        with self._autocast(x.device):
            synthesis = self.network.synthesis(entropy.y_hat, beta_rate, beta_vq)
        return DCVICOutput(synthesis.x_hat.float(), y, entropy.y_hat, entropy, vq, synthesis, num_pixels=n * h * w)

    def sample_betas(self, batch_size: int) -> tuple[Tensor | None, Tensor | None]:
        return self.betas.sample(batch_size, generator=self.beta_generator)

    # --- iteration bookkeeping ---

    def skip_iteration(self, total_loss: Tensor) -> bool:
        """Anomaly skip, decided jointly: if any rank's loss is bad every rank skips (no DDP deadlock)."""
        bad = self.trainer.strategy.reduce_boolean_decision(is_anomalous(total_loss.detach()), all=False)
        if bad:
            self.log("train/skipped_iteration", float(self.iteration))
        return bad

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        if self.iteration >= self.max_iterations:
            self.trainer.should_stop = True
            return -1  # Lightning skips the rest of the epoch
        return None

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        """One iteration, counted even when skipped; counted here so that callbacks already see the new count."""
        self.training_iteration(batch)
        self.iteration += 1
        if self.iteration >= self.max_iterations:
            self.trainer.should_stop = True

    def training_iteration(self, batch: Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement training_iteration")

    def should_log(self) -> bool:
        """Aligned with Lightning's ``log_every_n_steps`` gate, which writes at batches n with (n + 1) % N == 0."""
        return (self.iteration + 1) % self.log_every == 0

    def log_terms(self, prefix: str, terms: dict[str, Tensor]) -> None:
        if self.should_log():
            self.log_dict({f"{prefix}/{k}": v.detach().float() for k, v in terms.items()}, sync_dist=True)

    def log_learning_rates(self, named: dict[str, torch.optim.Optimizer]) -> None:
        if self.should_log():
            self.log_dict({f"lr/{name}": opt.param_groups[0]["lr"] for name, opt in named.items()})

    def log_output_stats(self, out: DCVICOutput) -> None:
        if self.should_log():
            self.log_dict({"train/qbpp": out.qbpp().detach(), "train/vq_acc": out.vq_accuracy()}, sync_dist=True)

    # --- validation ---

    def validation_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        """Metrics per beta setting; returns the reconstructions (for the image-grid callback)."""
        reconstructions = {}
        for label, (beta_rate, beta_vq) in self.betas.validation_settings().items():
            out = self.network(batch, beta_rate, beta_vq)
            metrics = validation_metrics(batch, out)
            self.log_dict(
                {f"val/{label}/{k}": v for k, v in metrics.items()},
                on_epoch=True,
                sync_dist=True,
                batch_size=batch.shape[0],
            )
            reconstructions[label] = out.x_hat
        return reconstructions

    # --- checkpoint state ---

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the iteration and every rank's RNG states; LPIPS weights come from their own file, not stored."""
        checkpoint["dcvic_iteration"] = self.iteration
        states = {**collect_rng_states(), "beta": self.beta_generator.get_state()}
        checkpoint["dcvic_rng_states"] = gather_rank_states(states)  # list, one entry per rank
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(PERCEPTUAL_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.iteration = int(checkpoint.get("dcvic_iteration", 0))
        self.restore_rank_rng_states(checkpoint.get("dcvic_rng_states"))
        for key, value in self.loss.perceptual.state_dict().items():
            checkpoint["state_dict"][PERCEPTUAL_PREFIX + key] = value

    def restore_rank_rng_states(self, saved: list[dict[str, Any]] | dict[str, Any] | None) -> None:
        """This rank's saved streams; a checkpoint from fewer ranks leaves the extra ranks their fresh seeds."""
        if saved is None:
            return
        saved = [saved] if isinstance(saved, dict) else saved  # older single-process checkpoints
        if self.global_rank >= len(saved):
            log.warning(
                "rank %d: the checkpoint holds RNG states of %d rank(s); this rank keeps its fresh seed + rank streams",
                self.global_rank,
                len(saved),
            )
            return
        states = saved[self.global_rank]
        restore_rng_states(states)
        if "beta" in states:
            self.beta_generator.set_state(states["beta"])

    # --- parameter partition ---

    def assert_partition(self, groups: dict[str, list[str]]) -> None:
        """Every trainable parameter is in exactly one optimizer; nothing frozen, VQGAN or never-run is in any."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        seen: list[str] = [n for names in groups.values() for n in names]
        duplicated = {n for n in seen if seen.count(n) > 1}
        never = ("network.vq_model.", *(f"network.{p}" for p in NEVER_RUN_PREFIXES))
        forbidden = sorted(n for n in seen if n.startswith(never))
        if forbidden:
            raise AssertionError(f"the frozen VQGAN / never-run layers must not be optimized: {forbidden[:5]}")
        if duplicated or set(seen) != trainable:
            raise AssertionError(
                f"bad optimizer partition: duplicated {sorted(duplicated)[:5]}, "
                f"missing {sorted(trainable - set(seen))[:5]}, frozen but optimized {sorted(set(seen) - trainable)[:5]}"
            )

    def named_trainable(self, module: nn.Module, prefix: str) -> list[tuple[str, nn.Parameter]]:
        return [(f"{prefix}.{n}", p) for n, p in module.named_parameters() if p.requires_grad]
