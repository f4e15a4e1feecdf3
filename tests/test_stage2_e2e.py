"""Stage 2 end to end on the tiny network: cached set -> `rate_search.py -m` (joblib) -> selection -> stage 3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from skimage import data

from entrypoints.rate_search import sweep_values  # importing it registers the ${sweep:…} resolver of search.yaml
from entrypoints.runners import run_stage2
from lightning_modules.evaluation.metrics import PatchDistributionMetrics
from lightning_modules.model_file import ModelFile, load_model_file, save_model_file
from lightning_modules.networks.dcvic import DCVIC, TINY_ARCHITECTURE, build_dcvic
from lightning_modules.stage2.jobs import SearchSettings, average_bpp, run_rate_search, run_selection, search_grid
from lightning_modules.stage2.search import write_search_csv
from lightning_modules.stage2.selection import RandomPatchFeatures, select_betas
from lightning_modules.stage2.validation_set import build_validation_set, tokenizer_from_model_file
from lightning_modules.training.beta_sampling import SelectedBetaSampler, load_selected_betas

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.15
TOLERANCE = 0.003
SETTINGS = SearchSettings(tolerance=TOLERANCE, batch_size=2, num_workers=0, device="cpu")


def rate_controlled_tiny_model() -> DCVIC:
    """Tiny DC-VIC whose rate falls with beta_rate, as training makes it (random weights do not).

    The encoder's condition keeps only the linear Fourier term ``b + 1`` in [0, 2]; every encoder FT is the
    identity except the last, which scales y by ``1 - 0.45·(b + 1)``.
    """
    torch.manual_seed(0)
    model = build_dcvic(**TINY_ARCHITECTURE)
    encoder = model.encoder
    with torch.no_grad():
        for layer in (encoder.mlp[0], encoder.mlp[2]):
            layer.weight.zero_()
            layer.bias.zero_()
            layer.weight[0, 0] = 1.0
        encoder.mlp[0].bias[0] = 1.0
        for ft in encoder.beta_ft_list:
            for conv in (ft.scale, ft.shift):
                conv.weight.zero_()
                conv.bias.zero_()
        last = encoder.beta_ft_list[-1]
        last.shared[0].weight.zero_()
        last.shared[0].bias.zero_()
        last.shared[0].weight[0, 0] = 1.0
        last.scale.weight[:, 0] = -0.45
    return model.eval()


@pytest.fixture(scope="module")
def stage2_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stage2")
    model_file = save_model_file(
        root / "stage_1_3" / "model.pt",
        ModelFile(architecture=TINY_ARCHITECTURE, state_dict=rate_controlled_tiny_model().state_dict()),
    )
    images = root / "validation"
    images.mkdir()
    for name in ("astronaut", "coffee", "camera"):
        Image.fromarray(getattr(data, name)()).convert("RGB").save(images / f"{name}.jpg")
    val_set = root / "val_set"
    build_validation_set(images, val_set, tokenizer_from_model_file(model_file), num_images=2, crop_size=256)
    return {"root": root, "model_file": model_file, "val_set": val_set}


def test_search_bpp_is_the_models_quantised_rate():
    model = rate_controlled_tiny_model()
    torch.manual_seed(1)
    batches = [(torch.rand(n, 3, 64, 64) * 2 - 1, torch.randint(0, 256, (n, 8, 8))) for n in (2, 1)]
    with torch.no_grad():
        expected = [float(model(x, 1.2, 2.0, vq_indices=idx).qbpp()) for x, idx in batches]
    assert average_bpp(model, batches, 1.2, 2.0) == pytest.approx(sum(expected) / 2, rel=1e-6)
    rates = [average_bpp(model, batches[:1], beta_rate, 2.0) for beta_rate in (0.0, 0.5, 1.0)]
    assert rates[0] > rates[1] > rates[2]


def test_the_pairs_found_depend_neither_on_workers_nor_on_an_old_memo(stage2_inputs: dict[str, Path], tmp_path: Path):
    """The memo saves recomputing points but never steers a search: when jobs seeded their brackets from whatever
    the memo held, two runs of stage 2 on one model selected different pairs (design §5.2)."""
    inputs = (str(stage2_inputs["model_file"]), str(stage2_inputs["val_set"]))
    targets, memo = [TARGET * 0.9, TARGET, TARGET * 1.1], str(tmp_path / "memo")

    def found(results) -> list[tuple[float, float, float]]:
        return [(r.target_bpp, r.best.beta_rate, r.best.avg_bpp) for r in results]

    first = search_grid(*inputs, str(tmp_path / "one"), memo, [1.0, 3.0], targets, SETTINGS, workers=1)
    assert all(r.converged for r in first) and len({r.best.beta_rate for r in first[:3]}) == 3
    full_memo = search_grid(*inputs, str(tmp_path / "two"), memo, [1.0, 3.0], targets, SETTINGS, workers=2)
    fresh = search_grid(*inputs, str(tmp_path / "three"), str(tmp_path / "memo3"), [1.0, 3.0], targets, SETTINGS, 2)
    assert found(full_memo) == found(first) == found(fresh)
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "two").glob("*.json"))]
    assert len(records) == 6 and all(r["model_evaluations"] == 0 for r in records)  # every point from the memo


@pytest.mark.slow
def test_sweep_select_and_stage3(stage2_inputs: dict[str, Path]):
    out = stage2_inputs["root"] / "out"
    common = [f"model_file={stage2_inputs['model_file']}", f"val_set={stage2_inputs['val_set']}", f"output_dir={out}"]
    sweep = [
        sys.executable,
        "entrypoints/rate_search.py",
        "-m",
        *common,
        "beta_vq=1.0,3.0",
        f"target_bpp={TARGET}",
        "search.device=cpu",
        "search.num_workers=1",  # DataLoader workers inside the loky job processes
        "search.batch_size=2",
        f"search.tolerance={TOLERANCE}",
        "hydra.launcher.n_jobs=2",
    ]
    done = subprocess.run(sweep, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Joblib.Parallel" in done.stdout + done.stderr  # the joblib launcher ran the jobs
    records = [json.loads(p.read_text()) for p in sorted((out / "search").glob("*.json"))]
    assert [r["beta_vq"] for r in records] == [1.0, 3.0] and all(r["converged"] for r in records)
    assert all(abs(r["best"]["avg_bpp"] - TARGET) <= TOLERANCE for r in records)

    again = run_rate_search(
        str(stage2_inputs["model_file"]),
        str(stage2_inputs["val_set"]),
        str(out / "search"),
        str(out / "memo"),
        1.0,
        TARGET,
        SETTINGS,
    )
    assert again.converged
    assert (
        json.loads((out / "search" / "result_beta_vq_1.00_target_rate_0.150.json").read_text())["model_evaluations"]
        == 0
    )  # the memo answered every point

    select = [
        sys.executable,
        "entrypoints/select_betas.py",
        *common,
        "beta_vqs=[1.0,3.0]",
        f"targets_bpp=[{TARGET}]",
        f"tolerance={TOLERANCE}",
        "device=cpu",
        "batch_size=2",
        "fid_min_images=2",
        "save_images=true",
        "fid_features._target_=lightning_modules.stage2.selection.RandomPatchFeatures",
        "+fid_features.num_features=8",
    ]
    done = subprocess.run(select, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    selection = out / "selection"
    result = pd.read_csv(selection / "target_rate_0.150" / "result.csv", index_col=0)
    assert list(result.columns) == ["beta_vq", "beta_rate", "bpp", "psnr", "fid", "score"] and len(result) == 2
    assert result["score"].is_monotonic_decreasing
    assert result["score"].tolist() == pytest.approx((2 * result["psnr"] - result["fid"]).tolist())
    chosen = pd.read_csv(selection / "beta_selection_results.csv")
    assert list(chosen.columns) == ["target_rate", "selected_beta_vq", "selected_beta_rate"]
    assert chosen.iloc[0]["selected_beta_vq"] == result.iloc[0]["beta_vq"]
    assert len(list((selection / "images").rglob("*.png"))) == 2 * 2

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "+stage='3'",
                "network=tiny",
                "data=sample",
                "betas=from_file",
                f"betas.path={selection / 'selected_betas.yaml'}",
            ],
        )
    sampler = instantiate(cfg.betas)
    assert isinstance(sampler, SelectedBetaSampler)
    assert sampler.beta_rate.tolist() == pytest.approx([result.iloc[0]["beta_rate"]])
    assert sampler.beta_vq.tolist() == [result.iloc[0]["beta_vq"]]


def test_stage2_as_a_training_stage(stage2_inputs: dict[str, Path], tmp_path: Path):
    on_plateau = 0.086  # the model's rate for beta_rate >= 1.5: found at the first point, keeps the test short
    overrides = [
        "+stage='2'",
        "network=tiny",
        "data=sample",
        f"paths.runs_dir={tmp_path}",
        f"stage2.model_file={stage2_inputs['model_file'].parent}",
        f"stage2.images={stage2_inputs['root']}/validation",
        "stage2.num_images=2",
        "stage2.beta_vqs=[2.0]",
        f"stage2.targets_bpp=[{on_plateau}]",
        "stage2.workers=1",
        f"stage2.search.tolerance={TOLERANCE}",
        "stage2.search.batch_size=2",
        "stage2.search.num_workers=0",
        "stage2.search.device=cpu",
        "stage2.fid_min_images=2",
        "stage2.fid_features._target_=lightning_modules.stage2.selection.RandomPatchFeatures",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    selected = run_stage2(cfg)
    assert selected == tmp_path / "dcvic" / "stage_2" / "selected_betas.yaml"
    sampler = load_selected_betas(str(selected))
    assert sampler.beta_vq.tolist() == [2.0]
    found = pd.read_csv(selected.parent / "search" / "result_beta_vq_2.00_target_rate_0.086.csv", index_col=0)
    assert sampler.beta_rate.tolist() == pytest.approx([found.iloc[0]["beta_rate"]])
    assert abs(found.iloc[0]["avg_bpp"] - on_plateau) <= TOLERANCE
    assert (selected.parent / "target_rate_0.086" / "result.csv").is_file()
    assert len(list((selected.parent / "val_set").rglob("*.npy"))) == 2


def test_selection_refuses_another_models_search(stage2_inputs: dict[str, Path], tmp_path: Path):
    (tmp_path / "result_beta_vq_1.00_target_rate_0.150.json").write_text(json.dumps({"model_fingerprint": "00"}))
    with pytest.raises(ValueError, match="come from another model"):
        run_selection(
            str(stage2_inputs["model_file"]),
            str(stage2_inputs["val_set"]),
            str(tmp_path),
            str(tmp_path / "sel"),
            [1.0],
            [TARGET],
            RandomPatchFeatures(8),
        )


def test_selection_says_which_target_was_never_reached(tmp_path: Path):
    from lightning_modules.stage2.search import bisect_search

    missed = bisect_search(lambda b: 0.3 - 0.01 * b, target_bpp=TARGET)
    write_search_csv(missed, 1.0, tmp_path / "result_beta_vq_1.00_target_rate_0.150.csv")
    with pytest.raises(ValueError, match="no beta_vq reached target 0.15"):
        select_betas(
            rate_controlled_tiny_model(),
            [],
            tmp_path,
            tmp_path / "sel",
            [1.0],
            [TARGET],
            lambda: PatchDistributionMetrics(RandomPatchFeatures(8), min_images=2),
        )


@pytest.mark.slow
def test_whole_recipe_runs_in_order(stage2_inputs: dict[str, Path], tmp_path: Path):
    """`train.py -m +stage=1_1,1_2,1_3,2,3`: stage 2 finds stage 1_3's model, stage 3 finds stage 2's pairs."""
    runs = tmp_path / "runs"
    command = [
        sys.executable, "entrypoints/train.py", "-m", "+stage=1_1,1_2,1_3,2,3", "network=tiny", "data=sample",
        "++data.crop_size=64", "++data.batch_size=2", f"paths.runs_dir={runs}", f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.openimage_root={stage2_inputs['root']}", "max_iterations=2", "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false", "callbacks.progress=null",
        # stage 2 has no data node and only stage 2 a stage2 node, hence ++; an untrained model gets a loose tolerance
        "++stage2.num_images=2", "++stage2.beta_vqs=[1.0,3.0]", "++stage2.targets_bpp=[0.1,0.2]", "++stage2.workers=2",
        "++stage2.search.tolerance=10", "++stage2.search.batch_size=2", "++stage2.search.num_workers=0",
        "++stage2.search.device=cpu", "++stage2.fid_min_images=2",
        "++stage2.fid_features._target_=lightning_modules.stage2.selection.RandomPatchFeatures",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    stage_2, stage_3 = runs / "dcvic" / "stage_2", runs / "dcvic" / "stage_3"
    selected = load_selected_betas(str(stage_2 / "selected_betas.yaml"))
    assert len(list((stage_2 / "search").glob("result_*.csv"))) == 4
    quality_table = load_model_file(stage_3 / "model.pt").quality_table
    assert quality_table == {"beta_rate": selected.beta_rate.tolist(), "beta_vq": selected.beta_vq.tolist()}


def test_search_and_select_configs_compose():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        search = compose(
            "search", overrides=["search=bisect", "model_file=m.pt", "val_set=v"], return_hydra_config=True
        )
        select = compose("select", overrides=["model_file=m.pt", "val_set=v", "output_dir=/o"])
    settings = instantiate(search.search)
    assert settings == SearchSettings(method="bisect", num_workers=4, device="auto")
    grid = {key: value.split(",") for key, value in search.hydra.sweeper.params.items()}
    assert len(grid["beta_vq"]) * len(grid["target_bpp"]) == 14 * 5
    assert grid["beta_vq"] == sweep_values(select.beta_vqs).split(",")
    assert search.hydra.launcher._target_.endswith("JoblibLauncher")
    assert select.search_dir == "/o/search" and select.alpha == 2.0


def test_unknown_search_method_fails_before_any_work():
    with pytest.raises(ValueError, match="unknown search method 'newton'"):
        SearchSettings(method="newton")
