"""Real compression with a :class:`DCVIC` model: images ↔ :class:`Container` bytes (design §6.1–6.6).

::

    compress                                                   decompress
    x ─pad 64─ VQGAN (tiled >1024) ─ encoder (tiled >1344) ─ y
    y ─model.latent_codec.compress─ (z_string, y_string) ─ model.latent_codec.decompress─ ŷ
                                                             ŷ ─synthesis (tiled >1024)─ crop ─ clamp ─ x̂

This module owns the image side (padding, tiling, the container and its identity checks). A
:class:`PreparedImage` (padded, VQGAN-encoded) is shared by every beta pair, which per-image rate control
(:mod:`.rate_control`) relies on. The entropy path (:mod:`lightning_modules.networks.latent_codec`) runs on the
CPU in float32 with one thread on *both* sides, so decompress rebuilds exactly the ``ŷ`` compress used, on any
machine.

How the image networks run is the codec's choice and never changes the file format (design §6.1):

- exact mode (the default): the reference's arithmetic, operation for operation, on both sides: the files are
  byte-identical and the decoded images bit-identical to the eval forward's. What is faster is memory: taming's
  blocks run in place with one activation alive (:mod:`~lightning_modules.networks.vqgan`), and the entry points
  ask torch for huge-page buffers (``THP_MEM_ALLOC_ENABLE``), so far fewer page faults;
- ``fast=True``: channels-last activations and fused kernels (SiLU, ``scaled_dot_product_attention``) for every
  image network, and autocast to bf16 (fp16 on GPUs without bf16) where the hardware computes it natively
  (:func:`fast_dtype`; elsewhere float32). Bytes and pixels change (a near-tied VQ index or symbol may flip); the
  entropy path stays float32 NCHW on one thread, so a fast file decodes with an exact decoder and the reverse;
- tiling above 1024 px: ``"fitted"`` (default; the least-work tiles that fit ``memory_budget_gb``,
  :func:`~lightning_modules.networks.tiling.fitted_grid`) or ``"reference"`` (512 px tiles every 256 px);
- device: the image networks run where the model is (``--device cuda``, with cuDNN autotuning); the entropy path
  on the CPU unless ``entropy_device`` says otherwise (then both sides must use the same kind of device).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from compressai.entropy_models import EntropyBottleneck
from torch import Tensor

from lightning_modules.codec.container import (
    EXPLICIT_BETAS,
    BitstreamError,
    Container,
    ModelMismatchError,
    read_legacy,
)
from lightning_modules.codec.limits import DEFAULT_MAX_PIXELS, AvailableMemory, check_memory, check_pixel_limit
from lightning_modules.model_file import ModelFile, QualityTable, weights_fingerprint
from lightning_modules.networks.conditioning import BetaRange
from lightning_modules.networks.dcvic import DCVIC, pad_to_multiple
from lightning_modules.networks.entropy_models import entropy_bottleneck_124
from lightning_modules.networks.latent_codec import LatentCode
from lightning_modules.networks.tiling import REFERENCE_VQ_GRID, REFERENCE_Y_GRID, TileGrid, fitted_grid, needs_tiling
from lightning_modules.networks.vqgan import VQEncoding

CPU = torch.device("cpu")
TILING_RULES = ("fitted", "reference")
DEFAULT_MEMORY_BUDGET_GB = 8.0
LIBRARY_BYTES = 800 * 2**20  # torch, compressai, taming: 860 MiB RSS measured with a 35 MB model loaded
DECODE_MEMORY_MARGIN, DECODE_MEMORY_OVERHEAD = 1.2, 64 * 2**20
"""On top of the estimated peak: allocator fragmentation and library workspaces. With them the estimate is
1.15–1.7× the measured peak RSS of the tiny and full networks, tiled or not (``benchmarks/decode_memory.py``)."""


@dataclass(frozen=True)
class Conditioning:
    """What the decoder needs to know besides the latents: a quality index (or ``None``) and the beta pair."""

    quality_index: int | None
    beta_rate: float
    beta_vq: float

    def betas(self) -> tuple[Tensor, Tensor]:
        return torch.tensor([self.beta_rate]), torch.tensor([self.beta_vq])  # float32, batch of one


def resolve_conditioning(
    quality_table: QualityTable | None,
    quality: int | None = None,
    beta_rate: float | None = None,
    beta_vq: float | None = None,
    beta_range: BetaRange | None = None,
) -> Conditioning:
    """A quality index of the model's table, or an explicit pair (rounded to float32, as transmitted), checked
    against the model's ``beta_range`` when given (:meth:`DCVICCodec.compress` checks it in any case)."""
    if quality is not None:
        if beta_rate is not None or beta_vq is not None:
            raise ValueError("give either a quality index or an explicit beta pair, not both")
        if quality_table is None:
            raise ValueError(
                "this model file has no quality table (only stage 3 and converted releases carry selected pairs): "
                "give an explicit beta pair instead"
            )
        count = len(quality_table["beta_rate"])
        if not 0 <= quality < count:
            raise ValueError(f"quality index {quality} is out of range: this model has qualities 0..{count - 1}")
        return Conditioning(quality, quality_table["beta_rate"][quality], quality_table["beta_vq"][quality])
    if beta_rate is None or beta_vq is None:
        raise ValueError("give a quality index, or both beta_rate and beta_vq")
    if beta_range is not None:
        beta_range.check(beta_rate, beta_vq)
    return Conditioning(None, float(np.float32(beta_rate)), float(np.float32(beta_vq)))


def prepare_for_coding(model: DCVIC, entropy_device: torch.device | str = CPU) -> DCVIC:
    """``codec_setup`` (§6.1): eval mode, the entropy path in float32 with freshly built CDF tables."""
    model.eval()
    model.latent_codec.prepare_for_coding(entropy_device)
    return model


def model_device(model: DCVIC) -> torch.device:
    return next(model.encoder.parameters()).device


def fast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision ``fast`` mode computes in on ``device``; ``None`` where float32 is faster.

    CPUs without native bf16 (AVX512-BF16 or AMX) emulate it several times slower than float32.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    native = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's CPU feature probes
    if device.type == "cpu" and any(getattr(torch.cpu, probe, lambda: False)() for probe in native):
        return torch.bfloat16
    return None


def resident_bytes(model: DCVIC) -> int:
    """Memory taken before any tile: the weights plus :data:`LIBRARY_BYTES`.

    Deliberately not the process's resident set or torch's allocation count: the tiles decide the pixels (global
    attention, design §6.6), so they must depend on the image, the model and the budget only — the same file
    decodes to the same image in a fresh ``dcvic`` and in a long-running evaluation whose allocator caches hold
    gigabytes (memory the tiles reuse anyway)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) + LIBRARY_BYTES


@contextlib.contextmanager
def image_precision(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Inference mode, and autocast to ``dtype`` for the image networks when one is given.

    Without one the networks compute in float32, on a GPU too: cuDNN's convolutions would otherwise use TF32 (a
    10-bit mantissa, torch's default for them), i.e. a reduced precision that only fast mode asks for.
    """
    with torch.inference_mode():
        if dtype is not None:
            with torch.autocast(device.type, dtype=dtype):
                yield
        elif device.type == "cuda":
            cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
            saved = (cudnn.allow_tf32, matmul.allow_tf32)
            cudnn.allow_tf32 = matmul.allow_tf32 = False
            try:
                yield
            finally:
                cudnn.allow_tf32, matmul.allow_tf32 = saved
        else:
            yield


@dataclass(frozen=True)
class PreparedImage:
    """An image padded to the model's multiple and VQGAN-encoded: all the compression that no beta changes.

    Rate control (:mod:`.rate_control`) probes many beta pairs on one prepared image.
    """

    x_pad: Tensor
    vq: VQEncoding
    height: int
    width: int


def prepare_image(
    model: DCVIC,
    x: Tensor,
    vq_grid: TileGrid | None = None,
    fast: bool = False,
    dtype: torch.dtype | None = None,
) -> PreparedImage:
    """Image (1, 3, H, W) in [-1, 1] → padded image and its VQGAN tokens (§6.3 step 1; tiled above 1024 px).

    ``vq_grid``: the VQGAN encoder's tiles above 1024 px (default the reference's); ``fast``, ``dtype``: see
    :class:`DCVICCodec`."""
    x_pad = pad_to_multiple(x.to(model_device(model)), model.pad_multiple)
    if fast:  # a copy with plain strides: image_to_tensor's HWC view has a batch stride convolutions reject
        x_pad = x_pad.clone(memory_format=torch.channels_last)
    else:  # NCHW, as the convolutions already treated that view: the reference's arithmetic
        x_pad = x_pad.contiguous()
    with image_precision(x_pad.device, dtype):
        return PreparedImage(x_pad, model.vq_encode(x_pad, grid=vq_grid, fast_kernels=fast), *x.shape[-2:])


def analyse(model: DCVIC, image: PreparedImage, conditioning: Conditioning, dtype: torch.dtype | None = None) -> Tensor:
    """Prepared image → ``y`` (§6.3 step 2; the encoder is tiled above 1344 px), in the prepared image's layout."""
    beta_rate, beta_vq = conditioning.betas()
    with image_precision(image.x_pad.device, dtype):
        return model.analysis(image.x_pad, image.vq, beta_rate, beta_vq)


def synthesize(
    model: DCVIC,
    y_hat: Tensor,
    height: int,
    width: int,
    conditioning: Conditioning,
    grid: TileGrid = REFERENCE_Y_GRID,
    fast: bool = False,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``ŷ`` → image in [-1, 1], (1, 3, H, W) float32 on the CPU; tiled above 1024 px (§6.5 steps 6–7)."""
    beta_rate, beta_vq = conditioning.betas()
    y_hat = y_hat.to(model_device(model))
    if fast:
        y_hat = y_hat.clone(memory_format=torch.channels_last)
    y_h, y_w = y_hat.shape[-2:]
    with image_precision(y_hat.device, dtype):
        if needs_tiling(16 * y_h, 16 * y_w) and not grid.covers_whole(y_h, y_w):
            x_hat = model.tiled_synthesis(y_hat, beta_rate, beta_vq, grid, fast_kernels=fast).x_hat
        else:
            x_hat = model.synthesis(y_hat, beta_rate, beta_vq, fast_kernels=fast).x_hat
    return x_hat[:, :, :height, :width].float().clamp(-1, 1).cpu().contiguous()


class DCVICCodec:
    """A prepared model plus its identity: turns images into :class:`Container` bytes and back.

    ``fast`` runs the image networks channels-last with fused kernels, in reduced precision where the hardware has
    it (``precision`` overrides :func:`fast_dtype`'s choice); ``tiling`` and ``memory_budget_gb`` choose the tiles of
    images above 1024 px; ``entropy_device`` moves the entropy path off the CPU (files then decode only on the same
    kind of device). See the module docstring. ``note`` says when ``fast`` stays float32.
    """

    def __init__(
        self,
        model: DCVIC,
        quality_table: QualityTable | None,
        fingerprint: bytes | None = None,
        *,
        fast: bool = False,
        precision: torch.dtype | None = None,
        tiling: str = "fitted",
        memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
        entropy_device: torch.device | str = CPU,
    ) -> None:
        if tiling not in TILING_RULES:
            raise ValueError(f"tiling must be one of {', '.join(TILING_RULES)}, got {tiling!r}")
        if memory_budget_gb <= 0:
            raise ValueError(f"memory_budget_gb must be positive, got {memory_budget_gb}")
        self.fingerprint = fingerprint or weights_fingerprint(model.state_dict())
        self.model = prepare_for_coding(model, entropy_device)
        self.fast = fast
        self.quality_table = quality_table
        self.device = model_device(model)
        self.image_dtype = (precision or fast_dtype(self.device)) if fast else None
        if self.image_dtype == torch.float32:  # float32 asked for: no autocast (the CPU's has no float32 mode)
            self.image_dtype = None
        self.note = None
        if fast and self.image_dtype is None and precision is None:
            self.note = (
                f"fast mode stays float32 on this {self.device.type} (channels-last, fused kernels): it has no "
                "native bf16 (AVX512-BF16 or AMX), and emulated bf16 is slower than float32"
            )
        self.tiling = tiling
        self.memory_budget_gb = memory_budget_gb
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed tile shapes: autotune once per shape

    @classmethod
    def from_model_file(cls, model_file: ModelFile, **options) -> DCVICCodec:
        """``options``: the keyword arguments of the constructor (``fast``, ``tiling``, …)."""
        return cls(model_file.build_model(), model_file.quality_table, model_file.fingerprint(), **options)

    # --- the image networks ---

    def tile_grids(self, height: int, width: int) -> tuple[TileGrid, TileGrid]:
        """VQGAN-encoder grid (pixels) and synthesis grid (``ŷ`` units) for a padded ``height × width`` image."""
        if self.tiling == "reference":
            return REFERENCE_VQ_GRID, REFERENCE_Y_GRID
        # 10 % of what is left goes to the stitched canvases and allocator slack
        budget = 0.9 * (self.memory_budget_gb * 2**30 - resident_bytes(self.model))
        vq_cost, y_cost = self.model.tiling_costs(fast_kernels=self.fast)
        return fitted_grid(height, width, vq_cost, budget), fitted_grid(height // 16, width // 16, y_cost, budget)

    @property
    def beta_range(self) -> BetaRange:
        return self.model.beta_range

    def prepare(self, x: Tensor) -> PreparedImage:
        """:func:`prepare_image` with this codec's tiles, layout and precision."""
        multiple = self.model.pad_multiple
        grid = self.tile_grids(*(math.ceil(n / multiple) * multiple for n in x.shape[-2:]))[0]
        return prepare_image(self.model, x, grid, self.fast, self.image_dtype)

    def synthesize(self, y_hat: Tensor, height: int, width: int, conditioning: Conditioning) -> Tensor:
        grid = self.tile_grids(16 * y_hat.shape[-2], 16 * y_hat.shape[-1])[1]
        return synthesize(self.model, y_hat, height, width, conditioning, grid, self.fast, self.image_dtype)

    # --- files ---

    def compress(self, x: Tensor, conditioning: Conditioning) -> tuple[Container, LatentCode]:
        return self.compress_prepared(self.prepare(x), conditioning)

    def compress_prepared(self, image: PreparedImage, conditioning: Conditioning) -> tuple[Container, LatentCode]:
        """Encoder, hyperprior, ChARM and rANS only: the synthesis path never runs on the encoder side."""
        self.beta_range.check(conditioning.beta_rate, conditioning.beta_vq)
        code = self.model.latent_codec.compress(analyse(self.model, image, conditioning, self.image_dtype))
        container = Container(
            fingerprint=self.fingerprint,
            height=image.height,
            width=image.width,
            quality_index=EXPLICIT_BETAS if conditioning.quality_index is None else conditioning.quality_index,
            beta_rate=conditioning.beta_rate,
            beta_vq=conditioning.beta_vq,
            z_string=code.z_string,
            y_string=code.y_string,
        )
        return container, code

    def decode_container(self, container: Container, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Tensor, Tensor]:
        """Container → ``(x̂, ŷ)``; refuses a file made with other weights, or one :meth:`check_decodable` refuses."""
        if container.fingerprint != self.fingerprint:
            raise ModelMismatchError(
                f"this file was made with model {container.fingerprint.hex()}, but the loaded model is "
                f"{self.fingerprint.hex()}; decode it with the checkpoint that compressed it"
            )
        if not self.beta_range.contains(container.beta_rate, container.beta_vq):
            raise BitstreamError(
                f"corrupt header: betas ({container.beta_rate}, {container.beta_vq}) lie outside this model's "
                f"[0, {self.beta_range.rate_max}]×[0, {self.beta_range.vq_max}]"
            )
        conditioning = Conditioning(container.quality_index, container.beta_rate, container.beta_vq)
        strings = (container.z_string, container.y_string)
        return self._decode(strings, container.height, container.width, conditioning, max_pixels=max_pixels)

    def decompress(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
        return self.decode_container(Container.from_bytes(data), max_pixels)[0]

    def decompress_legacy(
        self, data: bytes, legacy_eb_version: str = "1.2.4", max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> tuple[Tensor, Tensor]:
        """An authors' ``.bin`` file (§6.4): betas from this model's quality table, z CDFs of
        ``legacy_eb_version``.

        The file cannot say which compressai wrote it; the authors used 1.2.4, hence the default.
        """
        legacy = read_legacy(data)
        if self.quality_table is None:
            raise ValueError("an authors' .bin file names a quality index, but this model file has no quality table")
        count = len(self.quality_table["beta_rate"])
        if legacy.quality_index >= count:
            raise BitstreamError(f"legacy file asks for quality {legacy.quality_index}; the model has 0..{count - 1}")
        q = legacy.quality_index
        conditioning = Conditioning(q, self.quality_table["beta_rate"][q], self.quality_table["beta_vq"][q])
        if legacy_eb_version == "1.2.4":
            eb = entropy_bottleneck_124(self.model.entropy_model_z)
        elif legacy_eb_version == "1.2.8":
            eb = self.model.entropy_model_z
        else:
            raise ValueError(f"legacy_eb_version must be '1.2.4' or '1.2.8', got {legacy_eb_version!r}")
        strings = (legacy.z_string, legacy.y_string)
        return self._decode(strings, legacy.height, legacy.width, conditioning, eb, max_pixels)

    def check_decodable(
        self,
        strings: tuple[bytes, bytes],
        height: int,
        width: int,
        entropy_model_z: EntropyBottleneck | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        """Refuse, before anything large is allocated: more pixels than ``max_pixels``, z/y strings of a length
        no encoder can write for this size (:meth:`HyperpriorCharmLatentCodec.string_bounds`), or a decode
        whose estimated memory (:meth:`decode_bytes`) exceeds what this process can get."""
        check_pixel_limit(height, width, max_pixels)
        y_size = self._y_size(height, width)
        bounds = self.model.latent_codec.string_bounds(y_size, entropy_model_z)
        for name, string, (fewest, most) in zip("zy", strings, bounds, strict=True):
            if not fewest <= len(string) <= most or len(string) % 4:
                raise BitstreamError(
                    f"corrupt file: the {name} string has {len(string)} bytes, but a {height}x{width} image's has "
                    f"between {fewest} and {most}, in whole 4-byte words"
                )
        decode_bytes = self.decode_bytes(height, width, (len(strings[0]), len(strings[1])))
        check_memory(decode_bytes, f"this {height}x{width} image")
        device = model_device(self.model)
        if device.type == "cuda":
            free = AvailableMemory(torch.cuda.mem_get_info(device)[0], f"free memory on {device}")
            check_memory(self._synthesis_bytes(y_size), f"this {height}x{width} image", free)

    def decode_bytes(self, height: int, width: int, string_lengths: tuple[int, int]) -> int:
        """Estimated peak memory of decoding a ``height × width`` file beyond the loaded model (host memory).

        The largest of three phases: the entropy path (whole ``ŷ`` at once); the synthesis holding ``ŷ``
        (tiled above 1024 px, like :func:`synthesize`; on a GPU its activations are the GPU's memory); the
        padded image, its crop and clamp, the uint8 conversion's float maps and the PNG's pixels.
        """
        y_size = self._y_size(height, width)
        padded_pixels = 256 * y_size[0] * y_size[1]
        entropy = self.model.latent_codec.decode_bytes(y_size, string_lengths)
        synthesis = 4 * self.model.latent_codec.y_channels * y_size[0] * y_size[1]
        if model_device(self.model).type == "cpu":
            synthesis += self._synthesis_bytes(y_size)
        output = 12 * padded_pixels + height * width * (4 * 3 * 4 + 3 + 4)
        return int(DECODE_MEMORY_MARGIN * max(entropy, synthesis, output)) + DECODE_MEMORY_OVERHEAD

    def _synthesis_bytes(self, y_size: tuple[int, int]) -> int:
        """:meth:`DCVIC.synthesis_bytes` over the tiles :meth:`synthesize` will use."""
        height, width = 16 * y_size[0], 16 * y_size[1]
        grid = self.tile_grids(height, width)[1]
        tiled = needs_tiling(height, width) and not grid.covers_whole(*y_size)
        tile_px = (16 * grid.tile[0], 16 * grid.tile[1]) if tiled else None
        return self.model.synthesis_bytes(height, width, tile_px, fused_attention=self.fast)

    def _y_size(self, height: int, width: int) -> tuple[int, int]:
        multiple = self.model.pad_multiple
        return math.ceil(height / multiple) * multiple // 16, math.ceil(width / multiple) * multiple // 16

    def _decode(
        self,
        strings: tuple[bytes, bytes],
        height: int,
        width: int,
        conditioning: Conditioning,
        entropy_model_z: EntropyBottleneck | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> tuple[Tensor, Tensor]:
        self.check_decodable(strings, height, width, entropy_model_z, max_pixels)
        y_size = self._y_size(height, width)
        _, y_hat = self.model.latent_codec.decompress(strings, y_size, entropy_model_z)
        if not bool(torch.isfinite(y_hat).all()):
            raise BitstreamError("the latents decode to non-finite values: the file is corrupt")
        x_hat = self.synthesize(y_hat, height, width, conditioning)
        if not bool(torch.isfinite(x_hat).all()):
            raise BitstreamError("the image decodes to non-finite values: the file is corrupt")
        return x_hat, y_hat
