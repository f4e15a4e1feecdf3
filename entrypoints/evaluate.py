"""Rate-distortion evaluation on real bitstreams: ``python entrypoints/evaluate.py model_file=M images=DIR``.

Composes ``conf/evaluate.yaml`` (``metrics`` picks the metric networks) and runs
:func:`lightning_modules.evaluation.rate_distortion.evaluate`, which writes ``summary.csv``, ``per_image.csv``,
the RD plots, the bitstreams and the reconstructions into ``output_dir`` and resumes when re-run there.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch allocates: huge-page activations (design §6.1)

import hydra  # noqa: E402
import pandas as pd  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from entrypoints.preflight import exit_on_config_problems  # noqa: E402
from lightning_modules.evaluation.bd_rate import BD_RATE_FILE, format_bd_table  # noqa: E402
from lightning_modules.evaluation.rate_distortion import evaluate  # noqa: E402

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    exit_on_config_problems(cfg, "evaluate.py")
    options = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # a `???` left unset stops here
    options.pop("metrics")
    options.pop("targets")
    suite = instantiate(cfg.metrics)
    summary = evaluate(suite=suite, targets=instantiate(cfg.targets), **options)
    print(summary.to_string(index=False))
    if options["reference_dataset"] is not None:
        print(format_bd_table(pd.read_csv(Path(options["output_dir"]) / BD_RATE_FILE)))


if __name__ == "__main__":
    main()
