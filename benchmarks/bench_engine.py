"""Per-op engine overhead: forward + backward on tiny arrays, minivae vs raw NumPy vs PyTorch CPU.

On a (4, 4) array the arithmetic costs almost nothing, so the time is the engine's bookkeeping:
making tensors, recording the node, the topological sort, unbroadcasting, accumulating. Each op is
timed three ways, each doing the same computation, forward and then backward with a fixed random
upstream gradient:

* minivae: ``out = op(*tensors); out.backward(g)`` (leaf grads reset each call);
* NumPy: the forward and a hand-written backward on plain arrays (the floor: no engine at all);
* PyTorch CPU, when ``import torch`` works: the same as minivae, with ``torch.Tensor.backward``.

"overhead" is an engine's time minus NumPy's. Before timing, each op's gradients are checked to
agree across the three, so the same computation is timed. Times are the median over ``--repeat``
repeats of ``timeit`` loops (~10 ms each; the three take turns within every repeat, so load from
other processes hits them alike), in microseconds per forward + backward; the minimum is kept too.

    python benchmarks/bench_engine.py            # writes benchmarks/results/engine_<machine>.json
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import timeit
from pathlib import Path

import numpy as np

import minivae
from minivae import Tensor
from minivae import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import command_line, default_machine_name, machine_info, versions  # noqa: E402

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # the benchmark runs without PyTorch; its column is then absent
    torch = None

SHAPE = (4, 4)
IDX = np.array([0, 2, 2, 1])
IDX_TORCH = torch.as_tensor(IDX) if torch is not None else None  # (made once, as IDX is, not per call)


def _sig(x):
    return 0.5 * (np.tanh(0.5 * x) + 1)


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _place_rows(g):
    out = np.zeros(SHAPE, g.dtype)
    out[1:3] = g
    return out


def _scatter_rows(g):
    out = np.zeros(SHAPE, g.dtype)
    np.add.at(out, IDX, g)
    return out


# name: (input makers, minivae forward, NumPy forward + hand-written backward -> (out, grads),
#        PyTorch forward). Inputs are float64 arrays; positive ones where the op needs it.
U = lambda rng, shape=SHAPE: rng.uniform(-1, 1, shape)  # noqa: E731
P = lambda rng, shape=SHAPE: rng.uniform(0.5, 2, shape)  # noqa: E731
OPS = {
    "add": ([U, U], lambda a, b: a + b, lambda a, b, g: (a + b, (g, g)), lambda a, b: a + b),
    "add (4,4)+(4,)": ([U, lambda r: U(r, (4,))], lambda a, b: a + b,
                       lambda a, b, g: (a + b, (g, g.sum(0))), lambda a, b: a + b),
    "mul": ([U, U], lambda a, b: a * b, lambda a, b, g: (a * b, (g * b, g * a)), lambda a, b: a * b),
    "div": ([U, P], lambda a, b: a / b,
            lambda a, b, g: (a / b, (g / b, -g * a / (b * b))), lambda a, b: a / b),
    "mul by scalar": ([U], lambda a: a * 3.0, lambda a, g: (a * 3.0, (g * 3.0,)), lambda a: a * 3.0),
    "pow 2": ([U], lambda a: a ** 2, lambda a, g: (a ** 2, (2 * a * g,)), lambda a: a ** 2),
    "exp": ([U], F.exp, lambda a, g: (lambda e: (e, (g * e,)))(np.exp(a)), lambda a: a.exp()),
    "log": ([P], F.log, lambda a, g: (np.log(a), (g / a,)), lambda a: a.log()),
    "tanh": ([U], F.tanh, lambda a, g: (lambda t: (t, (g * (1 - t * t),)))(np.tanh(a)), torch and torch.tanh),
    "sigmoid": ([U], F.sigmoid, lambda a, g: (lambda s: (s, (g * s * (1 - s),)))(_sig(a)),
                torch and torch.sigmoid),
    "relu": ([U], F.relu, lambda a, g: (np.maximum(a, 0), (g * (a > 0),)), torch and torch.relu),
    "softplus": ([U], F.softplus, lambda a, g: (np.logaddexp(0, a), (g * _sig(a),)), torch and TF.softplus),
    "sum (axis 1)": ([U], lambda a: a.sum(axis=1),
                     lambda a, g: (a.sum(1), (np.broadcast_to(g[:, None], SHAPE),)), lambda a: a.sum(1)),
    "mean (all)": ([U], lambda a: a.mean(), lambda a, g: (a.mean(), (np.full(SHAPE, g / a.size),)),
                   lambda a: a.mean()),
    "logsumexp (axis 1)": ([U], lambda a: F.logsumexp(a, axis=1),
                           lambda a, g: (lambda m: (m, (g[:, None] * np.exp(a - m[:, None]),)))(
                               np.logaddexp.reduce(a, axis=1)),
                           lambda a: torch.logsumexp(a, 1)),
    "softmax": ([U], F.softmax,
                lambda a, g: (lambda s: (s, (s * (g - (g * s).sum(-1, keepdims=True)),)))(_softmax(a)),
                lambda a: torch.softmax(a, -1)),
    "matmul": ([U, U], lambda a, b: a @ b, lambda a, b, g: (a @ b, (g @ b.T, a.T @ g)), lambda a, b: a @ b),
    "linear (x W + b)": ([U, U, lambda r: U(r, (4,))], F.linear,
                         lambda x, W, b, g: (x @ W + b, (g @ W.T, x.T @ g, g.sum(0))),
                         lambda x, W, b: torch.addmm(b, x, W)),
    "transpose": ([U], lambda a: a.T, lambda a, g: (a.T, (g.T,)), lambda a: a.T),
    "reshape": ([U], lambda a: a.reshape(2, 8), lambda a, g: (a.reshape(2, 8), (g.reshape(SHAPE),)),
                lambda a: a.reshape(2, 8)),
    "getitem (slice)": ([U], lambda a: a[1:3], lambda a, g: (a[1:3], (_place_rows(g),)),
                        lambda a: a[1:3]),
    "getitem (repeated rows)": ([U], lambda a: a[IDX], lambda a, g: (a[IDX], (_scatter_rows(g),)),
                                lambda a: a[IDX_TORCH]),
    "reparameterize": ([U, U, U], F.reparameterize,
                       lambda m, lv, e, g: (lambda s: (m + s * e, (g, g * s * e / 2, g * s)))(np.exp(lv / 2)),
                       lambda m, lv, e: m + torch.exp(lv / 2) * e),
    "kl_normal_std": ([U, U], F.kl_normal_std,
                      lambda m, lv, g: (0.5 * (m * m + np.exp(lv) - 1 - lv).sum(-1),
                                        (g[:, None] * m, g[:, None] * (np.exp(lv) - 1) / 2)),
                      lambda m, lv: 0.5 * (m * m + lv.exp() - 1 - lv).sum(-1)),
    "bernoulli_log_prob": ([U, lambda r: (r.uniform(size=SHAPE) < 0.5) * 1.0], F.bernoulli_log_prob,
                           lambda l, x, g: ((x * l - np.logaddexp(0, l)).sum(-1),
                                            (g[:, None] * (x - _sig(l)), g[:, None] * l)),
                           lambda l, x: -TF.binary_cross_entropy_with_logits(l, x, reduction="none").sum(-1)),
}


def _calibrate(fn, target_s):
    """A timeit Timer for ``fn`` and the loop count that takes about ``target_s``."""
    timer = timeit.Timer(fn)
    number, elapsed = 1, 0.0
    while elapsed < target_s / 5:
        number *= 2
        elapsed = timer.timeit(number)
    return timer, max(1, int(number * target_s / elapsed))


def _time_interleaved(fns, repeat, target_s=0.01):
    """Median and minimum time per call (microseconds) of each function in ``fns``.

    The functions take turns within every repeat, so a burst of load from other processes on a
    shared machine slows all of them alike instead of one op or one library.
    """
    timers = {name: _calibrate(fn, target_s) for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, (timer, number) in timers.items():
            times[name].append(timer.timeit(number) / number * 1e6)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def _bench_op(name, spec, dtype, repeat, rng):
    makers, mv_fwd, np_fwd_bwd, torch_fwd = spec
    arrays = [m(rng).astype(dtype) for m in makers]
    with minivae.no_grad():
        out_shape = mv_fwd(*[Tensor(a) for a in arrays]).shape
    g = rng.standard_normal(out_shape).astype(dtype)
    _, grads_ref = np_fwd_bwd(*arrays, g)

    tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]  # every input, as in NumPy

    def run_minivae():
        for t in tensors:
            t.grad = None
        mv_fwd(*tensors).backward(g)

    def run_numpy():
        np_fwd_bwd(*arrays, g)

    run_minivae()
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for t, ref in zip(tensors, grads_ref):
        np.testing.assert_allclose(t.grad, np.broadcast_to(ref, t.shape), err_msg=f"{name}: minivae", **tol)
    fns = {"minivae": run_minivae, "numpy": run_numpy}

    if torch is not None:
        tt = [torch.tensor(a, requires_grad=True) for a in arrays]
        tg = torch.tensor(g)

        def run_torch():
            for t in tt:
                t.grad = None
            torch_fwd(*tt).backward(tg)

        run_torch()
        for t, ref in zip(tt, grads_ref):
            np.testing.assert_allclose(t.grad.numpy(), np.broadcast_to(ref, t.shape), err_msg=f"{name}: torch", **tol)
        fns["torch"] = run_torch
    timed = _time_interleaved(fns, repeat)
    row = {f"{lib}_us": med for lib, (med, _) in timed.items()}
    row.update({f"{lib}_min_us": best for lib, (_, best) in timed.items()})
    row["minivae_overhead_us"] = row["minivae_us"] - row["numpy_us"]
    if "torch_us" in row:
        row["torch_overhead_us"] = row["torch_us"] - row["numpy_us"]
    return {k: round(v, 3) for k, v in row.items()}


def markdown_table(results):
    """The results as a Markdown table (microseconds per forward + backward, medians)."""
    torch_cols = any("torch_us" in r for r in results.values())
    head = "| op | minivae | NumPy | minivae overhead |" + (" PyTorch | PyTorch overhead |" if torch_cols else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for op, r in results.items():
        cells = [op, r["minivae_us"], r["numpy_us"], r["minivae_overhead_us"]]
        if torch_cols:
            cells += [r["torch_us"], r["torch_overhead_us"]]
        lines.append("| " + " | ".join(c if isinstance(c, str) else f"{c:.1f}" for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    """Time every op (or ``--ops``) in minivae, NumPy and (when installed) PyTorch, print the
    table and write ``engine_<machine>.json`` to ``--out``; returns the record."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="timeit repeats per measurement (median taken)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads (tiny arrays: 1)")
    parser.add_argument("--machine", help="name in the output file (default: from the CPU model)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    parser.add_argument("--ops", nargs="+", help="only these ops (default: all)")
    args = parser.parse_args(argv)
    unknown = [op for op in args.ops or () if op not in OPS]
    if unknown:
        parser.error(f"--ops: unknown op(s) {', '.join(map(repr, unknown))}; choose from "
                     f"{', '.join(map(repr, OPS))}")

    dtype = np.dtype(args.dtype)
    if torch is not None:
        torch.set_num_threads(args.threads)
    info = machine_info()
    name = args.machine or default_machine_name(info)
    results = {}
    for i, (op, spec) in enumerate(OPS.items()):
        if args.ops and op not in args.ops:
            continue
        results[op] = _bench_op(op, spec, dtype, args.repeat, np.random.default_rng(i))
        r = results[op]
        print(f"{op:26s} minivae {r['minivae_us']:8.2f} us   numpy {r['numpy_us']:7.2f} us"
              + (f"   torch {r['torch_us']:8.2f} us" if "torch_us" in r else ""), flush=True)

    over = [r["minivae_overhead_us"] for r in results.values()]
    summary = {"median_minivae_overhead_us": round(statistics.median(over), 3)}
    if torch is not None:
        t_over = [r["torch_overhead_us"] for r in results.values()]
        summary["median_torch_overhead_us"] = round(statistics.median(t_over), 3)
        summary["ops_where_minivae_overhead_below_torch"] = sum(a < b for a, b in zip(over, t_over))
        summary["ops"] = len(over)
    record = {
        "benchmark": "engine overhead per op, forward + backward",
        "machine": dict(info, name=name),
        "device": "cpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions("torch"),
        "threads": {"torch": torch.get_num_threads() if torch is not None else None,
                    **{k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}},
        "command": command_line(__file__, argv),
        "python_executable": sys.executable,
        "shape": list(SHAPE), "dtype": dtype.name, "repeat": args.repeat,
        "timing": ("microseconds per forward + backward: median (and min) over repeats of timeit loops of "
                   "~10 ms each, the libraries taking turns within each repeat"),
        "results": results,
        "summary": summary,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"engine_{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(markdown_table(results))
    print(json.dumps(summary))
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    main()
