# Shared by bench/gpu.sh and bench/gpu_conv9.sh (sourced; needs $PY and, for mnistm_sha, $DALAB_DATA).

machine_info() {  # the card, the software and the cores, as the machine reports them
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__, \
'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
    nproc
}

mnistm_sha() {  # the rebuilt MNIST-M must be the same images as on the CPU machine (same seed, same photos)
    "$PY" - <<'PYEOF'
import hashlib, os, numpy as np
with np.load(os.path.join(os.environ["DALAB_DATA"], "mnistm.npz")) as z:
    h = hashlib.sha256(b"".join(z[k].tobytes() for k in sorted(z.files))).hexdigest()
print("mnistm arrays sha256", h)
PYEOF
}
