"""The iteration progress bar: its text, and real fits of the stage-0 VQGAN system, fresh and resumed."""

from __future__ import annotations

import functools
import io
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from skimage import data as skdata
from torch.utils.data import DataLoader

from callbacks.iteration_checkpoint import IterationCheckpoint
from callbacks.iteration_progress import IterationProgressBar, format_duration, progress_line
from lightning_modules.networks.vqgan_trainable import TrainableVQGAN, build_patch_discriminator
from lightning_modules.training.vqgan import VQGANSystem

LINE = re.compile(r"^iteration (\d+)/(\d+) · (\?|[\d.e+]+) it/s(?: · \w+ [-\d.e+]+)*, ETA (\?|\d+:\d\d:\d\d)$")


def test_line_format() -> None:
    assert format_duration(83) == "0:01:23" and format_duration(3 * 3600 + 5) == "3:00:05"
    assert format_duration(float("inf")) == "?"
    line = progress_line(340, 900, 5.1, {"train/loss": 0.41234, "train/qbpp": 0.0813})
    assert line == "iteration 340/900 · 5.1 it/s · loss 0.4123 · qbpp 0.0813, ETA 0:01:50"
    assert progress_line(0, 10, None, {}) == "iteration 0/10 · ? it/s, ETA ?"


def test_refresh_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="refresh_rate"):
        IterationProgressBar(refresh_rate=0)


def vqgan_system(max_iterations: int) -> VQGANSystem:
    torch.manual_seed(0)
    return VQGANSystem(
        vqgan=TrainableVQGAN(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, attn_resolutions=(32,), n_embed=64),
        discriminator=build_patch_discriminator(ndf=8, n_layers=2),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        disc_optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        max_iterations=max_iterations,
        disc_start=100,
        dead_code_window=2,
    )


def fit(system: VQGANSystem, root: Path, ckpt_path: Path | None = None) -> list[str]:
    """Fit with the bar writing into a buffer (not a TTY: one line per update); returns the lines."""
    stream = io.StringIO()
    trainer = L.Trainer(
        default_root_dir=root,
        max_epochs=-1,
        limit_val_batches=0,
        logger=False,
        log_every_n_steps=1,
        callbacks=[
            IterationProgressBar(refresh_rate=2, stream=stream),
            IterationCheckpoint(str(root / "checkpoints"), every_n_iterations=2),
        ],
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    image = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1).float() / 127.5 - 1.0
    crops = [image[:, 200:232, i * 32 : (i + 1) * 32].contiguous() for i in range(8)]
    trainer.fit(system, DataLoader(crops, batch_size=2), ckpt_path=ckpt_path, weights_only=True)
    return stream.getvalue().splitlines()


def test_stage_0_counts_its_own_iterations_also_after_a_resume(tmp_path: Path) -> None:
    lines = fit(vqgan_system(max_iterations=4), tmp_path)
    assert all(LINE.match(line) for line in lines), lines
    assert [line.split(" · ")[0] for line in lines] == [f"iteration {k}/4" for k in (0, 2, 4)]
    assert "g_loss" in lines[-1] and lines[-1].endswith("ETA 0:00:00")
    assert " ? it/s" not in lines[-1]  # a rate once two updates exist

    resumed = fit(vqgan_system(max_iterations=6), tmp_path, ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    assert [line.split(" · ")[0] for line in resumed] == ["iteration 4/6", "iteration 6/6"]
    assert resumed[0].endswith("ETA ?")  # no rate yet: the resumed process has not timed an iteration
