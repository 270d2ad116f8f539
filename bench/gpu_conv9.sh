#!/usr/bin/env bash
# The conv9 rows of docs/benchmark-digits-mnistm.md on one GPU, in a time budget of BUDGET_S seconds
# (560 by default: with data preparation and packing, one run of the script fits in 10 minutes).
# The chain of 20 AdaMatch and 10 DIRT-T epochs takes longer than that, so it is run twice, the
# second run continuing what the first one stopped (see below):
#
#     bash bench/gpu_conv9.sh WORK RETURN [MNIST_PICKLE]      # e.g. /tmp/g "$OUT" .gpu/mnist.pkl.gz
#
# 1. the digits-mnistm-conv9 suite's AdaMatch (20 epochs) and DIRT-T-from-AdaMatch (10 epochs) rows, 3 seeds,
#    the three seeds in parallel processes on the one card (DIRT-T of a seed starts from that seed's
#    AdaMatch model.pt). On an NVIDIA H200 (2026-11-27, dalab 0.5.0) that took 545 s + 165 s in two
#    runs: the first stopped at its budget and the second continued it (see below);
# 2. only if enough time is left (estimated, see REF_NEEDS_S): the source-only and oracle rows.
# CHAIN_OUT and CHAIN_EXTRA run another chain, e.g. a candidate of a label-free sweep (dalab 0.5.0's 10
# AdaMatch epochs, the setting before the suite's 20):
#     CHAIN_OUT=conv9-a10 CHAIN_EXTRA="--epochs-for adamatch=10" REF_NEEDS_S=99999 bash bench/gpu_conv9.sh ...
# Every benchmark stops 15 s before BUDGET_S seconds from the start, so the files come back even when
# the runs do not finish. RETURN receives results.tgz (summaries, metrics, tables, logs) and one tar of
# weights per seed: model.pt of each finished run, ckpt.pt of an unfinished one. To continue a cut chain
# on another machine, unpack results.tgz and the weights tars into a fresh WORK and run this again
# (`dalab benchmark` resumes each unfinished run from its ckpt.pt). A tar that would pass 15 MiB is
# split into one tar per run, so that each returned file stays under 16 MiB.
# CHAIN_METHODS (default "adamatch,dirt-t (from adamatch)") and CHAIN_JOBS (default 3, one process per run)
# run other rows of the suite in the chain's place, e.g. CHAIN_METHODS="dann,cdan,fixmatch" CHAIN_JOBS=9.
# EXTRA and CHAIN_EXTRA are split on spaces (no quoting inside them); CHAIN_OUT is a plain folder name.
# BUDGET_S was named DEADLINE_S up to dalab 0.8.0; that name is still read when BUDGET_S is not set.
# Exit status: 2 for bad arguments or a failed data preparation, else the chain's benchmark's.
# Runs with the repo's sources (PYTHONPATH=src).
set -u
usage="usage: bash bench/gpu_conv9.sh WORK RETURN [MNIST_PICKLE]"
[ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
if [ -n "${3:-}" ] && [ ! -f "$3" ]; then echo "gpu_conv9.sh: $3: no such file" >&2; exit 2; fi
WORK=$(realpath -m "$1")
RET=$(realpath -m "$2")
PKL=${3:+$(realpath "$3")}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-${DEADLINE_S:-560}}
REF_NEEDS_S=${REF_NEEDS_S:-180}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}  # more benchmark flags, e.g. for a dry run on the CPU: "--epochs 1 --limit-train 256"
CHAIN_OUT=${CHAIN_OUT:-conv9}  # the chain's folder under WORK
CHAIN_EXTRA=${CHAIN_EXTRA:-}   # flags for the chain only, e.g. --epochs-for adamatch=10
CHAIN_METHODS=${CHAIN_METHODS-adamatch,dirt-t (from adamatch)}  # the suite's rows the chain trains
CHAIN_JOBS=${CHAIN_JOBS-3}    # processes at once on the card
case $CHAIN_OUT in */* | "" | .*) echo "gpu_conv9.sh: CHAIN_OUT must be a plain folder name" >&2; exit 2 ;; esac
case $CHAIN_JOBS in "" | *[!0-9]* | 0*) echo "gpu_conv9.sh: CHAIN_JOBS must be a positive integer" >&2; exit 2 ;; esac
[ -n "$CHAIN_METHODS" ] || { echo "gpu_conv9.sh: CHAIN_METHODS is empty" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export DALAB_DATA=${DALAB_DATA:-$WORK/data}
T0=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }  # seconds left of the budget
mkdir -p "$WORK" "$RET"
cd "$WORK" || exit 2
DALAB=("$PY" -m dalab)
# shellcheck source=bench/gpu_lib.sh
. "$REPO/bench/gpu_lib.sh"

pack() {  # small files only; written to a temp name of its own, then renamed
    local tmp="$RET/results.tgz.$BASHPID.tmp"
    find . -path ./data -prune -o -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.log' \
        -o -name '*.txt' \) -print | tar czf "$tmp" -T - 2>/dev/null
    mv "$tmp" "$RET/results.tgz"
}

run_in_budget() {  # NAME COMMAND...: runs COMMAND (and its workers) until 15 s before the budget is spent
    local name=$1 t budget rc
    shift
    budget=$(( $(left) - 15 ))
    if [ "$budget" -le 0 ]; then
        echo "$name: not run, $(left) s left" | tee -a stages.txt
        return 124
    fi
    t=$(date +%s)
    # timeout signals its whole process group, so the benchmark's worker processes stop too
    timeout -k 10 "$budget" "$@"
    rc=$?
    echo "$name: rc $rc, $(( $(date +%s) - t )) s" | tee -a stages.txt
    return $rc
}

finished() { [ -f "$1/summary.json" ] && [ -f "$1/model.pt" ]; }  # a run that ended, with its model

tar_capped() {  # TAR FILES...: one tar, or one tar per file where one tar would pass 15 MiB
    local out=$1 f i=0
    shift
    [ $# -gt 0 ] || return 0
    tar cf "$out" "$@"
    if [ "$(stat -c %s "$out")" -gt $(( 15 * 1024 * 1024 )) ]; then
        rm -f "$out"
        for f in "$@"; do
            tar cf "${out%.tar}-part$i.tar" "$f"
            i=$(( i + 1 ))
        done
        echo "$(basename "$out"): over 15 MiB, split into $i tars" | tee -a stages.txt
    fi
}

machine_info | tee machine.txt
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 >smi.log 2>/dev/null &
SMI=$!
(while sleep 30; do pack; done) &
PACKER=$!
finish() {
    kill "$PACKER" "$SMI" 2>/dev/null
    wait 2>/dev/null
    pack
}

echo "== prepare ($(left) s left)"
if ! timeout 90 "${DALAB[@]}" data prepare ${PKL:+--mnist-pickle "$PKL"} >prepare.log 2>&1; then
    echo "gpu_conv9.sh: dalab data prepare failed:" >&2
    tail -3 prepare.log >&2
    finish
    exit 2
fi
mnistm_sha | tee -a machine.txt

echo "== conv9 chain ($(left) s left)"
# shellcheck disable=SC2086  # EXTRA and CHAIN_EXTRA are lists of flags
run_in_budget "conv9 chain" "${DALAB[@]}" benchmark --suite digits-mnistm-conv9 --seeds 3 --device "$DEVICE" \
    --jobs "$CHAIN_JOBS" $EXTRA $CHAIN_EXTRA --methods "$CHAIN_METHODS" --out "$CHAIN_OUT" --quiet \
    >"$CHAIN_OUT.log" 2>&1
chain_rc=$?
tail -12 "$CHAIN_OUT.log"

if [ "$(left)" -ge "$REF_NEEDS_S" ]; then
    echo "== reference rows ($(left) s left)"
    # shellcheck disable=SC2086
    run_in_budget "reference rows" "${DALAB[@]}" benchmark --suite digits-mnistm-conv9 --seeds 3 \
        --device "$DEVICE" --jobs 6 $EXTRA --methods "source-only,target-only (oracle)" --out conv9-ref --quiet \
        >conv9-ref.log 2>&1
    tail -8 conv9-ref.log
else
    echo "reference rows: not run, $(left) s left (< $REF_NEEDS_S)" | tee -a stages.txt
fi

finish
seeds=$(find "$CHAIN_OUT" conv9-ref -mindepth 2 -maxdepth 2 -type d -name 'seed*' 2>/dev/null \
        | sed 's#.*/seed##' | sort -un)
for s in $seeds; do  # chain weights, one tar per seed: model.pt of a finished run, else its checkpoint
    files=()
    for d in "$CHAIN_OUT"/*/seed"$s"; do
        [ -d "$d" ] || continue
        if finished "$d"; then files+=("$d/model.pt")
        elif [ -f "$d/ckpt.pt" ]; then files+=("$d/ckpt.pt"); fi
    done
    tar_capped "$RET/weights-seed$s.tar" "${files[@]}"
done
ref=()  # reference rows: finished runs only
for d in conv9-ref/*/seed*; do
    finished "$d" && ref+=("$d/model.pt")
done
tar_capped "$RET/weights-ref.tar" "${ref[@]}"
pack
ls -la "$RET"
echo "== done after $(( $(date +%s) - T0 )) s"
exit "$chain_rc"
