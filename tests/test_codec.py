"""Round trips through real rANS bitstreams on real photos with small random-weight networks."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_modules.codec.container import (
    EXPLICIT_BETAS,
    BitstreamError,
    Container,
    ModelMismatchError,
    write_legacy,
)
from lightning_modules.codec.image_codec import (
    DCVICCodec,
    resolve_conditioning,
)
from lightning_modules.images import image_to_tensor, tensor_to_image
from lightning_modules.model_file import RELEASED_QUALITY_TABLE, load_model_file
from lightning_modules.networks.conditioning import PAPER_BETA_RANGE
from lightning_modules.networks.dcvic import TINY_ARCHITECTURE
from lightning_modules.networks.entropy_models import entropy_bottleneck_124
from tests.support.codec_models import MICRO_ARCHITECTURE, photo, seeded_model, write_model_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def codec() -> DCVICCodec:
    return DCVICCodec(seeded_model(TINY_ARCHITECTURE), RELEASED_QUALITY_TABLE)


def forward_x_hat(codec: DCVICCodec, x: torch.Tensor, quality: int) -> torch.Tensor:
    beta_rate, beta_vq = resolve_conditioning(codec.quality_table, quality).betas()
    with torch.no_grad():
        return codec.model(x, beta_rate, beta_vq).x_hat


@pytest.mark.parametrize(
    ("name", "height", "width", "quality"),
    [("astronaut", 128, 192, 0), ("coffee", 136, 200, 4), ("chelsea", 40, 40, 2), ("rocket", 20, 30, 1)],
)
def test_round_trip_matches_eval_forward(
    codec: DCVICCodec, one_thread: None, name: str, height: int, width: int, quality: int
) -> None:
    x = image_to_tensor(photo(name, height, width, top=10, left=20))
    container, code = codec.compress(x, resolve_conditioning(codec.quality_table, quality))
    data = container.to_bytes()
    x_hat, y_hat = codec.decode_container(Container.from_bytes(data))
    assert torch.equal(y_hat, code.y_hat)
    assert torch.equal(x_hat, forward_x_hat(codec, x, quality))
    assert x_hat.shape == x.shape
    assert len(data) == container.header_bytes + len(code.z_string) + len(code.y_string)
    assert code.estimated_y_bits > 0 and code.estimated_z_bits > 0


def test_explicit_betas_travel_in_the_file(codec: DCVICCodec) -> None:
    conditioning = resolve_conditioning(codec.quality_table, beta_rate=0.7, beta_vq=2.6)
    x = image_to_tensor(photo("astronaut", 64, 64, top=200, left=200))
    container, code = codec.compress(x, conditioning)
    parsed = Container.from_bytes(container.to_bytes())
    assert parsed.quality_index == EXPLICIT_BETAS
    assert (parsed.beta_rate, parsed.beta_vq) == (np.float32(0.7), np.float32(2.6))
    _, y_hat = codec.decode_container(parsed)
    assert torch.equal(y_hat, code.y_hat)


def test_conditioning_is_validated() -> None:
    table = RELEASED_QUALITY_TABLE
    with pytest.raises(ValueError, match="out of range"):
        resolve_conditioning(table, 5)
    with pytest.raises(ValueError, match="not both"):
        resolve_conditioning(table, 1, beta_rate=1.0)
    with pytest.raises(ValueError, match="beta_vq must lie"):
        resolve_conditioning(table, beta_rate=1.0, beta_vq=4.0, beta_range=PAPER_BETA_RANGE)
    with pytest.raises(ValueError, match="give a quality index"):
        resolve_conditioning(table)
    with pytest.raises(ValueError, match="no quality table"):
        resolve_conditioning(None, 0)
    assert resolve_conditioning(None, beta_rate=1.0, beta_vq=2.0).quality_index is None


def test_the_codec_takes_the_beta_range_from_the_model(codec: DCVICCodec) -> None:
    """A model built for wider betas codes them; the paper-range model refuses them, before and after coding."""
    wide = DCVICCodec(seeded_model({**TINY_ARCHITECTURE, "beta_rate_max": 4.0, "beta_vq_max": 5.0}), None)
    assert (wide.beta_range.rate_max, wide.beta_range.vq_max) == (4.0, 5.0)
    x = image_to_tensor(photo("coffee", 32, 32))
    outside = resolve_conditioning(None, beta_rate=3.75, beta_vq=4.5, beta_range=wide.beta_range)
    container, code = wide.compress(x, outside)
    assert torch.equal(wide.decode_container(Container.from_bytes(container.to_bytes()))[1], code.y_hat)
    with pytest.raises(ValueError, match="beta_rate must lie in \\[0, 3.0\\]"):
        codec.compress(x, outside)
    forged = dataclasses.replace(container, fingerprint=codec.fingerprint)
    with pytest.raises(BitstreamError, match="outside this model's"):
        codec.decode_container(Container.from_bytes(forged.to_bytes()))


def test_foreign_model_is_refused(codec: DCVICCodec) -> None:
    x = image_to_tensor(photo("coffee", 64, 64))
    data = codec.compress(x, resolve_conditioning(codec.quality_table, 2))[0].to_bytes()
    other = DCVICCodec(seeded_model(TINY_ARCHITECTURE, seed=1), RELEASED_QUALITY_TABLE)
    with pytest.raises(ModelMismatchError, match="different|made with model"):
        other.decompress(data)


def test_legacy_files_decode_with_either_z_table(codec: DCVICCodec) -> None:
    """Authors' layout: z written with 1.2.4 tables needs the 1.2.4 decoder, 1.2.8 the 1.2.8 one."""
    x = image_to_tensor(photo("chelsea", 64, 128, top=50, left=100))
    _, code = codec.compress(x, resolve_conditioning(codec.quality_table, 3))
    z_124 = entropy_bottleneck_124(codec.model.entropy_model_z).compress(code.z_hat)[0]
    max_abs = int(code.y_hat.abs().max())
    for z_string, version in ((z_124, "1.2.4"), (code.z_string, "1.2.8")):
        data = write_legacy(64, 128, max_abs, 3, z_string, code.y_string)
        _, y_hat = codec.decompress_legacy(data, legacy_eb_version=version)
        assert torch.equal(y_hat, code.y_hat), version
    with pytest.raises(ValueError, match="legacy_eb_version"):
        codec.decompress_legacy(data, legacy_eb_version="1.3")


def test_uint8_conversion_truncates_like_the_reference() -> None:
    x_hat = torch.tensor([-1.0, 0.0, 0.999, 1.0]).reshape(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert tensor_to_image(x_hat)[0, :, 0].tolist() == [0, 127, 254, 255]


@pytest.mark.slow
def test_wide_short_image_round_trips_through_tiled_decoding() -> None:
    """1152×384 with the micro network: tiled VQGAN encoding and tiled decoding, no crash, same ŷ."""
    codec = DCVICCodec(seeded_model(MICRO_ARCHITECTURE), RELEASED_QUALITY_TABLE)
    x = image_to_tensor(np.concatenate([photo("rocket", 384, 640), photo("coffee", 384, 512)], axis=1))
    container, code = codec.compress(x, resolve_conditioning(codec.quality_table, 0))
    x_hat, y_hat = codec.decode_container(Container.from_bytes(container.to_bytes()))
    assert torch.equal(y_hat, code.y_hat)
    assert x_hat.shape == x.shape and bool(torch.isfinite(x_hat).all())


_COMPRESS_SCRIPT = """
import sys, torch
from lightning_modules.model_file import load_model_file
from lightning_modules.codec.image_codec import DCVICCodec, resolve_conditioning
from lightning_modules.images import image_to_tensor
from tests.support.codec_models import photo
torch.set_num_threads(int(sys.argv[3]))
codec = DCVICCodec.from_model_file(load_model_file(sys.argv[1]))
x = image_to_tensor(photo("astronaut", 96, 160, top=60, left=150))
container, code = codec.compress(x, resolve_conditioning(codec.quality_table, 1))
open(sys.argv[2] + ".dcvic", "wb").write(container.to_bytes())
torch.save(code.y_hat, sys.argv[2] + ".y_hat.pt")
"""

_DECOMPRESS_SCRIPT = """
import sys, torch
from lightning_modules.model_file import load_model_file
from lightning_modules.codec.image_codec import DCVICCodec
from lightning_modules.codec.container import Container
torch.set_num_threads(int(sys.argv[3]))
codec = DCVICCodec.from_model_file(load_model_file(sys.argv[1]))
_, y_hat = codec.decode_container(Container.from_bytes(open(sys.argv[2] + ".dcvic", "rb").read()))
torch.save(y_hat, sys.argv[2] + ".decoded_y_hat.pt")
"""


def test_y_hat_is_bit_identical_across_processes_and_thread_counts(tmp_path: Path) -> None:
    model_path = write_model_file(tmp_path / "tiny.pt")
    stem = str(tmp_path / "astronaut")
    for script, threads in ((_COMPRESS_SCRIPT, 2), (_DECOMPRESS_SCRIPT, 1)):
        subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script), str(model_path), stem, str(threads)],
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=300,
        )
    encoded = torch.load(stem + ".y_hat.pt")
    decoded = torch.load(stem + ".decoded_y_hat.pt")
    assert torch.equal(encoded, decoded)
    assert encoded.numpy().tobytes() == decoded.numpy().tobytes()


def test_latent_decoder_accepts_strings_that_are_too_short(codec: DCVICCodec) -> None:
    """An empty or truncated rANS string must not read outside its buffer; it decodes to something finite."""
    _, y_hat = codec.model.latent_codec.decompress((b"", b"\x01"), (4, 4))
    assert y_hat.shape == (1, 64, 4, 4)


def test_model_file_and_prepared_model_share_a_fingerprint(tmp_path: Path) -> None:
    """Files compressed through the Python API decode with the CLI's model file, and the other way round."""
    model_file = load_model_file(write_model_file(tmp_path / "tiny.pt"))
    assert DCVICCodec(model_file.build_model(), model_file.quality_table).fingerprint == model_file.fingerprint()
