"""What a file may ask of the decoder: a pixel limit and a memory check, applied before anything large exists.

A ``.dcvic`` header of 150 bytes can claim 30000×30000 pixels; decoding it would allocate tens of GB. Like
Pillow's ``MAX_IMAGE_PIXELS`` for image files, the decoder refuses sizes above a limit unless asked to, and it
refuses any decode whose estimated memory exceeds what this process can get (free memory, cgroup limit,
address-space limit), with one line instead of an out-of-memory kill.

Torch-free on purpose: the ``dcvic`` command applies the pixel limit before importing torch and compressai.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lightning_modules.codec.container import BitstreamError, read_image_size

DEFAULT_MAX_PIXELS = 178_956_970
"""2 × Pillow's ``MAX_IMAGE_PIXELS`` (89,478,485): the size above which Pillow, and so ``dcvic compress``,
refuses an image as a decompression bomb. Every file our compress can write therefore decodes with the
default (about 179 MP, e.g. 16384×10922), while a header claiming more is refused before any work."""

_UNLIMITED = 1 << 60


class DecodeLimitError(BitstreamError):
    """A file these limits or this machine will not decode: too many pixels, or too little memory."""


def check_pixel_limit(height: int, width: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    pixels = height * width
    if pixels > max_pixels:
        raise DecodeLimitError(
            f"image size {height}x{width} ({pixels:,} pixels) is above the decode limit of {max_pixels:,} "
            f"pixels; if you trust this file, raise the limit with --max-pixels {pixels} (max_pixels= in Python)"
        )


@dataclass(frozen=True)
class AvailableMemory:
    bytes: int
    source: str


def available_memory() -> AvailableMemory:
    """The tightest of: MemAvailable, the cgroup's limit minus its usage, RLIMIT_AS minus our address space."""
    candidates = [_meminfo_available(), _cgroup_headroom(), _address_space_headroom()]
    return min((c for c in candidates if c is not None), key=lambda c: c.bytes)


def check_memory(needed: int, what: str, available: AvailableMemory | None = None) -> None:
    available = available or available_memory()
    if needed > available.bytes:
        raise DecodeLimitError(
            f"decoding {what} needs about {format_bytes(needed)} of memory, but only "
            f"{format_bytes(max(available.bytes, 0))} is available ({available.source})"
        )


def format_bytes(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def _meminfo_available() -> AvailableMemory | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return AvailableMemory(int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo")
    except OSError:
        pass
    return None


def _cgroup_headroom() -> AvailableMemory | None:
    """cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``, minus usage that page cache cannot give back."""
    for folder, limit_name, usage_name, inactive_key in _cgroup_folders():
        try:
            limit_text = (folder / limit_name).read_text().strip()
            if limit_text == "max" or int(limit_text) >= _UNLIMITED:
                continue
            usage = int((folder / usage_name).read_text())
            stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
            usage -= int(stat.get(inactive_key, 0))
            return AvailableMemory(int(limit_text) - usage, f"cgroup limit {folder / limit_name}")
        except (OSError, ValueError):
            continue
    return None


def _cgroup_folders() -> list[tuple[Path, str, str, str]]:
    root = Path("/sys/fs/cgroup")
    folders: list[tuple[Path, str, str, str]] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            folders += [(root / path.lstrip("/"), "memory.max", "memory.current", "inactive_file")]
        elif "memory" in controllers.split(","):
            for base in (root / "memory" / path.lstrip("/"), root / "memory"):
                folders.append((base, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
    folders.append((root, "memory.max", "memory.current", "inactive_file"))
    return folders


def _address_space_headroom() -> AvailableMemory | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        used = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None
    return AvailableMemory(soft - used, "RLIMIT_AS minus this process's address space")


def refused_by_header(files: Sequence[Path], legacy: bool, max_pixels: int) -> dict[Path, str]:
    """Files whose header alone claims more than ``max_pixels``, with the reason: found from their first bytes,
    before any model is loaded. Unreadable headers are left to the full parse, which says what is wrong."""
    refused: dict[Path, str] = {}
    for path in files:
        try:
            with path.open("rb") as handle:
                size = read_image_size(handle.read(64), legacy)
            if size is not None:
                check_pixel_limit(*size, max_pixels)
        except OSError:
            continue
        except DecodeLimitError as exc:
            refused[path] = str(exc)
    return refused
