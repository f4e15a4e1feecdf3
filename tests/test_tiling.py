"""Tiled VQGAN encoding and tiled decoding (spec §6.6), including sizes where the reference crashes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.codec import image_to_tensor
from lightning_modules.networks.tiling import keep_ranges, tile_starts, tiled_apply
from tests.support.codec_models import MICRO_ARCHITECTURE, photo, seeded_model


@pytest.mark.parametrize(
    ("size", "tile", "stride", "expected"),
    [
        (1152, 512, 256, [0, 256, 512, 640]),
        (1088, 512, 256, [0, 256, 512, 576]),
        (1024, 512, 256, [0, 256, 512]),
        (512, 512, 256, [0]),
        (384, 512, 256, [0]),  # the reference computes a negative start here and crashes
        (72, 32, 16, [0, 16, 32, 40]),
        (24, 32, 16, [0]),
    ],
)
def test_tile_starts_follow_the_spec(size: int, tile: int, stride: int, expected: list[int]) -> None:
    assert tile_starts(size, tile, stride) == expected


def test_keep_ranges_use_the_reference_bands() -> None:
    # Spec §6.6a with Wp = 1152: l = x0 + 128 (0 first), r = x0 + 384 (Wp last).
    assert keep_ranges(1152, 512, 256) == [(0, 0, 384), (256, 384, 640), (512, 640, 896), (640, 768, 1152)]


@pytest.mark.parametrize("size", [64, 512, 576, 1088, 1152, 1600, 4032])
def test_keep_ranges_cover_every_position(size: int) -> None:
    covered = torch.zeros(size, dtype=torch.bool)
    for start, keep_from, keep_to in keep_ranges(size, 512, 256):
        assert start <= keep_from < keep_to <= start + min(512, size)
        covered[keep_from:keep_to] = True
    assert covered.all()


def pixel_space_outputs(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Block-local maps at 1/8 and 1/4 scale, and an index map at full scale (like VQGAN encoding)."""
    pooled = F.avg_pool2d(t, 8)
    return pooled, F.interpolate(pooled, scale_factor=2.0), t.argmax(1)


def latent_space_outputs(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Maps at ×16 and ×2 scale (like decoding ŷ to pixels and VQ indices)."""
    return F.interpolate(t, scale_factor=16.0), F.interpolate(t, scale_factor=2.0).argmax(1)


@pytest.mark.parametrize(
    ("shape", "tile", "stride", "fn"),
    [
        ((1, 2, 384, 1152), 512, 256, pixel_space_outputs),
        ((1, 2, 1088, 576), 512, 256, pixel_space_outputs),
        ((1, 2, 24, 72), 32, 16, latent_space_outputs),
        ((1, 2, 40, 40), 32, 16, latent_space_outputs),
    ],
)
def test_tiled_apply_equals_whole_image_for_a_local_function(shape, tile: int, stride: int, fn) -> None:
    """Stitching must reproduce the untiled result exactly when every output position depends only on its block."""
    x = torch.randn(shape)
    tiled = tiled_apply(x, fn, tile, stride)
    for got, want in zip(tiled, fn(x), strict=True):
        assert got.shape == want.shape
        assert torch.equal(got, want)


def test_tiled_vq_encoding_on_a_wide_short_image() -> None:
    """1152×384 (long side above 1024, padded short side under 512: the reference crashes here).

    Latent columns must come from the tile the spec names, and quantisation happens once afterwards. The
    tiled decoder on this size is exercised end to end by ``test_codec``.
    """
    model = seeded_model(MICRO_ARCHITECTURE)
    x = image_to_tensor(np.concatenate([photo("rocket", 384, 640), photo("coffee", 384, 512)], axis=1))
    vq = model.vq_encode(x)
    with torch.no_grad():
        middle = model.vq_model.encode_pre_quant(x[..., 256:768])  # keeps pixels [384, 640)
        last = model.vq_model.encode_pre_quant(x[..., 640:1152])  # keeps pixels [768, 1152)
    assert vq.h.shape == (1, 4, 48, 144)
    assert torch.equal(vq.h[..., 48:80], middle[..., 16:48])
    assert torch.equal(vq.h[..., 96:144], last[..., 16:64])
    assert torch.equal(vq.indices, model.vq_model.quantize_latent(vq.h).indices)
