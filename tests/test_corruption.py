"""Thousands of damaged files: each must end in a clean :class:`BitstreamError` or a valid decode.

Truncations, bit flips, splices of two files, inserted/deleted bytes and random garbage, all seeded. Every
file runs under a timer, so a hang fails the test instead of stalling it. The authors' legacy layout has no
checksum, so damage there reaches compressai's C++ rANS decoder; that batch runs in a child process, where a
crash or a hang shows up as a failed test rather than taking pytest down.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from lightning_modules.codec.container import BitstreamError, read_legacy, write_legacy
from lightning_modules.codec.image_codec import DCVICCodec, resolve_conditioning
from lightning_modules.images import image_to_tensor
from lightning_modules.model_file import load_model_file
from tests.support.codec_models import photo, write_model_file

REPO = Path(__file__).resolve().parents[1]
PER_FILE_SECONDS = 20


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum, frame):
        raise TimeoutError(f"decoding took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def damage(data: bytes, other: bytes, rng: random.Random) -> bytes:
    """One random kind of damage; ``other`` is a second valid file for splices."""
    kind = rng.randrange(6)
    if kind == 0:  # truncation
        return data[: rng.randrange(len(data))]
    if kind == 1:  # bit flips
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == 2:  # splice: the head of one file, the tail of another
        return data[: rng.randrange(len(data))] + other[rng.randrange(len(other)) :]
    if kind == 3:  # inserted bytes
        at = rng.randrange(len(data))
        return data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]
    if kind == 4:  # deleted bytes
        at = rng.randrange(len(data))
        return data[:at] + data[at + rng.randint(1, 16) :]
    return rng.randbytes(rng.randint(0, 2 * len(data)))


def classify(decode: Callable[[bytes], torch.Tensor], data: bytes, shape: tuple[int, ...]) -> str:
    with time_limit(PER_FILE_SECONDS):
        try:
            x_hat = decode(data)
        except BitstreamError:
            return "clean error"
    assert x_hat.shape == shape and bool(torch.isfinite(x_hat).all()), "a decode returned a broken image"
    return "decoded"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_file(tmp_path_factory.mktemp("corruption") / "tiny.pt")


@pytest.fixture(scope="module")
def codec(model_path: Path) -> DCVICCodec:
    return DCVICCodec.from_model_file(load_model_file(model_path))


def test_thousands_of_damaged_containers(codec: DCVICCodec) -> None:
    conditioning = resolve_conditioning(codec.quality_table, 1)
    files = [
        codec.compress(image_to_tensor(photo(name, 48, 64, top=100, left=100)), conditioning)[0].to_bytes()
        for name in ("astronaut", "coffee")
    ]
    rng = random.Random(20240611)
    outcomes: Counter[str] = Counter()
    for i in range(3000):
        data, other = files[i % 2], files[1 - i % 2]
        damaged = damage(data, other, rng)
        outcome = classify(codec.decompress, damaged, (1, 3, 48, 64))
        assert outcome == "clean error" or damaged in files, "a damaged file decoded without complaint"
        outcomes[outcome] += 1
    assert outcomes["clean error"] >= 2900, outcomes
    assert classify(codec.decompress, files[0], (1, 3, 48, 64)) == "decoded"


def fuzz_legacy_streams(model_path: str, count: int, seed: int) -> dict[str, int]:
    """Damage a legacy file (no checksum): mostly its z/y strings, which then go through the rANS decoders.

    Whole-file damage is only parsed: a damaged legacy header may claim any size up to 65535², which would
    decode (slowly) rather than fail, so it is not timed here.
    """
    codec = DCVICCodec.from_model_file(load_model_file(model_path))
    conditioning = resolve_conditioning(codec.quality_table, 2)
    _, code = codec.compress(image_to_tensor(photo("chelsea", 64, 64)), conditioning)
    valid = write_legacy(64, 64, 0, 2, code.z_string, code.y_string)
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()

    def decode(data: bytes) -> torch.Tensor:
        legacy = read_legacy(data)
        return codec.model.latent_codec.decompress((legacy.z_string, legacy.y_string), (4, 4)).y_hat

    for _ in range(count):
        if rng.random() < 0.1:
            try:
                read_legacy(damage(valid, valid, rng))
                outcomes["parsed"] += 1
            except BitstreamError:
                outcomes["clean error"] += 1
            continue
        strings = (damage(s, s[::-1], rng) if rng.random() < 0.7 else s for s in (code.z_string, code.y_string))
        outcomes[classify(decode, write_legacy(64, 64, 0, 2, *strings), (1, 64, 4, 4))] += 1
    return dict(outcomes)


def test_damaged_legacy_streams_never_crash_the_rans_decoder(model_path: Path) -> None:
    script = (
        "import json, sys; from tests.test_corruption import fuzz_legacy_streams; "
        "print(json.dumps(fuzz_legacy_streams(sys.argv[1], 500, 7)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(model_path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"the decoder process died ({result.returncode}): {result.stderr[-2000:]}"
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    assert sum(outcomes.values()) == 500
    assert outcomes.get("decoded", 0) > 0, outcomes
