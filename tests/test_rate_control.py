"""Per-image rate control: real file sizes within tolerance, nearest files for unreachable targets, one-line
errors, bit-exact decoding against a fixed-beta file, and the ``dcvic compress --target-*`` command."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from entrypoints.cli import main
from lightning_modules.codec.container import EXPLICIT_BETAS, Container
from lightning_modules.codec.image_codec import DCVICCodec, resolve_conditioning
from lightning_modules.codec.rate_control import REALISM_BETA_VQ, RateTarget, compress_to_target, realism_beta_vq
from lightning_modules.images import image_to_tensor
from lightning_modules.networks.dcvic import TINY_ARCHITECTURE
from lightning_modules.stage2.search import illinois_search
from tests.support.codec_models import photo, seeded_model, write_model_file

SIZE = 128
PIXELS = SIZE * SIZE


@pytest.fixture(scope="module")
def codec() -> DCVICCodec:
    return DCVICCodec(seeded_model(TINY_ARCHITECTURE), {"beta_rate": [1.0], "beta_vq": [2.0]})


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return photo("astronaut", SIZE, SIZE)


@pytest.fixture(scope="module")
def bound_bpps(codec: DCVICCodec, image: np.ndarray) -> tuple[float, float]:
    """Real bpp at beta_rate 0 and 3: the reachable range of this image (the random tiny net's rate varies)."""
    x = image_to_tensor(image)
    sizes = [len(codec.compress(x, resolve_conditioning({}, beta_rate=b, beta_vq=2.0))[0].to_bytes()) for b in (0, 3)]
    low, high = sorted(8 * s / PIXELS for s in sizes)
    assert high > 1.04 * low, "the fixture model's rate must vary with beta_rate for these tests to mean anything"
    return low, high


@pytest.mark.parametrize("rule", ["below", "closest"])
def test_a_target_inside_the_range_is_met_by_the_real_file(codec, image, bound_bpps, rule) -> None:
    low, high = bound_bpps
    target = RateTarget(math.sqrt(low * high), rule=rule)
    result = compress_to_target(codec, image_to_tensor(image), target, beta_vq=2.0)
    assert result.status == "hit" and result.message == ""
    assert result.achieved_bpp == 8 * len(result.container.to_bytes()) / PIXELS == 8 * len(result.data) / PIXELS
    if rule == "below":
        assert target.value * 0.99 <= result.achieved_bpp <= target.value
    else:
        assert abs(result.achieved_bpp - target.value) <= 0.01 * target.value
    assert result.probes == result.search.evaluations >= 2 and result.search_seconds > 0
    assert result.container.quality_index == EXPLICIT_BETAS and result.container.beta_vq == 2.0


def test_target_in_bytes(codec, image, bound_bpps) -> None:
    budget = round(math.sqrt(bound_bpps[0] * bound_bpps[1]) * PIXELS / 8)
    result = compress_to_target(codec, image_to_tensor(image), RateTarget(budget, "bytes"), beta_vq=2.0)
    assert result.status == "hit" and 0.99 * budget <= len(result.data) <= budget


@pytest.mark.parametrize(("target", "status", "pick"), [(1e-4, "below_range", min), (50.0, "above_range", max)])
def test_unreachable_targets_give_the_nearest_file_and_one_line(codec, image, bound_bpps, target, status, pick) -> None:
    result = compress_to_target(codec, image_to_tensor(image), RateTarget(target), beta_vq=2.0)
    assert result.status == status and result.probes == 2  # the two bounds prove it
    assert result.achieved_bpp == pytest.approx(pick(bound_bpps))
    assert len(result.message.splitlines()) == 1 and "nearest" in result.message and f"{target:g} bpp" in result.message


@pytest.mark.parametrize("value", [0.0, -0.05, math.nan, math.inf])
def test_a_target_that_is_not_positive_is_refused(value) -> None:
    with pytest.raises(ValueError, match="positive"):
        RateTarget(value)


def test_bad_tolerance_rule_and_realism_are_refused() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        RateTarget(0.1, tolerance=0.0)
    with pytest.raises(ValueError, match="rule"):
        RateTarget(0.1, rule="above")
    with pytest.raises(ValueError, match="realism"):
        realism_beta_vq("photorealistic")
    assert [realism_beta_vq(name) for name in ("fidelity", "balanced", "realism")] == [1.0, 2.0, 3.0]
    assert sorted(REALISM_BETA_VQ.values()) == [1.0, 2.0, 3.0]


def test_probes_reuse_the_vqgan_encoding_and_never_synthesize(codec, image, bound_bpps, monkeypatch) -> None:
    calls = {"vq_encode": 0}
    vq_encode = codec.model.vq_encode

    def counting_vq_encode(*args, **kwargs):
        calls["vq_encode"] += 1
        return vq_encode(*args, **kwargs)

    def no_synthesis(*args, **kwargs):
        raise AssertionError("rate control must not run the synthesis path")

    monkeypatch.setattr(codec.model, "vq_encode", counting_vq_encode)
    monkeypatch.setattr(codec.model, "synthesis", no_synthesis)
    monkeypatch.setattr(codec.model, "tiled_synthesis", no_synthesis)
    result = compress_to_target(
        codec, image_to_tensor(image), RateTarget(math.sqrt(bound_bpps[0] * bound_bpps[1])), 2.0
    )
    assert result.probes > 2 and calls["vq_encode"] == 1


def test_rate_controlled_file_decodes_like_the_fixed_beta_file(codec, image, bound_bpps) -> None:
    x = image_to_tensor(image)
    result = compress_to_target(codec, x, RateTarget(math.sqrt(bound_bpps[0] * bound_bpps[1])), beta_vq=1.5)
    stored = Container.from_bytes(result.data)
    fixed, _ = codec.compress(x, resolve_conditioning({}, beta_rate=stored.beta_rate, beta_vq=stored.beta_vq))
    assert fixed.to_bytes() == result.data
    x_target, y_target = codec.decode_container(stored)
    x_fixed, y_fixed = codec.decode_container(Container.from_bytes(fixed.to_bytes()))
    assert torch_equal(y_target, y_fixed) and torch_equal(x_target, x_fixed)


def torch_equal(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())


# --- the shared search: the rule of rate control, on step curves like real file sizes -------------------------


def file_bpp(beta_rate: float) -> float:
    """A paper-like rate on a 256² image, rounded to whole 4-byte words like the rANS strings."""
    size = 50 + 4 * math.floor(0.163 * math.exp(-0.515 * beta_rate) * 65536 / 32)
    return 8 * size / 65536


@pytest.mark.parametrize("target", [0.05, 0.08, 0.12])
def test_below_rule_finds_the_largest_file_not_above_the_target(target) -> None:
    result = illinois_search(file_bpp, target, 0.01 * target, max_evals=12, decimals=4, rule="below", start="bounds")
    assert result.converged, result.reason
    assert 0.99 * target <= result.best.avg_bpp <= target
    assert all(s.avg_bpp > target or s.avg_bpp <= result.best.avg_bpp for s in result.steps)


def test_bounds_start_brackets_a_rising_curve() -> None:
    result = illinois_search(lambda b: 0.05 + 0.03 * b, 0.1, 0.001, decimals=4, start="bounds")
    assert result.converged and [s.beta_rate for s in result.steps][:2] == [3.0, 0.0]


def test_bounds_start_proves_an_unreachable_target_in_two_evaluations() -> None:
    result = illinois_search(file_bpp, 0.5, 0.005, rule="below", start="bounds")
    assert result.evaluations == 2 and "outside the reachable" in result.reason
    assert result.best.beta_rate == 0.0  # below the target and the largest: the nearest file


# --- the command ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory):
    return write_model_file(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture
def photo_file(tmp_path, image):
    path = tmp_path / "astronaut.png"
    Image.fromarray(image).save(path)
    return path


def compress(argv: list[str], photo_file, model_path, out, capsys) -> tuple[int, str, str]:
    code = main(["compress", str(photo_file), "-o", str(out), "--checkpoint", str(model_path), *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_target_bpp_writes_the_file_and_the_rate_columns(photo_file, model_path, bound_bpps, tmp_path, capsys):
    target = math.sqrt(bound_bpps[0] * bound_bpps[1])
    code, out, err = compress(
        ["--target-bpp", f"{target:.5f}", "--realism", "fidelity"], photo_file, model_path, tmp_path, capsys
    )
    assert code == 0 and err == "", err
    row = pd.read_csv(tmp_path / "_bitrates.csv").iloc[0]
    size = (tmp_path / "astronaut.dcvic").stat().st_size
    assert row["real_bpp"] == 8 * size / PIXELS and 0.99 * row["target_bpp"] <= row["real_bpp"] <= row["target_bpp"]
    assert row["target_bytes"] == pytest.approx(row["target_bpp"] * PIXELS / 8)
    assert row["probes"] >= 2 and row["search_seconds"] > 0 and row["rate_status"] == "hit"
    assert row["beta_vq"] == REALISM_BETA_VQ["fidelity"] and "mean real bpp" in out


@pytest.mark.parametrize("target", ["0.00001", "40"])
def test_cli_unreachable_target_writes_the_nearest_file_and_one_line(photo_file, model_path, tmp_path, capsys, target):
    code, _, err = compress(["--target-bpp", target, "--beta-vq", "2.0"], photo_file, model_path, tmp_path, capsys)
    assert code == 0
    assert len(err.strip().splitlines()) == 1 and err.startswith("dcvic: ") and "nearest" in err
    assert (tmp_path / "astronaut.dcvic").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target-bpp", "0"], "positive"),
        (["--target-bytes", "-100"], "positive"),
        (["--target-bpp", "0.1", "--quality", "1"], "leave out --quality"),
        (["--target-bpp", "0.1", "--realism", "realism", "--beta-vq", "1"], "not both"),
        (["--realism", "realism", "--quality", "1"], "--target-bpp"),
        (["--target-bpp", "0.1", "--beta-vq", "5"], "beta_vq must lie in"),
    ],
)
def test_cli_bad_targets_are_one_line_errors(photo_file, model_path, tmp_path, capsys, argv, message):
    code, _, err = compress(argv, photo_file, model_path, tmp_path / "out", capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()
