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

A third user is ours: the reference runs the compression encoder on the whole image, whose first 192-channel
map at 1/2 resolution alone is 2.3 GB for a 4000×3000 photo. The encoder is convolutional with a receptive
field of 280 px (radius 140), so tiles of 1344 px that keep their centre 1024 px (a 160 px margin on each
side) give the same ``y`` as the whole image, up to float rounding. It only runs above 1344 px, so every image
the reference can encode in one piece up to that size is encoded exactly as the reference does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

TILING_THRESHOLD = 1024
"""Images whose (padded) long side exceeds this many pixels are processed in tiles."""

VQ_TILE, VQ_STRIDE = 512, 256  # pixels
Y_TILE, Y_STRIDE = 32, 16  # ŷ positions (= 512 / 256 pixels)
ANALYSIS_TILE, ANALYSIS_STRIDE = 1344, 1024  # pixels; margin 160 ≥ the encoder's receptive radius of 140


def needs_tiling(height: int, width: int, threshold: int = TILING_THRESHOLD) -> bool:
    return max(height, width) > threshold


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


def tiled_apply(
    x: Tensor,
    fn: Callable[..., Sequence[Tensor]],
    tile: int,
    stride: int,
    side_inputs: Sequence[Tensor] = (),
) -> list[Tensor]:
    """Apply ``fn`` tile by tile and stitch each of its outputs at that output's own scale.

    ``fn`` maps an ``(N, C, th, tw)`` crop to tensors shaped ``(N, …, th·s, tw·s)`` (``s`` may be a
    fraction such as 1/8, or an integer such as 16; it may differ between outputs). Outputs without
    channel dimension (index maps, ``(N, h, w)``) are stitched too. Each of ``side_inputs`` (maps of the same
    image at another scale) is cropped to the same window at its own scale and passed after the crop.
    """
    height, width = x.shape[-2:]
    rows, cols = keep_ranges(height, tile, stride), keep_ranges(width, tile, stride)
    tile_h, tile_w = min(tile, height), min(tile, width)
    stitched: list[Tensor] = []
    for y0, top, bottom in rows:
        for x0, left, right in cols:
            window = (y0, x0, tile_h, tile_w)
            sides = [_crop_at_scale(side, window, height, width) for side in side_inputs]
            outputs = fn(x[..., y0 : y0 + tile_h, x0 : x0 + tile_w], *sides)
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


def _empty_canvas(out: Tensor, height: int, width: int, tile_h: int, tile_w: int) -> Tensor:
    out_h, out_w = height * out.shape[-2] // tile_h, width * out.shape[-1] // tile_w
    return torch.zeros((*out.shape[:-2], out_h, out_w), dtype=out.dtype, device=out.device)


def _crop_at_scale(side: Tensor, window: tuple[int, int, int, int], height: int, width: int) -> Tensor:
    y0, x0, tile_h, tile_w = window
    sy, sx = side.shape[-2] / height, side.shape[-1] / width
    return side[..., int(y0 * sy) : int((y0 + tile_h) * sy), int(x0 * sx) : int((x0 + tile_w) * sx)]
