#!/usr/bin/env bash
# Everything a GPU machine should check, in one call from the repository root, in under 8 minutes:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# Steps (each under its own `timeout`; a failing step is reported and the next one still runs),
# in this order, with their budgets in seconds (together TOTAL_SECONDS, 450 by default; a step
# gets at most what is left of it, less the recipe's 150 s until the recipe runs):
#   1. machine   (20) nvidia-smi, Python, NumPy/CuPy/PyTorch versions; MNIST loaded from the cache
#   2. pytest    (110) `pytest -m gpu`: every GPU test (kernels against the NumPy twin, row sums in
#                their documented order, cuBLAS gemm eager and inside a captured CUDA graph,
#                device gradchecks, a VAE step GPU vs CPU, Adam bit for bit, ...); a skipped
#                GPU test fails the step
#   3. kernels   (45) benchmarks/bench_kernels.py: fused kernels vs CuPy/PyTorch, and each kernel
#                alone at 1e7 and 1e8 elements (D = 2, 10, 50, 100, 784) as a share of a
#                device-to-device copy measured in the same run
#   4. step      (80) benchmarks/bench_train_step.py --device gpu: minivae eager and in graph mode,
#                the reference on CuPy, PyTorch CUDA eager and PyTorch with the whole step in a
#                CUDA graph, at batch 100, 1000, 10000; and a cProfile of 100 eager minivae steps
#                per batch size (where the host time of an eager step goes), in its JSON
#   5. epoch     (40) benchmarks/bench_epoch.py --device gpu: seconds per epoch (batch 100), minivae
#                eager and in graph mode, PyTorch eager
#   6. train     (150) `minivae train --device gpu` in graph mode: the default recipe (150 epochs,
#                KL warm-up 10) and the test log-likelihood at k = 5000 on the 10,000 test
#                images, recorded by benchmarks/record_run.py. Stopped as soon as the trainer
#                notes that the step cannot be captured (graph mode off: the eager recipe would
#                take far longer than its budget); python has a timeout of its own, shorter than
#                the step's, so that the run is still recorded when it runs out of time (and at
#                least 10 s: with less left the run is not started)
#   7. ab        (50, optional: only in what time is left) benchmarks/ab_row_kernels.py: the
#                candidate designs of the forward row kernels, each compiled with its own
#                options, checked and timed in one process (~30-45 s); exploratory, so last
#
# Files written to $OUT: at most 7, one under the 8 files that a lent machine brings back (past
# that, results are lost, and which ones is not ours to choose). The rule: nothing else writes to
# $OUT; a step's logs go into gpu_check.log, and a new result goes into an existing file rather
# than a new one. The script counts the files at the end and warns when there are more.
#   gpu_check.log    everything, pytest's report included
#   summary.txt      the commit, a PASS/FAIL/SKIP line per step with its seconds, and the key
#                    numbers: tests, shares of copy, ms per step, seconds per epoch, the recipe
#   kernels_<gpu>_<date>.json, ab_row_kernels_<gpu>_<date>.json,
#   train_step_<gpu>_t<threads>_gpu.json, epoch_<gpu>_t<threads>_b100_gpu.json
#   run_recipe_gpu_150ep_<gpu>.json  the recipe as benchmarks/record_run.py records a run: date,
#                    command, machine, GPU, versions, commit, config, every epoch's metrics,
#                    seconds, test results (the NLL at k = 5000); in benchmarks/results,
#                    report.py puts it into the README's table of trained models
#
# Needs (installs nothing, reaches no network): CuPy and PyTorch with CUDA already installed for
# $PYTHON (default python3), with numpy and pytest; minivae runs from this checkout through
# PYTHONPATH. MNIST must be in the cache folder $MINIVAE_DATA (default ./.mnist_cache: copy
# mnist.npz and mnist.json there from ~/.cache/minivae of a machine that has them). Without it,
# the steps that train on MNIST (step, epoch, train) are skipped, each with a SKIP line: they
# would try to download it and spend their budgets waiting for a network there is none of.
#
# Environment: MINIVAE_GIT_COMMIT (the commit of this tree: set it, e.g. to `git rev-parse HEAD`
# where the tree was copied from; every result records it, and the copy's own .git may be stale),
# OUT (default ./gpu_check_out), PYTHON, MINIVAE_DATA, TOTAL_SECONDS (default 450: with the
# 10 s each step's timeout may wait for a kill, the script ends within 8 minutes), DRY_RUN=1
# (check the script itself on a machine without a GPU: small sizes, a one-epoch CPU training;
# the GPU benchmarks fail with exit status 2, "nothing measured", and the steps after them
# still run).
# Exit status: 0 when every step passed.
set -u
set -o pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT="$PWD"
OUT="${OUT:-$ROOT/gpu_check_out}"
PYTHON="${PYTHON:-python3}"
TOTAL_SECONDS="${TOTAL_SECONDS:-450}"
RECIPE_SECONDS=150
DRY_RUN="${DRY_RUN:-}"
export MINIVAE_DATA="${MINIVAE_DATA:-$ROOT/.mnist_cache}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MINIVAE_KERNELS_DIR="$ROOT/kernels"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
status=0
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

# The commit comes first in the summary: every result names it (machine.git_commit() reads
# MINIVAE_GIT_COMMIT before the copy's .git, whose HEAD may be stale on a lent machine).
if [ -n "${MINIVAE_GIT_COMMIT:-}" ]; then
    echo "commit $MINIVAE_GIT_COMMIT" | tee -a "$SUMMARY"
else
    echo "WARNING: MINIVAE_GIT_COMMIT is unset: the results name this copy's .git HEAD" \
         "($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)), which may be stale" | tee -a "$SUMMARY"
fi

MNIST="$MINIVAE_DATA/mnist.npz"
if [ -s "$MNIST" ]; then
    HAVE_MNIST=1
else
    HAVE_MNIST=""
    echo "WARNING: no MNIST cache at $MNIST: the step, epoch and train steps are skipped" | tee -a "$SUMMARY"
fi

# The seconds kept for the recipe, the headline result, until it runs: the steps before it get
# only what is left of TOTAL_SECONDS beyond them, so that an overrun (or a smaller TOTAL_SECONDS)
# shortens them, not the recipe.
RESERVED=$RECIPE_SECONDS
[ -z "$HAVE_MNIST" ] && RESERVED=0  # (no recipe without MNIST)

# seconds_left: what a step may use now: the rest of TOTAL_SECONDS, less RESERVED and 5 s
seconds_left() {
    echo $((TOTAL_SECONDS - SECONDS - 5 - RESERVED))
}

# run_step NAME BUDGET_SECONDS COMMAND...: runs COMMAND under timeout (its budget, or
# seconds_left, whichever is less; COMMAND finds it in $STEP_BUDGET) and appends one line to
# summary.txt.
run_step() {
    local name="$1" budget="$2"
    shift 2
    local left
    left=$(seconds_left)
    if [ "$left" -lt 20 ]; then
        echo "SKIP  $name: only ${left}s of TOTAL_SECONDS=$TOTAL_SECONDS left (${RESERVED}s kept for the recipe)" \
            | tee -a "$SUMMARY"
        status=1
        return
    fi
    [ "$budget" -gt "$left" ] && budget="$left"
    echo
    echo "=== $name (budget ${budget}s, $(date -u +%H:%M:%S))"
    local t0=$SECONDS rc=0
    STEP_BUDGET="$budget" timeout --kill-after=10 "$budget" "$@" || rc=$?
    local took=$((SECONDS - t0))
    if [ "$rc" -eq 0 ]; then
        echo "PASS  $name (${took}s)" | tee -a "$SUMMARY"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "FAIL  $name: timed out after ${took}s (budget ${budget}s)" | tee -a "$SUMMARY"
        status=1
    else
        echo "FAIL  $name: exit status $rc after ${took}s" | tee -a "$SUMMARY"
        status=1
    fi
}

# run_mnist_step NAME BUDGET_SECONDS COMMAND...: run_step for a step that trains on MNIST, or a
# SKIP line when the cache has none.
run_mnist_step() {
    if [ -z "$HAVE_MNIST" ]; then
        echo "SKIP  $1: no MNIST cache at $MNIST" | tee -a "$SUMMARY"
        status=1
        return
    fi
    run_step "$@"
}

if [ -n "$DRY_RUN" ]; then
    echo "DRY_RUN: small sizes, CPU training (checks this script, not the GPU)"
    KERNEL_ARGS=(--quick --kernel-sizes 1e4 --kernel-D 2,50 --no-philox-cpu)
    AB_ARGS=(--sizes 1e4 --D 50 --max-seconds 5)
    STEP_ARGS=(--warmup-steps 0 --repeat 3 --max-seconds 20)
    TRAIN_DEVICE=cpu
    TRAIN_EPOCHS=1
    TRAIN_EVAL_K=10
else
    KERNEL_ARGS=(--sizes 1e5,1e7 --mnist 100x50 --cpu-max 1e5 --budget 0.5 --repeats 9 --no-philox-cpu)
    AB_ARGS=(--sizes 1e7,1e8 --D 10,50,784 --max-seconds 35)
    STEP_ARGS=(--warmup-steps 200 --max-seconds 60 --profile 100)
    TRAIN_DEVICE=gpu
    TRAIN_EPOCHS=150
    TRAIN_EVAL_K=5000
fi

machine() {
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv || echo "nvidia-smi failed"
    git -C "$ROOT" rev-parse HEAD 2>/dev/null || true
    "$PYTHON" - <<'EOF'
import importlib, os, sys
print("python", sys.version.split()[0], sys.executable)
for name in ("numpy", "cupy", "torch", "pytest", "minivae"):
    try:
        m = importlib.import_module(name)
        print(f"{name:8s} {getattr(m, '__version__', '?'):14s} {os.path.dirname(getattr(m, '__file__', '') or '')}")
    except Exception as exc:
        print(f"{name:8s} missing ({type(exc).__name__}: {exc})")
try:
    import cupy
    print("CUDA devices:", cupy.cuda.runtime.getDeviceCount(), "runtime", cupy.cuda.runtime.runtimeGetVersion())
    import torch
    print("torch.cuda:", torch.cuda.is_available(), torch.version.cuda)
except Exception as exc:
    print("GPU stack:", type(exc).__name__, exc)
from minivae.data import load_mnist
if os.environ["HAVE_MNIST"]:  # (a missing cache has its own line in the summary)
    d = load_mnist(sources=("cache",), verbose=False)
    print("MNIST from the cache:", d.cache_path, d.x_train.shape)
EOF
}

# pytest -m gpu, its report into the log. -rfEs: the short summary names the failures and
# errors (-rs alone would replace pytest's default -rfE and list only the skips); a module that
# cannot be imported fails alone instead of stopping pytest before any test runs; and with
# pytest-timeout, a test that hangs fails alone instead of using up the step. A GPU test skips
# only where CuPy or a device cannot be used, so here a skipped test fails the step: without it,
# a machine whose CUDA stack does not load would pass with every GPU test skipped.
pytest_gpu() {
    local per_test=() rc
    "$PYTHON" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 60)
    "$PYTHON" -m pytest -m gpu -v -rfEs --continue-on-collection-errors -p no:cacheprovider "${per_test[@]}" \
        tests 2>&1 | tee "$SCRATCH/pytest.log"
    rc="${PIPESTATUS[0]}"  # pytest's (this child bash has no pipefail)
    if [ "$rc" -eq 0 ] && grep -q "^SKIPPED " "$SCRATCH/pytest.log"; then
        echo "pytest -m gpu: GPU tests were skipped (the SKIPPED lines above say why): none may be here"
        return 1
    fi
    return "$rc"
}

# key numbers of the newest result of a kind in $OUT, appended to summary.txt (never fails a step)
key_numbers() {
    "$PYTHON" - "$1" >> "$SUMMARY" 2>&1 <<'EOF' || true
import glob, json, os, sys
kind = sys.argv[1]  # the results' file names start with it
files = sorted(glob.glob(os.path.join(os.environ["OUT"], kind + "_*.json")), key=os.path.getmtime)
if not files:
    sys.exit(print(f"      {kind}: no result file"))
r = json.load(open(files[-1]))
if kind == "ab_row_kernels":
    for name, worst in r.get("worst_share_of_copy", {}).items():
        print(f"      ab {name}: " + (", ".join(f"{k} worst {100 * v:.0f}% of copy" for k, v in worst.items()
                                              if v is not None) if isinstance(worst, dict) else worst))
elif kind == "run":  # the recipe, against its targets
    res, wall = r["results"], r.get("command_wall_seconds")
    print(f"      recipe: {r['epochs']} of {r['config']['epochs']} epochs, {r['train_seconds_all_epochs']} s "
          f"summed over them (target <= 30 s), the whole command {wall} s")
    if "test_nll" in res:
        print(f"      recipe: test NLL {res['test_nll']:.2f} (k = {res.get('eval_k')}, {res.get('n_test') or 'all'} "
              f"test images; target: within 0.3 of the CPU recipe's 86.93)")
    else:
        print(f"      recipe: not evaluated: {res}")
elif kind == "kernels":
    k = r.get("summary", {}).get("kernels_alone", {})
    worst = ", ".join(f"{n} {100 * v:.0f}%" for n, v in k.get("worst_share_of_copy", {}).items())
    print(f"      kernels: copy {(r.get('device') or {}).get('measured_copy_gbps')} GB/s; worst share of copy: "
          f"{worst}; row kernels >= 85%: {k.get('row_kernels_target_met')}")
else:
    for b, row in r["results"].items():
        if kind == "train_step":
            print(f"      batch {b}: " + ", ".join(f"{n} {v['ms_per_step']:.3f} ms" for n, v in row.items()))
            if "graph_nodes" in row.get("minivae-graph", {}):
                print(f"        minivae-graph nodes: {row['minivae-graph']['graph_nodes']}")
            for name, t in r.get("targets", {}).get(b, {}).items():
                if "torch" in name and t["met"] is not None:
                    print(f"        {name} {t['value']} (target {t['target']}: {'met' if t['met'] else 'missed'})")
        else:
            print(f"      {b}: {row['seconds_per_epoch']} s per epoch")
    for name, error in r.get("errors", {}).items():
        print(f"      FAILED {name}: {error[:300]}")
EOF
}

# The recipe, recorded as one JSON in $OUT by benchmarks/record_run.py, finished or not. Its python
# runs under a timeout of its own, 20 s shorter than the step's: the step's timeout kills this
# whole shell, so after it nothing of the run would be recorded. And it runs in the background,
# watched: when the trainer notes that the step cannot be captured, it would train eagerly (150
# epochs take about 400 s), so it is stopped at once.
train_gpu() {
    local run="$SCRATCH/recipe_${TRAIN_DEVICE}_${TRAIN_EPOCHS}ep" out="$SCRATCH/train.out" rc=0 note=""
    local command="minivae train --device $TRAIN_DEVICE --epochs $TRAIN_EPOCHS --eval-k $TRAIN_EVAL_K --no-progress"
    local t0=$SECONDS limit=$((STEP_BUDGET - 20))
    # `timeout 0` sets no limit at all (and a negative one is an error): with under 10 s for
    # python (a small TOTAL_SECONDS), the run is not started.
    if [ "$limit" -lt 10 ]; then
        echo "SKIP  train: a budget of ${STEP_BUDGET}s leaves python ${limit}s once 20 s are kept to record" \
             "the run, and it needs 10 s at least; give a larger TOTAL_SECONDS" | tee -a "$SUMMARY"
        return 1
    fi
    rm -rf "$run"
    : > "$out"  # (before tail opens it)
    timeout --kill-after=5 "$limit" "$PYTHON" -m minivae train --device "$TRAIN_DEVICE" \
        --epochs "$TRAIN_EPOCHS" --eval-k "$TRAIN_EVAL_K" --no-progress --out "$run" > "$out" 2>&1 &
    local pid=$!
    tail -n +1 -f --pid="$pid" "$out" &  # its lines, as they come, into gpu_check.log
    while kill -0 "$pid" 2>/dev/null; do
        if grep -q "cannot be captured" "$out"; then
            echo "      train: stopped, graph mode is off: $(grep -m 1 "cannot be captured" "$out" | cut -c1-300)" \
                | tee -a "$SUMMARY"
            note="stopped: graph mode was off, the step could not be captured"
            kill "$pid"
            break
        fi
        sleep 1
    done
    wait "$pid" || rc=$?
    wait  # (for tail)
    local wall=$((SECONDS - t0))
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        note="stopped at its time limit of $limit s"
    fi
    # One JSON with what the run folder holds, finished or not (the folder itself is scratch)
    "$PYTHON" benchmarks/record_run.py "$run" --out "$OUT" --allow-unfinished --wall-seconds "$wall" \
        --command "$command --out $(basename "$run")${note:+ ($note)}" \
        || echo "      recipe: no record of the run (record_run.py failed, see gpu_check.log)" >> "$SUMMARY"
    return $rc
}

# count_files: a warning in summary.txt when $OUT holds more than the 7 files listed above
count_files() {
    local files
    files=$(find "$OUT" -type f | wc -l)
    if [ "$files" -gt 7 ]; then
        echo "WARNING: $files files in $OUT, more than 7: a lent machine brings back 8 at most" | tee -a "$SUMMARY"
    fi
}

# (timeout runs programs, not shell functions: the functions above run in a child bash)
export OUT PYTHON ROOT SCRATCH HAVE_MNIST TRAIN_DEVICE TRAIN_EPOCHS TRAIN_EVAL_K SUMMARY
export -f machine pytest_gpu train_gpu
run_step machine 20 bash -c machine
run_step "pytest -m gpu" 110 bash -c pytest_gpu
echo "      pytest: $(tail -n 1 "$SCRATCH/pytest.log" 2>/dev/null | tr -d '=')" >> "$SUMMARY"
grep -E "^(FAILED|ERROR|SKIPPED) " "$SCRATCH/pytest.log" 2>/dev/null | head -n 20 | cut -c1-200 | sed 's/^/        /' >> "$SUMMARY"
run_step "bench_kernels" 45 "$PYTHON" benchmarks/bench_kernels.py --require-gpu --out "$OUT" "${KERNEL_ARGS[@]}"
key_numbers kernels
run_mnist_step "bench_train_step --device gpu" 80 "$PYTHON" benchmarks/bench_train_step.py --device gpu \
    --out "$OUT" "${STEP_ARGS[@]}"
key_numbers train_step
run_mnist_step "bench_epoch --device gpu" 40 "$PYTHON" benchmarks/bench_epoch.py --device gpu --out "$OUT"
key_numbers epoch
RESERVED=0
run_mnist_step "minivae train --device $TRAIN_DEVICE ($TRAIN_EPOCHS epochs, k = $TRAIN_EVAL_K)" "$RECIPE_SECONDS" \
    bash -c train_gpu
key_numbers run
# Exploratory and optional: in whatever time is left (no FAIL for the lack of it).
if [ "$(seconds_left)" -ge 20 ]; then
    run_step "ab_row_kernels" 50 "$PYTHON" benchmarks/ab_row_kernels.py --out "$OUT" "${AB_ARGS[@]}"
    key_numbers ab_row_kernels
else
    echo "SKIP  ab_row_kernels (optional): only $(seconds_left)s left" | tee -a "$SUMMARY"
fi

count_files
echo
echo "=== done in ${SECONDS}s, status $status"
cat "$SUMMARY"
ls -la "$OUT"
# tee may still be writing the log's end: close its pipe and wait for it before exiting
exec >&- 2>&-
wait "$TEE_PID"
exit $status
