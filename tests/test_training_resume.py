"""A run killed with SIGKILL mid-way and restarted with the same command continues from ``last.ckpt`` and ends with
exactly the requested number of iterations."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.test_training_ddp import REPO, tiny_command

pytestmark = pytest.mark.slow  # real subprocesses; minutes on a loaded 2-core machine
ITERATIONS = 6


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert process.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.2)


def logged_steps(event_file: Path) -> list[int]:
    events = EventAccumulator(str(event_file))
    events.Reload()
    return [e.step for e in events.Scalars("train/loss")]


def test_sigkill_then_same_command_resumes_and_finishes(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    command = tiny_command(runs_dir, "1_1", ITERATIONS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_dir = runs_dir / "dcvic" / "stage_1_1"
    last = run_dir / "checkpoints" / "last.ckpt"

    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(last, first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["dcvic_iteration"]
    assert 1 <= killed_at < ITERATIONS and not (run_dir / "model.pt").exists()

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resuming from" in second.stderr + second.stdout
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["dcvic_iteration"] == ITERATIONS
    assert final["global_step"] == 2 * ITERATIONS  # main + aux step per iteration, none lost or repeated
    assert (run_dir / "model.pt").is_file()
    event_files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    resumed_steps = logged_steps(event_files[-1])
    assert min(resumed_steps) >= killed_at and max(resumed_steps) == ITERATIONS - 1
