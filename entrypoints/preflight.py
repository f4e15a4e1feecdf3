"""Compose-time checks of a Hydra config: every file or folder it needs is set and exists, said in one line.

A config names its inputs by interpolation (``root: ${paths.kodak_root}``) or as required values (``???``).
:func:`config_problems` follows the interpolations of every node except ``paths`` itself, so it reports exactly the
inputs the composed config uses (``data=sample`` needs no Kodak, ``network=tiny`` no VQGAN file), each with what it
must hold and where to get it (:data:`REQUIREMENTS`). The Hydra entrypoints call :func:`exit_on_config_problems`
first thing, before any seeding or building, so a new user's first command ends in one line instead of a
traceback from deep inside the first stage.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

EXIT_CONFIG = 2
REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")
IGNORED_ROOTS = ("hydra", "paths")
"""Nodes that are not inputs themselves: Hydra's settings, and the path table (an entry matters only when used)."""


@dataclass(frozen=True)
class Requirement:
    kind: Literal["file", "folder"]
    what: str
    where: str

    def describe(self) -> str:
        return f"{self.kind}: {self.what}; from {self.where}"


REQUIREMENTS: dict[str, Requirement] = {
    "paths.vqgan_checkpoint": Requirement(
        "file",
        "the frozen VQGAN, model.ckpt of latent-diffusion's vq-f8-n256 or a stage-0 run's vqgan.ckpt",
        "ommer-lab.com/files/latent-diffusion/vq-f8-n256.zip",
    ),
    "paths.openimage_root": Requirement(
        "folder",
        "OpenImages V6 photos in train_0/ … train_9/, stage 2 reads validation/",
        "github.com/cvdfoundation/open-images-dataset",
    ),
    "paths.kodak_root": Requirement("folder", "the Kodak images kodim01.png … kodim24.png", "r0k.us/graphics/kodak"),
    "paths.alexnet_weights": Requirement(
        "file", "the LPIPS backbone alexnet-owt-7be5be79.pth", "download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    ),
    "model_file": Requirement(
        "file",
        "a dcvic model file, a stage's model.pt or a converted release",
        "a training run, or entrypoints/convert_checkpoint.py on the authors' release",
    ),
    "images": Requirement("folder", "the images to evaluate", "any photo set, e.g. Kodak"),
    "val_set": Requirement("folder", "the cached stage-2 validation crops", "entrypoints/build_val_set.py"),
}
"""What each input the configs name must be, and where to get it; the order is the order of the report."""


MISSING = "???"


@functools.cache
def _metric_requirements() -> dict[str, Requirement]:
    """``metrics.<key>`` for each backbone file the metrics module lists (imported, with torch, only when used)."""
    from lightning_modules.evaluation.metrics import WEIGHT_SOURCES

    return {
        f"metrics.{key}": Requirement("file", f"{file}, or null for the torch hub cache", source)
        for file, (source, key) in WEIGHT_SOURCES.items()
    }


def _requirement(key: str) -> Requirement | None:
    return _metric_requirements().get(key) if key.startswith("metrics.") else REQUIREMENTS.get(key)


def _leaves(node: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Every leaf of an unresolved container as (dotted key, raw value)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
    if items is None:
        yield prefix, node
        return
    for key, value in items:
        yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))


def used_inputs(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """``(unset keys, set keys with a requirement)`` reached from the nodes outside ``paths``/``hydra``, sorted."""
    leaves = dict(_leaves(OmegaConf.to_container(cfg, resolve=False)))
    pending = [key for key in leaves if key.split(".")[0] not in IGNORED_ROOTS]
    seen: set[str] = set()
    while pending:
        key = pending.pop()
        if key in seen or key not in leaves:
            continue
        seen.add(key)
        if isinstance(leaves[key], str):
            pending.extend(REFERENCE.findall(leaves[key]))
    unset = sorted((k for k in seen if leaves[k] == MISSING), key=_report_order)
    inputs = (k for k in seen if leaves[k] != MISSING and _requirement(k) is not None)
    return unset, sorted(inputs, key=_report_order)


def _report_order(key: str) -> tuple[int, str]:
    order = list(REQUIREMENTS)
    return (order.index(key) if key in order else len(order), key)


def config_problems(cfg: DictConfig) -> list[str]:
    """One phrase per unset or non-existent input the config uses; empty when everything is in place."""
    unset, inputs = used_inputs(cfg)
    problems = []
    for key in unset:
        requirement = _requirement(key)
        problems.append(f"{key} is not set ({requirement.describe()})" if requirement else f"{key} is not set")
    for key in inputs:
        try:
            value = OmegaConf.select(cfg, key)
        except MissingMandatoryValue:  # built from an unset key, which is reported above
            continue
        requirement = _requirement(key)
        if value is None or _exists(Path(str(value)), requirement.kind):
            continue
        problems.append(f"{key}={value} does not exist ({requirement.describe()})")
    return problems


def _exists(path: Path, kind: str) -> bool:
    return path.is_file() if kind == "file" else path.is_dir()


def fail(program: str, message: str) -> NoReturn:
    print(f"{program}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CONFIG)


def exit_on_config_problems(cfg: DictConfig, program: str) -> None:
    """Print every problem in one stderr line and exit with status 2; return silently when there is none."""
    problems = config_problems(cfg)
    if problems:
        advice = "set each on the command line as key=PATH" + (
            " or in conf/paths/default.yaml" if "paths" in cfg else ""
        )
        fail(program, f"cannot start: {'; '.join(problems)}. To fix: {advice}.")
