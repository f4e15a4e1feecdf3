"""Stage 0: a few CPU steps of tiny-VQGAN training, the discriminator switch, dead codes and the taming export."""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue
from skimage import data as skdata
from torch.utils.data import DataLoader

from entrypoints.runners import train_vqgan
from entrypoints.train import CONFIG_DIR, quote_stage_choices
from lightning_modules.networks.dcvic import TINY_ARCHITECTURE, build_dcvic
from lightning_modules.networks.vqgan import FrozenVQGAN, load_vqgan
from lightning_modules.networks.vqgan_trainable import TrainableVQGAN, build_patch_discriminator
from lightning_modules.training.vqgan import (
    CodeUsageWindow,
    VQGANSystem,
    adaptive_adversarial_weight,
    discriminator_loss,
    export_taming_checkpoint,
    generator_adversarial_loss,
    optional_lpips,
)
from tests.support.metric_backbones import write_random_alexnet

TINY_VQGAN = dict(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, attn_resolutions=(32,), n_embed=64)
DISC_START = 3
BATCHES = 5
MISSING = (MissingMandatoryValue, InterpolationToMissingValueError)


def photo_crops(size: int = 32, count: int = 10) -> list[torch.Tensor]:
    """Real-photo crops in [-1, 1]: the astronaut image cut into a row of ``size``-pixel tiles."""
    image = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1).float() / 127.5 - 1.0
    return [image[:, 200 : 200 + size, i * size : (i + 1) * size].contiguous() for i in range(count)]


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=quote_stage_choices(list(overrides)))


def make_system(**overrides) -> VQGANSystem:
    torch.manual_seed(0)
    kwargs = dict(
        vqgan=TrainableVQGAN(**TINY_VQGAN),
        discriminator=build_patch_discriminator(ndf=8, n_layers=2),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.9)),
        disc_optimizer=functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.9)),
        max_iterations=BATCHES,
        disc_start=DISC_START,
        dead_code_window=2,
    )
    return VQGANSystem(**(kwargs | overrides))


class DiscriminatorWatch(L.Callback):
    """Records, after every batch, its index and whether the critic's weights moved."""

    def __init__(self) -> None:
        self.moved: list[tuple[int, bool]] = []
        self.metrics: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._before = [p.detach().clone() for p in pl_module.discriminator.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        after = list(pl_module.discriminator.parameters())
        moved = any(not torch.equal(a, b) for a, b in zip(self._before, after, strict=True))
        self.moved.append((batch_idx, moved))
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def fit(system: VQGANSystem, root: Path, callbacks: list[L.Callback], ckpt_path: Path | None = None) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=root,
        max_epochs=-1,  # the system stops at max_iterations, as in the stage configs
        limit_train_batches=BATCHES,
        limit_val_batches=1,
        logger=CSVLogger(root, name="stage0"),
        log_every_n_steps=1,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    crops = photo_crops()
    loaders = DataLoader(crops, batch_size=2, shuffle=False), DataLoader(crops[:4], batch_size=4)
    trainer.fit(system, *loaders, ckpt_path=ckpt_path)
    return trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[VQGANSystem, L.Trainer, DiscriminatorWatch, Path]:
    root = tmp_path_factory.mktemp("stage0")
    system = make_system()
    watch = DiscriminatorWatch()
    trainer = fit(system, root, [watch])
    return system, trainer, watch, root


def test_state_dict_uses_taming_names_of_the_frozen_vqgan() -> None:
    trainable, frozen = TrainableVQGAN(**TINY_VQGAN).state_dict(), FrozenVQGAN(**TINY_VQGAN).state_dict()
    assert {k: v.shape for k, v in trainable.items()} == {k: v.shape for k, v in frozen.items()}
    assert "quantize.embedding.weight" in trainable and "decoder.conv_out.weight" in trainable


def test_losses_are_finite_every_step(trained) -> None:
    _, _, watch, _ = trained
    assert len(watch.metrics) == BATCHES
    for metrics in watch.metrics:
        for name in ("train/l1", "train/qloss", "train/g_loss"):
            assert math.isfinite(metrics[name]), (name, metrics)
    assert all(math.isfinite(m["train/d_loss"]) for m in watch.metrics[DISC_START:])


def test_discriminator_trains_from_the_configured_generator_step(trained) -> None:
    system, trainer, watch, _ = trained
    # Batch b runs iteration b (0-based): the critic trains from iteration DISC_START on.
    assert watch.moved == [(b, b >= DISC_START) for b in range(BATCHES)]
    assert "train/d_loss" not in watch.metrics[DISC_START - 1]
    assert "train/adv_weight" in watch.metrics[DISC_START]
    # Lightning's global_step counts both optimizers' steps.
    assert trainer.global_step == BATCHES + (BATCHES - DISC_START)
    assert system.iteration == BATCHES


def test_dead_codes_are_logged_from_the_end_of_the_first_window(trained) -> None:
    _, trainer, _, _ = trained
    log = pd.read_csv(Path(trainer.logger.log_dir) / "metrics.csv").dropna(subset=["train/g_loss"])
    dead = log.set_index("step")["train/dead_codes"]
    assert dead.loc[0:0].isna().all()  # window = 2 batches: nothing to report after the first
    # 2 batches x 2 crops x (4 x 4) tokens select at most 64 of the 64 codes; dead ones are certain.
    assert dead.loc[1:].between(1, TINY_VQGAN["n_embed"]).all()
    assert "val/psnr" in log.columns


def test_code_usage_window_counts_codes_unused_over_the_window() -> None:
    usage = CodeUsageWindow(n_embed=8, window=2)
    assert usage.update(torch.tensor([[[0, 1]]])) is None
    assert usage.update(torch.tensor([[[1, 2]]])) == 5  # codes 3..7 never selected
    assert usage.update(torch.tensor([[[3, 3]]])) is None  # a new window starts empty
    assert usage.update(torch.tensor([[[4, 4]]])) == 6
    with pytest.raises(ValueError, match="window"):
        CodeUsageWindow(n_embed=8, window=0)


def test_export_loads_strictly_and_reproduces_reconstructions_bitwise(trained) -> None:
    system, _, _, root = trained
    path = export_taming_checkpoint(system, root / "vqgan.ckpt")
    assert path.is_file() and not path.with_name(path.name + ".partial").exists()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert set(checkpoint["state_dict"]) == set(FrozenVQGAN(**TINY_VQGAN).state_dict())

    loaded = load_vqgan(path, **checkpoint["architecture"])
    x = torch.stack(photo_crops(size=64, count=3))
    with torch.no_grad():
        expected = system.vqgan.eval()(x)
        encoding = loaded.encode(x)
        reconstruction = loaded.decode(encoding.latent)
    assert torch.equal(encoding.indices, expected.indices)
    assert torch.equal(reconstruction, expected.x_hat)


def test_export_of_a_bare_model_matches_export_of_its_system(tmp_path: Path) -> None:
    system = make_system()
    a = torch.load(export_taming_checkpoint(system, tmp_path / "a.ckpt"), weights_only=True)
    b = torch.load(export_taming_checkpoint(system.vqgan, tmp_path / "b.ckpt"), weights_only=True)
    assert a["architecture"] == b["architecture"] == TrainableVQGAN(**TINY_VQGAN).architecture
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_lpips_joins_the_generator_loss_and_stays_out_of_resumable_checkpoints(tmp_path: Path) -> None:
    perceptual = optional_lpips(str(write_random_alexnet(tmp_path / "alexnet.pth")))
    trainer = fit(make_system(perceptual=perceptual, max_iterations=2), tmp_path, [])
    assert math.isfinite(float(trainer.callback_metrics["train/lpips"]))
    trainer.save_checkpoint(tmp_path / "resume.ckpt")
    checkpoint = torch.load(tmp_path / "resume.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["vqgan_iteration"] == 2
    assert not any(key.startswith("perceptual.") for key in checkpoint["state_dict"])
    resumed = make_system(perceptual=perceptual, max_iterations=3)
    fit(resumed, tmp_path, [], ckpt_path=tmp_path / "resume.ckpt")  # strict load with LPIPS re-inserted
    assert resumed.iteration == 3


def test_sampled_codebook_consists_of_encoder_outputs() -> None:
    torch.manual_seed(0)
    vqgan = TrainableVQGAN(**TINY_VQGAN)
    many, few = torch.stack(photo_crops(size=64, count=4)), torch.stack(photo_crops(size=32, count=2))
    with torch.no_grad():
        outputs = vqgan.encode_pre_quant(many).permute(0, 2, 3, 1).reshape(-1, 4)  # 256 vectors
        codes = vqgan.sample_codebook(many)
    assert codes.shape == (64, 4)
    assert (codes[:, None, :] == outputs[None]).all(dim=-1).any(dim=1).all()  # each code is an output row
    codes = vqgan.sample_codebook(few)  # 32 vectors for 64 codes: drawn with replacement, jittered apart
    assert codes.shape == (64, 4) and torch.unique(codes, dim=0).shape[0] == 64


def test_codebook_from_data_replaces_the_tiny_taming_init_on_the_first_batch(tmp_path: Path) -> None:
    system = make_system(codebook_from_data=True, max_iterations=1)
    taming_scale = system.vqgan.quantize.embedding.weight.detach().abs().max().item()
    assert taming_scale <= 1.0 / TINY_VQGAN["n_embed"]
    fit(system, tmp_path, [])
    assert system.vqgan.quantize.embedding.weight.detach().abs().max().item() > 10 * taming_scale


def test_gan_losses_follow_taming_hinge_and_the_non_saturating_form() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.25])
    assert generator_adversarial_loss(fake, "hinge").item() == pytest.approx(1.375)
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.5 * (0.25 + 0.625))
    softplus = torch.nn.functional.softplus
    assert torch.allclose(generator_adversarial_loss(fake, "non_saturating"), softplus(-fake).mean())
    expected = 0.5 * (softplus(-real).mean() + softplus(fake).mean())
    assert torch.allclose(discriminator_loss(real, fake, "non_saturating"), expected)


def test_adaptive_weight_balances_gradient_norms_at_the_last_layer() -> None:
    layer = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    rec, adv = (3.0 * layer).sum(), (layer**2).sum()  # grads: (3, 3) and (2, 4)
    expected = math.sqrt(18) / (math.sqrt(20) + 1e-4)
    assert adaptive_adversarial_weight(rec, adv, layer).item() == pytest.approx(expected)


def test_bad_settings_fail_clearly() -> None:
    with pytest.raises(ValueError, match="gan_loss"):
        make_system(gan_loss="wasserstein")
    system = make_system()
    opt_g = torch.optim.Adam(system.parameters())  # the generator must not own the critic's weights
    opt_d = torch.optim.Adam(system.discriminator.parameters())
    with pytest.raises(RuntimeError, match="partition"):
        system.assert_parameter_partition(opt_g, opt_d)


def test_stage_0_config_trains_exports_and_reuses_a_finished_run(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("DCVIC_CACHE_DIR", str(tmp_path / "cache"))
    overrides = [
        f"paths.runs_dir={tmp_path / 'runs'}",
        "max_iterations=3",
        "eval_every=3",
        "log_every=1",
        "data.crop_size=32",
        "data.val_center_crop=32",
        "discriminator.ndf=8",
        "discriminator.n_layers=2",
        "module.disc_start=2",
        "module.dead_code_window=2",
        "callbacks.progress=null",
        "trainer.enable_progress_bar=false",
    ]
    cfg = compose_train("+stage=0", "data=sample", "network=vqgan_tiny", *overrides)
    assert cfg.module.perceptual.backbone_weights is None  # cpu_demo paths: no LPIPS file, no LPIPS term
    with caplog.at_level(logging.INFO, logger="lightning_modules.training.vqgan"):
        path = train_vqgan(cfg)
    assert "without LPIPS" in caplog.text
    assert path == Path(cfg.run_dir) / "vqgan.ckpt"
    architecture = {k: v for k, v in OmegaConf.to_container(cfg.network).items() if k not in ("_target_", "beta")}
    first = load_vqgan(path, **architecture).state_dict()
    assert (Path(cfg.run_dir) / "tensorboard").is_dir()
    # network=vqgan_tiny is network=tiny's frozen VQGAN: the export drops into the DC-VIC stages.
    dcvic = build_dcvic(**TINY_ARCHITECTURE, vqgan_checkpoint=str(path))
    assert all(torch.equal(dcvic.vq_model.state_dict()[k], first[k]) for k in first)

    train_vqgan(cfg)  # resumes from checkpoints/last.ckpt at iteration 3: nothing left to train
    second = load_vqgan(path, **architecture).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_stage_0_full_size_is_the_paper_f8_n256_and_needs_the_lpips_file() -> None:
    cfg = compose_train("+stage=0")
    network = OmegaConf.to_container(cfg.network)
    assert network["ch_mult"] == [1, 2, 2, 4] and network["n_embed"] == 256 and network["embed_dim"] == 4
    assert cfg.module.disc_start == 250001 and "loss" not in cfg and "betas" not in cfg
    with pytest.raises(MISSING):
        _ = cfg.module.perceptual.backbone_weights
