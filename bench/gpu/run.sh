#!/usr/bin/env bash
# One-shot GPU check, in priority order inside a time budget (device time is scarce): build with nvcc,
# the CUDA tests of every kernel (resampling, labelling, component statistics, tiles, the Predictor,
# training), the kernel benchmarks and per-kernel profile, the whole-body inference benchmarks against
# nnU-Net, torch.compile for the network stage, the rest of the test suite. JSON and a logs archive
# land in $OUT (bench/results/gpu-local here).
#   bash bench/gpu/run.sh                 (a machine with a CUDA GPU, nvcc, torch, pytest-benchmark)
#   BUDGET=300 STAGES="build cuda-tests kernels" bash bench/gpu/run.sh
set -uo pipefail
OUT=${OUT:-bench/results/gpu-local}
BUDGET=${BUDGET:-480}  # seconds for the whole script; each stage gets what is left
STAGES=${STAGES:-"build cuda-tests kernels profile predict cpu-scaling compile other-tests"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
deadline=$(( $(date +%s) + BUDGET ))
left() { echo $(( deadline - $(date +%s) )); }
want() { [[ " $STAGES " == *" $1 "* ]] && [ "$(left)" -gt "${2:-20}" ]; }
summary=()
note() { summary+=("$1"); echo "== $1"; }

# Wheels carried along (see the device notes in README): petfast's own dependencies (nibabel, isal,
# deflate: without the last two its NIfTI I/O falls back to zlib) and cc3d for the tests; nnU-Net and
# its dependencies under .whl/nnunet for the inference benchmarks only.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
if ls .whl/nnunet/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-nn .whl/nnunet/*.whl
  # nnU-Net imports SimpleITK at start-up; its 53 MB wheel does not fit the transfer. The benchmark's
  # model folder makes nnU-Net read with nibabel, so this stand-in is only imported, never used.
  python3 -c "import SimpleITK" 2>/dev/null || { mkdir -p /tmp/site-nn/SimpleITK; cat >/tmp/site-nn/SimpleITK/__init__.py <<'EOF'
def __getattr__(name):
    raise ImportError(f"SimpleITK.{name}: a stand-in for nnU-Net's imports; SimpleITK is not installed here")
EOF
  }
fi
[ -d .shared/data ] && export PETFAST_SHARED_DATA=$PWD/.shared/data
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
nvcc --version | tail -1 | tee -a "$OUT/gpu.txt"

if want build 60; then
  t0=$(date +%s)
  # Only the local architecture: the multi-architecture build is what CI compiles.
  PETFAST_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=native" timeout $(( $(left) - 30 )) \
    python3 -m pip install --no-build-isolation --no-deps -v . >"$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; note "build FAILED"; exit 1; }
  note "build: $(( $(date +%s) - t0 )) s"
fi
cd /tmp  # import the installed package, not the source tree
python3 -c "import petfast, torch; print('petfast', petfast.__version__, 'cuda_available', petfast.cuda_available(), 'torch', torch.__version__); assert petfast.cuda_available()" \
  | tee -a "$OUT/gpu.txt" || { note "petfast does not see the GPU"; exit 1; }
cd - >/dev/null

# pytest-timeout cannot stop a kernel that never returns (the GIL is released while it waits), so
# each stage also runs under `timeout`, and its log keeps what ran before.
pytest_stage() {  # name, cap in seconds (0: what is left), pytest arguments...
  local name=$1 cap=$2; shift 2
  local t0=$(date +%s) limit=$(( $(left) - 10 ))
  [ "$cap" -gt 0 ] && [ "$cap" -lt "$limit" ] && limit=$cap
  timeout $limit python3 -m pytest -q -rs -p no:cacheprovider --timeout=180 "$@" 2>&1 | tee "$OUT/$name.log" | tail -30
  note "$name: $(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed|error)' "$OUT/$name.log" | tail -1) ($(( $(date +%s) - t0 )) s)"
}

# Every CUDA test, first: correctness before speed. Each stage has a cap, so that a kernel that never
# returns costs that stage, not the run.
want cuda-tests 60 && pytest_stage cuda-tests 150 tests -m cuda --junitxml="$OUT/cuda-tests.xml"
# Kernel benchmarks (labelling, tiles, resampling) against cupyx / torch / a copy.
want kernels 60 && pytest_stage kernels 150 bench --full -k "gpu and not predict" --benchmark-max-time=0.5 \
  --benchmark-json="$OUT/bench_kernels.json"
# Per-kernel times, and the network stage in both memory layouts.
want profile 60 && { timeout 60 python3 bench/gpu/profile_kernels.py "$OUT/profile.txt" >"$OUT/profile.log" 2>&1; \
  note "profile: rc $? (per-kernel times in profile.txt)"; }
want profile 90 && { timeout 90 python3 bench/gpu/network_ab.py "$OUT/network_ab.json" >"$OUT/network_ab.log" 2>&1; \
  note "network layouts: rc $? ($(tr -d '\n ' <"$OUT/network_ab.json" 2>/dev/null))"; }
# Whole-body inference against nnU-Net (needs .whl/nnunet; its runs are skipped without it). nnU-Net's
# files-to-files runs take about a minute (NNUNET=0 skips them), its cohort run 2 more (NNUNET=2).
case ${NNUNET:-1} in
  0) sel="gpu and not (files and nnunet) and not (cohort and nnunet)" ;;
  1) sel="gpu and not (cohort and nnunet)" ;;
  *) sel="gpu" ;;
esac
want predict 120 && PYTHONPATH=$PYTHONPATH:/tmp/site-nn pytest_stage predict 0 bench/test_bench_predict.py --full \
  -k "$sel" --benchmark-json="$OUT/bench_predict.json"
# The CPU labeller on every core of this host (its slabs' boundaries are joined by all threads at
# once since 2026-11-29; every earlier figure is from 2 cores), against cc3d on one.
want cpu-scaling 40 && pytest_stage cpu-scaling 60 bench/test_bench_components.py --full \
  -k "cpu_petfast_label and not stats or cpu_cc3d_label" --benchmark-min-rounds=3 --benchmark-max-time=0.1 \
  --benchmark-json="$OUT/bench_cpu_scaling.json"
# torch.compile and CUDA graphs for the network stage (compilation takes minutes: last, before the
# CPU tests).
want compile 150 && { timeout $(( $(left) - 10 )) python3 bench/gpu/compile_ab.py "$OUT/compile_ab.json" \
  >"$OUT/compile_ab.log" 2>&1; note "compile: rc $? ($(tr -d '\n ' <"$OUT/compile_ab.json" 2>/dev/null))"; }
# The rest of the suite, with a GPU visible to it (CI runs it without one). 8 workers of 2 threads
# each: 8 x 16 threads made the training tests overrun (2026-11-28).
want other-tests 60 && OMP_NUM_THREADS=2 pytest_stage other-tests 150 tests -m "not cuda" -rfE \
  $(python3 -c "import xdist" 2>/dev/null && echo "-n 8")

echo; echo "== summary"; printf '%s\n' "${summary[@]}"
grep -h -A60 "against peers" "$OUT"/kernels.log "$OUT"/predict.log 2>/dev/null | grep -v "^--$"
# At most 8 files come back from the device machine: the logs go in one archive.
(cd "$OUT" && tar czf logs.tar.gz --remove-files -- *.log *.txt *.xml 2>/dev/null)
