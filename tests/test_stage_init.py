"""Stage 1_2's identity start (``init.identity_conditioning``): the new beta modules change nothing at first;
with ``init.rate_gain_at_max`` only ``y`` is scaled by a gain that falls with beta_rate (design §4.5)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_modules.model_file import ModelFile, save_model_file
from lightning_modules.networks.dcvic import TINY_ARCHITECTURE, build_dcvic
from lightning_modules.training.stage_init import initialize_from_predecessor

NEW_MODULES = [
    "encoder.mlp.*",
    "encoder.beta_ft_list.*",
    "decoder.mlp.*",
    "decoder.beta_ft_list.*",
    "decoder.init_fuse.*",
]


def predecessor_file(tmp_path, dual: bool):
    torch.manual_seed(1)
    network = build_dcvic(**{**TINY_ARCHITECTURE, "dual_conditioned": dual}).eval()
    path = save_model_file(tmp_path / "model.pt", ModelFile(architecture={}, state_dict=network.state_dict()))
    return network, path


def features(network, x, *betas):
    with torch.no_grad():
        vq = network.vq_encode(x)
        y = network.analysis(x, vq, *betas)
        return y, network.decoder(torch.round(y), *betas).t


@pytest.mark.parametrize("identity", [True, False])
def test_identity_start_reproduces_the_unconditioned_predecessor(tmp_path, identity):
    single, path = predecessor_file(tmp_path, dual=False)
    torch.manual_seed(2)
    dual = build_dcvic(**TINY_ARCHITECTURE).eval()
    initialize_from_predecessor(SimpleNamespace(network=dual), path, NEW_MODULES, identity_conditioning=identity)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y_single, t_single = features(single, x, None, None)
    for betas in [(0.0, 0.0), (3.0, 1.7), (torch.tensor([0.3, 2.9]), torch.tensor([3.5, 0.0]))]:
        y_dual, t_dual = features(dual, x, *betas)
        same = torch.allclose(y_dual, y_single, atol=1e-5) and torch.allclose(t_dual, t_single, atol=1e-5)
        assert same == identity  # PyTorch's default init (the paper's) perturbs both


def test_identity_start_keeps_the_beta_modules_a_predecessor_already_has(tmp_path):
    trained, path = predecessor_file(tmp_path, dual=True)
    network = build_dcvic(**TINY_ARCHITECTURE)
    initialize_from_predecessor(SimpleNamespace(network=network), path, identity_conditioning=True)
    state = network.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.state_dict().items())


def test_rate_gain_start_scales_y_by_a_gain_falling_with_beta_rate(tmp_path):
    single, path = predecessor_file(tmp_path, dual=False)
    torch.manual_seed(2)
    dual = build_dcvic(**TINY_ARCHITECTURE).eval()
    initialize_from_predecessor(
        SimpleNamespace(network=dual), path, NEW_MODULES, identity_conditioning=True, rate_gain_at_max=0.25
    )
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        vq = single.vq_encode(x)
        y_single = single.analysis(x, vq, None, None)
        for beta_rate, gain in [(0.0, 1.0), (1.5, 0.625), (3.0, 0.25)]:
            for beta_vq in (0.0, 3.5):
                y = dual.analysis(x, vq, beta_rate, beta_vq)
                torch.testing.assert_close(y, gain * y_single, atol=1e-5, rtol=1e-5)
        y_hat = torch.round(0.25 * y_single)
        torch.testing.assert_close(
            dual.decoder(y_hat, 3.0, 1.0).t, single.decoder(y_hat / 0.25).t, atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(dual.decoder(y_hat, 0.0, 1.0).t, single.decoder(y_hat).t, atol=1e-5, rtol=1e-5)


def test_rate_gain_start_needs_the_identity_start(tmp_path):
    _, path = predecessor_file(tmp_path, dual=False)
    dual = build_dcvic(**TINY_ARCHITECTURE)
    with pytest.raises(ValueError, match="identity_conditioning"):
        initialize_from_predecessor(SimpleNamespace(network=dual), path, NEW_MODULES, rate_gain_at_max=0.5)
