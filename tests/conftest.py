"""Shared fixtures: tiny networks for fast tests, and the golden-weight model built through the converter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_modules.conversion import convert_authors_checkpoint
from lightning_modules.networks.dcvic import TINY_ARCHITECTURE, build_dcvic
from tests.support.weight_fill import golden_dir, write_authors_checkpoints


@pytest.fixture(scope="session")
def golden() -> Path:
    path = golden_dir()
    if not (path / "vectors" / "index.json").is_file():
        pytest.skip(f"golden directory {path} not found (set DCVIC_GOLDEN_DIR)")
    return path


@pytest.fixture(scope="session")
def golden_index(golden: Path) -> dict:
    return json.loads((golden / "vectors" / "index.json").read_text())


@pytest.fixture(scope="session")
def authors_checkpoints(golden: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The deterministic-fill weights written in the authors' file formats."""
    return write_authors_checkpoints(tmp_path_factory.mktemp("authors_ckpt"))


@pytest.fixture(scope="session")
def golden_model_file(authors_checkpoints: dict[str, Path]):
    model_file, _ = convert_authors_checkpoint(authors_checkpoints["comp_model"], authors_checkpoints["discriminator"])
    return model_file


@pytest.fixture(scope="session")
def golden_model(golden_model_file):
    model = golden_model_file.build_model().eval()
    model.entropy_model_z.update(force=True)
    return model


def load_vector(golden: Path, entry: dict) -> np.ndarray:
    return np.load(golden / entry.get("file", entry.get("same_as")))


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_dcvic(**TINY_ARCHITECTURE)


@pytest.fixture
def one_thread():
    """One intra-op thread: the goldens were made so, and the codec's entropy path always runs so (bit-exactness)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
