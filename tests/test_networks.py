"""The DC-VIC networks: architecture facts from the authors' manifests, freezing, conditioning and layering."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lightning_modules.networks.conditioning import fourier_features
from lightning_modules.networks.dcvic import TINY_ARCHITECTURE, build_dcvic
from lightning_modules.networks.discriminator import BetaConditionedPatchGAN
from tests.support.weight_fill import comp_model_manifest, discriminator_manifest


@pytest.fixture(scope="module")
def full_model():
    return build_dcvic()


def count(params) -> int:
    return sum(p.numel() for p in params)


def test_parameter_counts_match_the_released_architecture(full_model):
    codec = [p for n, p in full_model.named_parameters() if not n.startswith("vq_model.")]
    assert count(codec) == 84_047_503
    assert count(full_model.vq_model.parameters()) == 67_652_783
    assert count(BetaConditionedPatchGAN().parameters()) == 2_773_345


def test_state_dict_matches_manifest_names_and_shapes(golden, full_model):
    ours = full_model.state_dict()
    manifest = {row.key: row for row in comp_model_manifest()}
    assert set(ours) <= set(manifest)
    recomputed = set(manifest) - set(ours)  # Swin index/mask buffers are rebuilt, not stored
    assert recomputed and all(k.endswith(("relative_position_index", "attn_mask")) for k in recomputed)
    for key, value in ours.items():
        if manifest[key].kind == "param":
            assert tuple(value.shape) == manifest[key].shape, key
    disc = BetaConditionedPatchGAN().state_dict()
    assert {k: tuple(v.shape) for k, v in disc.items()} == {r.key: r.shape for r in discriminator_manifest()}


def test_stage_1_1_model_is_a_subset_of_the_dual_model():
    single = build_dcvic(dual_conditioned=False, **TINY_ARCHITECTURE).state_dict()
    dual = build_dcvic(**TINY_ARCHITECTURE).state_dict()
    assert set(single) < set(dual)
    assert all(single[k].shape == dual[k].shape for k in single)
    assert all(".mlp." in k or "beta_ft_list" in k or "init_fuse" in k for k in set(dual) - set(single))


def test_vqgan_stays_frozen_through_train(tiny_model):
    tiny_model.train()
    assert not tiny_model.vq_model.training
    assert all(not m.training for m in tiny_model.vq_model.modules())
    assert not any(p.requires_grad for p in tiny_model.vq_model.parameters())
    assert tiny_model.encoder.training


def test_vqgan_passes_gradients_to_the_fusion_blocks(tiny_model):
    tiny_model.train()
    out = tiny_model(torch.rand(1, 3, 64, 64) * 2 - 1, 1.0, 1.0)
    out.x_hat.mean().backward()
    assert tiny_model.fusion_module.fusion_modules["block_1_8"].scale[0].weight.grad is not None
    assert all(p.grad is None for p in tiny_model.vq_model.parameters())


def test_fourier_features_layout():
    features = fourier_features(torch.tensor([0.0, 1.5, 3.0]), beta_max=3.0)
    assert features.shape == (3, 21)
    b = torch.tensor([-1.0, 0.0, 1.0])
    assert torch.equal(features[:, 0], b)
    assert torch.allclose(features[:, 1 + 9], torch.sin(b * 512))
    assert torch.allclose(features[:, 11], torch.cos(b))
    with pytest.raises(ValueError, match="beta must lie in"):
        fourier_features(3.01, beta_max=3.0)


def test_forward_per_sample_and_scalar_betas(tiny_model):
    tiny_model.train()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    out = tiny_model(x, torch.tensor([0.0, 3.0]), torch.tensor([3.5, 0.0]))
    assert out.x_hat.shape == x.shape
    assert out.bpp_per_sample().shape == (2,)
    assert torch.isclose(out.bpp_per_sample().mean(), out.bpp())
    assert tiny_model(x, 1.0, 2.0).x_hat.shape == x.shape


def test_training_forward_names_the_crop_rule(tiny_model):
    """A 96 px crop used to fail deep in the entropy model with a tensor-size mismatch."""
    tiny_model.train()
    with pytest.raises(ValueError, match=r"multiples of 64 px.*96x64.*data.crop_size"):
        tiny_model(torch.rand(1, 3, 96, 64) * 2 - 1, 1.0, 1.0)


@pytest.mark.parametrize("size", [(40, 70), (24, 24), (64, 128)])
def test_eval_pads_and_crops_any_size(tiny_model, size):
    tiny_model.eval()
    with torch.no_grad():
        out = tiny_model(torch.rand(1, 3, *size) * 2 - 1, 2.29, 3.0)
    assert out.x_hat.shape == (1, 3, *size)
    assert out.x_hat.abs().max() <= 1
    assert out.num_pixels == size[0] * size[1]


def test_eval_quantisation_is_deterministic_and_hard(tiny_model):
    tiny_model.eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        a, b = tiny_model(x, 1.0, 1.0), tiny_model(x, 1.0, 1.0)
    assert torch.equal(a.y_hat, b.y_hat)
    medians = tiny_model.entropy_model_z.medians()
    assert torch.equal(a.entropy.z_hat - medians, torch.round(a.entropy.z - medians))
    assert torch.equal(a.bpp(), a.qbpp())


def test_networks_import_neither_lightning_nor_hydra():
    code = (
        "import sys, importlib, pkgutil, lightning_modules.networks as n\n"
        "for m in pkgutil.iter_modules(n.__path__): importlib.import_module(f'{n.__name__}.{m.name}')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'hydra')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
