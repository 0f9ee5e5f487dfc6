#!/usr/bin/env bash
# Issue 13 on the GPU machine, one call under 8 minutes, nothing to carry: the anatomy test
# (busy share from torch.profiler), `advise` on the built-in demo (launch-bound at batch 1) and on
# a Llama-shaped 12-block model built from its config with RANDOM weights (no checkpoint travels),
# then `prune --levers auto` against pruning alone on that model at -30%. Everything under $OUT.
#
#   run: bash benchmarks/gpu_levers_session.sh            (device tool; timeout_s 540)
#
# CALL_LIMIT_S (default 450) is the hard stop; levers_benchmark.py writes levers.{json,md} after
# every model, so what finished still comes back.
set -uo pipefail
START=$SECONDS
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/energyprune-out}
LIMIT=${CALL_LIMIT_S:-450}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/levers-session.log") 2>&1
echo "== $(date -u +%FT%TZ) gpu_levers_session.sh (commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu --format=csv | tee "$OUT/nvidia-smi.txt"
echo "== +$((SECONDS - START))s anatomy test"
timeout -k 5 90 python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -k anatomy 2>&1 | tee "$OUT/gpu-anatomy-test.log"
left=$((LIMIT - (SECONDS - START) - 15))
echo "== +$((SECONDS - START))s levers benchmark (${left}s left)"
timeout -k 10 "$left" python3 benchmarks/levers_benchmark.py --device cuda --models demo,llama-config \
    --prune llama-config --seq-len 128 --window-s 1.0 --out-dir "$OUT"
echo "== +$((SECONDS - START))s done (exit $?); $OUT: $(ls "$OUT" | tr '\n' ' ')"
