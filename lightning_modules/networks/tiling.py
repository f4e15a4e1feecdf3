"""Tiled processing of large images (design §6.6), so memory stays bounded above 1024 px.

Along each axis, tiles of ``tile`` input units start every ``stride`` units; the last tile is pulled back so
it ends at the border. Each tile contributes only its centre band (``(tile − stride)/2`` units inside each
edge), except that the first tile keeps everything up to its start and the last keeps everything to the
border; later tiles overwrite earlier ones where bands overlap::

    starts 0    256   512   640            (Wp = 1152, tile 512, stride 256)
    keep  [0,384) [384,640) [640,896) [768,1152)   ← last tile overwrites [768, 896)

Two users with the reference's numbers: the VQGAN encoder in pixel space (tile 512, stride 256, output
at 1/8, the pre-quantisation latent is quantised once afterwards) and the decoder path in ``ŷ`` space
(tile 32, stride 16, output at ×16). Unlike the reference, a tile larger than the image is clamped to the
image, so a padded short side under 512 px (e.g. 1152×384) works.

Those two follow the reference's rule (:data:`REFERENCE_VQ_GRID`, :data:`REFERENCE_Y_GRID`): 512 px tiles every
256 px compute every pixel about four times. :func:`fitted_grid` is our default for both instead: per axis, the
fewest equal tiles whose inner edges keep ``margin`` units for the receptive field (the reference's own 128 px),
chosen by a work model (convolutions ∝ computed pixels, the VQGAN's global attention ∝ tokens² per tile) among the
tiles that fit a memory budget. A 4000×3000 photo then computes each pixel about 1.6 times instead of 3.6 (8 GB).
Global attention makes no tiling exact; larger tiles see more of the image, as the whole-image path does up to
1024 px.

A third user is ours: the reference runs the compression encoder on the whole image, whose first 192-channel
map at 1/2 resolution alone is 2.3 GB for a 4000×3000 photo. The encoder is convolutional with a receptive
field of 280 px (radius 140), so tiles of 1344 px that keep their centre 1024 px (a 160 px margin on each
side) give the same ``y`` as the whole image, up to float rounding. It only runs above 1344 px, so every image
the reference can encode in one piece up to that size is encoded exactly as the reference does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

TILING_THRESHOLD = 1024
"""Images whose (padded) long side exceeds this many pixels are processed in tiles."""

VQ_TILE, VQ_STRIDE = 512, 256  # pixels
Y_TILE, Y_STRIDE = 32, 16  # ŷ positions (= 512 / 256 pixels)
ANALYSIS_TILE, ANALYSIS_STRIDE = 1344, 1024  # pixels; margin 160 ≥ the encoder's receptive radius of 140


def needs_tiling(height: int, width: int, threshold: int = TILING_THRESHOLD) -> bool:
    return max(height, width) > threshold


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile`` units starting every ``stride`` units, per axis ``(height, width)``."""

    tile: tuple[int, int]
    stride: tuple[int, int]

    @classmethod
    def square(cls, tile: int, stride: int) -> TileGrid:
        return cls((tile, tile), (stride, stride))

    def tile_count(self, height: int, width: int) -> int:
        return len(tile_starts(height, self.tile[0], self.stride[0])) * len(
            tile_starts(width, self.tile[1], self.stride[1])
        )

    def covers_whole(self, height: int, width: int) -> bool:
        return self.tile[0] >= height and self.tile[1] >= width


REFERENCE_VQ_GRID = TileGrid.square(VQ_TILE, VQ_STRIDE)
REFERENCE_Y_GRID = TileGrid.square(Y_TILE, Y_STRIDE)


@dataclass(frozen=True)
class TiledStageCost:
    """What one tiled stage costs, to choose its tiles (:func:`fitted_grid`); sizes in the stage's input units."""

    unit_px: int  # pixels per input unit along a side (1 for the VQGAN encoder, 16 for ŷ)
    margin: int  # units kept on each inner tile edge for the receptive field
    align: int  # tile sizes and starts are multiples of this (keeps strided and windowed grids aligned)
    conv_flops_per_px: float
    attention_flops_per_pair: float  # global attention, per (query, key) pair of positions at 1/8 resolution
    bytes_per_px: float  # peak working memory per pixel of one tile
    attention_bytes_per_pair: float = 0.0  # score matrices an unfused attention holds (0 for SDPA)

    def work(self, tiles: tuple[list[int], list[int]]) -> float:
        """Estimated FLOPs for tiles of the given sizes along (height, width)."""
        scale = self.unit_px**2
        area = sum(tiles[0]) * sum(tiles[1]) * scale
        pairs = sum((h * w * scale / 64) ** 2 for h in tiles[0] for w in tiles[1])
        return self.conv_flops_per_px * area + self.attention_flops_per_pair * pairs

    def tile_bytes(self, tile_h: int, tile_w: int) -> float:
        pixels = tile_h * tile_w * self.unit_px**2
        return pixels * self.bytes_per_px + (pixels / 64) ** 2 * self.attention_bytes_per_pair


def _axis_tile(size: int, count: int, margin: int, align: int) -> int:
    """The tile length that covers ``size`` with ``count`` tiles keeping ``margin`` on inner edges."""
    if count == 1:
        return size
    core = math.ceil(math.ceil((size - 2 * margin) / count) / align) * align
    return core + 2 * margin


def fitted_grid(height: int, width: int, cost: TiledStageCost, budget_bytes: float) -> TileGrid:
    """The least-work grid of equal tiles per axis whose tiles fit ``budget_bytes`` (design §6.6).

    Tiles start every ``tile − 2·margin`` units; one tile along an axis means that axis is not split. When even the
    smallest tiles exceed the budget, the smallest are used.
    """
    best: tuple[float, TileGrid] | None = None
    smallest: tuple[int, TileGrid] | None = None
    options = [_axis_options(size, cost) for size in (height, width)]
    for tile_h, count_h in options[0]:
        for tile_w, count_w in options[1]:
            grid = TileGrid((tile_h, tile_w), (tile_h - 2 * cost.margin, tile_w - 2 * cost.margin))
            pixels = tile_h * tile_w
            if smallest is None or pixels < smallest[0]:
                smallest = (pixels, grid)
            if cost.tile_bytes(tile_h, tile_w) > budget_bytes:
                continue
            work = cost.work(([tile_h] * count_h, [tile_w] * count_w))
            if best is None or work < best[0]:
                best = (work, grid)
    assert smallest is not None
    return best[1] if best is not None else smallest[1]


def _axis_options(size: int, cost: TiledStageCost) -> list[tuple[int, int]]:
    """``(tile, count)`` for one tile along an axis, two, … down to a core of one alignment step."""
    options = {size: 1}
    for count in range(2, size // cost.align + 1):
        tile = _axis_tile(size, count, cost.margin, cost.align)
        if tile >= size:
            continue
        options.setdefault(tile, len(tile_starts(size, tile, tile - 2 * cost.margin)))
        if tile - 2 * cost.margin <= cost.align:
            break
    return sorted(options.items())


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Starts ``0, stride, 2·stride, …`` while the tile ends inside, then one tile flush with the border."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return [*starts, size - tile]


def keep_ranges(size: int, tile: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, keep_from, keep_to)`` per tile, in input units (see the module docstring)."""
    starts = tile_starts(size, tile, stride)
    margin = (min(tile, size) - stride) // 2 if size > tile else 0
    ranges = []
    for i, start in enumerate(starts):
        keep_from = 0 if i == 0 else start + margin
        keep_to = size if i == len(starts) - 1 else start + margin + stride
        ranges.append((start, keep_from, keep_to))
    return ranges


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``channels_last`` for a 4-D tensor stored that way (and not also plainly contiguous), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def crop(x: Tensor, top: int, left: int, height: int, width: int) -> Tensor:
    """A packed copy of a window of ``x`` in ``x``'s memory layout.

    A plain slice is strided in either layout: the next map would fall back to NCHW, and a channels-last
    (fast-mode) tile would reach ``scaled_dot_product_attention`` with strided rows, which sends it to the
    kernel that holds the whole score matrix (design §6.6: 6 GiB more for one 1664×1024 px synthesis tile).
    The copy changes no value, so exact mode keeps its arithmetic."""
    return x[..., top : top + height, left : left + width].contiguous(memory_format=memory_format_of(x))


def tiled_apply(
    x: Tensor,
    fn: Callable[..., Sequence[Tensor]],
    tile: int | tuple[int, int],
    stride: int | tuple[int, int],
    side_inputs: Sequence[Tensor] = (),
) -> list[Tensor]:
    """Apply ``fn`` tile by tile and stitch each of its outputs at that output's own scale.

    ``fn`` maps an ``(N, C, th, tw)`` crop to tensors shaped ``(N, …, th·s, tw·s)`` (``s`` may be a
    fraction such as 1/8, or an integer such as 16; it may differ between outputs). Outputs without
    channel dimension (index maps, ``(N, h, w)``) are stitched too. Each of ``side_inputs`` (maps of the same
    image at another scale) is cropped to the same window at its own scale and passed after the crop.
    """
    height, width = x.shape[-2:]
    (tile_h, tile_w), (stride_h, stride_w) = _pair(tile), _pair(stride)
    rows, cols = keep_ranges(height, tile_h, stride_h), keep_ranges(width, tile_w, stride_w)
    tile_h, tile_w = min(tile_h, height), min(tile_w, width)
    stitched: list[Tensor] = []
    for y0, top, bottom in rows:
        for x0, left, right in cols:
            window = (y0, x0, tile_h, tile_w)
            sides = [_crop_at_scale(side, window, height, width) for side in side_inputs]
            outputs = fn(crop(x, y0, x0, tile_h, tile_w), *sides)
            if not stitched:
                stitched = [_empty_canvas(o, height, width, tile_h, tile_w) for o in outputs]
            for canvas, out in zip(stitched, outputs, strict=True):
                sy, sx = out.shape[-2] / tile_h, out.shape[-1] / tile_w
                canvas[..., int(top * sy) : int(bottom * sy), int(left * sx) : int(right * sx)] = out[
                    ...,
                    int((top - y0) * sy) : int((bottom - y0) * sy),
                    int((left - x0) * sx) : int((right - x0) * sx),
                ]
    return stitched


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _empty_canvas(out: Tensor, height: int, width: int, tile_h: int, tile_w: int) -> Tensor:
    out_h, out_w = height * out.shape[-2] // tile_h, width * out.shape[-1] // tile_w
    return torch.zeros((*out.shape[:-2], out_h, out_w), dtype=out.dtype, device=out.device)


def _crop_at_scale(side: Tensor, window: tuple[int, int, int, int], height: int, width: int) -> Tensor:
    y0, x0, tile_h, tile_w = window
    sy, sx = side.shape[-2] / height, side.shape[-1] / width
    top, left = int(y0 * sy), int(x0 * sx)
    return crop(side, top, left, int((y0 + tile_h) * sy) - top, int((x0 + tile_w) * sx) - left)
