"""Checkpoint conversion from the authors' formats, dcvic model files and the VQGAN loader."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_modules.conversion import (
    ConversionError,
    convert_authors_checkpoint,
    convert_state_dict,
    rename_key,
)
from lightning_modules.model_file import ModelFile, load_model_file, save_model_file
from lightning_modules.networks.conditioning import PAPER_BETA_RANGE, BetaRange
from lightning_modules.networks.dcvic import TINY_ARCHITECTURE, build_dcvic
from lightning_modules.networks.vqgan import FrozenVQGAN, load_vqgan
from lightning_modules.training.beta_sampling import NoBetaSampler, SelectedBetaSampler, UniformBetaSampler
from lightning_modules.training.stage_init import export_model_file
from tests.support.weight_fill import filled_comp_model_state_dict


def test_every_authors_key_is_accounted_for(golden, authors_checkpoints):
    model_file, report = convert_authors_checkpoint(
        authors_checkpoints["comp_model"], authors_checkpoints["discriminator"]
    )
    assert len(report.converted) + len(report.derived) + len(report.dropped) == 1073
    assert len(report.converted) == 1049 and len(report.derived) == 24 and not report.dropped
    assert len(report.renamed) == 14 and all("entropy_model_z._" in k for k in report.renamed)
    assert len(model_file.discriminator) == 14


def test_both_compressai_spellings_convert_to_the_same_weights(golden):
    target = build_dcvic().state_dict()
    new_names, _ = convert_state_dict(filled_comp_model_state_dict("1.2.8"), target)
    old_names, _ = convert_state_dict(filled_comp_model_state_dict("1.2.4"), target)
    assert torch.equal(new_names["entropy_model_z.matrices.0"], old_names["entropy_model_z.matrices.0"])
    assert all(torch.equal(new_names[k], old_names[k]) for k in new_names)


def test_dataparallel_prefix_is_stripped():
    assert rename_key("module.encoder.conv1.weight") == "encoder.conv1.weight"
    assert rename_key("module.entropy_model_z._matrix3") == "entropy_model_z.matrices.3"


def test_unknown_and_missing_keys_are_named():
    target = build_dcvic(**TINY_ARCHITECTURE).state_dict()
    source = {k: v for k, v in target.items() if k != "encoder.conv1.bias"}
    source["encoder.conv9.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError) as info:
        convert_state_dict(source, target)
    assert "encoder.conv9.weight" in str(info.value) and "encoder.conv1.bias" in str(info.value)


def test_shape_mismatch_is_refused():
    target = build_dcvic(**TINY_ARCHITECTURE).state_dict()
    source = dict(target, **{"encoder.conv1.bias": torch.zeros(3)})
    with pytest.raises(ConversionError, match="shape mismatch"):
        convert_state_dict(source, target)


def test_converted_file_round_trips(tmp_path, golden_model_file, golden):
    path = save_model_file(tmp_path / "m.pt", golden_model_file)
    loaded = load_model_file(path)
    assert loaded.fingerprint() == golden_model_file.fingerprint()
    assert loaded.quality_table["beta_rate"][0] == 2.29


def test_convert_entrypoint(tmp_path, authors_checkpoints, capsys):
    from entrypoints.convert_checkpoint import main

    assert main(["--comp-model", str(authors_checkpoints["comp_model"]), "--out", str(tmp_path / "m.pt")]) == 0
    assert "1049 tensors converted" in capsys.readouterr().out
    assert main(["--comp-model", str(tmp_path / "absent.pth.tar"), "--out", str(tmp_path / "x.pt")]) == 1
    assert "github.com/iwa-shi/DC_VIC" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_missing_model_file_names_the_file_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt.*convert_checkpoint.py"):
        load_model_file(tmp_path / "absent.pt")


def test_authors_file_is_not_mistaken_for_a_model_file(authors_checkpoints):
    with pytest.raises(ValueError, match="convert it first"):
        load_model_file(authors_checkpoints["comp_model"])


def test_garbage_model_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable model file"):
        load_model_file(tmp_path / "bad.pt")


def test_tiny_model_file_builds_the_same_model(tmp_path):
    model = build_dcvic(**TINY_ARCHITECTURE)
    path = save_model_file(tmp_path / "tiny.pt", ModelFile(TINY_ARCHITECTURE, model.state_dict()))
    rebuilt = load_model_file(path).build_model()
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values(), strict=True)
    )


def test_vqgan_loads_strictly_from_the_taming_format(authors_checkpoints):
    vqgan = load_vqgan(authors_checkpoints["vqgan"])  # file carries loss.* keys and Lightning extras
    assert not vqgan.training and not any(p.requires_grad for p in vqgan.parameters())


def test_vqgan_errors_name_the_file_and_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="vq-f8-n256"):
        load_vqgan(tmp_path / "model.ckpt")
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "wrong.ckpt")
    with pytest.raises(ValueError, match="does not match"):
        load_vqgan(tmp_path / "wrong.ckpt")
    torch.save({"weights": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="not a taming VQGAN checkpoint"):
        load_vqgan(tmp_path / "foreign.ckpt")


def test_build_dcvic_loads_vqgan_checkpoint(tmp_path):
    small = dict(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)
    vqgan = FrozenVQGAN(**small)
    torch.save({"state_dict": vqgan.state_dict()}, tmp_path / "v.ckpt")
    model = build_dcvic(vqgan_checkpoint=str(tmp_path / "v.ckpt"), **TINY_ARCHITECTURE)
    assert torch.equal(model.vq_model.quantize.embedding.weight, vqgan.quantize.embedding.weight)


def test_only_selected_pairs_become_a_quality_table(tmp_path):
    """Stage 1_x exports carry no table (nothing was selected for them); stage 3's carries the pairs it trained on."""
    network = build_dcvic(**TINY_ARCHITECTURE)
    for sampler in (NoBetaSampler(), UniformBetaSampler()):
        path = export_model_file(
            SimpleNamespace(network=network, betas=sampler), TINY_ARCHITECTURE, tmp_path / "a.pt", ""
        )
        assert load_model_file(path).quality_table is None
    selected = SelectedBetaSampler([1.5, 0.5], [3.0, 1.0])
    path = export_model_file(SimpleNamespace(network=network, betas=selected), TINY_ARCHITECTURE, tmp_path / "b.pt", "")
    assert load_model_file(path).quality_table == {"beta_rate": [1.5, 0.5], "beta_vq": [3.0, 1.0]}


def test_the_beta_range_is_recorded_and_old_files_get_the_papers(tmp_path):
    wide = {**TINY_ARCHITECTURE, "beta_rate_max": 4.0, "beta_vq_max": 4.5}
    path = save_model_file(tmp_path / "wide.pt", ModelFile(wide, build_dcvic(**wide).state_dict()))
    loaded = load_model_file(path)
    assert loaded.beta_range == loaded.build_model().beta_range == BetaRange(4.0, 4.5)
    old = ModelFile(TINY_ARCHITECTURE, build_dcvic(**TINY_ARCHITECTURE).state_dict())  # no beta_*_max recorded
    assert old.beta_range == old.build_model().beta_range == PAPER_BETA_RANGE
