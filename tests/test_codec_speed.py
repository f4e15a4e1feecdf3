"""The codec's speed choices (design §6.1): exact mode keeps the reference's arithmetic and bytes, fast mode and the
fitted tiling change only how the image networks run, never what a decoder needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from taming.modules.diffusionmodules.model import AttnBlock, ResnetBlock

from lightning_modules.codec.container import Container
from lightning_modules.codec.image_codec import DCVICCodec, fast_dtype, resolve_conditioning
from lightning_modules.images import image_to_tensor
from lightning_modules.model_file import RELEASED_QUALITY_TABLE
from lightning_modules.networks.fusion import VqDecoderFusion
from lightning_modules.networks.latent_codec import entropy_parameter_context
from lightning_modules.networks.tiling import REFERENCE_VQ_GRID, REFERENCE_Y_GRID
from lightning_modules.networks.vqgan import FrozenVQGAN, attention_block, encoder_forward, resnet_block
from tests.support.codec_models import MICRO_ARCHITECTURE, photo, seeded_model

TINY_VQGAN = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(128,), n_embed=16)


@pytest.fixture(scope="module")
def vqgan() -> FrozenVQGAN:
    torch.manual_seed(0)
    return FrozenVQGAN(**TINY_VQGAN)


def test_unfused_blocks_compute_taming_bit_for_bit(vqgan: FrozenVQGAN) -> None:
    """Exact mode's files equal the reference's because its VQGAN arithmetic is taming's, operation for operation."""
    x = torch.randn(1, 3, 64, 96)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            assert torch.equal(encoder_forward(vqgan.encoder, x), vqgan.encoder(x))
    h = torch.randn(1, 64, 16, 24)
    blocks = [m for m in vqgan.modules() if isinstance(m, ResnetBlock | AttnBlock)]
    assert {type(b) for b in blocks} == {ResnetBlock, AttnBlock}
    with torch.no_grad():
        for block in blocks:
            if isinstance(block, AttnBlock):
                assert torch.equal(attention_block(block, h), block(h))
            elif block.in_channels == 64:
                assert torch.equal(resnet_block(block, h), block(h, None))


def test_exact_mode_writes_the_bytes_of_taming_arithmetic() -> None:
    """The file of exact-mode compress equals the one computed through taming's own modules (today's path)."""
    codec = DCVICCodec(seeded_model(MICRO_ARCHITECTURE), RELEASED_QUALITY_TABLE)
    model, x = codec.model, image_to_tensor(photo("astronaut", 128, 192, top=40, left=150))
    conditioning = resolve_conditioning(RELEASED_QUALITY_TABLE, 1)
    with torch.inference_mode():
        vq = model.vq_model.quantize_latent(model.vq_model.quant_conv(model.vq_model.encoder(x)))
        y = model.analysis(x, vq, *conditioning.betas())
    assert codec.compress(x, conditioning)[1].strings == model.latent_codec.compress(y).strings


def test_fused_blocks_equal_taming_up_to_float_rounding(vqgan: FrozenVQGAN) -> None:
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        exact = vqgan.encoder(x)
        fused = encoder_forward(vqgan.encoder, x.contiguous(memory_format=torch.channels_last), fused=True)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    assert float((fused - exact).abs().max()) <= 1e-5 * max(1.0, float(exact.abs().max()))


def test_fused_attention_hands_sdpa_rows_with_unit_stride(vqgan: FrozenVQGAN, monkeypatch) -> None:
    """An NCHW map gives ``(hw, C)`` rows with stride ``hw``: SDPA would then take the kernel that holds the
    ``(hw)²`` score matrix (6 GiB for one large synthesis tile). Both layouts must reach it packed."""
    seen = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        seen.append(all(t.is_contiguous() for t in (q, k, v)))
        return real_sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    block = next(m for m in vqgan.modules() if isinstance(m, AttnBlock))
    h = torch.randn(1, block.in_channels, 16, 24)
    with torch.no_grad():
        for layout in (torch.contiguous_format, torch.channels_last):
            fused = attention_block(block, h.contiguous(memory_format=layout), fused=True)
            torch.testing.assert_close(fused, block(h), rtol=0, atol=1e-5)
    assert seen == [True, True]


def test_fusion_in_place_path_equals_the_autograd_path() -> None:
    """The no-grad (in place) decoder is the training decoder's arithmetic: bit for bit, and fused within 1e-5."""
    torch.manual_seed(0)
    model = seeded_model(MICRO_ARCHITECTURE)
    y_hat = torch.randn(1, MICRO_ARCHITECTURE["main_ch"], 4, 4)
    beta = torch.tensor([1.0])
    for fused in (False, True):
        with torch.no_grad():
            in_place = model.synthesis(y_hat, beta, beta, fast_kernels=fused).x_hat
        recorded = model.synthesis(y_hat, beta, beta, fast_kernels=fused).x_hat
        assert recorded.requires_grad
        if fused:
            torch.testing.assert_close(in_place, recorded.detach(), rtol=0, atol=1e-5)
        else:
            assert torch.equal(in_place, recorded.detach())
    with torch.no_grad():
        x_hat = model.synthesis(y_hat.clone(memory_format=torch.channels_last), beta, beta, fast_kernels=True).x_hat
    assert x_hat.is_contiguous(memory_format=torch.channels_last)  # every stage stayed channels-last
    assert isinstance(model.fusion_module, VqDecoderFusion)


def test_eval_forward_takes_the_fast_kernels_when_asked(monkeypatch) -> None:
    """The eval forward (estimated rate, no bitstream) runs fast mode's fused attention in the VQGAN encoder and
    decoder, channels-last like the codec, when asked, and only then; rate and image stay taming's up to rounding.
    (A synthesis fed the entropy path's NCHW ``ŷ`` ran 2.5x slower in bf16: benchmarks/codec_speed.py forward.)"""
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(*args, **kwargs):
        calls.append(1)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    model = seeded_model(MICRO_ARCHITECTURE).eval()
    x, beta = image_to_tensor(photo("astronaut", 64, 64, top=40, left=150)), torch.tensor([1.0])
    with torch.inference_mode():
        exact = model(x, beta, beta)
        assert not calls
        fast = model(x.clone(memory_format=torch.channels_last), beta, beta, fast_kernels=True)
    assert calls  # at least the encoder's and the decoder's middle attention
    assert fast.synthesis.x_hat.is_contiguous(memory_format=torch.channels_last)  # not back in NCHW after entropy
    torch.testing.assert_close(fast.bpp(), exact.bpp(), rtol=1e-4, atol=0)
    torch.testing.assert_close(fast.x_hat, exact.x_hat, rtol=0, atol=1e-3)


def test_code_logits_stay_float32_under_bf16_autocast() -> None:
    """The VQ estimator's argmax picks the codes: under bf16 autocast its logits are still float32 computations
    on float32 features (bf16 logits flip near-tied codes, whole 8×8 blocks of the picture)."""
    torch.manual_seed(0)
    model = seeded_model(MICRO_ARCHITECTURE).eval()
    y_hat, beta = torch.randn(1, MICRO_ARCHITECTURE["main_ch"], 4, 4), torch.tensor([1.0])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.synthesis(y_hat, beta, beta, fast_kernels=True)
    with torch.inference_mode():
        _, logits = model.vq_estimator(out.features.t.float())
    assert out.vq_logits.dtype == torch.float32
    assert torch.equal(out.vq_logits, logits)


def test_entropy_path_is_layout_independent() -> None:
    """A channels-last ``y`` (fast mode's encoder output) gives the bytes of the same ``y`` in NCHW."""
    model = seeded_model(MICRO_ARCHITECTURE)
    model.latent_codec.prepare_for_coding()
    y = torch.randn(1, MICRO_ARCHITECTURE["main_ch"], 8, 12) * 3
    plain = model.latent_codec.compress(y)
    channels_last = model.latent_codec.compress(y.contiguous(memory_format=torch.channels_last))
    half = model.latent_codec.compress(y.to(torch.bfloat16))
    assert channels_last.strings == plain.strings
    assert half.y_hat.dtype == torch.float32


def test_entropy_parameter_context_restores_the_cudnn_switches() -> None:
    cudnn = torch.backends.cudnn
    before = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, torch.get_num_threads())
    with entropy_parameter_context():
        assert (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32) == (False, True, False)
        assert torch.get_num_threads() == 1
    assert (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, torch.get_num_threads()) == before


@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16])
def test_fast_and_exact_files_decode_with_either_decoder(precision: torch.dtype) -> None:
    """The entropy path is float32 NCHW on one thread in both modes, so the ŷ of any file is the same everywhere.

    Both precisions are forced: fast mode's own choice depends on the CPU (bf16 where it is native, emulated
    elsewhere).
    """
    exact = DCVICCodec(seeded_model(MICRO_ARCHITECTURE), RELEASED_QUALITY_TABLE)
    fast = DCVICCodec(seeded_model(MICRO_ARCHITECTURE), RELEASED_QUALITY_TABLE, fast=True, precision=precision)
    assert fast.fingerprint == exact.fingerprint
    x = image_to_tensor(photo("coffee", 64, 128, top=100, left=150))
    conditioning = resolve_conditioning(RELEASED_QUALITY_TABLE, 3)
    for coder in (exact, fast):
        container, code = coder.compress(x, conditioning)
        decoded = [d.decode_container(Container.from_bytes(container.to_bytes())) for d in (exact, fast)]
        for x_hat, y_hat in decoded:
            assert torch.equal(y_hat, code.y_hat)
            assert x_hat.dtype == torch.float32 and x_hat.shape == x.shape and x_hat.is_contiguous()
        difference = (decoded[0][0] - decoded[1][0]).abs()
        if precision == torch.float32:  # fast mode in float32: channels-last and fused kernels, float rounding only
            assert float(difference.max()) <= 1e-3
        else:  # bf16 synthesis: 8-bit mantissas (a near-tied VQ index may flip)
            assert float(difference.mean()) <= 0.01


def test_fast_mode_says_when_it_stays_float32() -> None:
    codec = DCVICCodec(seeded_model(MICRO_ARCHITECTURE), RELEASED_QUALITY_TABLE, fast=True)
    native = fast_dtype(torch.device("cpu"))
    assert codec.image_dtype == native
    assert (codec.note is None) == (native is not None)
    assert DCVICCodec(seeded_model(MICRO_ARCHITECTURE), RELEASED_QUALITY_TABLE).note is None
    # float32 asked for explicitly: no autocast at all (CPU autocast has no float32 mode and would warn)
    forced = DCVICCodec(seeded_model(MICRO_ARCHITECTURE), RELEASED_QUALITY_TABLE, fast=True, precision=torch.float32)
    assert forced.image_dtype is None


def test_bad_speed_options_are_refused() -> None:
    with pytest.raises(ValueError, match="tiling"):
        DCVICCodec(seeded_model(MICRO_ARCHITECTURE), RELEASED_QUALITY_TABLE, tiling="quarter")
    with pytest.raises(ValueError, match="memory_budget_gb"):
        DCVICCodec(seeded_model(MICRO_ARCHITECTURE), RELEASED_QUALITY_TABLE, memory_budget_gb=0)


def test_tiling_rules_choose_their_grids() -> None:
    """``reference`` keeps the authors' 512/256 px tiles; ``fitted`` computes a 4000×3000 photo ~1.5× not ~4×."""
    reference = DCVICCodec(seeded_model(MICRO_ARCHITECTURE), RELEASED_QUALITY_TABLE, tiling="reference")
    assert reference.tile_grids(3008, 4032) == (REFERENCE_VQ_GRID, REFERENCE_Y_GRID)
    fitted = DCVICCodec(seeded_model(MICRO_ARCHITECTURE), RELEASED_QUALITY_TABLE)
    vq_grid, y_grid = fitted.tile_grids(3008, 4032)
    for grid, (height, width) in ((vq_grid, (3008, 4032)), (y_grid, (188, 252))):
        tiles = grid.tile_count(height, width) * min(grid.tile[0], height) * min(grid.tile[1], width)
        reference_tiles = REFERENCE_VQ_GRID if grid is vq_grid else REFERENCE_Y_GRID
        reference_area = reference_tiles.tile_count(height, width) * reference_tiles.tile[0] ** 2
        assert tiles / (height * width) < 2.0 < reference_area / (height * width)
    whole = fitted.tile_grids(1088, 1152)
    assert whole[0].covers_whole(1088, 1152) and whole[1].covers_whole(68, 72)


def test_fitted_tiles_do_not_depend_on_the_memory_the_process_holds() -> None:
    """The tiles decide the pixels; a long-running process whose allocator holds gigabytes must pick the same ones."""
    codec = DCVICCodec(seeded_model(MICRO_ARCHITECTURE), RELEASED_QUALITY_TABLE, memory_budget_gb=1.5)
    before = codec.tile_grids(3008, 4032)
    ballast = torch.ones(2**28)  # 1 GiB, touched
    assert codec.tile_grids(3008, 4032) == before
    del ballast


@pytest.mark.slow
def test_large_image_round_trips_under_both_tiling_rules() -> None:
    """1536×1152 with the micro network: both rules decode the same ŷ to nearby images; fitted computes less."""
    photo_1536 = Image.fromarray(photo("astronaut", 512, 512)).resize((1152, 1536), Image.Resampling.LANCZOS)
    x = image_to_tensor(np.asarray(photo_1536))
    conditioning = resolve_conditioning(RELEASED_QUALITY_TABLE, 2)
    outputs = {}
    for rule in ("reference", "fitted"):
        codec = DCVICCodec(seeded_model(MICRO_ARCHITECTURE), RELEASED_QUALITY_TABLE, tiling=rule, memory_budget_gb=3)
        vq = codec.model.vq_model
        calls: list[torch.Size] = []

        def counted(tile: torch.Tensor, fused: bool = False, calls=calls, encode=vq.encode_pre_quant) -> torch.Tensor:
            calls.append(tile.shape)
            return encode(tile, fused)

        vq.encode_pre_quant = counted
        container, code = codec.compress(x, conditioning)
        x_hat, y_hat = codec.decode_container(Container.from_bytes(container.to_bytes()))
        assert torch.equal(y_hat, code.y_hat) and bool(torch.isfinite(x_hat).all())
        outputs[rule] = (x_hat, sum(s[-2] * s[-1] for s in calls))
    assert outputs["fitted"][1] < outputs["reference"][1] / 2
    assert float((outputs["fitted"][0] - outputs["reference"][0]).abs().mean()) < 0.1
