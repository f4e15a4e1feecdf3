"""The entropy path as one object (``DCVIC.latent_codec``): same weights and keys as the model, one shared path."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_modules.networks.dcvic import DCVIC, TINY_ARCHITECTURE
from lightning_modules.networks.latent_codec import HyperpriorCharmLatentCodec
from tests.support.codec_models import seeded_model

ENTROPY_PARTS = ("hyperencoder", "hyperdecoder", "entropy_model_z", "entropy_model_y", "context_model")


@pytest.fixture(scope="module")
def model() -> DCVIC:
    model = seeded_model(TINY_ARCHITECTURE)
    model.latent_codec.prepare_for_coding()
    return model


def test_state_dict_keys_are_the_models_own(model: DCVIC) -> None:
    """Checkpoints, conversion and golden loading address ``entropy_model_z.*`` etc.: no ``latent_codec.`` prefix."""
    keys = set(model.state_dict())
    assert not any(k.startswith("latent_codec.") for k in keys)
    codec_state = model.latent_codec.state_dict()
    assert {k.split(".")[0] for k in codec_state} == set(ENTROPY_PARTS)
    assert set(codec_state) <= keys
    for name in ENTROPY_PARTS:
        assert getattr(model.latent_codec, name) is getattr(model, name)


def test_mode_and_copies_follow_the_model(model: DCVIC) -> None:
    twin = copy.deepcopy(model)
    assert twin.latent_codec.hyperdecoder is twin.hyperdecoder and twin.hyperdecoder is not model.hyperdecoder
    twin.train()
    assert twin.latent_codec.training and twin.hyperdecoder.training
    twin.eval()
    assert not twin.latent_codec.training and not twin.context_model.training


def test_compress_decompress_and_forward_agree(model: DCVIC) -> None:
    torch.manual_seed(3)
    y = torch.randn(1, TINY_ARCHITECTURE["main_ch"], 8, 12) * 4
    code = model.latent_codec.compress(y)
    decoded = model.latent_codec.decompress(code.strings, (8, 12))
    assert torch.equal(decoded.z_hat, code.z_hat) and torch.equal(decoded.y_hat, code.y_hat)
    with torch.no_grad():
        out = model.latent_codec(y, training=False)
    torch.testing.assert_close(out.y_hat, code.y_hat, rtol=0, atol=1e-5)
    bits = -torch.log2(out.likelihoods["y"]).sum() - torch.log2(out.likelihoods["z"]).sum()
    assert code.estimated_y_bits + code.estimated_z_bits == pytest.approx(float(bits), rel=1e-4)


def test_a_standalone_codec_works_without_the_model(model: DCVIC) -> None:
    """Another model can reuse the entropy path: build it from parts and code with it."""
    parts = {name: copy.deepcopy(getattr(model, name)) for name in ENTROPY_PARTS}
    codec = HyperpriorCharmLatentCodec(**parts).eval()
    codec.prepare_for_coding()
    y = torch.randn(1, TINY_ARCHITECTURE["main_ch"], 4, 4)
    assert codec.compress(y).strings == model.latent_codec.compress(y).strings
    with pytest.raises(ValueError, match="multiple of 4"):
        codec.decompress((b"", b""), (6, 4))
