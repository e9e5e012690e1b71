"""How many CPU threads minivae's own loops may use, and a pool to run work split across them.

NumPy runs each elementwise operation on one thread, while BLAS runs matrix products on all
of its threads. The optimizer's update is a dozen passes over every parameter (1.1 M numbers
for the default VAE), memory-bound, and was a quarter of a training step at batch 100 with two
BLAS threads. NumPy releases the GIL inside its loops, so Python threads that each update a
share of the parameters do run at once: ``Optimizer.step`` splits the parameters into size-
balanced groups, one per thread (see ``minivae.optim``). Each parameter is updated by exactly
the same operations whichever thread runs it, so the results are bit-identical for any
thread count.

The count is ``set_num_threads(n)``; by default the first of the environment variables
``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` that is set (so a job
limited to one BLAS thread uses one here too), else the CPUs this process may run on. It does
not change BLAS's own threads: set those with the same variables or ``threadpoolctl``.
"""
import numbers
import os
import threading
from concurrent.futures import ThreadPoolExecutor

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_lock = threading.Lock()
_num_threads = None  # None: not set, read from the environment
_pool = None
_pool_workers = 0


def _default_num_threads():
    for name in THREAD_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                n = int(value.split(",")[0])  # OpenMP allows a list per nesting level
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a number of threads") from None
            if n < 1:
                raise ValueError(f"{name}={value!r}: the number of threads must be at least 1")
            return n
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def get_num_threads():
    """The number of threads minivae's own parallel loops use (see the module docstring)."""
    return _num_threads if _num_threads is not None else _default_num_threads()


def set_num_threads(n):
    """Use ``n`` threads (an integer >= 1) in minivae's own parallel loops; None restores the
    default from the environment. BLAS's threads are not changed."""
    global _num_threads
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"set_num_threads: need an integer >= 1 (or None), got {n!r}")
        n = int(n)
    _num_threads = n


def balanced_groups(sizes, n):
    """Split indices 0..len(sizes)-1 into at most ``n`` non-empty groups of nearly equal total
    size (largest first, each to the lightest group); each group keeps ascending order."""
    groups = [[] for _ in range(max(1, min(int(n), len(sizes))))]
    totals = [0] * len(groups)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        j = totals.index(min(totals))
        groups[j].append(i)
        totals[j] += sizes[i]
    return [sorted(g) for g in groups if g]


def run_split(fn, groups):
    """Call ``fn(group)`` for every group, the first on this thread and the others on pool
    threads at the same time; return when all are done (re-raising the first error)."""
    if len(groups) == 1:
        fn(groups[0])
        return
    futures = [_executor(len(groups) - 1).submit(fn, g) for g in groups[1:]]
    try:
        fn(groups[0])
    finally:
        errors = [f.exception() for f in futures]  # waits for every worker, even after an error
    for e in errors:
        if e is not None:
            raise e


def _forget_pool_after_fork():
    """A forked child inherits the pool object but not its threads: work handed to it would
    never run. The child starts a pool of its own on first use instead."""
    global _pool, _pool_workers, _lock
    _pool, _pool_workers, _lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _executor(workers):
    """The shared pool, with at least ``workers`` threads (created on first use)."""
    global _pool, _pool_workers
    with _lock:
        if _pool is None or _pool_workers < workers:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minivae")
            _pool_workers = workers
        return _pool
