"""DDP on CPU: two gloo processes launched by the real entrypoint train a few iterations of a rate-distortion and an
adversarial stage and end with identical weights (RankConsistencyCheck gathers each rank's fingerprint), while
each rank draws its own β, quantisation noise and crops, and a killed run resumes every rank's own streams."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import skimage.data
import torch
from PIL import Image

from lightning_modules.model_file import load_model_file
from tests.support.draw_probe import digest

pytestmark = pytest.mark.slow  # real subprocesses; minutes on a loaded 2-core machine
REPO = Path(__file__).resolve().parents[1]


def tiny_command(runs_dir: Path, stage: str, iterations: int, *extra: str) -> list[str]:
    """The README's CPU command, shrunk to 64² crops and no validation so that tests stay fast."""
    return [
        sys.executable,
        str(REPO / "entrypoints" / "train.py"),
        f"+stage={stage}",
        "network=tiny",
        "data=sample",
        "data.crop_size=64",
        "data.batch_size=2",
        f"max_iterations={iterations}",
        "save_every=1",
        "log_every=1",
        "trainer.limit_val_batches=0",
        f"paths.runs_dir={runs_dir}",
        f"paths.cache_dir={runs_dir.parent / 'cache'}",
        *extra,
    ]


@pytest.mark.parametrize("stage", ["1_1", "1_3"])
def test_two_gloo_processes_keep_identical_weights(tmp_path: Path, stage: str) -> None:
    runs_dir = tmp_path / "runs"
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "init.init_from=null"]
    command = tiny_command(runs_dir, stage, 2, *ddp)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1", "PYTHONPATH": str(REPO)}  # tests.support
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = runs_dir / "dcvic" / f"stage_{stage}"
    report = json.loads((run_dir / "rank_fingerprints.json").read_text())
    assert report["iteration"] == 2
    assert len(report["fingerprints"]) == 2 and len(set(report["fingerprints"])) == 1
    assert load_model_file(run_dir / "model.pt").state_dict
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".hydra")) == [".hydra"]


def ddp_command(runs_dir: Path, data_dir: Path, probe_dir: Path, *extra: str) -> list[str]:
    """Stage 1_2 (uniform β) on one photo repeated, so that identical crops on both ranks would show."""
    return tiny_command(
        runs_dir,
        "1_2",
        3,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "init.init_from=null",
        "data=folder",
        f"data.train_files.root={data_dir}",
        f"data.val_files.root={data_dir}",
        "data.num_workers=0",
        "+data.train_repeat=8",
        "callbacks.progress=null",
        "+callbacks.probe._target_=tests.support.draw_probe.DrawProbe",
        f"+callbacks.probe.path={probe_dir}",
        *extra,
    )


def records(probe_dir: Path, rank: int, event: str) -> list[dict]:
    lines = (probe_dir / f"rank{rank}.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def wait_for_holds(probe_dir: Path, process: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not all((probe_dir / f"rank{r}.jsonl").is_file() and records(probe_dir, r, "held") for r in (0, 1)):
        assert process.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"the ranks did not reach the held iteration in {timeout} s"
        time.sleep(0.5)


def test_ranks_draw_their_own_betas_noise_and_crops_and_resume_their_own_streams(tmp_path: Path) -> None:
    """Iteration 1 of two gloo ranks: β, noise and crops differ; the run is held at iteration 2 right after its β draw
    and SIGKILLed (last.ckpt holds iteration 1); the same command resumes, each rank restores its own RNG states,
    draws iteration 2's β exactly as before, and the ranks end with identical weights."""
    runs_dir, data_dir = tmp_path / "runs", tmp_path / "photo"
    data_dir.mkdir()
    Image.fromarray(skimage.data.astronaut()[::4, ::4]).save(data_dir / "astronaut.png")  # 128², crops of 64²
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1", "PYTHONPATH": str(REPO)}  # tests.support
    first_probe, second_probe = tmp_path / "probe_first", tmp_path / "probe_second"
    held = ddp_command(runs_dir, data_dir, first_probe, "+callbacks.probe.hold_at_iteration=2")
    log = tmp_path / "first.log"
    with open(log, "w") as output:
        first = subprocess.Popen(held, cwd=REPO, env=env, stdout=output, stderr=output, start_new_session=True)
    try:
        wait_for_holds(first_probe, first, log)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    one = [records(first_probe, rank, "iteration")[0] for rank in (0, 1)]
    assert one[0]["iteration"] == one[1]["iteration"] == 1
    for key in ("betas", "noise_entropy_model_y", "noise_entropy_model_z", "batch"):
        assert one[0][key] != one[1][key], key

    run_dir = runs_dir / "dcvic" / "stage_1_2"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["dcvic_iteration"] == 1
    saved = checkpoint["dcvic_rng_states"]
    assert len(saved) == 2 and not torch.equal(saved[0]["torch"], saved[1]["torch"])
    assert not torch.equal(saved[0]["beta"], saved[1]["beta"])

    second = subprocess.run(
        ddp_command(runs_dir, data_dir, second_probe), cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr[-4000:]
    for rank in (0, 1):
        restored = records(second_probe, rank, "fit_start")[0]["torch_rng"]
        assert restored == digest(saved[rank]["torch"])
        resumed = records(second_probe, rank, "iteration")
        assert [r["iteration"] for r in resumed] == [2, 3]
        assert resumed[0]["betas"] == records(first_probe, rank, "held")[0]["betas"]
    report = json.loads((run_dir / "rank_fingerprints.json").read_text())
    assert report["iteration"] == 3 and len(set(report["fingerprints"])) == 1
