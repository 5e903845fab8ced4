#!/usr/bin/env bash
# One session on a lent GPU machine: build fastgan against that machine's torch, run the whole test
# suite (the gpu-marked tests included), a compute-sanitizer pass over the CUDA kernels, and the
# benchmark suite. Everything it prints and writes lands in $OUT (default ./gpu-session-out).
#
#   benchmarks/gpu/session.sh [tests] [sanitize] [bench] [bench-quick]   (default: all but quick)
#
# FASTGAN_GIT_SHA names the commit in the benchmark CSV when the copy has no .git.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu-session-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PY=${PY:-python3}
steps=${*:-tests sanitize bench}
status=0
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
fail() { echo "!!! $*"; status=1; }

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
$PY -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
nvcc --version | tail -1

step build "(TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:=9.0})"
export TORCH_CUDA_ARCH_LIST MAX_JOBS=${MAX_JOBS:-16}
if ! $PY -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"; echo "!!! build failed"; exit 1
fi
$PY -m fastgan.cli info && $PY -m fastgan.cli check || fail "fastgan check"

for s in $steps; do
    case $s in
    tests)
        step "tests: pytest tests (gpu-marked included)"
        FASTGAN_REQUIRE_EXT=1 timeout 300 $PY -m pytest tests -q -ra -p no:cacheprovider \
            --junitxml="$OUT/tests.xml" 2>&1 | tail -60 || fail "tests" ;;
    sanitize)
        step "compute-sanitizer memcheck + racecheck over the CUDA kernels"
        for tool in memcheck racecheck; do
            timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 \
                $PY benchmarks/gpu/sanitize_cases.py >"$OUT/sanitize-$tool.log" 2>&1 \
                || fail "compute-sanitizer $tool (see sanitize-$tool.log)"
            tail -3 "$OUT/sanitize-$tool.log"
        done ;;
    bench)
        step "benchmarks: fastgan bench --device cuda"
        timeout 480 $PY -m fastgan.cli bench --device cuda --out "$OUT/results" 2>&1 \
            | tee "$OUT/bench.log" | grep -v "^\s*$" | tail -80 || fail "bench" ;;
    bench-quick)
        step "benchmarks: fastgan bench --device cuda --quick"
        timeout 150 $PY -m fastgan.cli bench --device cuda --quick --out "$OUT/results" 2>&1 \
            | tee "$OUT/bench.log" | tail -60 || fail "bench --quick" ;;
    *) echo "unknown step $s"; exit 2 ;;
    esac
done
step "done, status $status"
exit $status
