"""The deterministic weight fill must reproduce the golden reference's weights bit for bit.

Every other golden comparison rests on these weights, so each filled tensor is checked against
``fill_checksums.tsv`` and the whole-model fingerprints of WEIGHT_FILL.md section 6.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from tests.support import weight_fill as wf

GOLDEN = wf.golden_dir()
if not GOLDEN.is_dir():
    pytest.skip(f"golden reference directory {GOLDEN} not found (set DCVIC_GOLDEN_DIR)", allow_module_level=True)

FINGERPRINT_VQGAN = "e41ffe963c28434f3c1344d6846334346b931bb3fb2fa91e67de22bb4af345b7"
FINGERPRINT_COMP_PARAMS = "6811c3c91951f5fc51e0f90e2919921e8f9438e411b736005b537735d45cdb5a"
FINGERPRINT_DISC = "f40e88a27fde210ed5163d7955c05cecbff57b6109a32af659ceab47abb5e4c2"


@functools.lru_cache(maxsize=1)
def _comp_rows() -> tuple[wf.ManifestRow, ...]:
    return tuple(wf.comp_model_manifest())


@functools.lru_cache(maxsize=1)
def _vqgan_sd() -> dict[str, torch.Tensor]:
    return wf.filled_vqgan_state_dict()


@functools.lru_cache(maxsize=1)
def _comp_sd() -> dict[str, torch.Tensor]:
    # Filled from scratch (not from the VQGAN dict) so the vq_model.* seeds are exercised independently.
    return wf.filled_comp_model_state_dict("1.2.8")


@functools.lru_cache(maxsize=1)
def _disc_sd() -> dict[str, torch.Tensor]:
    return wf.filled_discriminator_state_dict()


def _param_keys() -> list[str]:
    return [r.key for r in _comp_rows() if r.is_param]


def test_manifest_counts() -> None:
    rows = _comp_rows()
    assert len(rows) == 1073
    assert sum(r.is_param for r in rows) == 1049
    assert sum(not r.is_param for r in rows) == 24
    assert sum(r.key.startswith(wf.VQ_MODEL_PREFIX) for r in rows) == 299
    assert len(wf.vqgan_manifest()) == 299
    assert len(wf.discriminator_manifest()) == 14
    assert len(_vqgan_sd()) == 299
    assert len(_comp_sd()) == 1073
    assert len(_disc_sd()) == 14


def test_parameter_totals() -> None:
    comp = _comp_sd()
    params = _param_keys()
    non_vq = sum(comp[k].numel() for k in params if not k.startswith(wf.VQ_MODEL_PREFIX))
    vq = sum(comp[k].numel() for k in params if k.startswith(wf.VQ_MODEL_PREFIX))
    assert non_vq == 84_047_503
    assert vq == 67_652_783
    assert sum(t.numel() for t in _vqgan_sd().values()) == 67_652_783
    assert sum(t.numel() for t in _disc_sd().values()) == 2_773_345
    assert sum(r.numel for r in _comp_rows() if r.is_param) == 151_700_286


def test_fingerprints() -> None:
    assert wf.sha256_fingerprint(_vqgan_sd()) == FINGERPRINT_VQGAN
    assert wf.sha256_fingerprint(_comp_sd(), _param_keys()) == FINGERPRINT_COMP_PARAMS
    assert wf.sha256_fingerprint(_disc_sd()) == FINGERPRINT_DISC


def test_every_fill_checksum_row() -> None:
    rows = wf.read_fill_checksums()
    assert len(rows) == 1063
    dicts = {"vqgan_ckpt": _vqgan_sd(), "comp_model": _comp_sd(), "discriminator": _disc_sd()}
    namespaces = {
        "vqgan_ckpt": wf.NS_VQGAN,
        "comp_model": wf.NS_COMP_MODEL,
        "discriminator": wf.NS_DISCRIMINATOR,
    }
    mismatches: list[str] = []
    seen: dict[str, set[str]] = {name: set() for name in dicts}
    for row in rows:
        where = f"{row.model}:{row.key}"
        seen[row.model].add(row.key)
        if wf.seed_string_for(namespaces[row.model], row.key) != row.seed_string:
            mismatches.append(f"{where}: seed string")
        if wf.seed_from_string(row.seed_string) != row.seed_u64:
            mismatches.append(f"{where}: seed u64")
        spec = wf.fill_spec(wf.local_key_of(row.seed_string), row.shape)
        if (spec.rule, spec.offset, spec.w) != (row.rule, row.offset, row.w):
            mismatches.append(f"{where}: spec {spec} != {(row.rule, row.offset, row.w)}")
        tensor = dicts[row.model].get(row.key)
        if tensor is None:
            mismatches.append(f"{where}: missing from the filled state dict")
            continue
        if tuple(tensor.shape) != row.shape or tensor.dtype != torch.float32:
            mismatches.append(f"{where}: shape/dtype {tuple(tensor.shape)}/{tensor.dtype}")
            continue
        if wf.float32_hex_values(tensor) != row.first_values_hex:
            mismatches.append(f"{where}: first values {wf.float32_hex_values(tensor)}")
        if wf.tensor_sha256(tensor) != row.sha256:
            mismatches.append(f"{where}: sha256")
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:10]}"
    # The checksum file covers every parameter except the vq_model.* copies, which share the VQGAN rows.
    assert seen["vqgan_ckpt"] == set(_vqgan_sd())
    assert seen["discriminator"] == set(_disc_sd())
    assert seen["comp_model"] == {k for k in _param_keys() if not k.startswith(wf.VQ_MODEL_PREFIX)}


def test_vq_model_copy_equals_vqgan_checkpoint() -> None:
    comp, vqgan = _comp_sd(), _vqgan_sd()
    vq_keys = [k for k in _param_keys() if k.startswith(wf.VQ_MODEL_PREFIX)]
    assert {k[len(wf.VQ_MODEL_PREFIX) :] for k in vq_keys} == set(vqgan)
    for key in vq_keys:
        assert torch.equal(comp[key], vqgan[key[len(wf.VQ_MODEL_PREFIX) :]]), key


def test_reusing_vqgan_dict_gives_same_comp_model() -> None:
    reused = wf.filled_comp_model_state_dict("1.2.8", vqgan_state_dict=_vqgan_sd())
    vq_keys = [k for k in _param_keys() if k.startswith(wf.VQ_MODEL_PREFIX)]
    assert wf.sha256_fingerprint(reused, vq_keys) == wf.sha256_fingerprint(_comp_sd(), vq_keys)
    assert reused[vq_keys[0]].data_ptr() != _vqgan_sd()[vq_keys[0][len(wf.VQ_MODEL_PREFIX) :]].data_ptr()


def test_eb_old_spelling_matches_rules_but_seed_uses_new_name() -> None:
    for old, new in [
        ("entropy_model_z._matrix4", "entropy_model_z.matrices.4"),
        ("entropy_model_z._bias2", "entropy_model_z.biases.2"),
        ("entropy_model_z._factor0", "entropy_model_z.factors.0"),
    ]:
        assert wf.eb_key_to_compressai128(old) == new
        assert wf.seed_string_for(wf.NS_COMP_MODEL, old) == f"comp_model/{new}"
        shape = tuple(_comp_sd()[new].shape)
        assert wf.fill_spec(old, shape) == wf.fill_spec(new, shape)
        assert torch.equal(wf.fill_tensor(f"comp_model/{new}", old, shape), _comp_sd()[new])


def test_compressai124_naming() -> None:
    old = wf.filled_comp_model_state_dict("1.2.4", vqgan_state_dict=_vqgan_sd())
    rows = _comp_rows()
    assert list(old) == [r.ckpt_key_compressai124 for r in rows]
    renamed = [r for r in rows if r.key != r.ckpt_key_compressai124]
    assert len(renamed) == 14
    assert all(r.key.startswith("entropy_model_z.") for r in renamed)
    for row in rows:
        a, b = old[row.ckpt_key_compressai124], _comp_sd()[row.key]
        assert a.dtype == b.dtype and torch.equal(a, b), row.key
    with pytest.raises(ValueError):
        wf.filled_comp_model_state_dict("1.2.6")


def test_quantiles_special() -> None:
    q = _comp_sd()["entropy_model_z.quantiles"].double()
    median = q[:, 0, 1]
    assert q.shape == (192, 1, 3)
    assert bool((median.abs() < 0.5).all())
    # The sums are exact in float64 and rounded once to float32.
    assert torch.equal(q[:, 0, 0], (median - 9.5).float().double())
    assert torch.equal(q[:, 0, 2], (median + 9.5).float().double())
    spread = (q[:, 0, 2] - q[:, 0, 0]).numpy()
    assert np.all((spread > 18.99) & (spread < 19.01))


def test_eb_matrix_offsets_follow_compressai_formula() -> None:
    for i, filters in enumerate((3, 3, 3, 3, 1)):
        spec = wf.fill_spec(f"entropy_model_z.matrices.{i}", (192, 3, 3))
        assert spec.offset == pytest.approx(math.log(math.expm1(1.0 / filters)), abs=1e-15)


def test_gain_regexes() -> None:
    cases = {
        "encoder.block1.block0.conv.4.weight": 0.5,
        "encoder.attn2.conv_a.0.c3.weight": 0.5,
        "encoder.conv4.weight": 0.1,
        "decoder.conv4.weight": 1.0,
        "encoder.beta_ft_list.3.scale.weight": 0.25,
        "encoder.init_fuse.shift.weight": 0.25,
        "context_model.scale_slice_transforms.5.model.4.weight": 0.25,
        "context_model.mean_slice_transforms.5.model.4.weight": 1.0,
        "hyperencoder.conv2.weight": 2.0,
        "hyperdecoder.conv2.weight": 1.0,
    }
    for key, gain in cases.items():
        assert wf.weight_gain(key) == gain, key
    with pytest.raises(ValueError):
        wf.fill_spec("some.unknown_param", (3, 3))


def test_uniform_stream_matches_scalar_reference() -> None:
    """The vectorised SplitMix64 must agree with a literal Python-int transcription of section 3."""
    mask = (1 << 64) - 1
    seed = wf.seed_from_string("comp_model/encoder.conv1.weight")
    offset, w = -0.3, 0.123456789
    expected = []
    for i in range(257):
        z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        n = 2 * (z >> 40) + 1 - 2**24
        expected.append(offset + (w * n) / 2**24)
    got = wf.uniform_stream(seed, 257, offset, w)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.float64).astype(np.float32))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit deprecation inside compressai
def test_buffers_match_manifest_and_compressai() -> None:
    comp = _comp_sd()
    buffers = [r for r in _comp_rows() if not r.is_param]
    for row in buffers:
        t = comp[row.key]
        assert tuple(t.shape) == row.shape, row.key
        assert str(t.dtype).removeprefix("torch.") == row.dtype, row.key
    for name in ("_offset", "_quantized_cdf", "_cdf_length"):
        for model in ("entropy_model_z", "entropy_model_y"):
            assert comp[f"{model}.{name}"].numel() == 0
    assert comp["entropy_model_y.scale_table"].numel() == 0

    from compressai.entropy_models import EntropyBottleneck, GaussianConditional

    eb = EntropyBottleneck(192).state_dict()
    gc = GaussianConditional(None).state_dict()
    assert torch.equal(comp["entropy_model_z.target"], eb["target"])
    bound = "likelihood_lower_bound.bound"
    assert torch.equal(comp[f"entropy_model_z.{bound}"], eb[bound])
    for key in ("scale_bound", "likelihood_lower_bound.bound", "lower_bound_scale.bound"):
        assert torch.equal(comp[f"entropy_model_y.{key}"], gc[key]), key
    for name in ("_offset", "_quantized_cdf", "_cdf_length"):
        assert comp[f"entropy_model_z.{name}"].dtype == eb[name].dtype
        assert comp[f"entropy_model_y.{name}"].dtype == gc[name].dtype


def test_swin_relative_position_index() -> None:
    idx = wf.swin_relative_position_index(8)
    assert idx.dtype == torch.int64 and idx.shape == (64, 64)
    for p in range(64):
        i1, j1 = divmod(p, 8)
        for q in range(64):
            i2, j2 = divmod(q, 8)
            assert idx[p, q].item() == (i1 - i2 + 7) * 15 + (j1 - j2 + 7)
    keys = [k for k in _comp_sd() if k.endswith("relative_position_index")]
    assert len(keys) == 9
    assert all(torch.equal(_comp_sd()[k], idx) for k in keys)


def test_swin_attn_mask() -> None:
    mask = wf.swin_shifted_window_mask((32, 32), 8, 4)
    assert mask.dtype == torch.float32 and mask.shape == (16, 64, 64)

    def region(coord: int) -> int:
        return 0 if coord < 24 else (1 if coord < 28 else 2)

    for win in range(16):
        wr, wc = divmod(win, 4)
        labels = []
        for tok in range(64):
            tr, tc = divmod(tok, 8)
            labels.append(region(wr * 8 + tr) * 3 + region(wc * 8 + tc))
        lab = torch.tensor(labels)
        expected = torch.where(lab[:, None] == lab[None, :], 0.0, -100.0)
        assert torch.equal(mask[win], expected), win
    # Only the last window row/column straddle regions; the first 9 windows are unmasked.
    assert [bool((mask[w] != 0).any()) for w in range(16)] == [w % 4 == 3 or w >= 12 for w in range(16)]
    keys = [k for k in _comp_sd() if k.endswith("attn_mask")]
    assert len(keys) == 3 and all(".blocks.1." in k for k in keys)
    assert all(torch.equal(_comp_sd()[k], mask) for k in keys)


def test_write_authors_checkpoints(tmp_path) -> None:
    paths = wf.write_authors_checkpoints(tmp_path)
    assert {p.name for p in paths.values()} == {
        "vq-f8-n256-standin.ckpt",
        "dc_vic_filled.pth.tar",
        "discriminator_filled.pth.tar",
    }
    mtimes = {name: p.stat().st_mtime_ns for name, p in paths.items()}
    assert wf.write_authors_checkpoints(tmp_path) == paths  # cached: nothing rewritten
    assert {name: p.stat().st_mtime_ns for name, p in paths.items()} == mtimes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())

    vq = torch.load(paths["vqgan"], map_location="cpu", weights_only=False)
    assert {"state_dict", "epoch", "global_step"} <= set(vq)
    sd = {k: v for k, v in vq["state_dict"].items() if not k.startswith("loss.")}
    assert len(vq["state_dict"]) > len(sd) == 299
    assert wf.sha256_fingerprint(sd) == FINGERPRINT_VQGAN

    comp = torch.load(paths["comp_model"], map_location="cpu", weights_only=True)
    assert set(comp) == {"iter", "comp_model"} and comp["iter"] == 0
    csd = comp["comp_model"]
    assert list(csd) == [r.ckpt_key_compressai124 for r in _comp_rows()]
    assert "entropy_model_z._matrix0" in csd and "entropy_model_z.matrices.0" not in csd
    renamed = {wf.eb_key_to_compressai128(k): v for k, v in csd.items()}
    assert wf.sha256_fingerprint(renamed, _param_keys()) == FINGERPRINT_COMP_PARAMS
    assert csd["entropy_model_z._quantized_cdf"].shape == (0,)

    disc = torch.load(paths["discriminator"], map_location="cpu", weights_only=True)
    assert set(disc) == {"iter", "discriminator"} and disc["iter"] == 0
    assert wf.sha256_fingerprint(disc["discriminator"]) == FINGERPRINT_DISC
