"""Deterministic weight fill of the DC-VIC golden reference (``shared/golden/WEIGHT_FILL.md``).

The golden vectors were produced by the authors' code running on weights that are a pure function of
(seed string, shape). Re-creating exactly those weights lets the re-implementation be compared with the
reference bit for bit, without any real pretrained checkpoint. Everything here depends only on SHA-256,
uint64 arithmetic and IEEE float64 -> float32 rounding, so the result is platform independent.

Besides the fill itself this module builds the three state dicts (VQGAN stand-in, DC-VIC ``comp_model``,
PatchGAN discriminator) with the buffers the authors' trainer would have stored, and writes them to disk in
the authors' file layouts, so that checkpoint loaders are exercised against the real file shapes.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lightning_modules.images import atomic_path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Seed-string namespaces (WEIGHT_FILL.md section 2).
NS_VQGAN = "vqgan"
NS_COMP_MODEL = "comp_model"
NS_DISCRIMINATOR = "discriminator"

VQ_MODEL_PREFIX = "vq_model."

# File names of the stand-in checkpoints (WEIGHT_FILL.md section 6).
VQGAN_CKPT_NAME = "vq-f8-n256-standin.ckpt"
COMP_MODEL_CKPT_NAME = "dc_vic_filled.pth.tar"
DISCRIMINATOR_CKPT_NAME = "discriminator_filled.pth.tar"

# SplitMix64 constants.
_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_24 = float(2**24)

# EntropyBottleneck matrix offsets c_i = log(expm1(1/filters[i+1])) with init_scale 1, given as exact
# float64 constants so that no libm differences can creep in.
_EB_FILTERS = (1, 3, 3, 3, 3, 1)
_EB_MATRIX_OFFSET_BY_FILTERS = {
    3: float.fromhex("-0x1.dac9b8fe342f5p-1"),  # log(expm1(1/3))
    1: float.fromhex("0x1.15288806261cbp-1"),  # log(expm1(1))
}

# Both compressai spellings are accepted for rule matching: 1.2.5+ (`matrices.0`) and 1.2.4 (`_matrix0`).
_EB_MATRIX_RE = re.compile(r"^entropy_model_z\.(?:matrices\.|_matrix)(\d+)$")
_EB_BIAS_RE = re.compile(r"^entropy_model_z\.(?:biases\.|_bias)(\d+)$")
_EB_FACTOR_RE = re.compile(r"^entropy_model_z\.(?:factors\.|_factor)(\d+)$")
_EB_QUANTILES_KEY = "entropy_model_z.quantiles"
_EB_124_TO_128 = (
    (re.compile(r"^(.*entropy_model_z\.)_matrix(\d+)$"), r"\1matrices.\2"),
    (re.compile(r"^(.*entropy_model_z\.)_bias(\d+)$"), r"\1biases.\2"),
    (re.compile(r"^(.*entropy_model_z\.)_factor(\d+)$"), r"\1factors.\2"),
)
_SCALE_OUT_BIAS_RE = re.compile(r"^context_model\.scale_slice_transforms\.\d+\.model\.4\.bias$")
_QUANTILE_HALF_RANGE = 9.5

# Rule 9 gains; the first regex that matches wins (re.search on the local key).
_WEIGHT_GAINS: tuple[tuple[re.Pattern[str], float], ...] = (
    (re.compile(r"\.block\d+\.conv\.4\.weight$"), 0.5),
    (re.compile(r"\.c3\.weight$"), 0.5),
    (re.compile(r"^encoder\.conv4\.weight$"), 0.1),
    (re.compile(r"(beta_ft_list\.\d+|init_fuse)\.(scale|shift)\.weight$"), 0.25),
    (re.compile(r"^context_model\.scale_slice_transforms\.\d+\.model\.4\.weight$"), 0.25),
    (re.compile(r"^hyperencoder\.conv\d\.weight$"), 2.0),
)

_TORCH_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "int32": torch.int32,
    "int64": torch.int64,
}

# Constants of the derived buffers (WEIGHT_FILL.md section 5).
EB_TAIL_MASS = 1e-9
LIKELIHOOD_BOUND = 1e-9
SCALE_BOUND = 0.11
SWIN_WINDOW = 8
SWIN_SHIFT = 4
SWIN_MASK_RESOLUTION = (32, 32)


def golden_dir() -> Path:
    """Location of the golden reference data; overridable so CI can mount it elsewhere."""
    return Path(os.environ.get("DCVIC_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden"))


# ----------------------------------------------------------------------------------------------------------
# Manifests
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestRow:
    """One state-dict entry of a manifest; the columns missing from a given TSV get neutral defaults."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    kind: str  # "param" or "buffer"
    fill_rule: str
    frozen_vqgan: bool = False
    ckpt_key_compressai124: str = ""
    shape_after_codec_setup: tuple[int, ...] | None = None

    @property
    def numel(self) -> int:
        """Element count, used for the parameter totals."""
        return math.prod(self.shape)

    @property
    def is_param(self) -> bool:
        """Only parameters are filled; buffers are derived."""
        return self.kind == "param"


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse the manifests' ``AxBxC`` shape notation (``0`` is an empty 1-D tensor, blank a 0-d scalar)."""
    text = text.strip()
    if text in ("", "()", "scalar"):
        return ()
    return tuple(int(part) for part in text.split("x"))


def _data_lines(path: Path) -> Iterable[list[str]]:
    """Tab-split non-blank, non-comment lines of a golden TSV file."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            yield line.split("\t")


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestRow]:
    """Read one of the ``manifest_*.tsv`` files (their column sets differ; the header row names them)."""
    lines = iter(_data_lines(Path(path)))
    header = next(lines)
    if header[0] != "key":
        raise ValueError(f"{path}: expected a header row starting with 'key', got {header!r}")
    rows: list[ManifestRow] = []
    for fields in lines:
        rec = dict(zip(header, fields, strict=True))
        after = rec.get("shape_after_codec_setup")
        rows.append(
            ManifestRow(
                key=rec["key"],
                shape=parse_shape(rec["shape"]),
                dtype=rec["dtype"],
                kind=rec.get("kind", "param"),
                fill_rule=rec["fill_rule"],
                frozen_vqgan=rec.get("frozen_vqgan", "no") == "yes",
                ckpt_key_compressai124=rec.get("ckpt_key_compressai124", rec["key"]),
                shape_after_codec_setup=parse_shape(after) if after is not None else None,
            )
        )
    return rows


def comp_model_manifest() -> list[ManifestRow]:
    """The 1073 entries of the DC-VIC comp_model state dict (compressai 1.2.8 names)."""
    return read_manifest(golden_dir() / "manifest_comp_model.tsv")


def vqgan_manifest() -> list[ManifestRow]:
    """The 299 keys of the VQGAN f8/n256 checkpoint's ``state_dict`` (without ``loss.*``)."""
    return read_manifest(golden_dir() / "manifest_vqgan_ckpt.tsv")


def discriminator_manifest() -> list[ManifestRow]:
    """The 14 entries of the PatchGAN discriminator."""
    return read_manifest(golden_dir() / "manifest_discriminator.tsv")


@dataclass(frozen=True)
class ChecksumRow:
    """One row of ``fill_checksums.tsv``: the expected fill of one tensor."""

    seed_string: str
    model: str  # "vqgan_ckpt", "comp_model" or "discriminator"
    key: str
    shape: tuple[int, ...]
    rule: str
    offset: float | None  # None for the quantiles special ("n/a")
    w: float | None
    seed_u64: int
    first_values_hex: tuple[str, ...]
    sha256: str


def read_fill_checksums(path: str | os.PathLike[str] | None = None) -> list[ChecksumRow]:
    """Read ``fill_checksums.tsv`` (its header row is a ``#`` comment)."""
    path = Path(path) if path is not None else golden_dir() / "fill_checksums.tsv"

    def _hex_or_none(text: str) -> float | None:
        return None if text == "n/a" else float.fromhex(text)

    rows = []
    for f in _data_lines(path):
        rows.append(
            ChecksumRow(
                seed_string=f[0],
                model=f[1],
                key=f[2],
                shape=parse_shape(f[3]),
                rule=f[4],
                offset=_hex_or_none(f[5]),
                w=_hex_or_none(f[6]),
                seed_u64=int(f[7], 16),
                first_values_hex=tuple(f[8].split(",")),
                sha256=f[9],
            )
        )
    return rows


# ----------------------------------------------------------------------------------------------------------
# The fill (WEIGHT_FILL.md sections 2-4)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FillSpec:
    """The rule chosen for a tensor, named as in ``fill_checksums.tsv``; offset/w are None for quantiles."""

    rule: str
    offset: float | None
    w: float | None


def seed_from_string(seed_string: str) -> int:
    """First 8 bytes (big endian) of SHA-256 of the seed string: the SplitMix64 initial state."""
    return int.from_bytes(hashlib.sha256(seed_string.encode("utf-8")).digest()[:8], "big")


def _eb_matrix_offset(index: int) -> float:
    """Offset c_i of EB matrix i (compressai's init formula evaluated at init_scale 1)."""
    if not 0 <= index < len(_EB_FILTERS) - 1:
        raise ValueError(f"EntropyBottleneck matrix index out of range: {index}")
    return _EB_MATRIX_OFFSET_BY_FILTERS[_EB_FILTERS[index + 1]]


def weight_gain(local_key: str) -> float:
    """Gain g of rule 9: the first matching regex wins, otherwise 1."""
    for pattern, gain in _WEIGHT_GAINS:
        if pattern.search(local_key):
            return gain
    return 1.0


def fill_spec(local_key: str, shape: tuple[int, ...]) -> FillSpec:
    """Select the fill rule for a tensor (first match wins, WEIGHT_FILL.md section 4)."""
    shape = tuple(int(s) for s in shape)
    if m := _EB_MATRIX_RE.match(local_key):
        return FillSpec("eb_matrix", _eb_matrix_offset(int(m.group(1))), 0.1)
    if _EB_BIAS_RE.match(local_key):
        return FillSpec("eb_bias", 0.0, 0.5)
    if _EB_FACTOR_RE.match(local_key):
        return FillSpec("eb_factor", 0.0, 0.5)
    if local_key == _EB_QUANTILES_KEY:
        return FillSpec("eb_quantiles", None, None)
    if local_key.endswith("quantize.embedding.weight"):
        return FillSpec("codebook", 0.0, 0.7)
    if local_key.endswith("relative_position_bias_table"):
        return FillSpec("rel_pos_bias", 0.0, 0.05)
    if len(shape) == 1 and local_key.endswith(".weight"):
        return FillSpec("norm_weight", 1.0, 0.1)
    if _SCALE_OUT_BIAS_RE.match(local_key):
        return FillSpec("scale_out_bias", 0.5, 0.05)
    if local_key.endswith(".bias"):
        return FillSpec("bias", 0.0, 0.05)
    if local_key.endswith(".weight") and len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        # Python floats are IEEE float64: correctly rounded division, sqrt and product, as WEIGHT_FILL.md asks.
        return FillSpec("weight", 0.0, weight_gain(local_key) * math.sqrt(3.0 / fan_in))
    raise ValueError(f"no fill rule matches {local_key!r} with shape {shape}")


def uniform_stream(seed: int, numel: int, offset: float, w: float) -> np.ndarray:
    """``float32(offset + w*n/2^24)`` for SplitMix64 outputs 1..numel (vectorised, wrapping uint64)."""
    with np.errstate(over="ignore"):
        z = np.arange(1, numel + 1, dtype=np.uint64)
        z *= _GOLDEN_GAMMA
        z += np.uint64(seed)
        z ^= z >> np.uint64(30)
        z *= _MIX1
        z ^= z >> np.uint64(27)
        z *= _MIX2
        z ^= z >> np.uint64(31)
        z >>= np.uint64(40)  # u: top 24 bits
    n = z.astype(np.int64)
    n *= 2
    n += 1 - 2**24  # odd integer in [-(2^24-1), 2^24-1]
    # float64: w*n (one rounding), /2^24 (exact), +offset (one rounding); then one RNE cast to float32.
    values = n.astype(np.float64)
    values *= float(w)
    values /= _TWO_POW_24
    values += float(offset)
    return values.astype(np.float32)


def _fill_quantiles(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """EB quantiles special: per channel (m-9.5, m, m+9.5) with a random median m, so pmf_length is 21."""
    if len(shape) != 3 or shape[1:] != (1, 3):
        raise ValueError(f"entropy_model_z.quantiles must be [C,1,3], got {shape}")
    a = uniform_stream(seed, math.prod(shape), 0.0, 0.5).reshape(shape)
    median = a[:, 0, 1].astype(np.float64)
    out = np.empty(shape, dtype=np.float32)
    out[:, 0, 0] = (median - _QUANTILE_HALF_RANGE).astype(np.float32)
    out[:, 0, 1] = a[:, 0, 1]
    out[:, 0, 2] = (median + _QUANTILE_HALF_RANGE).astype(np.float32)
    return out


def fill_array(seed_string: str, local_key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Numpy float32 version of :func:`fill_tensor`, C-order in ``shape``."""
    shape = tuple(int(s) for s in shape)
    spec = fill_spec(local_key, shape)
    seed = seed_from_string(seed_string)
    if spec.rule == "eb_quantiles":
        return _fill_quantiles(seed, shape)
    assert spec.offset is not None and spec.w is not None
    return uniform_stream(seed, math.prod(shape), spec.offset, spec.w).reshape(shape)


def fill_tensor(seed_string: str, local_key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The filled float32 tensor: ``local_key`` (no namespace) picks the rule, ``seed_string`` the stream."""
    return torch.from_numpy(fill_array(seed_string, local_key, shape))


# ----------------------------------------------------------------------------------------------------------
# Key naming
# ----------------------------------------------------------------------------------------------------------


def eb_key_to_compressai128(key: str) -> str:
    """Rename a compressai-1.2.4 EB parameter (``_matrix0``) to its 1.2.5+ name (``matrices.0``)."""
    for pattern, repl in _EB_124_TO_128:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return key


def seed_string_for(model: str, key: str) -> str:
    """Seed string of a state-dict key; ``vq_model.*`` reuses the VQGAN seeds so both copies are identical."""
    if model in (NS_VQGAN, "vqgan_ckpt"):
        return f"{NS_VQGAN}/{key}"
    if model == NS_COMP_MODEL:
        if key.startswith(VQ_MODEL_PREFIX):
            return f"{NS_VQGAN}/{key[len(VQ_MODEL_PREFIX) :]}"
        return f"{NS_COMP_MODEL}/{eb_key_to_compressai128(key)}"
    if model == NS_DISCRIMINATOR:
        return f"{NS_DISCRIMINATOR}/{key}"
    raise ValueError(f"unknown model namespace {model!r}")


def local_key_of(seed_string: str) -> str:
    """The key used for rule matching: the seed string without its namespace."""
    return seed_string.split("/", 1)[1]


def fill_state_dict(rows: Iterable[ManifestRow], seed_string_for_key: Callable[[str], str]) -> dict[str, torch.Tensor]:
    """Fill every ``param`` row (buffers are skipped: they are derived, never filled)."""
    out: dict[str, torch.Tensor] = {}
    for row in rows:
        if not row.is_param:
            continue
        if row.dtype != "float32":
            raise ValueError(f"{row.key}: only float32 parameters can be filled, got {row.dtype}")
        seed = seed_string_for_key(row.key)
        out[row.key] = fill_tensor(seed, local_key_of(seed), row.shape)
    return out


# ----------------------------------------------------------------------------------------------------------
# Derived buffers (WEIGHT_FILL.md section 5)
# ----------------------------------------------------------------------------------------------------------


def swin_relative_position_index(window: int = SWIN_WINDOW) -> torch.Tensor:
    """Standard Swin index ``(i1-i2+w-1)*(2w-1) + (j1-j2+w-1)``, row-major tokens, int64 [w*w, w*w]."""
    rows, cols = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
    r = rows.reshape(-1)
    c = cols.reshape(-1)
    dr = r[:, None] - r[None, :] + (window - 1)
    dc = c[:, None] - c[None, :] + (window - 1)
    return torch.from_numpy((dr * (2 * window - 1) + dc).astype(np.int64))


def swin_shifted_window_mask(
    resolution: tuple[int, int] = SWIN_MASK_RESOLUTION, window: int = SWIN_WINDOW, shift: int = SWIN_SHIFT
) -> torch.Tensor:
    """Shifted-window attention mask (0 within a region, -100 across regions), float32 [nW, w*w, w*w]."""
    height, width = resolution
    labels = np.zeros((height, width), dtype=np.int64)
    h_bounds = ((0, height - window), (height - window, height - shift), (height - shift, height))
    w_bounds = ((0, width - window), (width - window, width - shift), (width - shift, width))
    label = 0
    for h0, h1 in h_bounds:
        for w0, w1 in w_bounds:
            labels[h0:h1, w0:w1] = label
            label += 1
    windows = (
        labels.reshape(height // window, window, width // window, window)
        .transpose(0, 2, 1, 3)
        .reshape(-1, window * window)
    )
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.from_numpy(np.where(diff != 0, -100.0, 0.0).astype(np.float32))


def eb_target() -> torch.Tensor:
    """``EntropyBottleneck.target`` = [-t, 0, t], t = log(2/tail_mass - 1), computed as compressai does."""
    t = np.log(2 / EB_TAIL_MASS - 1)
    return torch.tensor([-t, 0.0, t], dtype=torch.float64).to(torch.float32)


def derived_buffer(row: ManifestRow) -> torch.Tensor:
    """Value of a buffer as stored by the authors' trainer (tables empty, constants set)."""
    dtype = _TORCH_DTYPES[row.dtype]
    key = row.key
    if key.endswith(("._offset", "._quantized_cdf", "._cdf_length", ".scale_table")):
        value = torch.zeros(row.shape, dtype=dtype)  # never update()d by the trainer: empty [0]
    elif key.endswith(".target"):
        value = eb_target()
    elif key.endswith("likelihood_lower_bound.bound"):
        value = torch.tensor([LIKELIHOOD_BOUND], dtype=torch.float32)
    elif key.endswith(("lower_bound_scale.bound", ".scale_bound")):
        value = torch.tensor([SCALE_BOUND], dtype=torch.float32)
    elif key.endswith("relative_position_index"):
        value = swin_relative_position_index()
    elif key.endswith("attn_mask"):
        value = swin_shifted_window_mask()
    else:
        raise ValueError(f"unknown buffer {key!r}")
    if tuple(value.shape) != row.shape or value.dtype != dtype:
        raise ValueError(f"{key}: derived {tuple(value.shape)}/{value.dtype}, manifest {row.shape}/{dtype}")
    return value


# ----------------------------------------------------------------------------------------------------------
# Whole state dicts
# ----------------------------------------------------------------------------------------------------------


def filled_vqgan_state_dict() -> dict[str, torch.Tensor]:
    """The 299-key VQGAN stand-in state dict (seed ``vqgan/K``)."""
    return fill_state_dict(vqgan_manifest(), lambda key: seed_string_for(NS_VQGAN, key))


def filled_discriminator_state_dict() -> dict[str, torch.Tensor]:
    """The 14-key discriminator state dict (seed ``discriminator/K``)."""
    return fill_state_dict(discriminator_manifest(), lambda key: seed_string_for(NS_DISCRIMINATOR, key))


def filled_comp_model_state_dict(
    eb_naming: str = "1.2.8", *, vqgan_state_dict: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """All 1073 comp_model entries as a trainer-saved file holds them, EB keys in the given compressai naming.

    ``vqgan_state_dict`` (a :func:`filled_vqgan_state_dict` result) saves recomputing the ``vq_model.*``
    tensors; they are cloned, so the two dicts never alias.
    """
    if eb_naming not in ("1.2.4", "1.2.8"):
        raise ValueError(f"eb_naming must be '1.2.4' or '1.2.8', got {eb_naming!r}")
    out: dict[str, torch.Tensor] = {}
    for row in comp_model_manifest():
        name = row.ckpt_key_compressai124 if eb_naming == "1.2.4" else row.key
        if not row.is_param:
            out[name] = derived_buffer(row)
            continue
        if vqgan_state_dict is not None and row.key.startswith(VQ_MODEL_PREFIX):
            src = vqgan_state_dict[row.key[len(VQ_MODEL_PREFIX) :]]
            if tuple(src.shape) != row.shape:
                raise ValueError(f"{row.key}: VQGAN tensor has shape {tuple(src.shape)}, manifest {row.shape}")
            out[name] = src.detach().clone()
            continue
        seed = seed_string_for(NS_COMP_MODEL, row.key)
        out[name] = fill_tensor(seed, local_key_of(seed), row.shape)
    return out


# ----------------------------------------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------------------------------------


def float32_le_bytes(tensor: torch.Tensor) -> bytes:
    """Little-endian float32 bytes of a tensor in C order (the unit hashed by the golden checksums)."""
    arr = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    return np.ascontiguousarray(arr, dtype="<f4").tobytes()


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of one tensor's float32 bytes, as in ``fill_checksums.tsv``."""
    return hashlib.sha256(float32_le_bytes(tensor)).hexdigest()


def float32_hex_values(tensor: torch.Tensor, count: int = 3) -> tuple[str, ...]:
    """Bit patterns (8 hex digits) of the first ``count`` float32 values, as in ``fill_checksums.tsv``."""
    flat = tensor.detach().to("cpu", torch.float32).reshape(-1)[:count].numpy()
    return tuple(f"{int(bits):08x}" for bits in flat.view(np.uint32))


def sha256_fingerprint(state_dict: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None) -> str:
    """SHA-256 over ``key`` (utf-8) then its float32 LE bytes, keys sorted (WEIGHT_FILL.md section 6)."""
    h = hashlib.sha256()
    for key in sorted(state_dict.keys() if keys is None else keys):
        h.update(key.encode("utf-8"))
        h.update(float32_le_bytes(state_dict[key]))
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# The authors' checkpoint files
# ----------------------------------------------------------------------------------------------------------

# A few loss.* tensors and Lightning top-level keys, as in the real ldm vq-f8-n256 file, so that loaders
# are tested on dropping them. Their values are irrelevant (the reference discards them).
_VQGAN_LOSS_EXTRAS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("loss.discriminator.main.0.weight", (64, 3, 4, 4)),
    ("loss.discriminator.main.0.bias", (64,)),
    ("loss.perceptual_loss.lin0.model.1.weight", (1, 64, 1, 1)),
)


def _atomic_torch_save(obj: object, path: Path) -> None:
    """Write via a temporary file so an interrupted run never leaves a truncated, reusable cache file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_authors_checkpoints(
    out_dir: str | os.PathLike[str], *, overwrite: bool = False, lightning_extras: bool = True
) -> dict[str, Path]:
    """Write the three stand-in files in the authors' layouts; files already in ``out_dir`` are reused.

    Returns ``{"vqgan": ..., "comp_model": ..., "discriminator": ...}`` paths. Because existing files are
    skipped (unless ``overwrite``), ``out_dir`` doubles as a cache: a second call costs nothing.
    ``lightning_extras`` adds ``loss.*`` tensors and Lightning's top-level keys to the VQGAN file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "vqgan": out / VQGAN_CKPT_NAME,
        "comp_model": out / COMP_MODEL_CKPT_NAME,
        "discriminator": out / DISCRIMINATOR_CKPT_NAME,
    }
    need = {name: overwrite or not path.is_file() for name, path in paths.items()}

    vqgan_sd: dict[str, torch.Tensor] | None = None
    if need["vqgan"] or need["comp_model"]:
        vqgan_sd = filled_vqgan_state_dict()

    if need["vqgan"]:
        assert vqgan_sd is not None
        state = dict(vqgan_sd)
        ckpt: dict[str, object] = {"state_dict": state}
        if lightning_extras:
            for key, shape in _VQGAN_LOSS_EXTRAS:
                state[key] = fill_tensor(f"{NS_VQGAN}/{key}", key, shape)
            ckpt = {
                "epoch": 0,
                "global_step": 0,
                "pytorch-lightning_version": "1.4.2",
                "state_dict": state,
                "callbacks": {},
                "optimizer_states": [],
                "lr_schedulers": [],
            }
        _atomic_torch_save(ckpt, paths["vqgan"])

    if need["comp_model"]:
        comp_sd = filled_comp_model_state_dict("1.2.4", vqgan_state_dict=vqgan_sd)
        _atomic_torch_save({"iter": 0, "comp_model": comp_sd}, paths["comp_model"])
        del comp_sd

    if need["discriminator"]:
        disc_sd = filled_discriminator_state_dict()
        _atomic_torch_save({"iter": 0, "discriminator": disc_sd}, paths["discriminator"])

    return paths
