"""Stages 1_3 and 3: GAN fine-tuning of the synthesis side against a beta-conditioned PatchGAN (design §4.6, §4.7).

Trainable: ``decoder``, ``vq_estimator``, ``fusion_module`` (generator) and the discriminator. Encoder,
hyper-networks, context and entropy models are frozen and run under no-grad in training quantisation mode; the
VQGAN is frozen. One iteration, in the reference's order::

    G zero-grad → forward → G loss (D's parameters detached) → [anomaly? skip everything]
    → D zero-grad → D loss on x and x̂.detach() (x̂ from before the G step)
    → backward(G loss + D loss) → clip(G, 1.0) → G step → G scheduler → D step → D scheduler

The reference runs two backward passes; one pass over the sum gives the same gradients because the G loss sees D
with detached parameters and the D loss sees a detached x̂, so they touch disjoint parameters. One backward per
forward is what DDP needs without ``find_unused_parameters``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from lightning_modules.networks.dcvic import DCVIC
from lightning_modules.networks.discriminator import BetaConditionedPatchGAN
from lightning_modules.training.losses import DCVICLoss, discriminator_loss
from lightning_modules.training.rate_distortion import OptimizerFactory, SchedulerFactory
from lightning_modules.training.system import BetaSampler, DCVICSystem

GENERATOR_MODULES = ("decoder", "vq_estimator", "fusion_module")
FROZEN_MODULES = (
    "encoder",
    "hyperencoder",
    "hyperdecoder",
    "context_model",
    "entropy_model_z",
    "entropy_model_y",
)


class AdversarialSystem(DCVICSystem):
    def __init__(
        self,
        network: DCVIC,
        discriminator: BetaConditionedPatchGAN,
        loss: DCVICLoss,
        betas: BetaSampler,
        optimizer: OptimizerFactory,
        disc_optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        disc_scheduler: SchedulerFactory,
        max_iterations: int,
        grad_clip: float = 1.0,
        bf16: bool = False,
        log_every: int = 100,
    ) -> None:
        super().__init__(network, loss, betas, max_iterations, bf16, log_every)
        for name in FROZEN_MODULES:
            getattr(network, name).requires_grad_(False)
        self.discriminator = discriminator
        self.optimizer_factory = optimizer
        self.disc_optimizer_factory = disc_optimizer
        self.scheduler_factory = scheduler
        self.disc_scheduler_factory = disc_scheduler
        self.grad_clip = grad_clip
        self._pending_optimizer_states: list[dict[str, Any]] | None = None

    def parameter_groups(self) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
        generator = [
            item
            for name in GENERATOR_MODULES
            for item in self.named_trainable(getattr(self.network, name), f"network.{name}")
        ]
        return {
            "generator": generator,
            "discriminator": self.named_trainable(self.discriminator, "discriminator"),
        }

    def configure_optimizers(self):
        groups = self.parameter_groups()
        self.assert_partition({k: [n for n, _ in v] for k, v in groups.items()})
        g_opt = self.optimizer_factory([p for _, p in groups["generator"]])
        d_opt = self.disc_optimizer_factory([p for _, p in groups["discriminator"]])
        return [g_opt, d_opt], [self.scheduler_factory(g_opt), self.disc_scheduler_factory(d_opt)]

    def discriminate_frozen(self, x: Tensor, beta_rate: Tensor, beta_vq: Tensor) -> Tensor:
        """D logits with D's parameters detached: gradients reach x̂ only (D's ``requires_grad`` off for the G pass)."""
        params = {n: p.detach() for n, p in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, params, (x, beta_rate, beta_vq))

    def training_iteration(self, batch: Tensor) -> None:
        g_opt, d_opt = self.optimizers()
        g_sched, d_sched = self.lr_schedulers()

        # --- generator ---
        g_opt.zero_grad()
        beta_rate, beta_vq = self.sample_betas(batch.shape[0])
        out = self.forward_train(batch, beta_rate, beta_vq, fix_entropy_models=True)
        terms = self.loss(batch, out, beta_rate, beta_vq, self.discriminate_frozen(out.x_hat, beta_rate, beta_vq))
        if self.skip_iteration(terms["loss"]):
            return

        # --- discriminator loss on the real crop and the fake from before the G step ---
        d_opt.zero_grad()
        real_logits = self.discriminator(batch, beta_rate, beta_vq)
        fake_logits = self.discriminator(out.x_hat.detach(), beta_rate, beta_vq)
        d_real, d_fake = discriminator_loss(real_logits, fake_logits)
        d_total = 0.5 * (d_real + d_fake)

        # --- updates: G (clipped), then D (not clipped), each with its scheduler ---
        self.manual_backward(terms["loss"] + d_total)
        self.clip_gradients(g_opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        g_opt.step()
        g_sched.step()
        d_opt.step()
        d_sched.step()

        self.log_terms("train", terms)
        disc_stats = {"d_real": d_real, "d_fake": d_fake, "d_total": d_total}
        disc_stats |= {"d_out_real": real_logits.mean(), "d_out_fake": fake_logits.mean()}
        self.log_terms("train", disc_stats)
        self.log_output_stats(out)
        self.log_learning_rates({"generator": g_opt, "discriminator": d_opt})

    # --- stage 3: continue the predecessor's Adam moments with a fresh learning rate ---

    def set_pending_optimizer_states(self, states: list[dict[str, Any]]) -> None:
        if len(states) != 2:
            raise ValueError(f"expected generator and discriminator optimizer states, got {len(states)}")
        self._pending_optimizer_states = states

    def on_train_start(self) -> None:
        if self._pending_optimizer_states is None:
            return
        for opt, state in zip(self.optimizers(), self._pending_optimizer_states, strict=True):
            fresh_lrs = [group["lr"] for group in opt.optimizer.param_groups]
            opt.optimizer.load_state_dict(state)
            for group, lr in zip(opt.optimizer.param_groups, fresh_lrs, strict=True):
                group["lr"] = group["initial_lr"] = lr
        self._pending_optimizer_states = None
