#!/usr/bin/env bash
# One command for a machine with a CUDA GPU, from the repository root:
#
#     bash benchmarks/gpu_check.sh            # results under $OUT (default ./gpu_check_out)
#
# 1. reports the machine (nvidia-smi, python, versions);
# 2. makes sure CuPy imports and sees the GPU (installs cupy-cuda12x only when no CuPy is there);
# 3. installs minivae from this checkout (no build isolation, no dependency downloads) and the test
#    dependencies that are missing;
# 4. runs `pytest -m gpu` (the kernels against the NumPy twin, device gradchecks, a VAE step GPU vs
#    CPU) and the no-GPU kernel tests (nvcc/NVRTC compiles, host build of the headers);
# 5. runs benchmarks/bench_kernels.py (B*D = 1e3 .. 1e8, float32) and writes its JSON;
# 6. runs benchmarks/bench_train_step.py --device gpu (a VAE training step on the GPU), then
#    trains the default VAE for two epochs on the GPU (`minivae train --device gpu`, the main job),
#    then the same training step on this machine's CPU (GPU vs CPU on one machine);
# 7. last, the kernel tests that need no GPU (nvcc to PTX, the host build of the headers).
#
# Every step runs under `timeout` (STEP_TIMEOUT seconds, default 240) so that one hang cannot
# use up a lent machine's time; later steps still run.
#
# Everything lands in $OUT (at most 8 files): gpu_check.log, pytest_gpu.xml, pytest_cpu.xml,
# kernels_<device>_<date>.json, bench_kernels.md, train_step_<machine>_*_gpu.json,
# train_step_<machine>_t<threads>.json, train_gpu_metrics.jsonl. Exit status: 0 when every step passed.
# Environment: OUT, PYTHON (default python3), BENCH_ARGS (extra bench_kernels.py arguments),
# NO_INSTALL=1 (install nothing: use the checkout through PYTHONPATH), STEP_TIMEOUT,
# MINIVAE_DATA (where the cached mnist.npz is: a machine without the internet needs it there).
set -u
set -o pipefail

cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-$PWD/gpu_check_out}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
status=0
STEP_TIMEOUT="${STEP_TIMEOUT:-240}"
run() { timeout --kill-after=10 "$STEP_TIMEOUT" "$@"; }
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "machine"
date -u
uname -a
nvidia-smi || echo "nvidia-smi failed"
"$PYTHON" --version
git rev-parse HEAD 2>/dev/null || true

step "CuPy"
if "$PYTHON" -c "import cupy; print('cupy', cupy.__version__)"; then
    echo "CuPy is installed: not installing anything"
elif command -v nvidia-smi >/dev/null; then
    echo "no CuPy: trying pip install cupy-cuda12x"
    "$PYTHON" -m pip install -q cupy-cuda12x || echo "pip install cupy-cuda12x failed (offline? carry a wheel)"
else
    echo "no CuPy and no nvidia-smi: not a GPU machine, not installing CuPy"
fi
"$PYTHON" -c "import cupy; n = cupy.cuda.runtime.getDeviceCount(); assert n > 0; print(n, 'device(s), CUDA runtime', cupy.cuda.runtime.runtimeGetVersion())" \
    || { echo "FAIL: CuPy cannot use a GPU here"; status=1; }

step "install minivae and test dependencies"
if [ -n "${NO_INSTALL:-}" ]; then
    echo "NO_INSTALL set: using PYTHONPATH=$PWD, installing nothing"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
elif ! "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . ; then
    echo "pip install -e . failed: using PYTHONPATH=$PWD"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
for mod in numpy pytest hypothesis; do
    "$PYTHON" -c "import $mod" 2>/dev/null || { [ -z "${NO_INSTALL:-}" ] && "$PYTHON" -m pip install -q "$mod"; } \
        || echo "could not install $mod"
done
"$PYTHON" - <<'EOF'
import importlib
for name in ("numpy", "cupy", "torch", "pytest", "hypothesis", "minivae"):
    try:
        m = importlib.import_module(name)
        print(f"{name:12s} {getattr(m, '__version__', '?'):16s} {getattr(m, '__file__', '')}")
    except Exception as exc:
        print(f"{name:12s} missing ({type(exc).__name__}: {exc})")
import minivae.gpu as g
print("kernel sources:", g.kernel_dir())
EOF

step "pytest -m gpu"
run "$PYTHON" -m pytest -m gpu -v -rs -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" || { echo "FAIL: pytest -m gpu"; status=1; }

step "bench_kernels"
# shellcheck disable=SC2086
if run "$PYTHON" benchmarks/bench_kernels.py --out "$OUT" ${BENCH_ARGS:-} | tee "$OUT/bench_kernels.txt"; then
    # keep the table alone for the README
    sed -n '/^| B x D/,/^$/p' "$OUT/bench_kernels.txt" | sed '/^{/,$d' > "$OUT/bench_kernels.md"
    rm -f "$OUT/bench_kernels.txt"
else
    echo "FAIL: bench_kernels"
    status=1
fi

step "bench_train_step --device gpu"
# One MNIST VAE training step on the GPU next to the same step on the CPU (issue 5).
run "$PYTHON" benchmarks/bench_train_step.py --device gpu --out "$OUT" --max-seconds 90 \
    || { echo "FAIL: bench_train_step --device gpu"; status=1; }

step "minivae train --device gpu (the default VAE, two epochs, k = 100 evaluation)"
rm -rf "${TMPDIR:-/tmp}/minivae_gpu_run"
if run "$PYTHON" -m minivae train --device gpu --epochs 2 --eval-k 100 --no-progress \
        --out "${TMPDIR:-/tmp}/minivae_gpu_run"; then
    cp "${TMPDIR:-/tmp}/minivae_gpu_run/metrics.jsonl" "$OUT/train_gpu_metrics.jsonl" || true
else
    echo "FAIL: minivae train --device gpu"; status=1
fi

step "bench_train_step on this machine's CPU (GPU vs CPU)"
run "$PYTHON" benchmarks/bench_train_step.py --out "$OUT" --max-seconds 60 \
    || { echo "FAIL: bench_train_step (CPU)"; status=1; }

step "kernel tests without the GPU (nvcc, NVRTC, host build)"
run "$PYTHON" -m pytest tests/test_kernels.py tests/test_random.py -q -rs -p no:cacheprovider \
    --junitxml="$OUT/pytest_cpu.xml" || { echo "FAIL: kernel/random tests"; status=1; }

step "done: status $status"
ls -la "$OUT"
exit $status
