#!/usr/bin/env bash
# One call of the GPU machine (the device tool): install carried wheels (.whl/, e.g. zeus and its
# needs), run the `gpu` tests, then the meter benchmark; everything lands under $OUT.
#
#   run: bash benchmarks/gpu_session.sh [workload ...]      (carry: [".whl"] if zeus is wanted)
#
# The benchmark of one workload takes ~2-3 minutes (a 60 s reference window included); pass
# workload names to split the three of measure_benchmark.py over several calls.
set -uo pipefail
OUT=${OUT:-/tmp/energyprune-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log"
only=()
[ $# -gt 0 ] && only=(--only "$@")
python3 benchmarks/measure_benchmark.py --device cuda --out-dir "$OUT" "${only[@]}" 2>&1 | tee "$OUT/measure.log"
