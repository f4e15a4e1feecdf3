"""Hostile files: decompression bombs, forged string lengths, memory exhaustion, structure-aware fuzzing.

The slow campaign (``-m slow``) decodes 10,000 CRC-valid mutated ``.dcvic`` files and 2,000 legacy files; with
``DCVIC_FUZZ_REPORT=path.json`` it also writes its outcome counts, slowest file and largest peak RSS there
(``benchmarks/results/fuzz_hostile_files.json`` was written that way).
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest
import torch
from compressai.ans import RansEncoder
from PIL import Image

from lightning_modules.codec.container import BitstreamError, Container, read_image_size, write_legacy
from lightning_modules.codec.image_codec import DCVICCodec, resolve_conditioning
from lightning_modules.codec.limits import DEFAULT_MAX_PIXELS, AvailableMemory, DecodeLimitError, check_memory
from lightning_modules.images import image_to_tensor
from lightning_modules.model_file import load_model_file
from lightning_modules.networks.dcvic import TINY_ARCHITECTURE
from lightning_modules.networks.entropy_models import entropy_bottleneck_124, min_symbol_bits
from tests.support.codec_models import MICRO_ARCHITECTURE, photo, write_model_file
from tests.support.fuzz import make_samples, make_sources, run_campaign

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DCVICCodec]:
    """A tiny random-weight model file and its codec."""
    path = write_model_file(tmp_path_factory.mktemp("hostile") / "tiny.pt")
    return path, DCVICCodec.from_model_file(load_model_file(path))


@pytest.fixture(scope="module")
def model_path(tiny: tuple[Path, DCVICCodec]) -> Path:
    return tiny[0]


@pytest.fixture(scope="module")
def codec(tiny: tuple[Path, DCVICCodec]) -> DCVICCodec:
    return tiny[1]


@pytest.fixture(scope="module")
def valid_100(codec: DCVICCodec) -> bytes:
    x = image_to_tensor(photo("astronaut", 100, 100, top=100, left=150))
    return codec.compress(x, resolve_conditioning(codec.quality_table, 2))[0].to_bytes()


def with_size(data: bytes, height: int, width: int) -> bytes:
    """The same file with another size in its header and the CRC recomputed."""
    body = bytearray(data[:-4])
    struct.pack_into(">II", body, 21, height, width)
    return bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))


_MEASURED_CLI = """
import resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - start
print(done.returncode, seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
sys.stderr.write(done.stderr)
"""


def run_cli_measured(args: list[str]) -> tuple[int, float, int, list[str]]:
    """``dcvic`` in a child of a fresh process, so its peak RSS is the child's own: (status, s, bytes, stderr)."""
    command = [sys.executable, "-c", _MEASURED_CLI, sys.executable, "-m", "entrypoints.cli", *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    status, seconds, rss = done.stdout.split()
    return int(status), float(seconds), int(rss), done.stderr.strip().splitlines()


@pytest.mark.parametrize(("height", "width"), [(30000, 30000), (32768, 32768)])
def test_decompression_bomb_is_refused_at_once(
    valid_100: bytes, model_path: Path, tmp_path: Path, height: int, width: int
) -> None:
    """150 bytes claiming 900 MP (or the format's 2^30 limit): one line naming the size and the option."""
    bomb = tmp_path / "bomb.dcvic"
    bomb.write_bytes(with_size(valid_100, height, width))
    status, seconds, rss, lines = run_cli_measured(
        ["decompress", str(bomb), "-o", str(tmp_path / "out"), "--checkpoint", str(model_path)]
    )
    assert status == 1 and len(lines) == 1, lines
    assert f"{height}x{width}" in lines[0] and "--max-pixels" in lines[0] and "Traceback" not in lines[0]
    assert seconds < 5, seconds
    assert rss < 3 * 2**30, rss
    assert not (tmp_path / "out" / "bomb.png").exists()


def test_raising_the_limit_still_refuses_a_forged_file_before_decoding(codec: DCVICCodec, valid_100: bytes) -> None:
    """Past the pixel limit, the z string of a 100×100 image is far too short for 30000×30000."""
    with pytest.raises(BitstreamError, match=r"the z string has \d+ bytes, but a 30000x30000 image's has between"):
        codec.decompress(with_size(valid_100, 30000, 30000), max_pixels=2**30)


def test_default_limit_is_what_pillow_lets_compress_read() -> None:
    assert DEFAULT_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS
    assert 4000 * 3000 < DEFAULT_MAX_PIXELS


def test_pixel_limit_api(codec: DCVICCodec, valid_100: bytes) -> None:
    with pytest.raises(DecodeLimitError, match=r"100x100 \(10,000 pixels\).*max_pixels"):
        codec.decompress(valid_100, max_pixels=9999)
    assert codec.decompress(valid_100, max_pixels=10000).shape == (1, 3, 100, 100)
    legacy = write_legacy(300, 400, 0, 1, b"\0" * 8, b"\0" * 8)
    with pytest.raises(DecodeLimitError, match="300x400"):
        codec.decompress_legacy(legacy, max_pixels=100_000)
    assert read_image_size(with_size(valid_100, 7, 9)) == (7, 9) and read_image_size(legacy, legacy=True) == (300, 400)
    assert read_image_size(b"DCVC\x01") is None and read_image_size(b"garbage", legacy=True) is None


def crafted_strings(codec: DCVICCodec, height: int, width: int) -> tuple[bytes, bytes]:
    """Real strings for a ``height × width`` file, coded from a random ``y`` (no image encoder needed)."""
    y = 3 * torch.randn(1, codec.model.latent_codec.y_channels, *codec._y_size(height, width))
    return codec.model.latent_codec.compress(y).strings


def test_a_4000x3000_file_passes_every_check(codec: DCVICCodec) -> None:
    """Default limits allow a 12 MP photo, and its decode (tiled) is estimated well below this machine's memory."""
    strings = crafted_strings(codec, 3000, 4000)
    codec.check_decodable(strings, 3000, 4000)
    estimate = codec.decode_bytes(3000, 4000, tuple(map(len, strings)))
    assert 100 * 2**20 < estimate < 4 * 2**30


def test_string_bounds_never_refuse_real_files() -> None:
    """Real files of two widths, several sizes and the extreme betas all lie within the bounds."""
    for architecture in (TINY_ARCHITECTURE, MICRO_ARCHITECTURE):
        torch.manual_seed(1)
        from lightning_modules.networks.dcvic import build_dcvic

        codec = DCVICCodec(build_dcvic(**architecture).eval(), {"beta_rate": [1.0], "beta_vq": [1.0]})
        for (height, width), (beta_rate, beta_vq) in zip(
            [(16, 16), (64, 64), (100, 150), (200, 64), (65, 129)],
            [(0.0, 0.0), (3.0, 3.5), (1.1, 2.0), (3.0, 0.0), (0.0, 3.5)],
            strict=True,
        ):
            x = image_to_tensor(photo("coffee", height, width, top=10, left=10))
            container, _ = codec.compress(x, resolve_conditioning(codec.quality_table, None, beta_rate, beta_vq))
            codec.check_decodable((container.z_string, container.y_string), height, width)


def test_the_fewest_bytes_are_a_real_lower_bound(codec: DCVICCodec) -> None:
    """The cheapest possible strings (every symbol the most probable entry of its table) still pass, and the
    z bound is tight: the real minimum is within 8 bytes + 1 % of it."""
    latent = codec.model.latent_codec
    y_size = (48, 64)
    (z_fewest, _), (y_fewest, _) = latent.string_bounds(y_size)
    for eb in (latent.entropy_model_z, entropy_bottleneck_124(latent.entropy_model_z)):
        z_fewest_eb = latent.string_bounds(y_size, eb)[0][0]
        positions = (y_size[0] // 4) * (y_size[1] // 4)
        string = cheapest_string(eb._quantized_cdf, eb._cdf_length, eb._offset, list(range(eb.channels)) * positions)
        assert z_fewest_eb <= len(string) <= 1.01 * z_fewest_eb + 8
    gaussian = latent.entropy_model_y
    best = int(min_symbol_bits(gaussian._quantized_cdf, gaussian._cdf_length).argmin())
    y_symbols = latent.symbol_counts(y_size)[1]
    y_string = cheapest_string(gaussian._quantized_cdf, gaussian._cdf_length, gaussian._offset, [best] * y_symbols)
    assert y_fewest <= len(y_string)
    assert z_fewest > 8  # the z bound is not vacuous for this size


def cheapest_string(cdf: torch.Tensor, lengths: torch.Tensor, offsets: torch.Tensor, indexes: list[int]) -> bytes:
    """Each table's cheapest value over and over: its most frequent regular entry, or a value just past its
    range (escape entry + one bypass nibble) where that costs less."""
    cdf, lengths, offsets = cdf.to(torch.int64), lengths.reshape(-1).tolist(), offsets.reshape(-1).tolist()
    cheapest = []
    for table, length in enumerate(lengths):
        freqs = (cdf[table, 1:length] - cdf[table, : length - 1]).tolist()  # the last one is the escape entry
        regular = max(range(length - 2), key=freqs.__getitem__, default=None)
        escape_cost = 16 - math.log2(freqs[-1]) + 4
        use_regular = regular is not None and 16 - math.log2(freqs[regular]) <= escape_cost
        cheapest.append((regular if use_regular else length - 2) + offsets[table])
    symbols = [cheapest[i] for i in indexes]
    return RansEncoder().encode_with_indexes(symbols, indexes, cdf.tolist(), lengths, offsets)


def test_strings_of_impossible_lengths_are_refused(codec: DCVICCodec, valid_100: bytes) -> None:
    container = Container.from_bytes(valid_100)
    for z, y, reason in (
        (container.z_string[:-1], container.y_string, "z string has"),
        (container.z_string, container.y_string + b"\0\0", "y string has"),
        (container.z_string, b"\0" * 4, "y string has 4 bytes"),
        (container.z_string, bytes(10**6), "y string has 1000000 bytes"),
    ):
        with pytest.raises(Exception, match=reason) as caught:
            codec.check_decodable((z, y), 100, 100)
        assert "corrupt file" in str(caught.value)


def test_too_little_memory_is_a_clear_error(codec: DCVICCodec, valid_100: bytes, monkeypatch) -> None:
    with pytest.raises(DecodeLimitError, match=r"needs about .* but only 1 MiB is available \(test\)"):
        check_memory(2**30, "this test", AvailableMemory(2**20, "test"))
    monkeypatch.setattr("lightning_modules.codec.limits.available_memory", lambda: AvailableMemory(2**20, "test"))
    with pytest.raises(DecodeLimitError, match="100x100 image needs about"):
        codec.decompress(valid_100)


_ADDRESS_LIMITED = """
import resource, sys, warnings
warnings.filterwarnings("ignore")
from lightning_modules.codec.image_codec import DCVICCodec
from lightning_modules.codec.limits import available_memory
from lightning_modules.model_file import load_model_file
codec = DCVICCodec.from_model_file(load_model_file(sys.argv[1]))
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 300 * 2**20, used + 300 * 2**20))
print(available_memory().source)
try:
    codec.decompress(open(sys.argv[2], "rb").read(), max_pixels=10**9)
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_an_address_space_limit_is_respected(codec: DCVICCodec, model_path: Path, tmp_path: Path) -> None:
    """Under RLIMIT_AS a 1024×1024 decode (about 2.3 GB: the VQGAN's attention) is refused, not a MemoryError."""
    z, y = crafted_strings(codec, 1024, 1024)
    path = tmp_path / "big.dcvic"
    path.write_bytes(Container(codec.fingerprint, 1024, 1024, 1, 1.0, 1.0, z, y).to_bytes())
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_ADDRESS_LIMITED), str(model_path), str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stderr[-2000:]
    assert lines[0].startswith("RLIMIT_AS")
    assert lines[1].startswith("DecodeLimitError decoding this 1024x1024 image needs about"), lines


def test_decode_memory_estimate_covers_a_measured_decode() -> None:
    """The estimate is at least the measured peak (else a decode could be OOM-killed) and not wildly above."""
    done = subprocess.run(
        [sys.executable, "benchmarks/decode_memory.py", "--architecture", "tiny", "--child", "256x256"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert 1.0 <= result["estimate_over_measured"] <= 3.0, result


def campaign(model_path: Path, tmp_path: Path, seed: int, dcvic: int, legacy: int) -> dict:
    foreign = write_model_file(tmp_path / "micro.pt", MICRO_ARCHITECTURE, seed=5)
    sources = make_sources(model_path, foreign, [(16, 16), (48, 64), (64, 64), (64, 100), (32, 128)])
    samples = make_samples(seed, dcvic, legacy, sources)
    start = time.perf_counter()
    report = run_campaign(model_path, samples, per_file_seconds=20, address_headroom_bytes=2 * 2**30)
    summary = {"seed": seed, "dcvic_files": dcvic, "legacy_files": legacy, **report.summary()}
    summary["wall_seconds"] = round(time.perf_counter() - start, 1)
    return summary


def assert_survived(summary: dict, files: int) -> None:
    outcomes = summary["outcomes"]
    assert summary["files"] == files, summary
    bad = {k: v for k, v in outcomes.items() if k in ("crash", "hang", "unexpected error", "broken image", "traceback")}
    assert not bad, json.dumps(summary["failures"], indent=1)[:4000]
    assert outcomes.get("decoded", 0) > 0 and sum(v for k, v in outcomes.items() if k.startswith("refused")) > 0
    assert summary["largest_peak_rss_mib"] < 3 * 1024, summary


def test_fuzzed_files_end_in_a_clean_error_or_a_decode(model_path: Path, tmp_path: Path) -> None:
    summary = campaign(model_path, tmp_path, seed=16, dcvic=240, legacy=60)
    assert_survived(summary, 300)


@pytest.mark.slow
@pytest.mark.fuzz  # about 40× the fast campaign: run with `pytest -m fuzz`, kept out of CI's time budget
def test_fuzz_campaign_ten_thousand_files(model_path: Path, tmp_path: Path) -> None:
    summary = campaign(model_path, tmp_path, seed=2024, dcvic=10_000, legacy=2_000)
    if os.environ.get("DCVIC_FUZZ_REPORT"):
        Path(os.environ["DCVIC_FUZZ_REPORT"]).write_text(json.dumps(summary, indent=2) + "\n")
    assert_survived(summary, 12_000)
