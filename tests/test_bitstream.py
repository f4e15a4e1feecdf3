"""The ``.dcvic`` container and the authors' legacy layout, byte by byte (no networks involved)."""

from __future__ import annotations

import struct
import zlib

import pytest

from lightning_modules.codec.container import (
    EXPLICIT_BETAS,
    FORMAT_VERSION,
    MAGIC,
    BitstreamError,
    Container,
    UnsupportedVersionError,
    read_legacy,
    write_legacy,
)


def sample(**changes) -> Container:
    fields = dict(
        fingerprint=bytes(range(16)),
        height=3000,
        width=70000,  # beyond the legacy format's uint16
        quality_index=2,
        beta_rate=1.12,
        beta_vq=2.0,
        z_string=b"zz-string",
        y_string=b"the y string" * 10,
    )
    return Container(**(fields | changes))


def test_header_layout_is_big_endian_and_documented() -> None:
    data = sample().to_bytes()
    assert data[:4] == MAGIC == b"DCVC"
    assert data[4] == FORMAT_VERSION
    assert data[5:21] == bytes(range(16))
    assert struct.unpack(">II", data[21:29]) == (3000, 70000)
    assert data[29] == 2
    assert struct.unpack(">ff", data[30:38]) == (pytest.approx(1.12), 2.0)
    assert struct.unpack(">I", data[38:42]) == (9,)
    assert struct.unpack(">I", data[-4:]) == (zlib.crc32(data[:-4]),)
    assert len(data) == sample().header_bytes + 9 + 120


def test_round_trip_keeps_every_field() -> None:
    original = sample(quality_index=EXPLICIT_BETAS, beta_rate=0.5, beta_vq=3.25, z_string=b"", y_string=b"y")
    assert Container.from_bytes(original.to_bytes()) == original


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"PNG!" + d[4:], "not a .dcvic file"),
        (lambda d: d[:4] + bytes([9]) + d[5:], "format version 9 is not supported"),
        (lambda d: d[:20], "shorter than the 42-byte header|truncated"),
        (lambda d: d[:45], "z string needs"),
        (lambda d: d[:-2], "checksum is missing|string needs"),
        (lambda d: d + b"\0", "unexpected bytes after the checksum"),
        (lambda d: d[:60] + bytes([d[60] ^ 1]) + d[61:], "checksum mismatch"),
        (lambda d: b"", "not a .dcvic file"),
    ],
)
def test_bad_files_raise_a_clear_error(mutate, message: str) -> None:
    with pytest.raises(BitstreamError, match=message):
        Container.from_bytes(mutate(sample().to_bytes()))


def test_unknown_version_has_its_own_error_class() -> None:
    data = sample().to_bytes()
    with pytest.raises(UnsupportedVersionError):
        Container.from_bytes(data[:4] + bytes([FORMAT_VERSION + 1]) + data[5:])


def test_insane_header_values_are_refused_even_with_a_valid_checksum() -> None:
    for fields in (
        dict(height=0),
        dict(width=1 << 31, height=1 << 31),
        dict(beta_rate=float("nan")),
        dict(beta_vq=-1.0),
    ):
        with pytest.raises(BitstreamError, match="corrupt header"):
            Container.from_bytes(sample(**fields).to_bytes())


def test_legacy_reader_matches_the_spec_probe() -> None:
    """design §6.4: ``06 00 00 00 | C8 00 2C 01 01 02`` is H=200, W=300, max|ŷ|=1, q=2 (little-endian)."""
    data = bytes.fromhex("06000000 C8002C01 0102") + struct.pack("<I", 3) + b"zzz" + struct.pack("<I", 2) + b"yy"
    legacy = read_legacy(data)
    assert (legacy.height, legacy.width, legacy.max_abs_y_hat, legacy.quality_index) == (200, 300, 1, 2)
    assert (legacy.z_string, legacy.y_string) == (b"zzz", b"yy")
    assert write_legacy(200, 300, 1, 2, b"zzz", b"yy") == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (write_legacy(8, 8, 0, 0, b"z", b"y")[:-1], "truncated legacy file"),
        (write_legacy(8, 8, 0, 0, b"z", b"y") + b"\1\0", "after the three strings"),
        (write_legacy(8, 8, 0, 0, b"z", b"y")[:16], "truncated legacy file|not an authors'"),
        (struct.pack("<I", 2) + b"ab", "not an authors' .bin file"),
        (write_legacy(0, 8, 0, 0, b"z", b"y"), "image size 0x8"),
        (b"", "not an authors' .bin file"),
    ],
)
def test_bad_legacy_files_raise_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(BitstreamError, match=message):
        read_legacy(data)
