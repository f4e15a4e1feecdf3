"""The GPU path (design §6.1 *Device*): image networks on CUDA, entropy path on the CPU unless asked otherwise.

Deselected by default (``-m gpu``) and skipped without a CUDA device; ``benchmarks/gpu_check.sh`` runs them first on
a GPU machine. What they pin down: a file made on a GPU with the default entropy device decodes on a CPU-only
machine to the same ``ŷ`` (the portable-file promise), a file made with the entropy path on the GPU decodes on the
same GPU, and one training step of the real stage system runs there.
"""

from __future__ import annotations

import pytest
import torch

from lightning_modules.codec.container import Container
from lightning_modules.codec.image_codec import DCVICCodec, fast_dtype, resolve_conditioning
from lightning_modules.images import image_to_tensor
from lightning_modules.model_file import RELEASED_QUALITY_TABLE
from tests.support.codec_models import MICRO_ARCHITECTURE, photo, seeded_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def gpu_codec(**options) -> DCVICCodec:
    return DCVICCodec(seeded_model(MICRO_ARCHITECTURE).to(CUDA), RELEASED_QUALITY_TABLE, **options)


def cpu_codec() -> DCVICCodec:
    return DCVICCodec(seeded_model(MICRO_ARCHITECTURE), RELEASED_QUALITY_TABLE)


def test_fast_mode_on_a_gpu_uses_its_half_precision() -> None:
    assert fast_dtype(CUDA) in (torch.bfloat16, torch.float16)
    assert gpu_codec(fast=True).image_dtype == fast_dtype(CUDA)
    assert torch.backends.cudnn.benchmark


def test_exact_mode_on_a_gpu_computes_in_float32_not_tf32() -> None:
    """cuDNN convolutions default to TF32; exact mode's image networks switch it off (and restore it after)."""
    codec = gpu_codec()
    seen = []
    hook = codec.model.encoder.register_forward_pre_hook(
        lambda *_: seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
    )
    before = torch.backends.cudnn.allow_tf32
    codec.compress(image_to_tensor(photo("coffee", 64, 128)), resolve_conditioning(RELEASED_QUALITY_TABLE, 1))
    hook.remove()
    assert seen and all(flags == (False, False) for flags in seen)
    assert torch.backends.cudnn.allow_tf32 == before


@pytest.mark.parametrize("fast", [False, True])
def test_a_file_made_on_the_gpu_decodes_on_the_cpu(fast: bool) -> None:
    encoder, cpu = gpu_codec(fast=fast), cpu_codec()
    assert encoder.fingerprint == cpu.fingerprint
    x = image_to_tensor(photo("coffee", 128, 192, top=100, left=150))
    conditioning = resolve_conditioning(RELEASED_QUALITY_TABLE, 2)
    container, code = encoder.compress(x, conditioning)
    data = container.to_bytes()
    gpu_x_hat, gpu_y_hat = encoder.decode_container(Container.from_bytes(data))
    cpu_x_hat, cpu_y_hat = cpu.decode_container(Container.from_bytes(data))
    assert torch.equal(gpu_y_hat, code.y_hat) and torch.equal(cpu_y_hat, code.y_hat)
    assert gpu_x_hat.device.type == "cpu" and gpu_x_hat.shape == x.shape and gpu_x_hat.dtype == torch.float32
    # the same ŷ through the same weights: float32 cuDNN vs oneDNN rounding, or the GPU's bf16/fp16 synthesis
    assert float((gpu_x_hat - cpu_x_hat).abs().mean()) <= (0.01 if fast else 1e-3)


def test_the_entropy_path_on_the_gpu_decodes_on_the_same_gpu() -> None:
    codec = gpu_codec(fast=True, entropy_device=CUDA)
    assert next(codec.model.latent_codec.context_model.parameters()).device.type == "cuda"
    x = image_to_tensor(photo("astronaut", 128, 128, top=60, left=180))
    container, code = codec.compress(x, resolve_conditioning(RELEASED_QUALITY_TABLE, 0))
    x_hat, y_hat = codec.decode_container(Container.from_bytes(container.to_bytes()))
    assert torch.equal(y_hat.cpu(), code.y_hat.cpu()) and bool(torch.isfinite(x_hat).all())


def test_a_training_step_runs_on_the_gpu(tmp_path) -> None:
    """Stage 1_3's system (generator and discriminator, manual optimisation) for two iterations, bf16 autocast."""
    from benchmarks.train_speed import QUICK, measure

    result = measure("1_3", bf16=True, iterations=1, warmup=1, work_dir=tmp_path, size=QUICK)
    assert result["iterations_timed"] == 1 and result["seconds_per_iteration"] > 0
