"""Stage 0: train the codebook model, a taming VQGAN, and export it as a taming checkpoint.

Per iteration (manual optimization, two optimizers)::

    x ─VQGAN─> x̂, qloss, indices
    generator:      |x − x̂|₁ + w_p·LPIPS(x, x̂) + w_q·qloss + λ·w_d·G(D(x̂))      λ adaptive; GAN term from disc_start
    discriminator:  D_loss(D(x), D(x̂.detach()))                                    only from disc_start on

The terms follow taming's ``VQLPIPSWithDiscriminator``, the recipe behind "vq-f8-n256"; the critic is taming's
beta-free PatchGAN. Like the DC-VIC systems, this one counts ``iteration`` (one per batch) itself: Lightning's
``global_step`` advances on every optimizer step, i.e. twice per batch once the critic trains.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from taming.modules.losses.vqperceptual import hinge_d_loss, vanilla_d_loss
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics.image import PeakSignalNoiseRatio

from lightning_modules.images import atomic_path
from lightning_modules.networks.vqgan_trainable import TrainableVQGAN
from lightning_modules.perceptual import build_lpips
from lightning_modules.training.randomness import seed_rank_streams

log = logging.getLogger(__name__)
OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
GanLoss = Literal["hinge", "non_saturating"]
VQGAN_FILE = "vqgan.ckpt"
PERCEPTUAL_PREFIX = "perceptual."


def generator_adversarial_loss(logits_fake: Tensor, kind: GanLoss) -> Tensor:
    """Taming's ``-mean(D(x̂))`` for hinge; ``softplus(-D(x̂))`` for the non-saturating GAN."""
    if kind == "hinge":
        return -logits_fake.mean()
    return F.softplus(-logits_fake).mean()


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor, kind: GanLoss) -> Tensor:
    return hinge_d_loss(logits_real, logits_fake) if kind == "hinge" else vanilla_d_loss(logits_real, logits_fake)


def adaptive_adversarial_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor) -> Tensor:
    """Taming's λ = ‖∇rec‖ / (‖∇g‖ + 1e-4) at the decoder's last layer: keeps the GAN from swamping L1/LPIPS."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def optional_lpips(backbone_weights: str | None) -> nn.Module | None:
    """LPIPS-AlexNet when its backbone file is configured; ``None`` (perceptual weight 0) otherwise.

    A random-backbone LPIPS would be a meaningless training signal, so stage 0 drops the term instead.
    """
    if backbone_weights is None:
        log.info("stage 0 trains without LPIPS (paths.alexnet_weights is null)")
        return None
    return build_lpips(backbone_weights)


class CodeUsageWindow(nn.Module):
    """Counts codebook hits over ``window`` batches; a code no batch of the window selected is *dead*."""

    def __init__(self, n_embed: int, window: int) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"the dead-code window must be >= 1 batch, got {window}")
        self.window = window
        self.register_buffer("hits", torch.zeros(n_embed, dtype=torch.long), persistent=False)
        self.register_buffer("batches", torch.zeros((), dtype=torch.long), persistent=False)

    def update(self, indices: Tensor) -> int | None:
        """Add one batch of (N, h, w) indices; at the end of a window return its dead-code count and restart."""
        self.hits += torch.bincount(indices.flatten(), minlength=self.hits.numel())
        self.batches += 1
        if int(self.batches) < self.window:
            return None
        dead = int((self.hits == 0).sum())
        self.hits.zero_()
        self.batches.zero_()
        return dead


class VQGANSystem(L.LightningModule):
    """Trains :class:`TrainableVQGAN` against an unconditioned PatchGAN for ``max_iterations`` batches."""

    def __init__(
        self,
        vqgan: TrainableVQGAN,
        discriminator: nn.Module,
        optimizer: OptimizerFactory,
        disc_optimizer: OptimizerFactory,
        max_iterations: int,
        perceptual: nn.Module | None = None,
        pixel_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        codebook_weight: float = 1.0,
        disc_weight: float = 0.75,
        disc_start: int = 250_001,
        gan_loss: GanLoss = "hinge",
        grad_clip: float | None = None,
        dead_code_window: int = 1000,
        codebook_from_data: bool = False,
    ) -> None:
        super().__init__()
        if gan_loss not in ("hinge", "non_saturating"):
            raise ValueError(f"gan_loss must be 'hinge' or 'non_saturating', got {gan_loss!r}")
        self.automatic_optimization = False
        self.vqgan = vqgan
        self.discriminator = discriminator
        self.perceptual = perceptual.eval().requires_grad_(False) if perceptual is not None else None
        self.optimizer_factory = optimizer
        self.disc_optimizer_factory = disc_optimizer
        self.max_iterations = max_iterations
        self.pixel_weight = pixel_weight
        self.perceptual_weight = perceptual_weight if perceptual is not None else 0.0
        self.codebook_weight = codebook_weight
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        self.gan_loss: GanLoss = gan_loss
        self.grad_clip = grad_clip
        self.code_usage = CodeUsageWindow(vqgan.n_embed, dead_code_window)
        self.codebook_from_data = codebook_from_data
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.iteration = 0

    def setup(self, stage: str) -> None:
        """Each DDP rank crops its own way (global RNGs from seed + rank, as in the DC-VIC systems)."""
        if stage == "fit":
            seed_rank_streams(self.global_rank, self.trainer.world_size)

    @property
    def discriminator_active(self) -> bool:
        return self.iteration >= self.disc_start

    def forward(self, x: Tensor) -> Tensor:
        return self.vqgan(x).x_hat

    def configure_optimizers(self) -> list[Optimizer]:
        opt_g = self.optimizer_factory(self.vqgan.parameters())
        opt_d = self.disc_optimizer_factory(self.discriminator.parameters())
        self.assert_parameter_partition(opt_g, opt_d)
        return [opt_g, opt_d]

    def assert_parameter_partition(self, opt_g: Optimizer, opt_d: Optimizer) -> None:
        """Every trainable parameter belongs to exactly one optimizer; the perceptual net to none."""
        ids_g = {id(p) for group in opt_g.param_groups for p in group["params"]}
        ids_d = {id(p) for group in opt_d.param_groups for p in group["params"]}
        trainable = {id(p) for p in self.parameters() if p.requires_grad}
        if ids_g & ids_d or (ids_g | ids_d) != trainable:
            raise RuntimeError("generator/discriminator optimizers must partition the trainable parameters")

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        x = batch  # (N, 3, H, W) in [-1, 1]
        if self.codebook_from_data and self.iteration == 0:
            self.init_codebook(x)

        # --- generator: reconstruction, codebook/commitment and (from disc_start) adversarial terms ---
        self.toggle_optimizer(opt_g)
        out = self.vqgan(x)
        g_loss, logs = self.generator_loss(x, out.x_hat, out.qloss)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        self._clip(opt_g)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        # --- discriminator: only once it is switched on ---
        if self.discriminator_active:
            self.toggle_optimizer(opt_d)
            logits_real = self.discriminator(x.detach())
            logits_fake = self.discriminator(out.x_hat.detach())
            d_loss = discriminator_loss(logits_real, logits_fake, self.gan_loss)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            self._clip(opt_d)
            opt_d.step()
            self.untoggle_optimizer(opt_d)
            logs["d_loss"] = d_loss.detach()
            logs["logits_real"] = logits_real.detach().mean()
            logs["logits_fake"] = logits_fake.detach().mean()

        # --- bookkeeping: losses, and dead codes over a window of batches ---
        self.log("train/l1", logs.pop("l1"), prog_bar=True)
        self.log_dict({f"train/{name}": value for name, value in logs.items()})
        dead = self.code_usage.update(out.indices)
        if dead is not None:
            self.log("train/dead_codes", float(dead))
            self.log("train/codebook_usage", 1.0 - dead / self.vqgan.n_embed)
        # Counted here, not in on_train_batch_end: Lightning runs the callbacks' on_train_batch_end (the
        # iteration checkpoint) before the module's, and they must see this iteration as done.
        self.iteration += 1

    def generator_loss(self, x: Tensor, x_hat: Tensor, qloss: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        l1 = (x - x_hat).abs().mean()
        rec = self.pixel_weight * l1
        logs = {"l1": l1.detach(), "qloss": qloss.detach()}
        if self.perceptual is not None and self.perceptual_weight > 0:
            lpips = self.perceptual(x_hat, x).mean()
            rec = rec + self.perceptual_weight * lpips
            logs["lpips"] = lpips.detach()
        loss = rec + self.codebook_weight * qloss
        if self.discriminator_active:
            adv = generator_adversarial_loss(self.discriminator(x_hat), self.gan_loss)
            weight = adaptive_adversarial_weight(rec, adv, self.vqgan.last_layer) * self.disc_weight
            loss = loss + weight * adv
            logs["g_adv"] = adv.detach()
            logs["adv_weight"] = weight
        logs["g_loss"] = loss.detach()
        return loss, logs

    def init_codebook(self, x: Tensor) -> None:
        """Replace taming's tiny uniform codebook by encoder outputs of the first batch (rank 0's, on every rank)."""
        codes = self.trainer.strategy.broadcast(self.vqgan.sample_codebook(x), src=0)
        self.vqgan.quantize.embedding.weight.data.copy_(codes)

    def _clip(self, optimizer: Optimizer) -> None:
        if self.grad_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    # --- iteration bookkeeping (the protocol of callbacks.iteration_checkpoint) ---

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        if self.iteration >= self.max_iterations:
            self.trainer.should_stop = True
            return -1  # Lightning skips the rest of the epoch
        return None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.iteration >= self.max_iterations:
            self.trainer.should_stop = True

    # --- validation: PSNR of the reconstructions; returns them for callbacks.image_grid ---

    def validation_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        x_hat = self.vqgan(batch).x_hat.clamp(-1, 1)
        self.val_psnr.update((x_hat + 1) / 2, (batch + 1) / 2)
        self.log("val/l1", (batch - x_hat).abs().mean(), batch_size=batch.shape[0])
        self.log("val/psnr", self.val_psnr, prog_bar=True)
        return {"vqgan": x_hat}

    # --- checkpoint state: the iteration; LPIPS comes from its own file and is not stored ---

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vqgan_iteration"] = self.iteration
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(PERCEPTUAL_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.iteration = int(checkpoint.get("vqgan_iteration", 0))
        if self.perceptual is not None:
            for key, value in self.perceptual.state_dict().items():
                checkpoint["state_dict"][PERCEPTUAL_PREFIX + key] = value


def export_taming_checkpoint(source: VQGANSystem | TrainableVQGAN, path: str | Path) -> Path:
    """Write ``{"state_dict": ..., "architecture": ...}`` with taming's key names, atomically.

    It loads like the official file: ``load_vqgan(path, **torch.load(path)["architecture"])``.
    """
    vqgan = source.vqgan if isinstance(source, VQGANSystem) else source
    state = {key: value.detach().to("cpu").clone() for key, value in vqgan.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "architecture": dict(vqgan.architecture)}, tmp)
    return Path(path)
