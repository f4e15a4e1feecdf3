"""Stages 1_1 and 1_2: rate-distortion pre-training with an auxiliary optimizer for the bottleneck quantiles.

One iteration, in the reference's order (design §4.4, §4.5, §4.8)::

    zero main + aux grads → forward → loss → [anomaly? skip everything]
    → backward(loss) → clip(main params, 1.0) → main step → main scheduler step
    → aux = EntropyBottleneck.loss() on the just-updated density parameters → aux gradient → aux step

The main loss reaches the quantiles only through the STE's ``− m + m``, an exactly-zero gradient; the aux loss
stops its gradient into the density parameters, so it moves the quantiles alone. Its gradient is taken with
``torch.autograd.grad``, outside DDP's reducer (which expects every parameter in each backward it prepares): the aux
loss is a function of parameters only, identical on every rank after the synchronised main step, so its gradient
needs no all-reduce.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from lightning_modules.networks.dcvic import DCVIC
from lightning_modules.training.losses import DCVICLoss
from lightning_modules.training.system import BetaSampler, DCVICSystem

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]
AUX_SUFFIX = ".quantiles"


class RateDistortionSystem(DCVICSystem):
    def __init__(
        self,
        network: DCVIC,
        loss: DCVICLoss,
        betas: BetaSampler,
        optimizer: OptimizerFactory,
        aux_optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        max_iterations: int,
        grad_clip: float = 1.0,
        bf16: bool = False,
        log_every: int = 100,
    ) -> None:
        super().__init__(network, loss, betas, max_iterations, bf16, log_every)
        self.optimizer_factory = optimizer
        self.aux_optimizer_factory = aux_optimizer
        self.scheduler_factory = scheduler
        self.grad_clip = grad_clip

    def parameter_groups(self) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
        """Main: every trainable network parameter except ``*.quantiles``; aux: the quantiles (VQGAN is frozen)."""
        trainable = self.named_trainable(self.network, "network")
        return {
            "main": [(n, p) for n, p in trainable if not n.endswith(AUX_SUFFIX)],
            "aux": [(n, p) for n, p in trainable if n.endswith(AUX_SUFFIX)],
        }

    def configure_optimizers(self):
        groups = self.parameter_groups()
        self.assert_partition({k: [n for n, _ in v] for k, v in groups.items()})
        if [n for n, _ in groups["aux"]] != ["network.entropy_model_z.quantiles"]:
            raise AssertionError(f"aux optimizer must hold exactly the bottleneck quantiles: {groups['aux']}")
        main = self.optimizer_factory([p for _, p in groups["main"]])
        aux = self.aux_optimizer_factory([p for _, p in groups["aux"]])
        return [main, aux], [self.scheduler_factory(main)]

    def training_iteration(self, batch: Tensor) -> None:
        main_opt, aux_opt = self.optimizers()
        scheduler = self.lr_schedulers()
        main_opt.zero_grad()
        aux_opt.zero_grad()

        # --- forward and loss ---
        beta_rate, beta_vq = self.sample_betas(batch.shape[0])
        out = self.forward_train(batch, beta_rate, beta_vq)
        terms = self.loss(batch, out, beta_rate, beta_vq)
        if self.skip_iteration(terms["loss"]):
            return

        # --- main update (clipped, scheduled) ---
        self.manual_backward(terms["loss"])
        self.clip_gradients(main_opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        main_opt.step()
        scheduler.step()

        # --- aux update of the quantiles, on the density parameters just updated ---
        aux_loss = self.accumulate_aux_gradient()
        aux_opt.step()

        self.log_terms("train", {**terms, "aux": aux_loss})
        self.log_output_stats(out)
        self.log_learning_rates({"main": main_opt, "aux": aux_opt})

    def accumulate_aux_gradient(self) -> Tensor:
        """Aux loss of the current density parameters; its gradient is added to ``quantiles.grad``."""
        bottleneck = self.network.entropy_model_z
        aux_loss = bottleneck.loss()
        (grad,) = torch.autograd.grad(aux_loss, [bottleneck.quantiles])
        quantiles = bottleneck.quantiles
        quantiles.grad = grad if quantiles.grad is None else quantiles.grad + grad
        return aux_loss.detach()
