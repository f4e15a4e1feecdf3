"""Tiled VQGAN encoding and tiled decoding (design §6.6), including sizes where the reference crashes."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from lightning_modules.images import image_to_tensor
from lightning_modules.networks.tiling import (
    REFERENCE_VQ_GRID,
    TiledStageCost,
    fitted_grid,
    keep_ranges,
    tile_starts,
    tiled_apply,
)
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
    # design §6.6a with Wp = 1152: l = x0 + 128 (0 first), r = x0 + 384 (Wp last).
    assert keep_ranges(1152, 512, 256) == [(0, 0, 384), (256, 384, 640), (512, 640, 896), (640, 768, 1152)]


@pytest.mark.parametrize("size", [64, 512, 576, 1088, 1152, 1600, 4032])
def test_keep_ranges_cover_every_position(size: int) -> None:
    covered = torch.zeros(size, dtype=torch.bool)
    for start, keep_from, keep_to in keep_ranges(size, 512, 256):
        assert start <= keep_from < keep_to <= start + min(512, size)
        covered[keep_from:keep_to] = True
    assert covered.all()


VQ_LIKE = TiledStageCost(unit_px=1, margin=128, align=64, conv_flops_per_px=3.4e6, attention_flops_per_pair=6144,
                         bytes_per_px=3000.0)  # fmt: skip


@pytest.mark.parametrize(("height", "width"), [(3008, 4032), (1536, 2048), (1152, 384), (4032, 640)])
@pytest.mark.parametrize("budget_gib", [0.5, 2.0, 6.0])
def test_fitted_grid_fits_the_budget_covers_the_image_and_keeps_the_margin(
    height: int, width: int, budget_gib: float
) -> None:
    grid = fitted_grid(height, width, VQ_LIKE, budget_gib * 2**30)
    assert VQ_LIKE.tile_bytes(min(grid.tile[0], height), min(grid.tile[1], width)) <= budget_gib * 2**30
    for size, tile, stride in zip((height, width), grid.tile, grid.stride, strict=True):
        assert tile % VQ_LIKE.align == 0 or tile == size
        covered = torch.zeros(size, dtype=torch.bool)
        ranges = keep_ranges(size, tile, stride)
        for i, (start, keep_from, keep_to) in enumerate(ranges):
            assert start % VQ_LIKE.align == 0
            if i:  # every inner edge keeps the receptive-field margin
                assert keep_from - start >= VQ_LIKE.margin
            if i < len(ranges) - 1:
                assert start + min(tile, size) - keep_to >= VQ_LIKE.margin
            covered[keep_from:keep_to] = True
        assert covered.all()


def test_fitted_grid_computes_far_fewer_pixels_than_the_reference_rule() -> None:
    height, width = 3008, 4032
    grid = fitted_grid(height, width, VQ_LIKE, 6 * 2**30)
    fitted = grid.tile_count(height, width) * grid.tile[0] * grid.tile[1] / (height * width)
    reference = REFERENCE_VQ_GRID.tile_count(height, width) * 512 * 512 / (height * width)
    assert reference > 3.5 and fitted < 1.7


def test_fitted_grid_keeps_small_images_whole_and_shrinks_tiles_for_a_tiny_budget() -> None:
    assert fitted_grid(1088, 1088, VQ_LIKE, 6 * 2**30).covers_whole(1088, 1088)
    tiny = fitted_grid(1088, 1088, VQ_LIKE, 1.0)  # nothing fits: the smallest tiles
    assert tiny.tile == (2 * 128 + 64, 2 * 128 + 64)


@pytest.mark.parametrize(("tile", "stride"), [((384, 640), (128, 384)), ((1088, 320), (832, 64))])
def test_tiled_apply_with_per_axis_tiles_equals_whole_image(tile: tuple[int, int], stride: tuple[int, int]) -> None:
    x = torch.randn(1, 2, 1088, 1152)
    for got, want in zip(tiled_apply(x, pixel_space_outputs, tile, stride), pixel_space_outputs(x), strict=True):
        assert torch.equal(got, want)


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


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_tiles_are_packed_in_the_layout_of_their_image(layout: torch.memory_format) -> None:
    """A plain slice is strided in both layouts; a channels-last (fast-mode) tile must stay channels-last, or its
    maps fall back to NCHW and its attention to the kernel that holds the whole score matrix."""
    x = torch.randn(1, 3, 1088, 1152).contiguous(memory_format=layout)
    side = torch.randn(1, 5, 136, 144).contiguous(memory_format=layout)
    packed = []

    def fn(tile: torch.Tensor, side_tile: torch.Tensor) -> tuple[torch.Tensor, ...]:
        packed.append(tile.is_contiguous(memory_format=layout) and side_tile.is_contiguous(memory_format=layout))
        return pixel_space_outputs(tile)

    for got, want in zip(tiled_apply(x, fn, 512, 256, side_inputs=(side,)), pixel_space_outputs(x), strict=True):
        assert torch.equal(got, want)
    assert len(packed) == 16 and all(packed)


def test_tiled_vq_encoding_on_a_wide_short_image() -> None:
    """1152×384 (long side above 1024, padded short side under 512: the reference crashes here).

    Latent columns must come from the tile the tiling rule names, and quantisation happens once afterwards. The
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


def resized_photo(height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.Resampling.LANCZOS))


def analysis_inputs(model, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = image_to_tensor(resized_photo(height, width))
    return x, model.vq_features(model.vq_encode(x))


@pytest.mark.parametrize(("tile", "stride", "exact"), [(448, 128, True), (192, 128, False)])
def test_tiled_analysis_equals_the_whole_image_encoder_when_the_margin_covers_the_receptive_field(
    tile: int, stride: int, exact: bool
) -> None:
    """Margin 160 px ≥ the encoder's receptive radius (140 px): same ``y``; margin 32 px: visibly different.

    The production tile (1344/1024) has the same 160 px margin; smaller tiles keep the test fast.
    """
    model = seeded_model(MICRO_ARCHITECTURE).eval()
    x, features = analysis_inputs(model, 576, 704)
    beta_rate, beta_vq = torch.tensor([1.3]), torch.tensor([2.1])
    with torch.no_grad():
        whole = model.encoder(x, features, beta_rate, beta_vq)
        tiled = model.tiled_analysis(x, features, beta_rate, beta_vq, tile=tile, stride=stride)
    assert tiled.shape == whole.shape
    difference = float((tiled - whole).abs().max())
    if exact:
        assert difference <= 1e-5 * float(whole.abs().max())
    else:
        assert difference > 1e-3 * float(whole.abs().max())


def test_analysis_tiles_only_large_images_in_eval_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to 1344 px the encoder runs on the whole image exactly as the reference; training never tiles."""
    model = seeded_model(MICRO_ARCHITECTURE).eval()
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(model, "tiled_analysis", lambda x, *args: calls.append(tuple(x.shape[-2:])) or x)
    for height, width in ((384, 1344), (64, 1408)):
        x, features = analysis_inputs(model, height, width)
        with torch.no_grad():
            model.analysis(x, model.vq_encode(x), torch.tensor([1.0]), torch.tensor([1.0]))
    assert calls == [(64, 1408)]
    model.train()
    x = image_to_tensor(resized_photo(64, 1408))
    model.analysis(x, model.vq_encode(x), torch.tensor([1.0]), torch.tensor([1.0]))
    assert calls == [(64, 1408)]
