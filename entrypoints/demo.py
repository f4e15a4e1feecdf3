"""The whole DC-VIC recipe on a laptop: ``python entrypoints/demo.py`` (``make demo``).

Runs, on the scikit-image sample photos and with ``+experiment=demo`` (tiny networks, short schedules):
stage 0 (VQGAN) → 1_1 → 1_2 → 1_3 → 2 (beta search and selection) → 3, each as its own
``entrypoints/train.py`` process, then compresses and decompresses the held-out crops (the strip of each photo
that no stage trains on, ``held_out_side``) at every selected quality and writes a report folder (RD CSV and
plot, a grid of originals vs reconstructions, TensorBoard logs, and ``checks.json``: does the real bpp rise with
the quality index, is every PSNR above 14 dB).
A finished stage is reused on the next run; ``--rerun-from STAGE`` retrains that stage and every later one.
The last line printed is the report folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from datamodules.image_files import centre_crop, sample_photo, split_off_held_out
from entrypoints.train import quote_stage_choices
from lightning_modules.evaluation.metrics import build_metric_suite, psnr_per_image
from lightning_modules.images import from_uint8, read_rgb, save_png, to_chw, to_uint8
from lightning_modules.model_file import load_model_file
from lightning_modules.networks.dcvic import DCVIC, pad_to_multiple
from lightning_modules.stage2.jobs import average_bpp, load_eval_model, validation_loader
from lightning_modules.stage2.validation_set import build_validation_set, tokenizer_from_model_file
from lightning_modules.training.stage_init import resolve_model_file

REPO = Path(__file__).resolve().parents[1]
STAGES = ("0", "1_1", "1_2", "1_3", "2", "3")
STAGE_OUTPUT = {"0": "vqgan.ckpt", "2": "selected_betas.yaml"}  # every other stage ends with model.pt
UNSEEN_PHOTOS = ("retina", "stereo_motorcycle", "hubble_deep_field")
"""Photos unlike the five the demo trains on (a fundus, a workshop, deep space): reported for scale, not checked."""


def stage_dir(runs_dir: Path, run_name: str, stage: str) -> Path:
    return runs_dir / run_name / f"stage_{stage}"


def stage_output(runs_dir: Path, run_name: str, stage: str) -> Path:
    return stage_dir(runs_dir, run_name, stage) / STAGE_OUTPUT.get(stage, "model.pt")


def stage_overrides(stage: str, runs_dir: Path, run_name: str) -> list[str]:
    """The demo's command line for one stage (stage 0 trains the VQGAN that the other stages load)."""
    return [
        f"+stage={stage}",
        f"network={'vqgan_demo' if stage == '0' else 'demo'}",
        f"+experiment={'demo_stage0' if stage == '0' else 'demo'}",
        f"paths.runs_dir={runs_dir}",
        f"run_name={run_name}",
    ]


def run_stage(stage: str, runs_dir: Path, run_name: str, extra: list[str]) -> None:
    """One stage in its own process: Hydra output, logs and resume behave exactly as for a user's command."""
    train = str(REPO / "entrypoints" / "train.py")
    command = [sys.executable, train, *stage_overrides(stage, runs_dir, run_name), *extra]
    print(f"[demo] stage {stage}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def stage_config(stage: str, runs_dir: Path, run_name: str, overrides: list[str]) -> DictConfig:
    """A stage's composed config, exactly as its own process will see it (validation-set path, betas, held-out
    split, ...)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "train", overrides=quote_stage_choices([*stage_overrides(stage, runs_dir, run_name), *overrides])
        )


@torch.no_grad()
def rate_range(cfg: DictConfig) -> tuple[float, float]:
    """The bpp range every beta_vq reaches between the model's highest beta_rate and 0 on stage 2's validation crops.

    Builds the crops first (stage 2 then reuses them), so the targets are measured the way stage 2 measures.
    """
    stage = cfg.stage2
    model_file = str(resolve_model_file(stage.model_file))
    tokenizer = tokenizer_from_model_file(model_file)
    build_validation_set(
        stage.images, stage.val_set, tokenizer, stage.num_images, stage.crop_size, stage.val_seed, stage.image_pattern
    )
    model, _ = load_eval_model(model_file, "cpu")
    loader = validation_loader(stage.val_set, batch_size=int(stage.search.batch_size))
    low = max(average_bpp(model, loader, model.beta_range.rate_max, float(beta_vq)) for beta_vq in stage.beta_vqs)
    high = min(average_bpp(model, loader, 0.0, float(beta_vq)) for beta_vq in stage.beta_vqs)
    return low, high


def stage2_targets(low: float, high: float, max_tolerance: float, count: int = 5) -> tuple[list[float], float]:
    """Targets spread (log scale) over the reachable range, both ends included (every beta_vq reaches them:
    ``low`` is the highest bpp at the largest beta_rate, ``high`` the lowest at beta_rate 0), lowest first
    (quality 0), and a tolerance: 1/10 of the range, at most ``max_tolerance`` (stage 2's own, the reference's
    0.001 bpp). A looser one lets the selection, which prefers the pair with more bits inside the tolerance, lift
    quality 0 well above its target (measured: 0.039 bpp for a 0.034 target), narrowing the trade-off it shows.

    A model trained too briefly may not yet trade rate for beta_rate; then every target is "reached" at once
    (tolerance 1 bpp) so that the pipeline still completes, and a warning says the pairs are arbitrary.
    """
    if not high > low * 1.02:
        print(
            f"[demo] warning: the rate does not fall as beta_rate rises ({low:.5f} vs {high:.5f} bpp); "
            "train stage 1_2 longer for meaningful pairs",
            flush=True,
        )
        middle = (low + high) / 2
        return [round(middle * (1 + 0.01 * k), 5) for k in range(count)], 1.0
    span = np.log(high) - np.log(low)
    targets = [round(float(np.exp(np.log(low) + span * f)), 5) for f in np.linspace(0.0, 1.0, count)]
    return targets, min(max_tolerance, round((high - low) / 10, 6))


def write_crops(folder: Path, crops: dict[str, np.ndarray]) -> Path:
    """One PNG per crop into a fresh folder (a run with another split must not keep old crops)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, crop in crops.items():
        save_png(folder / f"{name}.png", crop)
    return folder


def held_out_crops(names: list[str], side: int) -> dict[str, np.ndarray]:
    """The held-out crop of each training photo: pixels that no stage trained on (``split_off_held_out``)."""
    return {name: split_off_held_out(sample_photo(name), side)[1] for name in names}


def unseen_crops(side: int) -> dict[str, np.ndarray]:
    """Centre crops of :data:`UNSEEN_PHOTOS`, the same size as the held-out crops."""
    return {name: centre_crop(sample_photo(name), side) for name in UNSEEN_PHOTOS}


DETAIL_SIDE = 96
"""Side of each image's detail window in ``reconstructions.png``: shown at about 2.4× its native size, where the
overview shows the 192² crops at about 1.2× and so the fine detail the qualities differ in is small."""


def busiest_window(image: np.ndarray, side: int = DETAIL_SIDE) -> tuple[int, int]:
    """Top-left corner of the ``side × side`` window (on a grid of ``side / 4``) with the most gradient energy in the
    original: a choice made from the original alone, never from the reconstructions."""
    luma = image[..., :3].astype(np.float64).mean(axis=2)
    energy = np.zeros_like(luma)
    energy[:, 1:] += np.diff(luma, axis=1) ** 2
    energy[1:, :] += np.diff(luma, axis=0) ** 2
    height, width = luma.shape
    step = max(side // 4, 1)
    corners = itertools.product(range(0, max(height - side, 0) + 1, step), range(0, max(width - side, 0) + 1, step))
    return max(corners, key=lambda corner: energy[corner[0] : corner[0] + side, corner[1] : corner[1] + side].sum())


def reconstruction_grid(eval_dir: Path, held_out: Path, per_image, path: Path) -> Path:
    """Per image two rows: the original, then each quality with that image's real bpp and PSNR; below them the same
    detail window of each, enlarged (its place marked on the original)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    images = sorted(held_out.glob("*.png"))
    settings = list(dict.fromkeys(per_image["setting"]))
    columns = len(settings) + 1
    fig, axes = plt.subplots(2 * len(images), columns, figsize=(2.2 * columns, 4.5 * len(images)))
    for index, image in enumerate(images):
        row = 2 * index
        original = read_rgb(image)
        side = min(DETAIL_SIDE, *original.shape[:2])
        top, left = busiest_window(original, side)
        window = (slice(top, top + side), slice(left, left + side))
        axes[row, 0].imshow(original)
        axes[row, 0].add_patch(Rectangle((left, top), side, side, fill=False, edgecolor="yellow"))
        axes[row, 0].set_title("original", fontsize=8)
        axes[row + 1, 0].imshow(original[window], interpolation="nearest")
        axes[row + 1, 0].set_title(f"detail ({side}² px, yellow box)", fontsize=8)
        for col, setting in enumerate(settings, start=1):
            reconstruction = read_rgb(eval_dir / "reconstructions" / setting / image.name)
            axes[row, col].imshow(reconstruction)
            point = per_image[(per_image["setting"] == setting) & (per_image["image"] == image.name)].iloc[0]
            axes[row, col].set_title(f"{setting}: {point['bpp']:.3f} bpp, {point['PSNR']:.1f} dB", fontsize=8)
            axes[row + 1, col].imshow(reconstruction[window], interpolation="nearest")
            axes[row + 1, col].set_title(f"{setting} detail", fontsize=8)
    for axis in axes.flat:
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


PSNR_THRESHOLD_DB = 14.0
"""Below this the held-out reconstructions stop being recognisably their inputs (the demo reaches 15–20 dB)."""
RATE_SPAN_TARGET = 1.5
"""The demo's rate range: the highest quality's real bpp at least this multiple of the lowest's."""
PSNR_GAIN_TARGET_DB = 1.0
"""The demo's fidelity range: PSNR from the lowest to the highest quality rises by at least this much."""


@torch.no_grad()
def vqgan_reconstruction_psnr(model: DCVIC, held_out: Path) -> float:
    """Mean PSNR of the model's frozen VQGAN decoding each held-out image from its own (true) codes.

    The codec decodes *predicted* codes through this VQGAN, so unless the fusion blocks have learned to add detail
    this is about the best PSNR any quality can reach: when the qualities' PSNRs sit at it, extra bits cannot show.
    """
    vqgan = model.eval().vq_model
    values = []
    for path in sorted(held_out.glob("*.png")):
        original = to_chw(read_rgb(path)).unsqueeze(0)
        x = from_uint8(original)
        h, w = x.shape[-2:]
        padded = pad_to_multiple(x, model.pad_multiple)  # as the codec pads
        decoded = vqgan.decode(vqgan.encode(padded).latent)[..., :h, :w]
        values.append(float(psnr_per_image(to_uint8(decoded), original)))
    return sum(values) / len(values)


def report_checks(
    summary,
    selected_beta_rate: list[float] | None = None,
    vqgan_psnr_db: float | None = None,
    unseen_summary=None,
) -> dict:
    """What a person should see in the report: one model spans a range of rates and fidelities.

    ``summary`` holds one row per quality (q0 first) with the held-out images' real bpp and PSNR;
    ``selected_beta_rate`` is stage 2's choice per quality (the model's quality table), which must fall
    strictly as the quality index rises (a higher target rate needs a lower rate weight). ``unseen_summary``,
    the same table for :data:`UNSEEN_PHOTOS`, is recorded for scale and checks nothing.
    """
    bpp, psnr = summary["bpp"].tolist(), summary["PSNR"].tolist()
    checks = {
        "real_bpp_by_quality": bpp,
        "psnr_by_quality": psnr,
        "real_bpp_rises_with_quality": all(low < high for low, high in itertools.pairwise(bpp)),
        "bpp_ratio_highest_to_lowest": bpp[-1] / bpp[0],
        "bpp_ratio_target": RATE_SPAN_TARGET,
        "bpp_ratio_met": bpp[-1] / bpp[0] >= RATE_SPAN_TARGET,
        "psnr_gain_db": psnr[-1] - psnr[0],
        "psnr_gain_target_db": PSNR_GAIN_TARGET_DB,
        "psnr_gain_met": psnr[-1] - psnr[0] >= PSNR_GAIN_TARGET_DB,
        "psnr_threshold_db": PSNR_THRESHOLD_DB,
        "min_psnr_db": min(psnr),
        "psnr_above_threshold": min(psnr) > PSNR_THRESHOLD_DB,
    }
    if selected_beta_rate is not None:
        checks["selected_beta_rate"] = list(selected_beta_rate)
        checks["selection_monotone"] = all(a > b for a, b in itertools.pairwise(selected_beta_rate))
    if vqgan_psnr_db is not None:
        checks["vqgan_reconstruction_psnr_db"] = vqgan_psnr_db
    if unseen_summary is not None:
        checks["unseen_photos"] = {
            "names": list(UNSEEN_PHOTOS),
            "real_bpp_by_quality": unseen_summary["bpp"].tolist(),
            "psnr_by_quality": unseen_summary["PSNR"].tolist(),
        }
    return checks


def check_lines(checks: dict) -> list[str]:
    """The checks as the demo prints them, one line each."""

    def verdict(ok: bool) -> str:
        return "yes" if ok else "NO"

    lines = [
        f"real bpp rises with the quality index: {verdict(checks['real_bpp_rises_with_quality'])} "
        f"({', '.join(f'{b:.4f}' for b in checks['real_bpp_by_quality'])})",
        f"highest/lowest quality bpp: {checks['bpp_ratio_highest_to_lowest']:.2f}x "
        f"(target >= {checks['bpp_ratio_target']}x): {verdict(checks['bpp_ratio_met'])}",
        f"PSNR gain lowest -> highest quality: {checks['psnr_gain_db']:+.2f} dB "
        f"(target >= {checks['psnr_gain_target_db']} dB): {verdict(checks['psnr_gain_met'])}",
        f"lowest PSNR {checks['min_psnr_db']:.2f} dB (threshold {checks['psnr_threshold_db']} dB): "
        f"{'above' if checks['psnr_above_threshold'] else 'BELOW'}",
    ]
    if "selection_monotone" in checks:
        rates = ", ".join(f"{b:g}" for b in checks["selected_beta_rate"])
        lines.append(
            f"stage-2 beta_rate falls with the quality index: {verdict(checks['selection_monotone'])} ({rates})"
        )
    if "vqgan_reconstruction_psnr_db" in checks:
        lines.append(
            f"the stage-0 VQGAN itself (true codes, no fusion) reaches {checks['vqgan_reconstruction_psnr_db']:.2f} dB "
            "on these images: qualities near it are limited by the VQGAN, not by their bits"
        )
    if "unseen_photos" in checks:
        unseen = checks["unseen_photos"]
        bpp, psnr = unseen["real_bpp_by_quality"], unseen["psnr_by_quality"]
        lines.append(
            f"for scale, not checked: photos unlike the training ones ({', '.join(unseen['names'])}) "
            f"{bpp[0]:.4f} -> {bpp[-1]:.4f} bpp, {psnr[0]:.2f} -> {psnr[-1]:.2f} dB"
        )
    return lines


def write_report(runs_dir: Path, run_name: str, overrides: list[str]) -> Path:
    from lightning_modules.evaluation.rate_distortion import PerImageLog, evaluate

    report = runs_dir / run_name / "report"
    data = stage_config("3", runs_dir, run_name, overrides).data.train_files
    side = int(data.held_out_side)
    held_out = write_crops(report / "held_out", held_out_crops(list(data.names), side))
    model_file = stage_output(runs_dir, run_name, "3")
    model_data = load_model_file(model_file)
    selected_beta_rate = [float(b) for b in model_data.quality_table["beta_rate"]]
    qualities = range(len(selected_beta_rate))
    eval_dir = report / "evaluation"
    suite = build_metric_suite(lpips=False, dists=False, fid=False)
    summary = evaluate(
        model_file,
        held_out,
        eval_dir,
        suite,
        qualities,
        model_name="dcvic demo",
        dataset="held-out",
        reference_dataset="kodak",
    )
    summary.to_csv(report / "rd.csv", index=False)
    unseen = write_crops(report / "unseen_photos", unseen_crops(side))
    unseen_summary = evaluate(
        model_file, unseen, report / "evaluation_unseen_photos", suite, qualities, model_name="dcvic demo"
    )
    unseen_summary.to_csv(report / "rd_unseen_photos.csv", index=False)
    for plot in eval_dir.glob("rd_*.png"):
        shutil.copy(plot, report / plot.name)
    # The file keeps the rows of earlier models too (a rerun from a later stage): label the grid with this one's.
    per_image = PerImageLog(eval_dir / "per_image.csv", model_data.fingerprint().hex()).table()
    reconstruction_grid(eval_dir, held_out, per_image, report / "reconstructions.png")
    for stage in STAGES:
        logs = stage_dir(runs_dir, run_name, stage) / "tensorboard"
        if logs.is_dir():
            shutil.copytree(logs, report / "tensorboard" / f"stage_{stage}", dirs_exist_ok=True)
    print(summary[["setting", "bpp", "PSNR", "MS-SSIM"]].to_string(index=False), flush=True)
    vqgan_psnr = vqgan_reconstruction_psnr(model_data.build_model(), held_out)
    checks = report_checks(summary, selected_beta_rate, vqgan_psnr, unseen_summary)
    (report / "checks.json").write_text(json.dumps(checks, indent=2))
    for line in check_lines(checks):
        print(f"[demo] {line}", flush=True)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs", help="where the stage run folders go")
    parser.add_argument("--run-name", default="demo", help="name of this recipe run (a folder under --runs-dir)")
    parser.add_argument("--rerun-from", choices=STAGES, help="retrain this stage and every later one")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides passed to every stage")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs_dir = args.runs_dir.resolve()
    if args.rerun_from:
        for stage in STAGES[STAGES.index(args.rerun_from) :]:
            shutil.rmtree(stage_dir(runs_dir, args.run_name, stage), ignore_errors=True)
    start = time.time()
    for stage in STAGES:
        output = stage_output(runs_dir, args.run_name, stage)
        if output.is_file():
            print(f"[demo] stage {stage}: reusing {output} (--rerun-from {stage} retrains it)", flush=True)
            continue
        extra = list(args.overrides)
        if stage == "2":
            stage2 = stage_config("2", runs_dir, args.run_name, extra)
            low, high = rate_range(stage2)
            targets, tolerance = stage2_targets(low, high, max_tolerance=float(stage2.stage2.search.tolerance))
            print(f"[demo] stage-1_3 rate range {low:.5f}..{high:.5f} bpp -> targets {targets}", flush=True)
            extra += [
                f"++stage2.targets_bpp={json.dumps(targets)}",
                f"++stage2.search.tolerance={tolerance}",
            ]
        try:
            run_stage(stage, runs_dir, args.run_name, extra)
        except subprocess.CalledProcessError:
            if stage != "2":
                raise
            print(
                "[demo] warning: no beta pair met the tolerance (the rate is not yet monotone in beta_rate); "
                "selecting with a 1 bpp tolerance instead, so the pairs are arbitrary",
                flush=True,
            )
            run_stage(stage, runs_dir, args.run_name, [*extra, "++stage2.search.tolerance=1.0"])
        print(f"[demo] stage {stage} done after {time.time() - start:.0f} s", flush=True)
    report = write_report(runs_dir, args.run_name, list(args.overrides))
    print(f"[demo] finished in {time.time() - start:.0f} s; report:", flush=True)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
