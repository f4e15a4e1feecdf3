"""Conversion of the authors' DC-VIC checkpoints (design §3.12, golden/CHECKPOINT_FORMAT.md) to dcvic model files.

The mapping is data: :data:`KEY_RENAMES` rewrites names, :data:`DERIVED_KEYS` lists buffers that dcvic
recomputes instead of reading. Every other key must exist in our model with the same shape; unknown keys are
refused and missing ones reported by name, so a renamed tensor can never be dropped silently (the reference's
non-strict loader drops them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lightning_modules.model_file import RELEASED_QUALITY_TABLE, ModelFile
from lightning_modules.networks.dcvic import build_dcvic
from lightning_modules.networks.discriminator import BetaConditionedPatchGAN

KEY_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^module\.", ""),  # saved from DataParallel
    (r"^entropy_model_z\._matrix(\d+)$", r"entropy_model_z.matrices.\1"),  # compressai 1.2.4 spellings
    (r"^entropy_model_z\._bias(\d+)$", r"entropy_model_z.biases.\1"),
    (r"^entropy_model_z\._factor(\d+)$", r"entropy_model_z.factors.\1"),
)

DERIVED_KEYS: tuple[str, ...] = (
    r"\.attn_mask$",  # Swin shifted-window mask, recomputed per input size
    r"\.relative_position_index$",  # Swin index, a function of the window size
    r"^entropy_model_[yz]\.(_offset|_quantized_cdf|_cdf_length)$",  # CDF tables, rebuilt by update()
    r"^entropy_model_y\.(scale_table|scale_bound)$",
    r"^entropy_model_z\.target$",
    r"\.bound$",
)

DROPPED_KEYS: tuple[str, ...] = ()
"""Learned tensors deliberately not carried over (none: ``decoder.conv4`` and ``beta_ft_list.8`` are kept)."""


class ConversionError(ValueError):
    """The checkpoint does not describe the configured architecture."""


@dataclass
class ConversionReport:
    converted: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    derived: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.converted)} tensors converted ({len(self.renamed)} renamed), "
            f"{len(self.derived)} derived buffers recomputed, {len(self.dropped)} dropped"
        )


def rename_key(key: str) -> str:
    for pattern, replacement in KEY_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def is_derived(key: str) -> bool:
    return any(re.search(p, key) for p in DERIVED_KEYS)


def convert_state_dict(
    source: dict[str, Tensor], target: dict[str, Tensor], allow_missing: tuple[str, ...] = ()
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Map ``source`` onto the keys of ``target`` (a fresh model's state dict, which supplies derived buffers)."""
    report = ConversionReport()
    out = {k: v for k, v in target.items() if is_derived(k)}
    unknown, wrong_shape = [], []
    for key, value in source.items():
        new = rename_key(key)
        if is_derived(new):
            report.derived.append(key)
        elif any(re.search(p, new) for p in DROPPED_KEYS):
            report.dropped.append(key)
        elif new not in target:
            unknown.append(key)
        elif tuple(value.shape) != tuple(target[new].shape):
            wrong_shape.append(f"{key}: {tuple(value.shape)} vs ours {tuple(target[new].shape)}")
        else:
            out[new] = value.detach().to(target[new].dtype).clone()
            report.converted.append(new)
            if new != key:
                report.renamed[key] = new
    missing = [k for k in target if k not in out and not any(re.search(p, k) for p in allow_missing)]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown keys: {', '.join(unknown)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches: {'; '.join(wrong_shape)}")
    if missing:
        problems.append(f"{len(missing)} missing keys: {', '.join(missing)}")
    if problems:
        raise ConversionError("cannot convert checkpoint: " + " | ".join(problems))
    for key in target:
        out.setdefault(key, target[key])
    return out, report


def read_authors_file(path: str | Path, entry: str) -> dict[str, Tensor]:
    """``torch.load(path)[entry]`` with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path}. The authors' files (dc_vic_patchgan.pth.tar, dc_vic_oasis.pth.tar) "
            "are linked from the README of github.com/iwa-shi/DC_VIC"
        )
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not isinstance(data.get(entry), dict):
        keys = list(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise ConversionError(f"{path} has no '{entry}' state dict (top level: {keys})")
    return data[entry]


def convert_authors_checkpoint(
    comp_model_path: str | Path,
    discriminator_path: str | Path | None = None,
    quality_table: dict[str, list[float]] | None = None,
    architecture: dict | None = None,
) -> tuple[ModelFile, ConversionReport]:
    """Build a :class:`ModelFile` from the authors' ``{'iter', 'comp_model'}`` (+ discriminator) files."""
    architecture = dict(architecture or {})
    model = build_dcvic(**architecture)
    state, report = convert_state_dict(read_authors_file(comp_model_path, "comp_model"), model.state_dict())
    model.load_state_dict(state, strict=True)  # proves the result loads
    disc_state = None
    if discriminator_path is not None:
        disc = BetaConditionedPatchGAN()
        disc_state, _ = convert_state_dict(read_authors_file(discriminator_path, "discriminator"), disc.state_dict())
        disc.load_state_dict(disc_state, strict=True)
    return (
        ModelFile(
            architecture=architecture,
            state_dict=model.state_dict(),
            quality_table=dict(quality_table or RELEASED_QUALITY_TABLE),
            discriminator=disc_state,
            source=f"converted from {Path(comp_model_path).name}",
        ),
        report,
    )
