#!/usr/bin/env bash
# Issue 4's acceptance runs on one GPU inside one device call of at most ~10 minutes:
#
#     bash bench/gpu_conv9.sh WORK RETURN [MNIST_PICKLE]      # e.g. /tmp/g "$OUT" .gpu/mnist.pkl.gz
#
# 1. the digits-mnistm-conv9 suite's AdaMatch and DIRT-T-from-AdaMatch rows, 3 seeds, its own 10 epochs,
#    the three seeds in parallel processes on the one card (DIRT-T of a seed starts from that seed's
#    AdaMatch model.pt);
# 2. only if enough time is left (estimated, see REF_NEEDS_S): the source-only and oracle rows.
# CHAIN_OUT and CHAIN_EXTRA run another chain, e.g. a candidate of a label-free sweep:
#     CHAIN_OUT=conv9-a20 CHAIN_EXTRA="--epochs-for adamatch=20" REF_NEEDS_S=99999 bash bench/gpu_conv9.sh ...
# Everything is cut at DEADLINE_S seconds after the start, so the files come back even when the runs
# do not finish. RETURN receives results.tgz (summaries, metrics, tables, logs) and one tar of weights
# per seed: model.pt of each finished run, ckpt.pt of an unfinished one (`dalab benchmark` continues
# it from there on any machine). Runs with the repo's sources (PYTHONPATH=src).
set -u
WORK=${1:?usage: bash bench/gpu_conv9.sh WORK RETURN [MNIST_PICKLE]}
RET=${2:?usage: bash bench/gpu_conv9.sh WORK RETURN [MNIST_PICKLE]}
PKL=${3:+$(realpath "$3")}
PY=${PYTHON:-python3}
DEADLINE_S=${DEADLINE_S:-560}
REF_NEEDS_S=${REF_NEEDS_S:-180}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}  # more benchmark flags, e.g. for a dry run on the CPU: "--epochs 1 --limit-train 256"
CHAIN_OUT=${CHAIN_OUT:-conv9}  # the chain's folder under WORK
CHAIN_EXTRA=${CHAIN_EXTRA:-}   # flags for the chain only, e.g. --epochs-for adamatch=20
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export DALAB_DATA=${DALAB_DATA:-$WORK/data}
T0=$(date +%s)
left() { echo $(( DEADLINE_S - ($(date +%s) - T0) )); }
mkdir -p "$WORK" "$RET"
cd "$WORK" || exit 1
DALAB="$PY -m dalab"

pack() {  # small files only; written to a temp name, then renamed
    find . -path ./data -prune -o -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.log' \
        -o -name '*.txt' \) -print | tar czf "$RET/results.tgz.tmp" -T - 2>/dev/null
    mv "$RET/results.tgz.tmp" "$RET/results.tgz"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__, \
'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
    nproc
} | tee machine.txt
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 >smi.log 2>/dev/null &
SMI=$!
(while sleep 30; do pack; done) &
PACKER=$!

echo "== prepare ($(left) s left)"
timeout 90 $DALAB data prepare ${PKL:+--mnist-pickle "$PKL"} >prepare.log 2>&1 || { tail -5 prepare.log; }
$PY - <<'EOF' | tee -a machine.txt
import hashlib, os, numpy as np
with np.load(os.path.join(os.environ["DALAB_DATA"], "mnistm.npz")) as z:
    h = hashlib.sha256(b"".join(z[k].tobytes() for k in sorted(z.files))).hexdigest()
print("mnistm arrays sha256", h)
EOF

echo "== conv9 chain ($(left) s left)"
t=$(date +%s)
timeout "$(( $(left) - 15 ))" $DALAB benchmark --suite digits-mnistm-conv9 --seeds 3 --device "$DEVICE" --jobs 3 $EXTRA \
    $CHAIN_EXTRA --methods "adamatch,dirt-t (from adamatch)" --out "$CHAIN_OUT" --quiet >"$CHAIN_OUT.log" 2>&1
echo "conv9 chain: rc $?, $(( $(date +%s) - t )) s" | tee -a stages.txt
pkill -f dalab.training.pool 2>/dev/null  # workers of a benchmark cut by timeout
tail -12 "$CHAIN_OUT.log"

if [ "$(left)" -ge "$REF_NEEDS_S" ]; then
    echo "== reference rows ($(left) s left)"
    t=$(date +%s)
    timeout "$(( $(left) - 15 ))" $DALAB benchmark --suite digits-mnistm-conv9 --seeds 3 --device "$DEVICE" --jobs 6 $EXTRA \
        --methods "source-only,target-only (oracle)" --out conv9-ref --quiet >conv9-ref.log 2>&1
    echo "reference rows: rc $?, $(( $(date +%s) - t )) s" | tee -a stages.txt
    pkill -f dalab.training.pool 2>/dev/null
    tail -8 conv9-ref.log
else
    echo "reference rows: not run, $(left) s left (< $REF_NEEDS_S)" | tee -a stages.txt
fi

kill "$PACKER" "$SMI" 2>/dev/null
wait 2>/dev/null
for s in 0 1 2; do  # chain weights, one tar per seed: model.pt of a finished run, else its checkpoint
    files=()
    for d in "$CHAIN_OUT"/*/seed$s; do
        [ -d "$d" ] || continue
        if [ -f "$d/summary.json" ] && [ -f "$d/model.pt" ]; then files+=("$d/model.pt")
        elif [ -f "$d/ckpt.pt" ]; then files+=("$d/ckpt.pt"); fi
    done
    [ ${#files[@]} -gt 0 ] && tar cf "$RET/weights-seed$s.tar" "${files[@]}"
done
ref=(conv9-ref/*/seed*/model.pt)  # reference rows: finished runs only (a tar must stay under 16 MiB)
[ -f "${ref[0]}" ] && tar cf "$RET/weights-ref.tar" "${ref[@]}"
pack
ls -la "$RET"
echo "== done after $(( $(date +%s) - T0 )) s"
