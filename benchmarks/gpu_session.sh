#!/usr/bin/env bash
# One call of the GPU machine (the device tool), under 8 minutes: the `gpu` tests, then the meter
# benchmark of the GPU workloads (window ladder with honest bounds included), each workload's
# results written as it finishes; everything lands under $OUT.
#
#   run: bash benchmarks/gpu_session.sh                    (carry: [".whl"] if zeus is wanted)
#   run: bash benchmarks/gpu_session.sh matmul-4096-fp16   (only these workloads)
#
# Timing on the H200 (one workload ~100 s with a 20 s reference and 15 s of measurement; the
# tests ~15 s): the whole call ~6 min. CALL_LIMIT_S (default 450) is the hard stop: `timeout`
# ends the benchmark so that what it wrote still comes back. REFERENCE_S, MAX_DURATION_S change
# the benchmark's windows.
set -uo pipefail
START=$SECONDS
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/energyprune-out}
LIMIT=${CALL_LIMIT_S:-450}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
echo "== $(date -u +%FT%TZ) gpu_session.sh $* (commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv | tee "$OUT/nvidia-smi.txt"
echo "== +$((SECONDS - START))s gpu tests"
timeout -k 5 120 python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log"
echo "== +$((SECONDS - START))s meter benchmark"
only=()
[ $# -gt 0 ] && only=(--only "$@")
left=$((LIMIT - (SECONDS - START) - 15))
timeout -k 10 "$left" python3 benchmarks/measure_benchmark.py --device cuda --out-dir "$OUT" \
    --reference-s "${REFERENCE_S:-20}" --max-duration-s "${MAX_DURATION_S:-15}" "${only[@]}"
echo "== +$((SECONDS - START))s done (exit $?); $OUT: $(ls "$OUT" | tr '\n' ' ')"
