"""Parity with the authors' code: golden vectors computed by the reference on deterministically filled weights.

The weights reach our model the way a user's would: written in the authors' checkpoint format, then converted.
Stages are compared with teacher forcing (each fed the stored inputs of that stage), then end to end.
The default run covers the first case of each input; ``-m slow`` covers every case in ``index.json``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_modules.networks.dcvic import pad_to_multiple
from lightning_modules.networks.vqgan import VQEncoding
from tests.conftest import load_vector

FLOAT_ATOL = 1e-4
# y_hat is round(y − μ) + μ + LRP: the integer symbols must match exactly; the float part depends on which
# oneDNN convolution kernel the CPU model selects (the goldens came from an Intel Xeon; a different CPU picks a
# different blocking and changes the last bit of some LRP outputs). Measured: ≤ 2.4e-7 on one AMD EPYC, 1.25e-6
# on another (astro_c256-q2, the same with the code before this session's changes): a few float32 ulps of |y_hat|
# ≈ 10, far below the 0.5 that would change a symbol, which the integer check above catches anyway.
Y_HAT_ATOL = 5e-6


def _cases(index: dict, fast: bool) -> list[tuple[str, str]]:
    """Every case, or (fast) the first case of each input."""
    seen, out = set(), []
    for case in index["cases"]:
        if fast and case["input"] in seen:
            continue
        seen.add(case["input"])
        out.append((case["input"], case["case"]))
    return out


def _case_params(fast: bool):
    import json

    from tests.support.weight_fill import golden_dir

    path = golden_dir() / "vectors" / "index.json"
    if not path.is_file():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"{path} not found"))]
    cases = _cases(json.loads(path.read_text()), fast)
    marks = [] if fast else [pytest.mark.slow]
    return [pytest.param(i, c, id=f"{i}-{c}", marks=marks) for i, c in cases]


ALL_CASES = _case_params(fast=False)
FAST_CASES = _case_params(fast=True)


pytestmark = pytest.mark.usefixtures("one_thread")


class Case:
    def __init__(self, golden, index: dict, input_name: str, case_name: str) -> None:
        (self.meta,) = [c for c in index["cases"] if c["input"] == input_name and c["case"] == case_name]
        self.golden = golden
        self.beta_rate = torch.tensor([self.meta["beta_rate"]])
        self.beta_vq = torch.tensor([self.meta["beta_vq"]])
        u8 = torch.from_numpy(load_vector(golden, index["inputs"][input_name]))
        self.x = ((u8.permute(2, 0, 1)[None].float() / 255) - 0.5) / 0.5  # ToTensor + Normalize(0.5, 0.5)

    def __getitem__(self, name: str) -> torch.Tensor:
        return torch.from_numpy(load_vector(self.golden, self.meta["files"][name]))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    diff = (actual.float() - expected.float()).abs().max().item()
    assert diff <= atol, f"{what}: max |diff| {diff:.3g} > {atol}"


def assert_equal(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    n = (
        (actual.long() != expected.long()).sum().item()
        if not actual.is_floating_point()
        else (actual != expected).sum().item()
    )
    assert n == 0, f"{what}: {n} of {actual.numel()} entries differ"


def cpu_model() -> str:
    with open("/proc/cpuinfo") as info:
        return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "unknown")


def on_golden_cpu(golden) -> bool:
    """The goldens' float32 results depend on the CPU's convolution kernels; they came from an Intel Xeon."""
    import json

    golden_cpu = json.loads((golden / "determinism.json").read_text()).get("cpu", "")
    return cpu_model().split("(")[0].strip() == golden_cpu.split("(")[0].strip()


def to_u8(x: torch.Tensor) -> np.ndarray:
    """The reference's truncating conversion: ``uint8((x + 1) / 2 · 255)`` in float32, HWC."""
    return ((x[0] + 1) / 2 * 255).permute(1, 2, 0).numpy().astype(np.uint8)


def check_stages(model, case: Case) -> None:
    x = pad_to_multiple(case.x, 64)
    h = model.vq_model.encode_pre_quant(x)
    assert_close(h, case["vq_h"], FLOAT_ATOL, "VQGAN pre-quant latent h")
    vq = model.vq_model.quantize_latent(case["vq_h"])
    assert_equal(vq.indices, case["gt_vq_indices"], "VQGAN indices")
    assert_close(vq.latent, case["gt_vq_latent"], FLOAT_ATOL, "VQGAN codebook latent")

    stored_vq = VQEncoding(None, case["gt_vq_indices"].long(), case["gt_vq_latent"])
    y = model.analysis(x, stored_vq, case.beta_rate, case.beta_vq)
    assert_close(y, case["y"], FLOAT_ATOL, "y")

    z = model.hyperencoder(case["y"])
    assert_close(z, case["z"], FLOAT_ATOL, "z")
    z_hat, _ = model.entropy_model_z(case["z"], training=False)
    assert_equal(z_hat, case["z_hat"], "z_hat")

    ctx, _, _ = model.latent_codec.context(case["y"], model.hyperdecoder(case["z_hat"]), training=False)
    assert_close(ctx.y_hat, case["y_hat"], Y_HAT_ATOL, "y_hat")  # one flipped symbol would move it by ~1

    features = model.decoder(case["y_hat"], case.beta_rate, case.beta_vq)
    out_vq_latent, logits = model.vq_estimator(features.t)
    assert_close(out_vq_latent, case["out_vq_latent"], FLOAT_ATOL, "VQ estimator latent")
    assert_equal(logits.argmax(1), case["pred_vq_indices"], "predicted VQ indices")

    q = model.vq_model.post_quant_conv(model.vq_model.indices_to_latent(case["pred_vq_indices"]))
    fake = model.fusion_module(q, features.fusion, model.vq_model.decoder)
    height, width = case.x.shape[2:]
    assert_close(fake[:, :, :height, :width].clamp(-1, 1), case["fake_f32"], FLOAT_ATOL, "reconstruction")


def check_end_to_end(model, case: Case) -> None:
    out = model(case.x, case.beta_rate, case.beta_vq)
    assert_equal(out.vq.indices, case["gt_vq_indices"], "VQGAN indices")
    assert_equal(out.entropy.z_hat, case["z_hat"], "z_hat")
    assert_close(out.y_hat, case["y_hat"], Y_HAT_ATOL, "y_hat")
    assert_equal(out.synthesis.pred_vq_indices, case["pred_vq_indices"], "predicted VQ indices")
    expected_bpp = case.meta["scalars"]["bpp"]["value"]
    assert abs(out.bpp().item() - expected_bpp) <= 1e-5 * expected_bpp, f"bpp {out.bpp().item()} vs {expected_bpp}"
    assert_close(out.x_hat, case["fake_f32"], FLOAT_ATOL, "reconstruction")
    ours, theirs = to_u8(out.x_hat).astype(int), case["fake_u8"].numpy().astype(int)
    assert np.abs(ours - theirs).max() <= 1
    equal = (ours == theirs).mean()
    if equal < 0.9999 and not on_golden_cpu(case.golden):
        pytest.xfail(
            f"uint8 equal in {equal:.6%} of pixels (< 99.99%; all others off by 1): truncation to 8 bits amplifies "
            f"float differences ≤ {FLOAT_ATOL} that come from this CPU's oneDNN kernels ({cpu_model()}), not the "
            "goldens' Intel Xeon; on that CPU model the 99.99% requirement is enforced"
        )
    assert equal >= 0.9999


@torch.no_grad()
@pytest.mark.parametrize(("input_name", "case_name"), FAST_CASES[-1:])
def test_stages_teacher_forced(golden_model, golden, golden_index, input_name, case_name):
    check_stages(golden_model, Case(golden, golden_index, input_name, case_name))


@torch.no_grad()
@pytest.mark.parametrize(("input_name", "case_name"), ALL_CASES)
def test_stages_teacher_forced_all_cases(golden_model, golden, golden_index, input_name, case_name):
    check_stages(golden_model, Case(golden, golden_index, input_name, case_name))


@torch.no_grad()
@pytest.mark.parametrize(("input_name", "case_name"), FAST_CASES[:1])
def test_end_to_end(golden_model, golden, golden_index, input_name, case_name):
    check_end_to_end(golden_model, Case(golden, golden_index, input_name, case_name))


@torch.no_grad()
@pytest.mark.parametrize(("input_name", "case_name"), ALL_CASES)
def test_end_to_end_all_cases(golden_model, golden, golden_index, input_name, case_name):
    check_end_to_end(golden_model, Case(golden, golden_index, input_name, case_name))


@torch.no_grad()
def test_discriminator_outputs(golden_model_file, golden, golden_index):
    disc = golden_model_file.build_discriminator().eval()
    files = golden_index["discriminator"]["files"]
    case = Case(golden, golden_index, "astro_c256", "q0")
    d_real = disc(case.x, case.beta_rate, case.beta_vq)
    d_fake = disc(case["fake_f32"], case.beta_rate, case.beta_vq)
    assert_close(d_real, torch.from_numpy(load_vector(golden, files["d_real"])), 1e-5, "D(real)")
    assert_close(d_fake, torch.from_numpy(load_vector(golden, files["d_fake"])), 1e-5, "D(fake)")


def test_debug_entropy_parameters(golden_model, golden, golden_index):
    """μ, σ (before the 0.11 floor) and likelihoods of the debug case, from the stored ``z_hat``."""
    files = golden_index["debug_case"]["files"]
    case = Case(golden, golden_index, "astro_c256", "q0")
    with torch.no_grad():
        hyper_out = golden_model.hyperdecoder(case["z_hat"])
        ctx, y_likelihood, _ = golden_model.latent_codec.context(case["y"], hyper_out, training=False)
    debug = {k: torch.from_numpy(load_vector(golden, v)) for k, v in files.items()}
    assert_close(hyper_out, debug["hyper_out"], FLOAT_ATOL, "hyper_out")
    assert_close(ctx.means, debug["y_mu"], FLOAT_ATOL, "μ")
    assert_close(ctx.scales, debug["y_sigma_raw"], FLOAT_ATOL, "σ")
    assert_close(y_likelihood, debug["y_likelihood"], FLOAT_ATOL, "L_y")
