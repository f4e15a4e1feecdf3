"""Small models, model files and real photos shared by the codec, CLI, corruption and tiling tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
import torch

from lightning_modules.model_file import RELEASED_QUALITY_TABLE, ModelFile, QualityTable, save_model_file
from lightning_modules.networks.dcvic import DCVIC, TINY_ARCHITECTURE, build_dcvic

MICRO_ARCHITECTURE: dict = dict(
    TINY_ARCHITECTURE,
    main_ch=32,
    block_mid_ch=16,
    cond_ch=16,
    hyper_enc_ch=(16, 16),
    hyper_dec_ch=(16, 16),
    hyper_out_ch=16,
    z_ch=16,
    num_slices=2,
    slice_hidden_ch=(16, 16),
    vq_estimator_ch=32,
    vqgan_ch=32,
    vqgan_ch_mult=(1, 1, 1, 1),
    vqgan_attn_resolutions=(),
)
"""1.3 M parameters, full data flow: for the large-image tests, where even the tiny network is slow on CPU."""


def seeded_model(architecture: dict, seed: int = 0) -> DCVIC:
    torch.manual_seed(seed)
    return build_dcvic(**architecture).eval()


def write_model_file(
    path: Path,
    architecture: dict = TINY_ARCHITECTURE,
    seed: int = 0,
    quality_table: QualityTable | None = RELEASED_QUALITY_TABLE,
) -> Path:
    """A dcvic model file with random weights, in the real format the CLI loads (by default with the released
    pairs as its quality table, like a converted release; ``None`` like a stage-1_x model)."""
    state_dict = seeded_model(architecture, seed).state_dict()
    model_file = ModelFile(dict(architecture), state_dict, quality_table=quality_table, source="test")
    return save_model_file(path, model_file)


def photo(name: str, height: int, width: int, top: int = 0, left: int = 0) -> np.ndarray:
    """A crop of one of scikit-image's bundled photos (uint8 HWC RGB)."""
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    crop = image[top : top + height, left : left + width, :3]
    assert crop.shape[:2] == (height, width), f"{name} is too small for a {height}x{width} crop"
    return np.ascontiguousarray(crop)
