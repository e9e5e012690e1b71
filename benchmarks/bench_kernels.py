#!/usr/bin/env python3
"""Benchmark of the VAE sampling-and-KL hot path: forward + backward of

    z = mu + exp(logvar / 2) * eps,  eps ~ N(0, I)
    kl[b] = sum_d (mu^2 + exp(logvar) - 1 - logvar) / 2
    backward with upstream (dz, gkl): dmu = dz + gkl * mu,
                                      dlogvar = dz * eps * exp(logvar / 2) / 2 + gkl * (exp(logvar) - 1) / 2

for B*D elements (float32 by default; D = 50, the MNIST latent size), implemented as

* ``numpy``         -- hand-written NumPy on the CPU, eps from NumPy's PCG64 (stored for backward);
* ``numpy-philox``  -- the same with eps from minivae.random (the CPU twin of our GPU generator);
* ``cupy-unfused``  -- CuPy: cupy.random.standard_normal + elementwise ops and a sum (stored eps);
* ``minivae-fused`` -- our kernels: reparameterize_kl_forward + reparameterize_kl_backward
                       (2 launches, eps regenerated in registers, never stored);
* ``minivae-separate`` -- our four separate kernels (reparam fwd/bwd, KL fwd/bwd);
* ``torch``         -- PyTorch on the same device, the same elementwise formulas (when installed).

Times are microseconds per forward+backward, the median of ``--repeats`` timed loops after a
warm-up; GPU loops are timed with CUDA events around ``inner`` back-to-back calls (so launch and
Python dispatch costs are included, as a user pays them). Effective bandwidth counts the bytes
an ideal implementation must move: read mu, logvar; write z, kl; read dz, gkl, mu, logvar;
write dmu, dlogvar: (8 N + 2 B) * itemsize. The share of peak divides it by the device's
theoretical bandwidth (memory clock x bus width), and also by a measured device-to-device copy.

On a GPU it also times each kernel alone (``--kernel-sizes``, default 1e7 and 1e8 elements, rows
of ``--kernel-D`` = 2, 10, 50, 100, 784) and reports its bandwidth as a share of a
device-to-device copy measured in the same run: of 1 GiB (``share_of_copy``) and of the kernel's
own array size (``share_of_copy_same_size``). Bytes per kernel are what it must move (n elements,
B rows): reparameterization forward/backward 3n, KL forward 2n + B, KL backward 4n + B, fused
forward 3n + B, fused backward 5n + B, times the itemsize.

Results go to ``<out>/kernels_<device>_<date>.json`` with the machine, device, versions, date
and command. Run ``python benchmarks/bench_kernels.py --quick`` for a CPU-only smoke run; with
``--require-gpu`` (as benchmarks/gpu_check.sh runs it) a machine without a usable GPU measures
nothing and the script exits with status 2.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import minivae.random as mr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import command_line, machine_info
from machine import versions as machine_versions  # noqa: E402
from machine import gpu_info as machine_gpu_info  # noqa: E402

# Known theoretical peaks (GB/s) as a fallback when the device does not report its memory clock.
KNOWN_PEAK_GBPS = {
    "H200": 4800.0, "H100 80GB HBM3": 3352.0, "H100 SXM": 3352.0, "H100 PCIe": 2039.0, "H100 NVL": 3938.0,
    "A100-SXM4-80GB": 2039.0, "A100 80GB PCIe": 1935.0, "A100-SXM4-40GB": 1555.0, "A100-PCIE-40GB": 1555.0,
    "L4": 300.0, "L40S": 864.0, "A10": 600.0, "T4": 320.0, "RTX 4090": 1008.0,
}
TARGET_PEAK_SHARE = 0.80  # fused fwd+bwd from 1e7 elements up
TARGET_SPEEDUP_MNIST = 3.0  # fused vs cupy-unfused at B=100, D=50


def useful_bytes(B, D, itemsize):
    """Bytes an ideal forward + backward of (B, D) arrays must move: (8 B*D + 2 B) * itemsize."""
    return (8 * B * D + 2 * B) * itemsize


# ------------------------------------------------------------------------------ implementations
def _unfused_step(xp, mu, lv, dz, gkl, draw):
    """Forward and backward of reparameterization + per-row KL as separate array operations
    (NumPy or CuPy ``xp``), with eps from ``draw()``: the unfused baseline."""
    half = mu.dtype.type(0.5)

    def step():
        eps = draw()
        std = xp.exp(half * lv)
        z = mu + std * eps
        var = std * std
        kl = half * (mu * mu + var - 1 - lv).sum(axis=1)
        g = gkl[:, None]
        dmu = dz + g * mu
        dlv = dz * eps * std * half + g * half * (var - 1)
        return z, kl, dmu, dlv

    return step


def make_numpy(B, D, dtype, philox=False):
    """(step, None): the unfused forward + backward in NumPy on (B, D) arrays, eps from NumPy's
    PCG64, or with ``philox`` from minivae.random (no forward-only timing)."""
    rng = np.random.default_rng(0)
    mu = rng.standard_normal((B, D)).astype(dtype)
    lv = rng.uniform(-2, 1, (B, D)).astype(dtype)
    dz = rng.standard_normal((B, D)).astype(dtype)
    gkl = rng.standard_normal(B).astype(dtype)
    gen = mr.Generator(1)
    if philox:
        return _unfused_step(np, mu, lv, dz, gkl, lambda: gen.normal((B, D), dtype)), None
    return _unfused_step(np, mu, lv, dz, gkl, lambda: rng.standard_normal((B, D), dtype=dtype)), None


def make_cupy_unfused(B, D, dtype, cp):
    """(step, forward) of the unfused CuPy baseline on (B, D) device arrays: eps from cupy.random,
    elementwise ops and a row sum; ``forward`` computes z and kl alone."""
    rs = cp.random.RandomState(0)
    mu = rs.standard_normal((B, D), dtype=dtype)
    lv = rs.uniform(-2, 1, (B, D)).astype(dtype)
    dz = rs.standard_normal((B, D), dtype=dtype)
    gkl = rs.standard_normal(B, dtype=dtype)
    half = dtype(0.5)
    step = _unfused_step(cp, mu, lv, dz, gkl, lambda: cp.random.standard_normal((B, D), dtype=dtype))

    def forward():
        eps = cp.random.standard_normal((B, D), dtype=dtype)
        std = cp.exp(half * lv)
        return mu + std * eps, half * (mu * mu + std * std - 1 - lv).sum(axis=1)

    return step, forward


def make_minivae(B, D, dtype, cp, fused=True):
    """(step, forward) of our kernels on (B, D) device arrays, eps regenerated from a new Philox
    address per call: the two fused kernels, or with ``fused=False`` the four separate ones (and
    forward None)."""
    import minivae.gpu as G

    rs = cp.random.RandomState(0)
    mu = rs.standard_normal((B, D), dtype=dtype)
    lv = rs.uniform(-2, 1, (B, D)).astype(dtype)
    dz = rs.standard_normal((B, D), dtype=dtype)
    gkl = rs.standard_normal(B, dtype=dtype)
    gen = mr.Generator(1)

    if fused:
        def step():
            n = gen.next_noise()
            z, kl = G.reparameterize_kl_forward(mu, lv, n.seed, n.offset, n.stream)
            dmu, dlv = G.reparameterize_kl_backward(dz, gkl, mu, lv, n.seed, n.offset, n.stream)
            return z, kl, dmu, dlv

        def forward():
            n = gen.next_noise()
            return G.reparameterize_kl_forward(mu, lv, n.seed, n.offset, n.stream)
    else:
        def step():
            n = gen.next_noise()
            z = G.reparameterize_forward(mu, lv, n.seed, n.offset, n.stream)
            kl = G.kl_normal_std_forward(mu, lv)
            _, dlv_r = G.reparameterize_backward(dz, lv, n.seed, n.offset, n.stream)
            dmu_k, dlv_k = G.kl_normal_std_backward(gkl, mu, lv)
            return z, kl, dz + dmu_k, dlv_r + dlv_k

        forward = None
    return step, forward


def make_torch(B, D, dtype, torch, device):
    """(step, forward) of the same formulas in PyTorch on ``device`` (eps from torch.randn_like);
    ``forward`` computes z and kl alone."""
    tdt = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    g = torch.Generator(device=device).manual_seed(0)
    mu = torch.randn(B, D, generator=g, device=device, dtype=tdt)
    lv = torch.rand(B, D, generator=g, device=device, dtype=tdt) * 3 - 2
    dz = torch.randn(B, D, generator=g, device=device, dtype=tdt)
    gkl = torch.randn(B, generator=g, device=device, dtype=tdt)

    def step():
        eps = torch.randn_like(mu)
        std = torch.exp(0.5 * lv)
        z = mu + std * eps
        var = std * std
        kl = 0.5 * (mu * mu + var - 1 - lv).sum(dim=1)
        gg = gkl[:, None]
        dmu = dz + gg * mu
        dlv = dz * eps * std * 0.5 + gg * 0.5 * (var - 1)
        return z, kl, dmu, dlv

    def forward():
        eps = torch.randn_like(mu)
        std = torch.exp(0.5 * lv)
        return mu + std * eps, 0.5 * (mu * mu + std * std - 1 - lv).sum(dim=1)

    return step, forward


# ------------------------------------------------------------------------------ timing
def time_cpu(fn, repeats, budget_s):
    """(median microseconds per call of fn, calls per timed loop, loops): perf_counter loops of
    ~20 ms after a warm-up call, fewer loops (at least 3) when ``repeats`` would pass ``budget_s``."""
    fn()  # warm-up
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, min(10_000, int(0.02 / one)))  # ~20 ms per timed loop
    repeats = max(3, min(repeats, int(budget_s / (one * inner)) or 3))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples) * 1e6, inner, repeats


def time_events(fn, repeats, budget_s, new_event, elapsed_s, synchronize):
    """As time_cpu on a GPU, timed by its events: loops of ~10 ms after three warm-up calls, at
    least 5 loops; returns (median microseconds per call, calls per loop, loops). ``new_event()``
    makes a timing event (with ``record()`` and ``synchronize()``), ``elapsed_s(start, end)`` is the
    seconds between two recorded events and ``synchronize()`` waits for the device."""
    for _ in range(3):  # warm-up: compilation, allocator pools
        fn()
    synchronize()
    start, end = new_event(), new_event()

    def loop_s(calls):
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return elapsed_s(start, end)

    one = max(loop_s(1), 1e-7)
    inner = max(1, min(2000, int(0.01 / one)))  # ~10 ms per timed loop
    repeats = max(5, min(repeats, int(budget_s / (one * inner)) or 5))
    samples = [loop_s(inner) / inner for _ in range(repeats)]
    return statistics.median(samples) * 1e6, inner, repeats


def time_gpu(fn, repeats, budget_s, cp):
    """time_events on CuPy's current device."""
    return time_events(fn, repeats, budget_s, cp.cuda.Event,
                       lambda start, end: cp.cuda.get_elapsed_time(start, end) / 1e3,
                       cp.cuda.Device().synchronize)


def time_torch_cuda(fn, repeats, budget_s, torch):
    """time_events on PyTorch's current CUDA device."""
    return time_events(fn, repeats, budget_s, lambda: torch.cuda.Event(enable_timing=True),
                       lambda start, end: start.elapsed_time(end) / 1e3, torch.cuda.synchronize)


# ------------------------------------------------------------------------------ environment
def gpu_info(cp):
    """machine.gpu_info() plus the memory clock, bus width and the theoretical peak bandwidth."""
    info = machine_gpu_info()
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = info["name"]
    attrs = dev.attributes
    clock_khz = props.get("memoryClockRate") or attrs.get("MemoryClockRate")
    bus_bits = props.get("memoryBusWidth") or attrs.get("GlobalMemoryBusWidth")
    peak = None
    source = None
    if clock_khz and bus_bits:
        peak = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9
        source = "2 x memory clock x bus width (device attributes)"
    else:
        for key, val in KNOWN_PEAK_GBPS.items():
            if key.lower() in name.lower():
                peak, source = val, f"datasheet value for '{key}'"
                break
    info.update({"memory_clock_khz": clock_khz, "memory_bus_bits": bus_bits,
                 "peak_bandwidth_gbps": peak, "peak_bandwidth_source": source})
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.memory",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip()
    except Exception:
        pass
    return info


def measured_copy_gbps(cp, nbytes=1 << 30):
    """Device-to-device copy bandwidth of ``nbytes``, counting bytes read plus written."""
    a = cp.empty(max(1, nbytes // 4), dtype=cp.float32)
    nbytes = a.nbytes
    b = cp.empty_like(a)
    a.fill(1)
    for _ in range(3):
        b[...] = a
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(10):
        start.record()
        b[...] = a
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    del a, b
    cp.get_default_memory_pool().free_all_blocks()
    return 2 * nbytes / statistics.median(times) / 1e9


# ------------------------------------------------------------------------------ kernels alone
TARGET_COPY_SHARE = 0.85  # row kernels (KL, fused) against a device-to-device copy, from 1e7 up

#: name -> (bytes moved in units of (n, B) elements, the call on prepared arrays)
KERNELS = {
    "reparam_fwd": ((3, 0), lambda G, a: G.reparameterize_forward(a["mu"], a["lv"], 1, 2)),
    "reparam_bwd": ((3, 0), lambda G, a: G.reparameterize_backward(a["dz"], a["lv"], 1, 2)),
    "kl_fwd": ((2, 1), lambda G, a: G.kl_normal_std_forward(a["mu"], a["lv"])),
    "kl_bwd": ((4, 1), lambda G, a: G.kl_normal_std_backward(a["gkl"], a["mu"], a["lv"])),
    "fused_fwd": ((3, 1), lambda G, a: G.reparameterize_kl_forward(a["mu"], a["lv"], 1, 2)),
    "fused_bwd": ((5, 1), lambda G, a: G.reparameterize_kl_backward(a["dz"], a["gkl"], a["mu"], a["lv"], 1, 2)),
    # the decoder's log-likelihood: logits (mu's array) and binary images
    "bernoulli_fwd": ((2, 1), lambda G, a: G.bernoulli_log_prob_forward(a["mu"], a["x"])),
    "bernoulli_bwd": ((3, 1), lambda G, a: G.bernoulli_log_prob_backward(a["gkl"], a["mu"], a["x"])),
    # the log-density of dz's array under N(mu, exp(lv)), and its three gradients
    "gaussian_fwd": ((3, 1), lambda G, a: G.gaussian_log_prob_forward(a["dz"], a["mu"], a["lv"])),
    "gaussian_bwd": ((6, 1), lambda G, a: G.gaussian_log_prob_backward(a["gkl"], a["dz"], a["mu"], a["lv"])),
}
ROW_KERNELS = ("kl_fwd", "kl_bwd", "fused_fwd", "fused_bwd")


def kernel_rows(cp, dtype, sizes, Ds, copy_gbps, repeats, budget):
    """Each kernel alone at n = B*D elements for every size and D: microseconds, GB/s and the
    share of the copy bandwidth (1 GiB, and the same size as one of the kernel's arrays)."""
    import minivae.gpu as G

    itemsize = np.dtype(dtype).itemsize
    rows = []
    for n_req in sizes:
        for D in Ds:
            B = max(1, n_req // D)
            n = B * D
            same = measured_copy_gbps(cp, n * itemsize)
            rs = cp.random.RandomState(0)
            arrays = {"mu": rs.standard_normal((B, D), dtype=dtype),
                      "lv": rs.uniform(-2, 1, (B, D)).astype(dtype),
                      "dz": rs.standard_normal((B, D), dtype=dtype),
                      "gkl": rs.standard_normal(B, dtype=dtype),
                      "x": (rs.uniform(0, 1, (B, D)) < 0.5).astype(dtype)}
            for name, ((kn, kb), call) in KERNELS.items():
                try:
                    us, inner, reps = time_gpu(lambda: call(G, arrays), repeats, budget, cp)
                    gbps = (kn * n + kb * B) * itemsize / (us * 1e-6) / 1e9
                    row = {"kernel": name, "B": B, "D": D, "n": n, "dtype": np.dtype(dtype).name,
                           "us": round(us, 3), "gbps": round(gbps, 1), "inner": inner, "repeats": reps,
                           "share_of_copy": round(gbps / copy_gbps, 4),
                           "share_of_copy_same_size": round(gbps / same, 4),
                           "copy_same_size_gbps": round(same, 1)}
                    print(f"{name:>12} B={B:<9} D={D:<4} n={n:<10.3g} {us:10.1f} us {gbps:8.0f} GB/s "
                          f"{100 * row['share_of_copy']:5.1f}% of copy ({100 * row['share_of_copy_same_size']:5.1f}% "
                          "of a same-size copy)", flush=True)
                except Exception as exc:  # one failing case should not lose the others
                    row = {"kernel": name, "B": B, "D": D, "n": n, "error": repr(exc)}
                    print(f"{name:>12} B={B} D={D}: ERROR {exc!r}", flush=True)
                rows.append(row)
            del arrays
            cp.get_default_memory_pool().free_all_blocks()
    return rows


#: the bias gradient at a hidden layer's shape (batch, 512 units), against CuPy's two calls
DENSE_BATCHES = (100, 1000, 10000)
DENSE_UNITS = 512


def dense_rows(cp, dtype, repeats, budget):
    """A dense layer's bias gradient behind its ReLU, ``bias_grad(g, y)`` (one launch: d and
    the column sums of d), against CuPy's ``d = g * (y > 0)`` and ``d.sum(axis=0)``, per batch:
    microseconds of each (information: the step's launch count is what it saves)."""
    import minivae.gpu as G

    rows = []
    for B in DENSE_BATCHES:
        rs = cp.random.RandomState(0)
        g = rs.standard_normal((B, DENSE_UNITS), dtype=dtype)
        y = cp.maximum(rs.standard_normal((B, DENSE_UNITS), dtype=dtype), 0)
        row = {"B": B, "N": DENSE_UNITS, "dtype": np.dtype(dtype).name}
        for name, call in (("bias_grad", lambda: G.bias_grad(g, y)),
                           ("cupy", lambda: (g * (y > 0)).sum(axis=0))):
            try:
                row[f"us_{name}"] = round(time_gpu(call, repeats, budget, cp)[0], 3)
            except Exception as exc:  # one failing case should not lose the others
                row[f"error_{name}"] = repr(exc)
        print(f"   bias_grad B={B:<6} N={DENSE_UNITS}: {row.get('us_bias_grad')} us, "
              f"CuPy {row.get('us_cupy')} us", flush=True)
        rows.append(row)
    return rows


def kernel_summary(rows):
    """Worst share of copy per row kernel, and whether every row kernel met the target."""
    ok = [r for r in rows if "error" not in r]
    worst = {}
    for r in ok:
        worst[r["kernel"]] = min(worst.get(r["kernel"], 9.9), r["share_of_copy"])
    row_cases = [r for r in rows if r["kernel"] in ROW_KERNELS]  # a failed case fails the target
    return {"worst_share_of_copy": worst, "row_kernels_target": TARGET_COPY_SHARE,
            "row_kernels_target_met": bool(row_cases) and all(
                r.get("share_of_copy", 0) >= TARGET_COPY_SHARE for r in row_cases)}


def kernel_table(rows):
    """Markdown: one line per (n, D), one column per kernel the rows measured: share of copy in percent."""
    ok = [r for r in rows if "error" not in r]
    cases = list(dict.fromkeys((r["n"], r["D"]) for r in ok))
    measured = [k for k in KERNELS if any(r["kernel"] == k for r in ok)]  # (older runs measured fewer)
    lines = ["| n | D | " + " | ".join(measured) + " |", "|" + "---|" * (len(measured) + 2)]
    for n, D in cases:
        cells = []
        for k in measured:
            r = next((r for r in ok if r["kernel"] == k and (r["n"], r["D"]) == (n, D)), None)
            cells.append(f"{100 * r['share_of_copy']:.0f}%" if r else "-")
        lines.append(f"| {n:.0e} | {D} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versions(cp, torch):
    """The versions in the result: Python, NumPy, the minivae that ran (``minivae.__version__``,
    not the metadata of whichever minivae is installed) and the git commit, as the other
    benchmarks record them (``machine.versions``); with ``cp`` CuPy and which kernel sources ran
    (folder, hash); with ``torch`` PyTorch."""
    v = machine_versions()
    if cp is not None:
        import hashlib

        import minivae.gpu as G

        v["cupy"] = cp.__version__
        # which kernel sources ran ($MINIVAE_KERNELS_DIR can point at another version of them)
        v["kernel_dir"] = str(G.kernel_dir())
        v["kernel_sources_sha256"] = hashlib.sha256(
            "".join(G.kernel_source(f) for f in G.KERNEL_FILES).encode()).hexdigest()[:16]
    if torch is not None:
        v["torch"] = torch.__version__
    return v


# ------------------------------------------------------------------------------ main
def parse_sizes(text):
    """The integers of a comma-separated list, each may be written as a float (``1e7``)."""
    return [int(float(s)) for s in text.split(",") if s.strip()]


def main(argv=None):
    """Time every implementation at every size (and each kernel alone on a GPU), print the tables
    and write ``kernels_<device>_<date>.json`` to ``--out``; returns the result."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e3,1e4,1e5,1e6,1e7,1e8",
                    help="comma-separated B*D totals (default 1e3..1e8); B = size // D")
    ap.add_argument("--D", type=int, default=50, help="latent size, the row length (default 50)")
    ap.add_argument("--mnist", default="100x50", help="also time this BxD (the MNIST batch), '' to skip")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=15, help="timed loops per case (median)")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds at most per case (about)")
    ap.add_argument("--cpu-max", type=float, default=1e7, help="largest B*D run on the CPU (default 1e7)")
    ap.add_argument("--no-gpu", action="store_true", help="CPU implementations only")
    ap.add_argument("--require-gpu", action="store_true",
                    help="without CuPy or a CUDA device, measure nothing and exit with status 2 "
                         "(instead of the CPU rows alone)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-philox-cpu", action="store_true", help="skip the numpy-philox row")
    ap.add_argument("--impls", nargs="+", metavar="NAME",
                    help="run only these implementations (e.g. minivae-fused cupy-unfused)")
    ap.add_argument("--kernel-sizes", default="1e7,1e8",
                    help="B*D totals of the kernels-alone section (GPU only; '' to skip)")
    ap.add_argument("--kernel-D", default="2,10,50,100,784", help="row lengths of the kernels-alone section")
    ap.add_argument("--quick", action="store_true", help="sizes 1e3..1e5, few repeats (smoke test)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output directory")
    args = ap.parse_args(argv)
    if args.require_gpu and args.no_gpu:
        ap.error("--require-gpu and --no-gpu exclude each other")

    if args.quick:
        args.sizes, args.repeats, args.budget = "1e3,1e4,1e5", 3, 0.3
    dtype = np.dtype(args.dtype).type
    itemsize = np.dtype(dtype).itemsize
    shapes = [(max(1, n // args.D), args.D) for n in parse_sizes(args.sizes)]
    if args.mnist:
        b, d = (int(v) for v in args.mnist.lower().split("x"))
        shapes = [(b, d)] + shapes

    cp = torch = None
    gpu = None
    notes = []
    if not args.no_gpu:
        why = "no CUDA device"
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                cp = cupy
        except Exception as exc:  # no CuPy or no device: CPU rows only
            why = f"{type(exc).__name__}: {exc}"
        if cp is None and args.require_gpu:
            print(f"bench_kernels: no GPU to measure ({why}); nothing measured", file=sys.stderr)
            raise SystemExit(2)
        if cp is None:
            notes.append(f"GPU rows skipped: {why}")
    if not args.no_torch:
        try:
            import torch as _torch

            torch = _torch
        except ImportError:
            notes.append("torch rows skipped: PyTorch not installed")
    torch_device = "cuda" if (torch is not None and cp is not None and torch.cuda.is_available()) else "cpu"

    if cp is not None:
        gpu = gpu_info(cp)
        gpu["measured_copy_gbps"] = round(measured_copy_gbps(cp), 1)

    impls = [("numpy", "cpu")]
    if not args.no_philox_cpu:
        impls.append(("numpy-philox", "cpu"))
    if cp is not None:
        impls += [("cupy-unfused", "gpu"), ("minivae-fused", "gpu"), ("minivae-separate", "gpu")]
    if torch is not None:
        impls.append(("torch", torch_device))
    if args.impls:
        impls = [(name, device) for name, device in impls if name in args.impls]

    rows = []
    for B, D in shapes:
        n = B * D
        nbytes = useful_bytes(B, D, itemsize)
        for name, device in impls:
            if device == "cpu" and n > args.cpu_max:
                continue
            try:
                if name in ("numpy", "numpy-philox"):
                    step, forward = make_numpy(B, D, dtype, philox=(name == "numpy-philox"))
                    timer = time_cpu
                elif name == "cupy-unfused":
                    step, forward = make_cupy_unfused(B, D, dtype, cp)
                    timer = functools.partial(time_gpu, cp=cp)
                elif name.startswith("minivae"):
                    step, forward = make_minivae(B, D, dtype, cp, fused=(name == "minivae-fused"))
                    timer = functools.partial(time_gpu, cp=cp)
                else:
                    step, forward = make_torch(B, D, dtype, torch, torch_device)
                    timer = functools.partial(time_torch_cuda, torch=torch) if torch_device == "cuda" else time_cpu
                us, inner, reps = timer(step, args.repeats, args.budget)
                row = {"impl": name, "device": device, "B": B, "D": D, "n": n, "dtype": args.dtype,
                       "us_fwd_bwd": round(us, 3), "inner": inner, "repeats": reps,
                       "gbps": round(nbytes / (us * 1e-6) / 1e9, 2)}
                if forward is not None:
                    us_f, _, _ = timer(forward, args.repeats, args.budget / 2)
                    row["us_fwd"] = round(us_f, 3)
                if device == "gpu" or (name == "torch" and torch_device == "cuda"):
                    if gpu and gpu["peak_bandwidth_gbps"]:
                        row["share_of_peak"] = round(row["gbps"] / gpu["peak_bandwidth_gbps"], 4)
                    if gpu:
                        row["share_of_copy"] = round(row["gbps"] / gpu["measured_copy_gbps"], 4)
                rows.append(row)
                print(f"{name:>17} {device:>4} B={B:<9} D={D:<4} n={n:<10.3g} "
                      f"{us:12.2f} us  {row['gbps']:9.2f} GB/s"
                      + (f"  {100 * row['share_of_peak']:5.1f}% of peak" if "share_of_peak" in row else ""),
                      flush=True)
            except Exception as exc:  # one failing case should not lose the others
                rows.append({"impl": name, "device": device, "B": B, "D": D, "n": n, "error": repr(exc)})
                print(f"{name:>17} B={B} D={D}: ERROR {exc!r}", flush=True)
            finally:
                if cp is not None:
                    cp.get_default_memory_pool().free_all_blocks()

    krows = []
    if cp is not None and args.kernel_sizes:
        krows = kernel_rows(cp, dtype, parse_sizes(args.kernel_sizes), parse_sizes(args.kernel_D),
                            gpu["measured_copy_gbps"], args.repeats, args.budget)
    drows = dense_rows(cp, dtype, args.repeats, args.budget) if cp is not None else []
    summary = summarize(rows, args)
    if krows:
        summary["kernels_alone"] = kernel_summary(krows)
    now = _dt.datetime.now(_dt.timezone.utc)
    result = {
        "benchmark": "bench_kernels", "what": "reparameterization + KL to N(0,I), forward + backward",
        "date": now.isoformat(timespec="seconds"),
        "command": command_line(__file__, argv),
        "machine": machine_info(), "device": gpu, "versions": versions(cp, torch),
        "torch_device": torch_device if torch is not None else None,
        "bytes_model": "(8*B*D + 2*B) * itemsize per forward+backward",
        "targets": {"fused_share_of_peak_from_1e7": TARGET_PEAK_SHARE,
                    "fused_speedup_vs_cupy_unfused_at_mnist": TARGET_SPEEDUP_MNIST},
        "summary": summary, "notes": notes, "results": rows,
        "kernels_alone": krows, "bias_gradient": drows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = re.sub(r"[^A-Za-z0-9]+", "-", gpu["name"]).strip("-").lower() if gpu else "cpu-only"
    path = out / f"kernels_{dev}_{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown_table(rows))
    if krows:
        print()
        print(kernel_table(krows))
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")
    return result


def summarize(rows, args):
    """The targets on this run's rows: the fused kernels' speedup at the ``--mnist`` shape (over
    cupy-unfused and NumPy) and their share of peak bandwidth from 1e7 elements."""
    ok = [r for r in rows if "error" not in r]
    s = {}
    mnist = None
    if args.mnist:
        b, d = (int(v) for v in args.mnist.lower().split("x"))
        mnist = (b, d)
        by = {r["impl"]: r for r in ok if (r["B"], r["D"]) == mnist}
        if "minivae-fused" in by and "cupy-unfused" in by:
            s["mnist_speedup_fused_vs_cupy_unfused"] = round(
                by["cupy-unfused"]["us_fwd_bwd"] / by["minivae-fused"]["us_fwd_bwd"], 2)
            s["mnist_speedup_target_met"] = s["mnist_speedup_fused_vs_cupy_unfused"] >= TARGET_SPEEDUP_MNIST
        if "minivae-fused" in by and "numpy" in by:
            s["mnist_speedup_fused_vs_numpy_cpu"] = round(by["numpy"]["us_fwd_bwd"] / by["minivae-fused"]["us_fwd_bwd"], 2)
    big = [r for r in ok if r["impl"] == "minivae-fused" and r["n"] >= 10 ** 7 and "share_of_peak" in r]
    if big:
        s["fused_share_of_peak_from_1e7"] = {str(r["n"]): r["share_of_peak"] for r in big}
        s["fused_peak_target_met"] = all(r["share_of_peak"] >= TARGET_PEAK_SHARE for r in big)
    return s


def markdown_table(rows):
    """Markdown: a line per B x D, a column per implementation (microseconds per forward +
    backward), and the fused kernels' GB/s (share of peak)."""
    ok = [r for r in rows if "error" not in r]
    impls = list(dict.fromkeys(r["impl"] for r in ok))
    shapes = list(dict.fromkeys((r["B"], r["D"]) for r in ok))
    head = "| B x D | " + " | ".join(f"{i} (us)" for i in impls) + " | fused GB/s (% peak) |"
    lines = [head, "|" + "---|" * (len(impls) + 2)]
    for B, D in shapes:
        cells = []
        fused = None
        for i in impls:
            r = next((r for r in ok if r["impl"] == i and (r["B"], r["D"]) == (B, D)), None)
            cells.append(f"{r['us_fwd_bwd']:.1f}" if r else "-")
            if i == "minivae-fused" and r:
                fused = r
        f = "-"
        if fused:
            f = f"{fused['gbps']:.0f}" + (f" ({100 * fused['share_of_peak']:.0f}%)" if "share_of_peak" in fused else "")
        lines.append(f"| {B} x {D} | " + " | ".join(cells) + f" | {f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
