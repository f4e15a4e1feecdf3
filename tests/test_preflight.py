"""Compose-time checks: every unset or missing input file of the composed config, named in one stderr line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from entrypoints.preflight import REQUIREMENTS, config_problems, used_inputs
from entrypoints.train import CONFIG_DIR, quote_stage_choices

REPO = Path(__file__).resolve().parents[1]
ALL_PATHS = ["paths.vqgan_checkpoint", "paths.openimage_root", "paths.kodak_root", "paths.alexnet_weights"]


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=quote_stage_choices(list(overrides)))


@pytest.mark.parametrize(
    ("stage", "needed"),
    [
        ("0", ["paths.openimage_root", "paths.kodak_root", "paths.alexnet_weights"]),  # trains its own VQGAN
        ("1_1", ALL_PATHS),
        ("1_2", ALL_PATHS),
        ("1_3", ALL_PATHS),
        ("2", ["paths.openimage_root"]),  # only the validation photos; the model is stage 1_3's model.pt
        ("3", ALL_PATHS),
    ],
)
def test_each_stage_names_exactly_the_paths_it_uses(stage: str, needed: list[str]) -> None:
    unset, _ = used_inputs(compose_train(f"+stage={stage}"))
    assert unset == needed


def test_small_configs_need_nothing_and_set_paths_must_exist(tmp_path: Path) -> None:
    assert config_problems(compose_train("+stage=1_2", "network=tiny", "data=sample")) == []
    kodak = tmp_path / "kodak"
    problems = config_problems(compose_train("+stage=1_1", "network=tiny", "data=kodak", f"paths.kodak_root={kodak}"))
    assert problems == [f"paths.kodak_root={kodak} does not exist ({REQUIREMENTS['paths.kodak_root'].describe()})"]
    kodak.mkdir()
    assert config_problems(compose_train("+stage=1_1", "network=tiny", "data=kodak", f"paths.kodak_root={kodak}")) == []
    ckpt = tmp_path / "missing.ckpt"
    problems = config_problems(
        compose_train("+stage=1_1", "network=tiny", "data=sample", f"paths.vqgan_checkpoint={ckpt}")
    )
    assert len(problems) == 1 and problems[0].startswith(f"paths.vqgan_checkpoint={ckpt} does not exist (file:")
    assert config_problems(compose_train("+stage=1_1", "data=folder", "network=tiny"))[:2] == [
        "data.train_files.root is not set",
        "data.val_files.root is not set",
    ]


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DCVIC_RUNS_DIR": str(cwd / "runs")}
    command = [sys.executable, str(REPO / "entrypoints" / script), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_first_command_of_a_new_user_is_one_line(tmp_path: Path) -> None:
    done = run("train.py", "+stage=1_1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    line = done.stderr.strip()
    assert line.startswith("train.py: cannot start: ") and "Traceback" not in line
    positions = [line.index(f"{key} is not set") for key in ALL_PATHS]
    assert positions == sorted(positions)  # in the order of REQUIREMENTS
    assert "vq-f8-n256" in line and "alexnet-owt-7be5be79.pth" in line and "kodim01.png" in line
    assert not (tmp_path / "runs" / "dcvic" / "stage_1_1" / "checkpoints").exists()  # nothing was built


def test_evaluate_names_its_required_inputs_and_missing_files(tmp_path: Path) -> None:
    done = run("evaluate.py", cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "model_file is not set" in done.stderr and "images is not set" in done.stderr
    done = run("evaluate.py", f"model_file={tmp_path / 'm.pt'}", f"images={tmp_path}", cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert f"model_file={tmp_path / 'm.pt'} does not exist" in done.stderr and "images" not in done.stderr
