"""A real ``entrypoints/train.py`` process as a user sees it: no warnings, the iteration bar, and a beta range widened
in the network config that trains, is recorded in ``model.pt`` and resumes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_modules.model_file import load_model_file

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
NOISE = ("Warning", "warn(", "weights_only", "Tip:", "TPU available", "module(s) in eval mode", "Epoch ", "Traceback")
WARNING_LOCATION = re.compile(r"\.py:\d+: ")  # how Python and Lightning print any warning: "<file>.py:<line>: …"
BAR = re.compile(r"^iteration (\d+)/(\d+) · ")


def train(tmp_path: Path, max_iterations: int) -> list[str]:
    command = [
        sys.executable,
        str(REPO / "entrypoints" / "train.py"),
        "+stage=1_2",
        "network=tiny",
        "data=sample",
        "data.crop_size=64",
        "data.batch_size=2",
        "init.init_from=null",
        "network.beta_rate_max=4.0",
        "network.beta_vq_max=5.0",
        f"max_iterations={max_iterations}",
        "save_every=2",
        "log_every=1",
        "trainer.limit_val_batches=1",
        "callbacks.progress.refresh_rate=2",
        f"paths.runs_dir={tmp_path / 'runs'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return (done.stdout + done.stderr).splitlines()


def noise(lines: list[str]) -> list[str]:
    return [line for line in lines if any(word in line for word in NOISE) or WARNING_LOCATION.search(line)]


def bar(lines: list[str]) -> list[tuple[int, int]]:
    return [(int(m[1]), int(m[2])) for m in map(BAR.match, lines) if m]


def test_training_output_is_clean_and_counts_iterations_across_a_resume(tmp_path: Path) -> None:
    lines = train(tmp_path, max_iterations=4)
    assert not noise(lines), lines
    assert bar(lines) == [(0, 4), (2, 4), (4, 4)]
    assert any(line.startswith("iteration 4/4") and " · loss " in line for line in lines)
    model_file = load_model_file(tmp_path / "runs" / "dcvic" / "stage_1_2" / "model.pt")
    assert (model_file.architecture["beta_rate_max"], model_file.architecture["beta_vq_max"]) == (4.0, 5.0)
    assert model_file.build_model().beta_range.rate_max == 4.0
    assert model_file.quality_table is None  # stage 1_x: nothing was selected for these weights

    resumed = train(tmp_path, max_iterations=6)
    assert not noise(resumed), resumed
    assert bar(resumed) == [(4, 6), (6, 6)]
