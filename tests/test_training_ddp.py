"""DDP on CPU: two gloo processes launched by the real entrypoint train a few iterations of a rate-distortion and an
adversarial stage and end with identical weights (RankConsistencyCheck gathers each rank's fingerprint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_modules.model_file import load_model_file

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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = runs_dir / "dcvic" / f"stage_{stage}"
    report = json.loads((run_dir / "rank_fingerprints.json").read_text())
    assert report["iteration"] == 2
    assert len(report["fingerprints"]) == 2 and len(set(report["fingerprints"])) == 1
    assert load_model_file(run_dir / "model.pt").state_dict
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".hydra")) == [".hydra"]
