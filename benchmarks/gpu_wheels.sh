#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the packages a bare GPU machine lacks, as wheels in .whl/ (git-ignored), so that
# benchmarks/gpu_check.sh can install them there with no network. The GPU image this was written for has Python 3.12
# with torch, torchvision, lightning, torchmetrics, numpy, scipy, pandas, scikit-image, matplotlib and tensorboard;
# the versions below are the ones our own venv pins (pyproject.toml), except compressai's wheel for Python 3.12.
#   bash benchmarks/gpu_wheels.sh            # then carry .whl to the GPU machine with the working tree
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
PY_VERSION=${PY_VERSION:-3.12}
mkdir -p .whl
platforms=()
for tag in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any; do
  platforms+=(--platform "$tag")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  "${platforms[@]}" -d .whl \
  compressai==1.2.8 pytorch-msssim==1.0.0 hydra-core==1.3.8 omegaconf==2.3.0 hydra-joblib-launcher==1.2.0 \
  torch-fidelity==0.4.0 pytorch-fid==0.3.0 taming-transformers-rom1504==0.0.6 bjontegaard==1.3.0
# antlr4 4.9.3 (hydra's parser) is published as a source archive only: build its pure-Python wheel here
"$PY" -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -l .whl
du -sh .whl
