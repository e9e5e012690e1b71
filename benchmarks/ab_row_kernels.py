#!/usr/bin/env python3
"""A/B of compile-time designs and settings of the forward row kernels (KL alone,
reparameterization + KL), in one process on one GPU.

The forward row kernel (mv_row_fwd in kernels/device.cuh) takes three settings when it is
compiled: ``-DMV_ROW_FWD=MV_REGTILES`` (the default: a block of 256 threads per tile, one block
per tile) or ``MV_WARPTILES`` (a warp per tile, the warps walking the tiles in a grid-stride
loop); ``-DMV_TILE=e`` (elements per tile, e / (4 * threads per tile) chunks per thread, default
4096); ``-DMV_ROW_FWD_MIN_BLOCKS=k`` (__launch_bounds__: k resident blocks of 256 threads,
registers capped to match; default none). The library compiles the defaults. Here every setting
of ``VARIANTS`` is compiled from the same sources with its own options and launched directly (no
wrapper, the grid of ``launch_grid``), then

1. checked: on small edge shapes (float32 and float64) and on every timed case, kl against a
   float64 row sum (relative 1e-5 in float32, 1e-12 in float64), every kl written, z bit for bit
   the reparameterization kernel's, and kl of the KL kernel bit for bit the fused kernel's; a
   variant (or a case) that fails is reported with its failures and not timed;
2. timed alone (CUDA events, the median of ``--repeats`` loops) at ``--sizes`` elements (default
   1e7 and 1e8) for rows of ``--D`` (default 10, 50, 784), next to a device-to-device copy
   moving the same bytes and a 1 GiB copy (``--copy-mib``) measured in the same run (at the start
   and the end), and next to the flat reparameterization forward (``FLAT``) on the same arrays.

Bytes moved: KL forward (2n + B) * itemsize, fused forward (3n + B) * itemsize, reparameterization
forward 3n * itemsize (n = B*D).
Writes ``<out>/ab_row_kernels_<device>_<date>.json`` (``--out``, default $OUT, else
benchmarks/results) with the machine, versions, date and command, and prints a table of the share
of the 1 GiB copy's bandwidth.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import time_gpu  # noqa: E402
from machine import command_line, git_commit, machine_info, versions  # noqa: E402

from minivae.gpu._source import NVRTC_OPTIONS, kernel_source  # noqa: E402
from minivae.gpu.kernels import BLOCK, TILE  # noqa: E402

#: name -> NVRTC options added to the library's (DEFAULT: none, the library's own build).
#: (Measured before on an H200 and dropped, each slower than regtiles at every size: regtiles with
#: tiles of 2048 elements, alone and capped for 6 blocks, and of 1024 capped for 8 blocks.)
_WARPTILES = "-DMV_ROW_FWD=MV_WARPTILES"
VARIANTS = {
    "regtiles": (),
    # a warp per tile of 512 elements: 4 chunks a lane, as a thread of regtiles (72-80 registers)
    "warptiles": (_WARPTILES, "-DMV_TILE=512"),
    # the same, registers capped at 64 for 4 resident blocks (a few bytes spilled)
    "warptiles-lb4": (_WARPTILES, "-DMV_TILE=512", "-DMV_ROW_FWD_MIN_BLOCKS=4"),
    # a warp per tile of 256 elements: 2 chunks a lane, 56-64 registers (4 blocks)
    "warptiles-256": (_WARPTILES, "-DMV_TILE=256"),
}
DEFAULT = "regtiles"
KERNELS = {"kl_fwd": 2, "fused_fwd": 3}  # name -> bytes moved per element (plus one per row)
NULL = np.uint64(0)  # a null pointer argument: the draw's offset is OFFSET alone
# The flat reparameterization forward, timed beside them in every case: the same loads, stores and
# noise as the fused forward without the KL terms and row sums, so the share of copy it reaches
# tells how much of a fused forward's gap is the row sums and how much the arithmetic.
FLAT = "flat"
EDGE_SHAPES = [(1, 1), (3, 2), (2050, 2), (5, 3), (1370, 3), (9, 1), (333, 7), (1000, 10), (7, 50),
               (1001, 50), (4, 64), (9, 1001), (3, 1025), (3, 2050), (2, 4101), (2, 9001), (5, 784),
               (77, 100)]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
SEED, OFFSET, STREAM = 1234, 5, 1


# ------------------------------------------------------------------------------ launches
def tile_of(variant):
    """The variant's MV_TILE (the library's TILE without a -DMV_TILE option)."""
    for opt in VARIANTS[variant]:
        if opt.startswith("-DMV_TILE="):
            return int(opt.split("=", 1)[1])
    return TILE


def launch_grid(variant, B, D, sms):
    """Blocks of a variant's forward launch on a GPU of ``sms`` multiprocessors (any grid is
    correct). Tiles are mv_row_tiling_of(D).rows rows of the variant's MV_TILE (as
    minivae.gpu.kernels.rows_per_tile for the default). Regtiles: one block per tile, as the
    library launches it. Warptiles: a warp per tile, the warps of the grid striding over the tiles:
    the flat kernels' grid, one block per BLOCK / 32 tiles, at most 32 blocks per multiprocessor."""
    m = 1 if D % 4 == 0 else (2 if D % 2 == 0 else 4)
    rows = max(1, tile_of(variant) // (m * D) * m)
    tiles = -(-B // rows)
    if _WARPTILES in VARIANTS[variant]:
        return max(1, min(-(-tiles // (BLOCK // 32)), 32 * sms))
    return max(1, min(tiles, 2 ** 31 - 1))


class Variant:
    """The forward kernels of one design, compiled once."""

    def __init__(self, cp, name):
        t0 = time.perf_counter()
        self.cp, self.name = cp, name
        self.sms = cp.cuda.Device().attributes["MultiProcessorCount"]
        opts = tuple(NVRTC_OPTIONS) + VARIANTS[name]
        self.options = opts
        self.fns = {}
        for cu, base in (("kl.cu", "mv_kl_fwd"), ("fused.cu", "mv_reparam_kl_fwd")):
            mod = cp.RawModule(code=kernel_source(cu), options=opts)
            for sfx in ("f32", "f64"):
                self.fns[(base, sfx)] = mod.get_function(f"{base}_{sfx}")
        self.compile_s = time.perf_counter() - t0

    def run(self, kernel, mu, lv, z, kl):
        """Launch ``kernel`` ("kl_fwd" or "fused_fwd") on (B, D) arrays into kl (and z)."""
        B, D = mu.shape
        sfx = "f32" if mu.dtype == np.float32 else "f64"
        grid = (launch_grid(self.name, B, D, self.sms),)
        if kernel == "kl_fwd":
            self.fns[("mv_kl_fwd", sfx)](grid, (BLOCK,), (mu, lv, kl, np.int64(B), np.int64(D)))
        else:
            self.fns[("mv_reparam_kl_fwd", sfx)](
                grid, (BLOCK,), (mu, lv, z, kl, np.int64(B), np.int64(D), np.uint64(SEED),
                                 np.uint64(OFFSET), NULL, np.uint32(STREAM)))


class Reference:
    """The reparameterization kernel (z to compare bit for bit) and float64 row sums."""

    def __init__(self, cp):
        self.cp = cp
        self.sms = cp.cuda.Device().attributes["MultiProcessorCount"]
        mod = cp.RawModule(code=kernel_source("reparam.cu"), options=tuple(NVRTC_OPTIONS))
        self.fns = {s: mod.get_function(f"mv_reparam_fwd_{s}") for s in ("f32", "f64")}

    def z(self, mu, lv, z=None):
        """z of the flat reparameterization kernel (into ``z`` when given)."""
        cp = self.cp
        z = cp.empty(mu.shape, dtype=mu.dtype) if z is None else z
        n = mu.size
        grid = (max(1, min(-(-((n + 3) // 4) // BLOCK), 32 * self.sms)),)  # the library's flat launch
        sfx = "f32" if mu.dtype == np.float32 else "f64"
        self.fns[sfx](grid, (BLOCK,), (mu, lv, z, np.int64(n), np.uint64(SEED), np.uint64(OFFSET), NULL,
                                       np.uint32(STREAM)))
        return z

    def kl(self, mu, lv):
        """KL to N(0, I) per row, 0.5 * sum(mu^2 + e^lv - 1 - lv), summed in float64: what the kernels'
        kl is checked against."""
        cp = self.cp
        m, lv64 = mu.astype(cp.float64), lv.astype(cp.float64)
        return 0.5 * (m * m + cp.expm1(lv64) - lv64).sum(axis=1)


def check_case(cp, var, ref, mu, lv, z_ref, kl_ref, dtype):
    """Failures (strings) of a variant on one case, and the worst relative error of kl."""
    B, _ = mu.shape
    fails, kls, worst = [], {}, 0.0
    for kernel in KERNELS:
        z = cp.full(mu.shape, np.nan, dtype=mu.dtype) if kernel == "fused_fwd" else None
        kl = cp.full((B,), np.nan, dtype=mu.dtype)
        var.run(kernel, mu, lv, z, kl)
        err = cp.abs(kl.astype(cp.float64) - kl_ref) / cp.maximum(cp.abs(kl_ref), 1e-30)
        err_max = float(cp.asnumpy(err.max()))  # NaN (a kl never written) fails below
        worst = max(worst, err_max) if err_max == err_max else float("nan")
        if not err_max <= RTOL[dtype]:
            fails.append(f"{kernel} {mu.shape} {np.dtype(dtype).name}: kl relative error {err_max:.3g}")
        if z is not None and not bool(cp.array_equal(z, z_ref)):
            fails.append(f"{kernel} {mu.shape} {np.dtype(dtype).name}: z differs from reparam_fwd")
        kls[kernel] = kl
    if not bool(cp.array_equal(kls["kl_fwd"], kls["fused_fwd"])):
        fails.append(f"{mu.shape} {np.dtype(dtype).name}: kl of kl_fwd and fused_fwd differ")
    return fails, worst, kls["kl_fwd"]


def check_edges(cp, var, ref):
    """Failures (strings) of a variant on every shape of EDGE_SHAPES, float32 and float64 (none: it
    passed)."""
    fails = []
    rs = cp.random.RandomState(7)
    for dtype in (np.float32, np.float64):
        for B, D in EDGE_SHAPES:
            mu = rs.standard_normal((B, D), dtype=dtype)
            lv = rs.uniform(-4, 2, (B, D)).astype(dtype)
            fails += check_case(cp, var, ref, mu, lv, ref.z(mu, lv), ref.kl(mu, lv), dtype)[0]
    return fails


# ------------------------------------------------------------------------------ timing
def time_us(cp, fn, repeats):
    """Median microseconds of fn() (bench_kernels' CUDA-event loops of ~10 ms: as many as fit in
    0.5 s, but at least 5)."""
    return time_gpu(fn, repeats, 0.5, cp)[0]


def copy_gbps(cp, nbytes, repeats):
    """Device-to-device copy of ``nbytes`` (bytes read plus written per second, GB/s)."""
    a = cp.ones(max(1, nbytes // 4), dtype=cp.float32)
    b = cp.empty_like(a)

    def copy():
        b[...] = a

    us = time_us(cp, copy, repeats)
    return 2 * a.nbytes / (us * 1e-6) / 1e9


# ------------------------------------------------------------------------------ main
def parse_ints(text):
    """The integers of a comma-separated list, each may be written as a float (``1e7``)."""
    return [int(float(v)) for v in text.split(",") if v.strip()]


def main(argv=None, cp=None):
    """Check the variants, time those that pass, print the table and write
    ``ab_row_kernels_<device>_<date>.json`` to ``--out``; returns the result."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    ap.add_argument("--sizes", default="1e7,1e8", help="elements n = B*D of the timed cases")
    ap.add_argument("--D", default="10,50,784", help="row lengths of the timed cases")
    ap.add_argument("--repeats", type=int, default=7, help="timed loops per case (median)")
    ap.add_argument("--copy-mib", type=int, default=1024, help="size of the reference copy (MiB)")
    ap.add_argument("--max-seconds", type=float, default=35.0,
                    help="start no timed case after this many seconds (the JSON says which were skipped)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if cp is None:
        try:
            import cupy as cp

            cp.cuda.runtime.getDeviceCount()
        except Exception as exc:  # no CuPy, or no device: say so in one line
            print(f"ab_row_kernels: no GPU to measure ({type(exc).__name__}: {exc}); nothing measured",
                  file=sys.stderr)
            raise SystemExit(2) from None
    t_start = time.perf_counter()
    now = _dt.datetime.now(_dt.timezone.utc)
    dev_name = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())["name"]
    dev_name = dev_name.decode() if isinstance(dev_name, bytes) else str(dev_name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = re.sub(r"[^A-Za-z0-9]+", "-", dev_name).strip("-").lower()
    path = out / f"ab_row_kernels_{dev}_{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    meta, rows = {}, []
    result = {"benchmark": "ab_row_kernels", "date": now.isoformat(timespec="seconds"),
              "command": command_line(__file__, argv),
              "device": dev_name, "cupy": cp.__version__, "git_commit": git_commit(),
              "machine": machine_info(), "versions": dict(versions(), cupy=cp.__version__),
              "copy_mib": args.copy_mib, "copy_gbps": {},
              "bytes_model": "kl_fwd (2n + B) * 4, fused_fwd (3n + B) * 4 (float32)",
              "variants": meta, "worst_share_of_copy": {}, "rows": rows, "complete": False}

    def save():  # after every step: a run cut short still leaves what it measured
        result["seconds"] = round(time.perf_counter() - t_start, 1)
        path.write_text(json.dumps(result, indent=2) + "\n")

    print(f"device: {dev_name}, CuPy {cp.__version__}", flush=True)
    copy_start = result["copy_gbps"]["start"] = round(copy_gbps(cp, args.copy_mib << 20, args.repeats), 1)
    print(f"{args.copy_mib} MiB copy: {copy_start:.0f} GB/s", flush=True)

    ref = Reference(cp)
    variants = {}
    for name in names:
        info = meta[name] = {"options": list(VARIANTS[name])}
        try:
            var = Variant(cp, name)
            info["compile_s"] = round(var.compile_s, 2)
            fails = check_edges(cp, var, ref)
        except Exception as exc:  # a variant that does not compile or crashes: reported, not timed
            fails = [f"{type(exc).__name__}: {exc}"]
        info["edge_checks_passed"] = not fails
        info["failures"] = fails
        print(f"{name:>17}: compiled in {info.get('compile_s', '-')} s, edge checks "
              + ("passed" if not fails else f"FAILED: {fails[:3]}"), flush=True)
        if not fails:
            variants[name] = var
        save()

    sizes, Ds = parse_ints(args.sizes), parse_ints(args.D)
    nmax = max(sizes)
    rs = cp.random.RandomState(0)
    mu_all = rs.standard_normal(nmax, dtype=cp.float32)
    lv_all = rs.uniform(-2, 1, nmax).astype(cp.float32)
    skipped = result["skipped_cases"] = []
    for n_req in sizes:
        for D in Ds:
            B = max(1, n_req // D)
            n = B * D
            if time.perf_counter() - t_start > args.max_seconds:
                skipped.append({"n": n, "D": D})
                print(f"n={n:.3g} D={D}: skipped (past --max-seconds {args.max_seconds})", flush=True)
                continue
            rows += time_case(cp, variants, ref, mu_all[:n].reshape(B, D), lv_all[:n].reshape(B, D),
                              copy_start, args.repeats)
            cp.get_default_memory_pool().free_all_blocks()
            save()
    del mu_all, lv_all
    cp.get_default_memory_pool().free_all_blocks()
    copy_end = result["copy_gbps"]["end"] = round(copy_gbps(cp, args.copy_mib << 20, args.repeats), 1)

    summary = result["worst_share_of_copy"]
    for name in names:
        if not meta[name]["edge_checks_passed"]:
            summary[name] = "failed its checks (see variants)"
            continue
        mine = [r for r in rows if r["variant"] == name]
        summary[name] = {k: min((r.get("share_of_copy", 0.0) for r in mine if r["kernel"] == k), default=None)
                         for k in KERNELS}
    summary[FLAT] = {"reparam_fwd": min((r["share_of_copy"] for r in rows if r["variant"] == FLAT), default=None)}
    result["complete"] = not skipped
    save()
    print(table(rows, names))
    print(json.dumps(summary, indent=2))
    print(f"{args.copy_mib} MiB copy {copy_start:.0f} GB/s at the start, {copy_end:.0f} GB/s at the end; "
          f"{result['seconds']} s in all\nwrote {path}")
    return result


def time_case(cp, variants, ref, mu, lv, copy_big, repeats):
    """Rows of one (n, D): every variant checked, then its two kernels timed (or its failures)."""
    B, D = mu.shape
    n = B * D
    z_ref, kl_ref = ref.z(mu, lv), ref.kl(mu, lv)
    z, kl = cp.empty_like(mu), cp.empty((B,), dtype=mu.dtype)
    same_bytes = {k: copy_gbps(cp, (b * n + B) * 4 // 2, repeats) for k, b in KERNELS.items()}
    rows, kl_default = [], None
    for name, var in variants.items():
        fails, worst, kl_first = check_case(cp, var, ref, mu, lv, z_ref, kl_ref, np.float32)
        # every setting sums a row of D <= its MV_TILE - 3 in one segment, in the same order (longer
        # rows are cut at every MV_TILE elements: then the order, and maybe the rounding, differ)
        same_as_default = None
        if name == DEFAULT:
            kl_default = kl_first
        elif kl_default is not None:
            same_as_default = bool(cp.array_equal(kl_first, kl_default))
        for kernel, per in KERNELS.items():
            row = {"variant": name, "kernel": kernel, "n": n, "B": B, "D": D,
                   "kl_max_rel_err": worst, "kl_bit_identical_to_default": same_as_default}
            if fails:
                row["error"] = fails
                print(f"{name:>17} {kernel:>9} n={n:<10.3g} D={D:<4} FAILED: {fails}", flush=True)
            else:
                us = time_us(cp, lambda: var.run(kernel, mu, lv, z, kl), repeats)
                gbps = (per * n + B) * 4 / (us * 1e-6) / 1e9
                row.update({"us": round(us, 2), "gbps": round(gbps, 1),
                            "share_of_copy": round(gbps / copy_big, 4),
                            "copy_same_bytes_gbps": round(same_bytes[kernel], 1),
                            "share_of_copy_same_bytes": round(gbps / same_bytes[kernel], 4)})
                print(f"{name:>17} {kernel:>9} n={n:<10.3g} D={D:<4} {us:9.1f} us {gbps:7.0f} GB/s "
                      f"{100 * row['share_of_copy']:5.1f}% of the big copy, "
                      f"{100 * row['share_of_copy_same_bytes']:5.1f}% of a same-bytes copy", flush=True)
            rows.append(row)
    us = time_us(cp, lambda: ref.z(mu, lv, z), repeats)
    gbps = 3 * n * 4 / (us * 1e-6) / 1e9
    rows.append({"variant": FLAT, "kernel": "reparam_fwd", "n": n, "B": B, "D": D, "us": round(us, 2),
                 "gbps": round(gbps, 1), "share_of_copy": round(gbps / copy_big, 4)})
    print(f"{FLAT:>17} {'reparam':>9} n={n:<10.3g} D={D:<4} {us:9.1f} us {gbps:7.0f} GB/s "
          f"{100 * gbps / copy_big:5.1f}% of the big copy", flush=True)
    return rows


def table(rows, names):
    """Markdown: a line per (n, D), a column per variant and kernel, and the flat reparameterization:
    share of the 1 GiB copy."""
    cols = [(v, k) for v in names for k in KERNELS] + [(FLAT, "reparam_fwd")]
    lines = ["| n | D | " + " | ".join(f"{v} {k}" for v, k in cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for n, D in dict.fromkeys((r["n"], r["D"]) for r in rows):
        cells = []
        for v, k in cols:
            r = next((r for r in rows if (r["variant"], r["kernel"], r["n"], r["D"]) == (v, k, n, D)), None)
            cells.append("-" if r is None else ("FAIL" if "error" in r else f"{100 * r['share_of_copy']:.0f}%"))
        lines.append(f"| {n:.0e} | {D} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
