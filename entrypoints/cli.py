"""``dcvic``: the console script (``entrypoints/dcvic_commands.py`` holds the commands).

This front imports nothing heavy: a ``dcvic decompress`` whose files all claim more pixels than ``--max-pixels``
is refused from their headers alone, in a fraction of a second and a few MB, before torch and the model load
(design §6.5). Everything else goes to :func:`entrypoints.dcvic_commands.main`, which checks the headers again.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# torch reads this once, at its first allocation: activation buffers of 2 MiB and more come as transparent huge
# pages, 512× fewer page faults each time the allocator hands a buffer back and asks for it again (design §6.1).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from lightning_modules.codec.limits import DEFAULT_MAX_PIXELS, refused_by_header  # noqa: E402

EXIT_REFUSED = 1  # as when some inputs fail: the command ran and said why, per file


def refuse_claimed_bombs(argv: list[str]) -> int | None:
    """Exit status when every input of a ``decompress`` is a file whose header claims too many pixels, else None."""
    if not argv or argv[0] != "decompress":
        return None
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("inputs", nargs="*")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--legacy", action="store_true")
    known, _ = parser.parse_known_args(argv[1:])
    files = [Path(p) for p in known.inputs]
    if not files or not all(f.is_file() for f in files):
        return None  # folders, missing files, options it does not know: the full command decides
    refused = refused_by_header(files, known.legacy, known.max_pixels)
    if len(refused) < len(files):
        return None
    for path, reason in refused.items():
        print(f"dcvic: {path}: {reason}", file=sys.stderr)
    return EXIT_REFUSED


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    early = refuse_claimed_bombs(argv)
    if early is not None:
        return early
    from entrypoints.dcvic_commands import main as run_command

    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
