#!/usr/bin/env bash
# Everything the GPU path has to show, as one prepared run on a GPU machine, sized for one 10-minute command:
#   1. the GPU tests (tests/test_gpu.py: files made there decode on a CPU, the entropy path there, a training step);
#   2. benchmarks/codec_speed.py --device cuda: exact (float32) / fast (bf16) / fast with the entropy path on the
#      GPU, full-size network, 512×768, alternating, medians;
#   3. benchmarks/train_speed.py on the GPU at the paper's batch (6 × 256²), stages 1_2 and 1_3, fp32 and bf16.
# Results and a log go to $OUT (default benchmarks/results/gpu); copy the JSON files into benchmarks/results/.
# A machine without PyPI needs the wheels first, fetched where pip works: bash benchmarks/gpu_wheels.sh (into .whl/).
#   OUT=/some/folder bash benchmarks/gpu_check.sh           # on the GPU machine, from the repository root
#   STEPS="train_1_2 train_1_3" bash benchmarks/gpu_check.sh   # only those steps (tests, codec, train_1_2, train_1_3)
#   QUICK=1 DEVICE=cpu bash benchmarks/gpu_check.sh         # the same steps at toy sizes, on a CPU (a dry run)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
STEPS=${STEPS:-tests codec train_1_2 train_1_3}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1 THP_MEM_ALLOC_ENABLE=1
export PYTHONPATH="$PWD"
if ! "$PY" -c "import compressai, hydra, taming, torch_fidelity, pytorch_fid, bjontegaard" 2>/dev/null; then
  compgen -G ".whl/*.whl" >/dev/null || { echo "missing packages and no .whl/: run benchmarks/gpu_wheels.sh"; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dcvic_site \
    .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/dcvic_site:$PWD"
fi
failed=0
step() {  # step NAME SECONDS COMMAND...: run it with a time limit, log it, keep going if it fails
  local name=$1 seconds=$2
  shift 2
  echo "== $name ($(date -u +%T)): $*" | tee -a "$LOG"
  timeout "$seconds" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || failed=1
}
command -v nvidia-smi >/dev/null && nvidia-smi | tee -a "$LOG"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$LOG"
if [ -n "$QUICK" ]; then
  speed=(--quick --threads 2)
  train=(--quick --iterations 1 --warmup 1)
else
  speed=(--rounds 3 --threads 8)
  train=(--iterations 5 --warmup 2)
fi
# The limits add up to 550 s, inside one 600-s device command; STEPS picks a subset to rerun.
for name in $STEPS; do
  case $name in
    tests) step gpu-tests 100 "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider ;;
    codec) step codec-speed 170 "$PY" benchmarks/codec_speed.py --device "$DEVICE" "${speed[@]}" \
      --out "$OUT/codec_speed_full_512x768_$DEVICE.json" ;;
    train_1_2 | train_1_3) step "train-speed-${name#train_}" 140 "$PY" benchmarks/train_speed.py \
      --stage "${name#train_}" "${train[@]}" --out "$OUT/train_speed_${name#train_}_$DEVICE.json" ;;
    *) echo "unknown step $name (tests, codec, train_1_2, train_1_3)" | tee -a "$LOG"; failed=1 ;;
  esac
done
echo "== done, failed=$failed; results in $OUT" | tee -a "$LOG"
exit "$failed"
