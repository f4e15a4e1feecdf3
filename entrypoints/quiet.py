"""One place for the dependencies' start-up noise, so that a terminal shows our lines and nothing else.

Every entrypoint calls :func:`silence_dependency_noise` before it imports torch, compressai or taming. Each filter is
as narrow as one message: a warning we cause ourselves is fixed where it arises instead (e.g. checkpoints are saved
and loaded with an explicit ``weights_only``), and any other warning still shows.
"""

from __future__ import annotations

import logging
import os
import warnings

IGNORED_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # compressai and taming decorate functions with torch.jit.script at import time.
    (r"`torch\.jit\.script` is deprecated", FutureWarning),
    # Lightning's own pytree helper uses the deprecated torch class on every training batch.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # The frozen VQGAN and LPIPS are in eval mode on purpose (design §4.8); Lightning warns about any such module.
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning),
    # A resume restores the iteration and RNG states (design §4.8); batches are drawn at random, not in an order
    # that the loader would have to replay, so a mid-epoch checkpoint is what every resume starts from.
    (r"You're resuming from a checkpoint that ended before the epoch ended", UserWarning),
)
IGNORED_LOG_LINES: tuple[str, ...] = (
    "💡 Tip:",  # an advertisement for a cloud logger
    "TPU available:",  # accelerators that do not exist here; the GPU line stays
    "HPU available:",
)
LIGHTNING_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
CHILD_PROCESS_FILTER = "ignore:`torch.jit.script` is deprecated:FutureWarning"
"""For fresh interpreters we start (stage 2's joblib workers import compressai again): ``-W`` syntax, a literal
message prefix."""


class _DropLines(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def silence_dependency_noise() -> None:
    """Ignore the warnings and log lines above, here and in child interpreters (idempotent)."""
    for message, category in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    inherited = os.environ.get("PYTHONWARNINGS", "")
    if CHILD_PROCESS_FILTER not in inherited.split(","):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, (inherited, CHILD_PROCESS_FILTER)))
    logger = logging.getLogger(LIGHTNING_RANK_ZERO_LOGGER)
    if not any(isinstance(f, _DropLines) for f in logger.filters):
        logger.addFilter(_DropLines(IGNORED_LOG_LINES))


def log_lightning_through_root() -> None:
    """In a Hydra job: print Lightning's records once, in Hydra's format and log file, not also via its own handler.

    ``import lightning`` installs a console handler on the ``lightning`` logger that still propagates to the root
    logger, where Hydra's handlers print every line a second time.
    """
    import lightning  # noqa: F401 - its import installs the handler removed here

    logger = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
