"""One real training iteration of a stage's system on a recorded golden batch, and its comparison with the authors'.

The golden folders (``$DCVIC_GOLDEN_DIR/training/<batch>/``, format in that folder's README) hold what the authors'
trainer computed for one iteration from the deterministic weights, a fixed batch, fixed betas and recorded
quantisation noise. Here the same iteration runs through *our* code path: the stage's Hydra config builds the system
(``entrypoints.runners.build_system``), a Lightning ``Trainer`` fits it for one iteration, the noise comes in through
:func:`lightning_modules.networks.entropy_models.injected_noise` and the betas through ``FixedBetaSampler``.
A callback only observes (hooks on the loss, the discriminator, gradient accumulation and optimizer steps).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import DataLoader

from entrypoints.runners import build_system
from lightning_modules.model_file import ModelFile
from lightning_modules.networks.dcvic import DCVICOutput, bits, bits_per_sample
from lightning_modules.networks.entropy_models import injected_noise
from lightning_modules.training.beta_sampling import FixedBetaSampler
from lightning_modules.training.losses import focal_cross_entropy, generator_gan_loss, mse_01, per_sample_mean
from lightning_modules.training.system import DCVICSystem
from tests.support.configs import compose_train
from tests.support.weight_fill import golden_dir

STAGES = ("1_1", "1_2", "1_3")
ADAM_EPS = 1e-8  # torch default, used by every optimizer of the recipe (golden README §4)
GOLDEN_STAGE = {stage: f"stage{stage}" for stage in STAGES}
# The authors' loss-term tags and ours (DCVICLoss term names).
TERM_NAMES = {
    "rate": "rate",
    "distortion": "mse",
    "perceptual": "lpips",
    "code_distortion": "code_mse",
    "code_ce": "vq_ce",
    "adv": "gan",
}
LOSS_MODULES = {
    "rate": "rate_loss",
    "distortion": "distortion_loss",
    "perceptual": "perceptual_loss",
    "code_distortion": "code_distortion_loss",
    "code_ce": "code_ce_loss",
    "adv": "gan_loss_G_adv",
}
WEIGHT_KEYS = {
    "rate": "rate_weight",
    "distortion": "mse_weight",
    "perceptual": "lpips_weight",
    "code_distortion": "code_mse_weight",
    "code_ce": "vq_ce_weight",
    "adv": "gan_weight",
}
# Keys of the released (dual-conditioned) file that the stage-1_1 architecture does not have (golden README §2).
BETA_LAYER_PREFIXES = (
    "encoder.beta_ft_list.",
    "encoder.mlp.",
    "decoder.beta_ft_list.",
    "decoder.mlp.",
    "decoder.init_fuse.",
)


# --------------------------------------------------------------------------------------------------------------
# The golden data of one batch folder
# --------------------------------------------------------------------------------------------------------------


def training_root() -> Path:
    return golden_dir() / "training"


def batch_folders() -> list[Path]:
    """Every folder under ``training/`` in the recorded format (``index.json`` + ``TRAIN__*`` files)."""
    root = training_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "index.json").is_file())


class GoldenIteration:
    """One stage's recorded iteration in one batch folder."""

    def __init__(self, folder: Path, stage: str) -> None:
        self.folder = folder
        self.stage = stage
        self.key = GOLDEN_STAGE[stage]
        self.index = json.loads((folder / "index.json").read_text())
        self.info = self.index["stages"][self.key]
        self.scalars = self.index["scalars"][self.key]
        self.record = json.loads((folder / f"TRAIN__{self.key}__record.json").read_text())["meta"]

    def has(self, what: str) -> bool:
        return (self.folder / f"TRAIN__{self.key}__{what}.npy").is_file()

    def array(self, what: str) -> Tensor:
        path = self.folder / f"TRAIN__{self.key}__{what}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"golden array missing: {path}")
        return torch.from_numpy(np.load(path))

    def scalar(self, name: str) -> float:
        return float(self.scalars[name]["float"])

    @property
    def input(self) -> Tensor:
        return self.array("input_float")

    @property
    def betas(self) -> tuple[list[float], list[float]] | None:
        if not self.has("beta_rate"):
            return None
        return self.array("beta_rate").tolist(), self.array("beta_vq").tolist()

    def noise(self) -> list[Tensor]:
        return [self.array(f"noise_call{call['index']}") for call in self.info["noise_calls"]]

    def selected(self) -> list[str]:
        return list(self.info["selected_params"])

    def selected_disc(self) -> list[str]:
        return list(self.info["selected_D_params"])


class RecordedNoise:
    """A noise source replaying the recorded tensors in call order; refuses a call of the wrong shape."""

    def __init__(self, tensors: list[Tensor]) -> None:
        self.tensors = tensors
        self.calls = 0

    def __call__(self, like: Tensor) -> Tensor:
        if self.calls >= len(self.tensors):
            raise AssertionError(
                f"noise call {self.calls} of shape {tuple(like.shape)}: only {len(self.tensors)} were recorded"
            )
        noise = self.tensors[self.calls]
        if tuple(noise.shape) != tuple(like.shape):
            raise AssertionError(f"noise call {self.calls}: shape {tuple(like.shape)}, recorded {tuple(noise.shape)}")
        self.calls += 1
        return noise.to(like.device, like.dtype)


# --------------------------------------------------------------------------------------------------------------
# Building the stage's system with the golden weights
# --------------------------------------------------------------------------------------------------------------


def stage_config(stage: str, vqgan_checkpoint: Path, alexnet: Path, *extra: str) -> DictConfig:
    """The stage's training config with the full network, one iteration, logging every iteration, no validation."""
    return compose_train(
        [
            f"+stage={stage}",
            "network=full",
            f"paths.vqgan_checkpoint={vqgan_checkpoint}",
            f"paths.alexnet_weights={alexnet}",
            "max_iterations=1",
            "log_every=1",
            "trainer.accelerator=cpu",
            "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false",
            "+trainer.enable_model_summary=false",
            "trainer.benchmark=false",
            *extra,
        ]
    )


def load_golden_weights(system: DCVICSystem, model_file: ModelFile) -> list[str]:
    """The converted golden weights into the stage's network (the authors' ``strict=False`` subset for stage 1_1).

    Returns the file keys the network does not have; only the beta-conditioning layers may be among them.
    """
    own = system.network.state_dict()
    unused = sorted(k for k in model_file.state_dict if k not in own)
    bad = [k for k in unused if not k.startswith(BETA_LAYER_PREFIXES)]
    if bad:
        raise AssertionError(f"golden weights hold keys the network lacks beyond the beta layers: {bad[:5]}")
    system.network.load_state_dict({k: v for k, v in model_file.state_dict.items() if k in own}, strict=True)
    if hasattr(system, "discriminator"):
        system.discriminator.load_state_dict(model_file.discriminator, strict=True)
    return unused


@dataclass
class IterationRecord:
    """What one iteration of our system did, as observed by :class:`IterationObserver`."""

    out: DCVICOutput | None = None
    loss_inputs: tuple = ()
    terms: dict[str, Tensor] = field(default_factory=dict)
    disc_logits: list[Tensor] = field(default_factory=list)
    grads: dict[str, Tensor] = field(default_factory=dict)  # raw, as accumulated by backward (before clipping)
    step_grads: list[dict[str, Tensor]] = field(default_factory=list)  # per optimizer step, as the step saw them
    step_lrs: list[float] = field(default_factory=list)
    logged: dict[str, float] = field(default_factory=dict)
    params_before: dict[str, Tensor] = field(default_factory=dict)
    params_after: dict[str, Tensor] = field(default_factory=dict)
    noise_calls: int = 0
    unused_weight_keys: list[str] = field(default_factory=list)  # golden-file keys the stage's network lacks


class IterationObserver(L.Callback):
    """Records the loss inputs/outputs, D logits, raw gradients, and the gradients and lr each optimizer step saw."""

    def __init__(self, record: IterationRecord) -> None:
        self.record = record
        self.handles: list[Any] = []

    def on_train_start(self, trainer: L.Trainer, system: DCVICSystem) -> None:
        rec = self.record
        names = {id(p): n for n, p in system.named_parameters()}
        rec.params_before = {n: p.detach().clone() for n, p in system.named_parameters()}

        def on_loss(module, args, kwargs, output):
            rec.loss_inputs = args
            rec.out = args[1]
            rec.terms = {k: v.detach().clone() for k, v in output.items()}

        self.handles.append(system.loss.register_forward_hook(on_loss, with_kwargs=True))
        if hasattr(system, "discriminator"):
            hook = system.discriminator.register_forward_hook(
                lambda m, a, o: rec.disc_logits.append(o.detach().clone())
            )
            self.handles.append(hook)
        for name, param in system.named_parameters():
            if param.requires_grad:
                hook = param.register_post_accumulate_grad_hook(
                    lambda p, name=name: rec.grads.__setitem__(name, p.grad.detach().clone())
                )
                self.handles.append(hook)
        for optimizer in trainer.optimizers:

            def on_step(opt, args, kwargs):
                grads = {names[id(p)]: p.grad.detach().clone() for g in opt.param_groups for p in g["params"]}
                rec.step_grads.append(grads)
                rec.step_lrs.append(opt.param_groups[0]["lr"])

            self.handles.append(optimizer.register_step_pre_hook(on_step))

    def on_train_end(self, trainer: L.Trainer, system: DCVICSystem) -> None:
        for handle in self.handles:
            handle.remove()
        self.record.params_after = {n: p.detach().clone() for n, p in system.named_parameters()}
        self.record.logged = {k: float(v) for k, v in trainer.logged_metrics.items()}


def run_iteration(cfg, model_file: ModelFile, golden: GoldenIteration) -> tuple[DCVICSystem, IterationRecord]:
    """Build the stage's system from ``cfg`` as a training run does, load the golden weights, fit one iteration."""
    system = build_system(cfg)
    record = IterationRecord(unused_weight_keys=load_golden_weights(system, model_file))
    if golden.betas is not None:
        system.betas = FixedBetaSampler(*golden.betas)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[IterationObserver(record)])
    noise = RecordedNoise(golden.noise())
    loader = DataLoader([golden.input], batch_size=None)
    with injected_noise(noise):
        trainer.fit(system, train_dataloaders=loader)
    record.noise_calls = noise.calls
    if system.iteration != 1:
        raise AssertionError(f"expected exactly one iteration, the system ran {system.iteration}")
    return system, record


# --------------------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------------------

# Parameters whose gradient comes from the rate and code terms only: it never crosses the backward of the decoder,
# the VQGAN decoder or LPIPS, where ReLU / LeakyReLU / max-pool switches turn float noise into gradient changes.
RATE_OR_CODE_ONLY = (
    "entropy_model_z.",
    "hyperdecoder.hd_std.",
    "context_model.scale_slice_transforms.",
    "vq_estimator.",
)


@dataclass(frozen=True)
class Tolerances:
    """Relative tolerances, ``max|ours − theirs| ≤ rtol · max|theirs|`` (docs/training_parity.md says why)."""

    value: float = 1e-5  # losses, bpp, likelihood sums, forward outputs, D loss, learning rates
    after_vqgan_decoder: float = 1e-4  # x̂ and D logits of x̂: the frozen VQGAN decoder's float32 CPU-kernel noise
    smooth_grad: float = 1e-4  # gradients of RATE_OR_CODE_ONLY parameters and the aux gradient
    switched_grad: float = 1e-2  # every other gradient tensor and per-parameter gradient norm
    aggregate: float = 1e-3  # per-module gradient norms, clip total norm and clip coefficient

    def grad(self, name: str) -> float:
        return self.smooth_grad if name.startswith(RATE_OR_CODE_ONLY) else self.switched_grad


@dataclass
class Check:
    kind: str
    name: str
    diff: float  # max |ours − theirs|
    scale: float  # max |theirs|
    usage: float  # max over elements of |ours − theirs| / allowed: ≤ 1 passes

    @property
    def rel(self) -> float:
        return self.diff / self.scale if self.scale else (0.0 if self.diff == 0 else math.inf)

    @property
    def ok(self) -> bool:
        return self.usage <= 1.0


@dataclass
class ParityReport:
    """Every compared quantity with its largest difference and how much of its tolerance that used."""

    checks: list[Check] = field(default_factory=list)

    def close(self, kind: str, name: str, ours: Any, theirs: Any, rtol: float, atol: Any = 0.0) -> None:
        """Accept ``|ours − theirs| ≤ rtol · max|theirs| + atol`` elementwise (``atol`` may be a tensor)."""
        a = torch.as_tensor(ours).detach().double()
        b = torch.as_tensor(theirs).detach().double()
        if a.shape != b.shape:
            self.missing(kind, f"{name} (shape {tuple(a.shape)}, golden {tuple(b.shape)})")
            return
        if not a.numel():
            self.checks.append(Check(kind, name, 0.0, 0.0, 0.0))
            return
        diff = (a - b).abs()
        scale = b.abs().max().item()
        allowed = (rtol * scale + torch.as_tensor(atol).double()).expand_as(diff)
        ratio = torch.where(diff == 0, torch.zeros_like(diff), diff / allowed)  # diff > 0 = allowed → inf
        self.checks.append(Check(kind, name, diff.max().item(), scale, ratio.max().item()))

    def equal(self, kind: str, name: str, ours: Any, theirs: Any) -> None:
        self.close(kind, name, ours, theirs, rtol=0.0)

    def missing(self, kind: str, name: str) -> None:
        self.checks.append(Check(kind, name, math.inf, 0.0, math.inf))

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def worst_by_kind(self) -> dict[str, Check]:
        """Per kind, the check with the largest relative difference."""
        worst: dict[str, Check] = {}
        for check in self.checks:
            if check.kind not in worst or check.rel > worst[check.kind].rel:
                worst[check.kind] = check
        return worst

    def summary(self) -> str:
        lines = [f"{len(self.checks)} quantities compared, {len(self.failures())} outside tolerance"]
        for kind, c in self.worst_by_kind().items():
            n = sum(1 for x in self.checks if x.kind == kind)
            most = max(x.usage for x in self.checks if x.kind == kind)
            lines.append(
                f"  {kind:<21} n={n:<4} largest rel diff {c.rel:.2g} ({c.name}, |diff| {c.diff:.3g}); "
                f"max share of tolerance {most:.2g}"
            )
        lines += [f"  FAIL {c.kind}: {c.name}: |diff| {c.diff:.4g} = {c.usage:.3g}× allowed" for c in self.failures()]
        return "\n".join(lines)


def ulp(x: Tensor) -> Tensor:
    """Spacing of float32 numbers at ``|x|`` (as float64)."""
    x = x.float().abs()
    return (torch.nextafter(x, torch.full_like(x, math.inf)) - x).double()


def adam_first_step_slack(grad: Tensor, grad_slack: Tensor, lr: float, eps: float) -> Tensor:
    """How far a first Adam step can move when its gradient moves by up to ``grad_slack`` (elementwise).

    torch's first step is ``−lr · g / (|g| + eps)``: monotone in ``g``, so the extremes are at ``g ± slack``.
    """
    g = grad.double()

    def step(h: Tensor) -> Tensor:
        return lr * h / (h.abs() + eps)

    return torch.maximum((step(g + grad_slack) - step(g)).abs(), (step(g - grad_slack) - step(g)).abs())


def total_norm_f32(grads: list[Tensor]) -> Tensor:
    """What ``clip_grad_norm_`` returns: torch's float32 norm of the per-tensor norms."""
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


def compare_iteration(
    golden: GoldenIteration, system: DCVICSystem, rec: IterationRecord, tol: Tolerances
) -> ParityReport:
    """Every recorded quantity of the authors' iteration against ours (docs/training_parity.md)."""
    report = ParityReport()
    _compare_forward(report, golden, rec, tol)
    _compare_losses(report, golden, system, rec, tol)
    clip = _compare_gradients(report, golden, system, rec, tol)
    _compare_updates(report, golden, rec, tol, clip)
    if "D__d_total" in golden.scalars:
        _compare_discriminator(report, golden, rec, tol)
    return report


def _compare_forward(report: ParityReport, golden: GoldenIteration, rec: IterationRecord, tol: Tolerances) -> None:
    out = rec.out
    report.equal("noise", "number of noise draws", rec.noise_calls, len(golden.info["noise_calls"]))
    outputs = {
        "y": out.y,
        "z": out.entropy.z,
        "y_hat": out.y_hat,
        "z_hat": out.entropy.z_hat,
        "y_likelihood": out.likelihoods["y"],
        "z_likelihood": out.likelihoods["z"],
        "y_q_likelihood": out.entropy.q_likelihoods["y"],
        "z_q_likelihood": out.entropy.q_likelihoods["z"],
        "out_vq_logits": out.synthesis.vq_logits,
        "out_vq_latent": out.synthesis.out_vq_latent,
        "gt_vq_latent": out.vq.latent,
    }
    for name, ours in outputs.items():
        report.close("forward output", name, ours, golden.array(f"out__{name}"), tol.value)
    report.close("forward output", "fake_images", out.x_hat, golden.array("out__fake_images"), tol.after_vqgan_decoder)
    report.equal("forward output", "gt_vq_indices", out.vq.indices, golden.array("out__gt_vq_indices"))

    likelihoods = {"y": out.likelihoods["y"], "z": out.likelihoods["z"]}
    likelihoods |= {f"{k}_q": v for k, v in out.entropy.q_likelihoods.items()}
    for name, value in likelihoods.items():
        log_sum = torch.log(value).sum()
        report.close(
            "likelihood sum",
            f"{name}_log_likelihood_sum",
            log_sum,
            golden.scalar(f"{name}_log_likelihood_sum"),
            tol.value,
        )
        report.close("likelihood sum", f"{name}_bits", bits(value), golden.scalar(f"{name}_bits"), tol.value)
        report.close(
            "likelihood sum",
            f"{name}_bits_per_sample",
            bits_per_sample(value),
            golden.array(f"{name}_bits_per_sample"),
            tol.value,
        )
    report.close("bpp", "bpp", out.bpp(), golden.scalar("bpp"), tol.value)
    report.close("bpp", "qbpp", out.qbpp(), golden.scalar("qbpp"), tol.value)
    report.equal("bpp", "vq_accuracy", out.vq_accuracy(), golden.scalar("vq_accuracy"))


def _compare_losses(
    report: ParityReport, golden: GoldenIteration, system: DCVICSystem, rec: IterationRecord, tol: Tolerances
) -> None:
    """Each term before weighting (recomputed with weight 1 from the iteration's outputs, as the goldens were), the
    term the system added to its total, and the total itself."""
    out, loss, rtol = rec.out, system.loss, tol.value
    weights = {t: getattr(loss, key) for t, key in WEIGHT_KEYS.items()}
    x, x_hat = golden.input, out.x_hat.float()
    code_sq = (out.synthesis.out_vq_latent.float() - out.vq.latent.float()) ** 2
    focal = focal_cross_entropy(out.synthesis.vq_logits, out.vq.indices, loss.focal_gamma)
    per_sample = {
        "rate": out.bpp_per_sample(),
        "code_distortion": per_sample_mean(code_sq),
        "code_ce": per_sample_mean(focal),
    }
    raw = {"distortion": mse_01(x, x_hat), "perceptual": loss.perceptual(x_hat, x).mean()}
    raw |= {t: v.mean() for t, v in per_sample.items()}
    if rec.disc_logits:
        raw["adv"] = generator_gan_loss(rec.disc_logits[0])
    for t in (t for t in TERM_NAMES if f"term__{t}__final" in golden.scalars):
        if TERM_NAMES[t] not in rec.terms:
            report.missing("weighted loss term", f"{t} (no {TERM_NAMES[t]} term here)")
            continue
        report.close("weighted loss term", t, rec.terms[TERM_NAMES[t]], golden.scalar(f"term__{t}__final"), rtol)
        module = LOSS_MODULES[t]
        if f"loss__{module}__raw" in golden.scalars:
            report.close("raw loss term", t, raw[t], golden.scalar(f"loss__{module}__raw"), rtol)
            weighted = weights[t] * raw[t]
            report.close(
                "weighted loss term", f"{module} output", weighted, golden.scalar(f"loss__{module}__weighted"), rtol
            )
    if loss.exp_beta_weighting:  # stage 1_2: per-sample terms and their exp(β) weights (golden README §4)
        beta = {"rate": rec.loss_inputs[2], "code_distortion": rec.loss_inputs[3], "code_ce": rec.loss_inputs[3]}
        elementwise = {"rate": per_sample["rate"], "code_distortion": code_sq, "code_ce": focal}
        golden_per_sample = {
            "rate": "rate__batch_bpp_per_sample",
            "code_distortion": "code_distortion__raw_mse_per_sample",
            "code_ce": "code_ce__raw_focal_per_sample",
        }
        for t, what in golden_per_sample.items():
            module = LOSS_MODULES[t]
            report.close("raw loss term", f"{t} per sample", per_sample[t], golden.array(what), rtol)
            report.close("raw loss term", f"{module} raw", elementwise[t], golden.array(f"loss__{module}__raw"), rtol)
            report.close(
                "weighted loss term",
                f"{module} output",
                weights[t] * elementwise[t],
                golden.array(f"loss__{module}__weighted"),
                rtol,
            )
            before = weights[t] * per_sample[t]
            report.close(
                "weighted loss term",
                f"{t} per sample before beta",
                before,
                golden.array(f"term__{t}__per_sample_before_beta"),
                rtol,
            )
            report.close(
                "beta weight", f"{t} exp(beta)", torch.exp(beta[t]), golden.array(f"term__{t}__beta_weight"), rtol
            )
    report.close("total loss", "l_total", rec.terms["loss"], golden.scalar("l_total"), rtol)
    report.close("total loss", "logged train/loss", rec.logged["train/loss"], golden.scalar("l_total"), rtol)
    if "aux_loss" in golden.scalars:
        report.close(
            "aux step", "aux loss (after the G step)", rec.logged["train/aux"], golden.scalar("aux_loss"), rtol
        )


def _compare_gradients(
    report: ParityReport, golden: GoldenIteration, system: DCVICSystem, rec: IterationRecord, tol: Tolerances
) -> float:
    """Raw (pre-clip) gradients per module, per parameter and as tensors; the clipping. Returns our clip coefficient."""
    grads = {n.removeprefix("network."): g for n, g in rec.grads.items() if n.startswith("network.")}
    for module, expected in golden.info["grad_norms_G_pre_clip"].items():
        if module == "discriminator":
            continue  # frozen during the G backward; the D step is compared on its own
        ours = [g for n, g in grads.items() if n.split(".")[0] == module]
        report.equal("module grad norm", f"{module}: parameters with a gradient", len(ours), expected["n_with_grad"])
        if expected["norm_f64"] is not None:
            norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in ours))
            report.close("module grad norm", module, norm, expected["norm_f64"], tol.aggregate)
    for name, expected in golden.record["param_grad_norms_G"].items():
        if expected is None:
            report.equal("param grad norm", f"{name} has no gradient", float(name in grads), 0.0)
        elif name not in grads:
            report.missing("param grad norm", f"{name} (no gradient here)")
        else:
            report.close("param grad norm", name, grads[name].double().norm(), expected, tol.grad(name))
    for name in golden.selected():
        if name in golden.info["selected_params_grad_none"]:
            report.equal("gradient tensor", f"{name} has no gradient", float(name in grads), 0.0)
        else:
            report.close("gradient tensor", name, grads[name], golden.array(f"grad__{name}"), tol.grad(name))

    main_step = rec.step_grads[0]  # the clipped gradients the main / G optimizer stepped with
    pre = [rec.grads[n] for n in main_step]
    clip = float(sum(float((a.double() * b.double()).sum()) for a, b in zip(pre, main_step.values(), strict=True)))
    clip /= float(sum(float((a.double() ** 2).sum()) for a in pre))
    report.close("clipping", "clip_total_norm", total_norm_f32(pre), golden.scalar("clip_total_norm"), tol.aggregate)
    report.close("clipping", "clip_coef (applied)", clip, golden.scalar("clip_coef"), tol.aggregate)
    report.close("learning rate", "lr_g_used", rec.step_lrs[0], golden.scalar("lr_g_used"), tol.value)
    if "aux_loss" in golden.scalars:
        aux = rec.step_grads[1]["network.entropy_model_z.quantiles"]
        golden_aux = golden.array("grad_aux__entropy_model_z.quantiles")
        report.close("aux step", "quantile gradient at the aux step", aux, golden_aux, tol.smooth_grad)
        report.close(
            "learning rate",
            "lr_aux_used",
            rec.step_lrs[1],
            golden.info["optimizers"]["aux_optimizer"]["lr_used"][0],
            tol.value,
        )
    return clip


def _update_slack(
    grad: Tensor, rtol: float, clip: float, clip_rtol: float, lr: float, init: Tensor, after: Tensor
) -> Tensor:
    """Allowed |difference| of a parameter after one Adam step, elementwise.

    The gradient tolerance carried through the step, plus float32 rounding: torch's step (m, v, sqrt, divide,
    multiply) rounds ≤ 4 times at the update's magnitude, and ``init + Δ`` once at the result's.
    """
    g = grad.double() * clip
    slack = rtol * g.abs().max() + clip_rtol * g.abs()
    delta = after.double() - init.double()
    return adam_first_step_slack(g, slack, lr, ADAM_EPS) + 4 * ulp(delta) + ulp(after)


def _compare_updates(
    report: ParityReport, golden: GoldenIteration, rec: IterationRecord, tol: Tolerances, clip: float
) -> None:
    """Selected parameters after the step (after the aux step for the quantiles); their initial values exactly."""
    lr = golden.scalar("lr_g_used")
    for name in golden.selected():
        init, after = golden.array(f"param_init__{name}"), golden.array(f"param_after__{name}")
        report.equal("initial parameter", name, rec.params_before[f"network.{name}"], init)
        if name == "entropy_model_z.quantiles" and "aux_loss" in golden.scalars:
            aux_lr = golden.info["optimizers"]["aux_optimizer"]["lr_used"][0]
            grad = golden.array("grad_aux__entropy_model_z.quantiles")
            slack = _update_slack(grad, tol.smooth_grad, 1.0, 0.0, aux_lr, init, after)
        elif name in golden.info["selected_params_grad_none"]:
            slack = torch.zeros(())
        else:
            slack = _update_slack(golden.array(f"grad__{name}"), tol.grad(name), clip, tol.aggregate, lr, init, after)
        report.close("parameter after step", name, rec.params_after[f"network.{name}"], after, 0.0, slack)


def _compare_discriminator(
    report: ParityReport, golden: GoldenIteration, rec: IterationRecord, tol: Tolerances
) -> None:
    """Stage 1_3's D: logits of the three calls, the D loss, its gradients (not clipped) and its Adam step."""
    for ours, what in zip(rec.disc_logits, ("G_adv_fake", "D_real", "D_fake"), strict=True):
        rtol = tol.value if what == "D_real" else tol.after_vqgan_decoder
        report.close("discriminator", f"logits {what}", ours, golden.array(f"disc_logits__{what}"), rtol)
    logged, after = rec.logged, tol.after_vqgan_decoder
    report.close(
        "discriminator", "BCE(D(x), 1)", logged["train/d_real"], golden.scalar("loss__gan_loss_D_real__raw"), tol.value
    )
    report.close(
        "discriminator", "BCE(D(x_hat), 0)", logged["train/d_fake"], golden.scalar("loss__gan_loss_D_fake__raw"), after
    )
    report.close(
        "discriminator", "d_real = 0.5 BCE", 0.5 * logged["train/d_real"], golden.scalar("D__d_real"), tol.value
    )
    report.close("discriminator", "d_fake = 0.5 BCE", 0.5 * logged["train/d_fake"], golden.scalar("D__d_fake"), after)
    report.close("discriminator", "d_total", logged["train/d_total"], golden.scalar("D__d_total"), after)
    report.close("discriminator", "mean D(x)", logged["train/d_out_real"], golden.scalar("D__out_d_real"), tol.value)
    report.close("discriminator", "mean D(x_hat)", logged["train/d_out_fake"], golden.scalar("D__out_d_fake"), after)
    grads = {n.removeprefix("discriminator."): g for n, g in rec.grads.items() if n.startswith("discriminator.")}
    expected = golden.info["grad_norms_D"]
    report.equal("discriminator", "D parameters with a gradient", len(grads), expected["n_with_grad"])
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads.values()))
    report.close("discriminator", "D grad norm", norm, expected["norm_f64"], tol.aggregate)
    lr = golden.scalar("lr_d_used")
    report.close("learning rate", "lr_d_used", rec.step_lrs[1], lr, tol.value)
    for name in golden.selected_disc():
        report.close("gradient tensor", f"D {name}", grads[name], golden.array(f"grad_D__{name}"), tol.switched_grad)
        init, after = golden.array(f"param_init_D__{name}"), golden.array(f"param_after_D__{name}")
        report.equal("initial parameter", f"D {name}", rec.params_before[f"discriminator.{name}"], init)
        slack = _update_slack(golden.array(f"grad_D__{name}"), tol.switched_grad, 1.0, 0.0, lr, init, after)
        report.close("parameter after step", f"D {name}", rec.params_after[f"discriminator.{name}"], after, 0.0, slack)
