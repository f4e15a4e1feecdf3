"""Byte-exact parity with the authors' codec on the golden weights (``$DCVIC_GOLDEN_DIR/vectors``).

Each stage is teacher-forced with the stored input of that stage (README of the golden directory): the
stored ``y`` goes in, and our z/y rANS strings must equal the authors' byte for byte. Their container files
go through our legacy reader. The reference ran on one thread, so these tests do too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_modules.codec.container import read_legacy, write_legacy
from lightning_modules.codec.image_codec import DCVICCodec
from lightning_modules.images import tensor_to_image
from lightning_modules.networks.entropy_models import entropy_bottleneck_124
from tests.conftest import load_vector


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def golden_codec(golden_model, golden_model_file) -> DCVICCodec:
    return DCVICCodec(golden_model, golden_model_file.quality_table, golden_model_file.fingerprint())


def case_files(golden_index: dict, entry: dict) -> dict:
    for case in golden_index["cases"]:
        if case["input"] == entry["input"] and case["case"] == f"q{entry['quality_index']}":
            return case["files"]
    raise KeyError(f"no forward case for {entry['input']} q{entry['quality_index']}")


def array(golden: Path, files: dict, name: str) -> np.ndarray:
    return load_vector(golden, files[name])


def tensor(golden: Path, files: dict, name: str) -> torch.Tensor:
    return torch.from_numpy(array(golden, files, name))


def test_every_compress_entry_is_byte_exact(golden_codec: DCVICCodec, golden: Path, golden_index: dict) -> None:
    assert golden_index["compress"], "the golden index lists no compress entries"
    for entry in golden_index["compress"]:
        files, forward = entry["files"], case_files(golden_index, entry)
        code = golden_codec.model.latent_codec.compress(tensor(golden, forward, "y"))
        name = f"{entry['input']} q{entry['quality_index']}"
        assert code.z_string == array(golden, files, "z_bytes").tobytes(), name
        assert code.y_string == array(golden, files, "y_bytes").tobytes(), name
        assert torch.equal(code.z_hat, tensor(golden, files, "z_hat")), name
        # ŷ adds float LRP terms: the reference CPU (AVX-512) may differ from ours in the last ulp
        torch.testing.assert_close(code.y_hat, tensor(golden, forward, "y_hat"), rtol=0, atol=1e-6)
        assert code.estimated_y_bits == pytest.approx(entry["pred_y_bit"], rel=1e-5)
        assert code.estimated_z_bits == pytest.approx(entry["pred_z_bit"], rel=1e-5)


def test_authors_container_decodes_to_the_compress_side_latents(
    golden_codec: DCVICCodec, golden: Path, golden_index: dict
) -> None:
    for entry in golden_index["compress"]:
        files, forward = entry["files"], case_files(golden_index, entry)
        container = array(golden, files, "container_bytes").tobytes()
        legacy = read_legacy(container)
        height, width = array(golden, forward, "input_u8").shape[:2]
        assert (legacy.height, legacy.width, legacy.quality_index) == (height, width, entry["quality_index"])
        code = golden_codec.model.latent_codec.compress(tensor(golden, forward, "y"))
        y_size = tuple(code.y_hat.shape[-2:])
        z_hat, y_hat = golden_codec.model.latent_codec.decompress((legacy.z_string, legacy.y_string), y_size)
        assert torch.equal(z_hat, tensor(golden, files, "z_hat"))
        assert torch.equal(y_hat, code.y_hat)
        assert write_legacy(height, width, int(code.y_hat.abs().max()), entry["quality_index"],
                            code.z_string, code.y_string) == container  # fmt: skip


def test_compressai_124_tables_and_streams(golden_codec: DCVICCodec, golden: Path, golden_index: dict) -> None:
    variant = golden_index["compressai_124_eb_variant"]
    eb_124 = entropy_bottleneck_124(golden_codec.model.entropy_model_z)
    expected_cdf = load_vector(golden, variant["files"]["entropy_model_z._quantized_cdf"])
    assert np.array_equal(eb_124._quantized_cdf.numpy(), expected_cdf)
    assert not np.array_equal(golden_codec.model.entropy_model_z._quantized_cdf.numpy(), expected_cdf)
    for stream in variant["z_streams"]:
        entry = next(
            e
            for e in golden_index["compress"]
            if (e["input"], e["quality_index"]) == (stream["input"], stream["quality_index"])
        )
        z_hat = tensor(golden, entry["files"], "z_hat")
        z_124 = load_vector(golden, stream).tobytes()
        assert eb_124.compress(z_hat)[0] == z_124
        assert torch.equal(eb_124.decompress([z_124], tuple(z_hat.shape[-2:])), z_hat)


@pytest.mark.slow
def test_golden_files_decode_to_the_golden_reconstruction(
    golden_codec: DCVICCodec, golden: Path, golden_index: dict
) -> None:
    """Full decode of the authors' files, written the 1.2.8 way and the 1.2.4 way, to their reconstruction."""
    z_124 = {(s["input"], s["quality_index"]): s for s in golden_index["compressai_124_eb_variant"]["z_streams"]}
    for entry in golden_index["compress"]:
        files, forward = entry["files"], case_files(golden_index, entry)
        container = array(golden, files, "container_bytes").tobytes()
        expected_f32, expected_u8 = tensor(golden, forward, "fake_f32"), array(golden, forward, "fake_u8")
        x_hat, _ = golden_codec.decompress_legacy(container, legacy_eb_version="1.2.8")
        torch.testing.assert_close(x_hat, expected_f32, rtol=0, atol=1e-4)
        assert np.abs(tensor_to_image(x_hat).astype(int) - expected_u8).max() <= 1
        legacy = read_legacy(container)
        stream = load_vector(golden, z_124[(entry["input"], entry["quality_index"])]).tobytes()
        file_124 = write_legacy(legacy.height, legacy.width, legacy.max_abs_y_hat, legacy.quality_index,
                                stream, legacy.y_string)  # fmt: skip
        x_hat_124, _ = golden_codec.decompress_legacy(file_124)
        assert torch.equal(x_hat_124, x_hat)
