#!/usr/bin/env bash
# One-shot GPU check: build with nvcc, run the whole test suite (every CUDA test of every kernel:
# resampling, labelling, component statistics, tiles, the Predictor, training), then the GPU benchmarks at full size; logs
# and JSON land in $OUT (bench/results/gpu-local here).
#   bash bench/gpu/run.sh            (on a machine with a CUDA GPU, nvcc, torch, pytest-benchmark)
set -uo pipefail
OUT=${OUT:-bench/results/gpu-local}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# Wheels carried along for packages the GPU machine lacks (nibabel; nnunetv2 and its dependencies for the
# nnU-Net side of the inference benchmarks, which are skipped without them); see the device notes in README.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
[ -d .shared/data ] && export PETFAST_SHARED_DATA=$PWD/.shared/data
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
nvcc --version | tail -1 | tee -a "$OUT/gpu.txt"
t0=$(date +%s)
# Only the local architecture: a full multi-arch build is what CI compiles.
PETFAST_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=native" \
  python3 -m pip install --no-build-isolation --no-deps -v . >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu.txt"
cd /tmp  # import the installed package, not the source tree
python3 -c "import petfast; print('cuda_available', petfast.cuda_available()); assert petfast.cuda_available()" || exit 1
cd - >/dev/null
python3 -m pytest tests -q -rs -p no:cacheprovider --junitxml="$OUT/tests.xml" 2>&1 | tee "$OUT/tests.log" | tail -25
# GPU benchmarks only (the CPU ones are measured on the development machine): device time is scarce.
python3 -m pytest bench --full -q -p no:cacheprovider -k gpu --benchmark-json="$OUT/bench_full.json" 2>&1 \
  | tee "$OUT/bench.log" | grep -A40 "against peers"
