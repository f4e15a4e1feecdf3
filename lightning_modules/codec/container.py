"""The ``.dcvic`` file format and the authors' legacy ``.bin`` layout.

``.dcvic`` (format version 1), all integers big-endian::

    offset size  type      field
    0      4     bytes     magic b"DCVC"
    4      1     uint8     format version (1)
    5      16    bytes     model fingerprint (SHA-256 prefix of the weights, ``weights_fingerprint``)
    21     4     uint32    original height H
    25     4     uint32    original width W
    29     1     uint8     quality index, 255 = explicit betas
    30     4     float32   beta_rate
    34     4     float32   beta_vq
    38     4     uint32    length of the z string, then the z string
    …      4     uint32    length of the y string, then the y string
    end-4  4     uint32    CRC-32 of every byte before it

The betas are stored even with a quality index, so a file decodes without knowing any quality table. The
legacy layout (design §6.4) has a 6-byte native-endian header and no identity; see :func:`read_legacy`.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

MAGIC = b"DCVC"
FORMAT_VERSION = 1
EXPLICIT_BETAS = 255
MAX_PIXELS = 1 << 30
"""Refuse headers claiming more than ~1 gigapixel: the decoder would allocate the latents before failing."""

_HEADER = struct.Struct(">4sB16sIIBff")
_LENGTH = struct.Struct(">I")
_CRC = struct.Struct(">I")


class BitstreamError(ValueError):
    """A file that cannot be decoded: not ours, truncated, corrupt, or inconsistent."""


class UnsupportedVersionError(BitstreamError):
    """A ``.dcvic`` file of a format version this code does not read."""


class ModelMismatchError(BitstreamError):
    """A file made with different weights than the model at hand."""


@dataclass(frozen=True)
class Container:
    fingerprint: bytes
    height: int
    width: int
    quality_index: int
    beta_rate: float
    beta_vq: float
    z_string: bytes
    y_string: bytes

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            self.fingerprint,
            self.height,
            self.width,
            self.quality_index,
            self.beta_rate,
            self.beta_vq,
        )
        body = b"".join([header, *(_LENGTH.pack(len(s)) + s for s in (self.z_string, self.y_string))])
        return body + _CRC.pack(zlib.crc32(body))

    @property
    def header_bytes(self) -> int:
        return _HEADER.size + 2 * _LENGTH.size + _CRC.size

    @classmethod
    def from_bytes(cls, data: bytes) -> Container:
        """Parse and verify; every failure is a :class:`BitstreamError` saying what is wrong."""
        if len(data) < len(MAGIC) + 1 or data[: len(MAGIC)] != MAGIC:
            raise BitstreamError("not a .dcvic file (bad magic); for the authors' .bin files use the legacy reader")
        if data[len(MAGIC)] != FORMAT_VERSION:
            raise UnsupportedVersionError(
                f".dcvic format version {data[len(MAGIC)]} is not supported (this dcvic reads version {FORMAT_VERSION})"
            )
        if len(data) < _HEADER.size:
            raise BitstreamError(f"truncated file: {len(data)} bytes is shorter than the {_HEADER.size}-byte header")
        _, _, fingerprint, height, width, quality, beta_rate, beta_vq = _HEADER.unpack_from(data)
        z_string, offset = _read_prefixed(data, _HEADER.size, "z")
        y_string, offset = _read_prefixed(data, offset, "y")
        if len(data) < offset + _CRC.size:
            raise BitstreamError("truncated file: the checksum is missing")
        if len(data) > offset + _CRC.size:
            raise BitstreamError(f"corrupt file: {len(data) - offset - _CRC.size} unexpected bytes after the checksum")
        if _CRC.unpack_from(data, offset)[0] != zlib.crc32(data[:offset]):
            raise BitstreamError("corrupt file: checksum mismatch")
        _check_header(height, width, beta_rate, beta_vq)
        return cls(fingerprint, height, width, quality, beta_rate, beta_vq, z_string, y_string)


def _read_prefixed(data: bytes, offset: int, name: str) -> tuple[bytes, int]:
    if len(data) < offset + _LENGTH.size:
        raise BitstreamError(f"truncated file: the length of the {name} string is missing")
    (length,) = _LENGTH.unpack_from(data, offset)
    start = offset + _LENGTH.size
    if len(data) < start + length:
        raise BitstreamError(f"truncated file: the {name} string needs {length} bytes, {len(data) - start} remain")
    return data[start : start + length], start + length


def read_image_size(data: bytes, legacy: bool = False) -> tuple[int, int] | None:
    """``(height, width)`` from the header alone, unverified; ``None`` where the header is unreadable.

    Lets the ``dcvic`` command refuse a decompression bomb before it loads torch and a model (this module
    imports nothing heavy at import time); the full parse still checks everything.
    """
    if legacy:
        if (
            len(data) < _LEGACY_LENGTH.size + _LEGACY_HEADER.size
            or _LEGACY_LENGTH.unpack_from(data)[0] != _LEGACY_HEADER.size
        ):
            return None
        return _LEGACY_HEADER.unpack_from(data, _LEGACY_LENGTH.size)[:2]
    if len(data) < _HEADER.size or data[: len(MAGIC)] != MAGIC or data[len(MAGIC)] != FORMAT_VERSION:
        return None
    return _HEADER.unpack_from(data)[3:5]


def _check_header(height: int, width: int, beta_rate: float, beta_vq: float) -> None:
    # imported here, not at the top: the container stays torch-free (see read_image_size)

    if not (height and width) or height * width > MAX_PIXELS:
        raise BitstreamError(f"corrupt header: image size {height}x{width}")
    for name, value in (("beta_rate", beta_rate), ("beta_vq", beta_vq)):  # the model checks its own upper bounds
        if not (math.isfinite(value) and value >= 0):
            raise BitstreamError(f"corrupt header: {name} = {value}")


# --- the authors' format (design §6.4) ---

_LEGACY_HEADER = struct.Struct("<HHBB")
_LEGACY_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class LegacyFile:
    height: int
    width: int
    max_abs_y_hat: int
    quality_index: int
    z_string: bytes
    y_string: bytes


def read_legacy(data: bytes) -> LegacyFile:
    """``[uint32 LE length + bytes]`` for header, z, y; header ``uint16 H, uint16 W, uint8 max|ŷ|, uint8 q``.

    The header is little-endian (NumPy native on x86, where the authors ran).
    """
    strings: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(strings) == 3:
            raise BitstreamError(f"not an authors' .bin file: {len(data) - offset} bytes after the three strings")
        if len(data) < offset + _LEGACY_LENGTH.size:
            raise BitstreamError("truncated legacy file: a string length is cut off")
        (length,) = _LEGACY_LENGTH.unpack_from(data, offset)
        offset += _LEGACY_LENGTH.size
        if len(data) < offset + length:
            raise BitstreamError(f"truncated legacy file: a string needs {length} bytes, {len(data) - offset} remain")
        strings.append(data[offset : offset + length])
        offset += length
    if len(strings) != 3 or len(strings[0]) != _LEGACY_HEADER.size:
        raise BitstreamError("not an authors' .bin file (want a 6-byte header string, a z string and a y string)")
    height, width, max_abs, quality = _LEGACY_HEADER.unpack(strings[0])
    if not (height and width) or height * width > MAX_PIXELS:
        raise BitstreamError(f"corrupt legacy header: image size {height}x{width}")
    return LegacyFile(height, width, max_abs, quality, strings[1], strings[2])


def write_legacy(height: int, width: int, max_abs_y_hat: int, quality_index: int, z: bytes, y: bytes) -> bytes:
    """The authors' layout, for interoperability tests and for feeding the reference decoder."""
    header = _LEGACY_HEADER.pack(height, width, min(max_abs_y_hat, 255), quality_index)
    return b"".join(_LEGACY_LENGTH.pack(len(s)) + s for s in (header, z, y))
