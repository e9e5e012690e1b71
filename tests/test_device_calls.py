"""How many device calls one training step makes on the GPU, counted on the CPU.

A step on the GPU is launch-bound at MNIST sizes: eager, every call into CuPy costs host time;
captured in a CUDA graph, every kernel is a node of the graph. So the number of calls is the
step's cost model, and it is counted here with the trainer's GPU code on the fake device of
tests/test_graph_mode.py (NumPy for CuPy, the kernels' host builds, the stand-in cuBLAS):

* our kernels: each launch the fake records;
* cuBLAS: each product the stand-in library receives;
* the rest: each NumPy call on a device array, standing for the CuPy call it would be: a ufunc
  (elementwise), a reduction or ``mean``, a copy, a cast or an assignment into an array, an
  array function (``concatenate``, ``stack``, ``where``, ...). A call made inside another counted one (``stack`` calls
  ``concatenate``) counts once, as the one CuPy call it is. Views (``reshape``, ``broadcast_to``)
  launch nothing and are not counted.

Creation functions count when they launch something: a fill (``zeros``, ``full``) or a copy from
the host (``asarray``); an allocation (``empty``) does not.

Device arrays are marked by an ndarray subclass, ``Dev``, handed out by the fake CuPy's creation
functions and kept by NumPy's ufuncs, by views (a broadcast view of a device array is on the
device, and so is a copy of it) and by indexing (an element is a 0-d array, as in CuPy). The
counts are of calls, not of kernels: a CuPy call may launch more than one kernel (some
reductions take two), and counts once here. They estimate the GPU's numbers; only a GPU can
measure them. A captured step is counted in a replay on the tests' stand-in for a capture, which
runs the step's Python side again: its calls are the graph's nodes.

    pytest tests/test_device_calls.py -s     # the calls of each model's step, eager and captured
"""
import collections
import sys

import numpy as np
import pytest

import minivae.data.binarization
import minivae.gpu.kernels
from minivae.gpu import cublas
from minivae.train import Trainer
from test_graph_mode import _Replayed, fake_device  # noqa: F401  (fixture)
from test_kernels import fake_gpu, shim  # noqa: F401  (fixtures)
from test_train import config, small_data


class _Counter:
    """The calls counted while ``on``; ``depth`` > 0 inside a counted call (not counted again)."""

    def __init__(self):
        self.calls, self.on, self.depth = collections.Counter(), False, 0

    def count(self, name, fn, *args, **kwargs):
        if self.on and self.depth == 0:
            self.calls[name] += 1
        self.depth += 1
        try:
            return fn(*args, **kwargs)
        finally:
            self.depth -= 1


COUNTER = _Counter()


def _dev(result):
    """NumPy results as device arrays (scalars of reductions become 0-d arrays, as CuPy's). A
    fresh result owns its memory, as CuPy's does (a view's .base would tell the engine that it
    is a view); a ufunc's ``out=`` array is handed back as it is."""
    if isinstance(result, tuple):
        return tuple(_dev(r) for r in result)
    if isinstance(result, Dev) or not isinstance(result, (np.ndarray, np.generic)):
        return result
    owned = np.ndarray.__new__(Dev, np.shape(result), np.asarray(result).dtype)
    np.copyto(owned.view(np.ndarray), result)
    return owned


def _host(a):
    return a.view(np.ndarray) if isinstance(a, Dev) else a


class Dev(np.ndarray):
    """An ndarray that stands for a CuPy array: its ufunc calls, array functions, reductions,
    copies and casts are counted."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(_host(o) for o in out)
        name = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
        result = COUNTER.count(name, getattr(ufunc, method), *map(_host, inputs), **kwargs)
        if out is not None:  # the result is written where it was asked for
            return out[0] if len(out) == 1 else out
        return _dev(result)

    def __array_function__(self, func, types, args, kwargs):
        if func.__name__ in NOT_LAUNCHES:  # a view of a device array is on the device too
            result = super().__array_function__(func, types, args, kwargs)
            return result.view(Dev) if type(result) is np.ndarray else result
        return COUNTER.count(func.__name__, super().__array_function__, func, types, args, kwargs)

    def __getitem__(self, key):
        # an element of a device array is a 0-d device array (a view, as CuPy's), not a scalar
        result = super().__getitem__(key)
        return _dev(result) if isinstance(result, np.generic) else result

    def __setitem__(self, key, value):  # a copy into the array (CuPy launches it)
        return COUNTER.count("setitem", super().__setitem__, key, _host(value))

    def sum(self, *args, **kwargs):
        return COUNTER.count("sum", super().sum, *args, **kwargs)

    def mean(self, *args, **kwargs):
        return COUNTER.count("mean", super().mean, *args, **kwargs)

    def copy(self, *args, **kwargs):
        return COUNTER.count("copy", super().copy, *args, **kwargs)

    def astype(self, *args, **kwargs):
        return COUNTER.count("astype", super().astype, *args, **kwargs)

    def fill(self, value):
        return COUNTER.count("fill", super().fill, value)


#: array functions that allocate, make a view or compare address ranges on the host: no launch
NOT_LAUNCHES = {"empty_like", "empty", "broadcast_to", "reshape", "shares_memory", "may_share_memory",
                "shape", "ndim"}


#: creation functions that launch something on the device: a fill, or a copy from the host
FILLS = {"zeros", "full", "zeros_like", "asarray"}


def _creating(fn, while_counting=False):
    """``fn`` handing out device arrays (only while the step is counted, ``while_counting``); a
    fill or a copy from the host counts as a call, an allocation (``empty``) does not."""
    def make(a, *args, **kwargs):
        if fn is np.asarray and isinstance(a, Dev):
            return a  # already on the device: the same array, as cupy.asarray gives
        if while_counting and not COUNTER.on:
            return fn(a, *args, **kwargs)
        if fn.__name__ in FILLS:
            return _dev(COUNTER.count(fn.__name__, fn, _host(a), *args, **kwargs))
        return _dev(fn(_host(a), *args, **kwargs))
    return make


_ascontiguousarray = np.ascontiguousarray


def _contiguous(a, *args, **kwargs):
    """np.ascontiguousarray keeping the mark; a copy is counted (a view is not)."""
    out = _ascontiguousarray(_host(a), *args, **kwargs)
    if not isinstance(a, Dev):
        return out
    if not np.shares_memory(out, _host(a)):
        COUNTER.count("ascontiguousarray", lambda: None)
    return _dev(out)


def test_calls_on_views_of_device_arrays_are_counted():
    """A view (``broadcast_to``, ``reshape``) or an element of a device array is a device array:
    the calls made on it are counted, so a step cannot hide calls behind views."""
    d = _dev(np.zeros(3))
    COUNTER.calls.clear()
    COUNTER.on = True
    try:
        -np.broadcast_to(d, (2, 3))
        np.reshape(d, (3, 1)) * 2
        d[1].astype(np.float32)
        d[:2] = d[1:]
    finally:
        COUNTER.on = False
    assert COUNTER.calls == {"negative": 1, "multiply": 1, "astype": 1, "setitem": 1}


@pytest.fixture
def counted_device(fake_device, fake_cublas, monkeypatch):
    """The fake device, with the fake CuPy handing out ``Dev`` arrays."""
    for namespace in (sys.modules["cupy"], minivae.gpu.kernels.cp, cublas.cp):
        for name in ("asarray", "zeros", "empty", "full", "zeros_like", "empty_like"):
            if hasattr(namespace, name):
                monkeypatch.setattr(namespace, name, _creating(getattr(np, name)))
        if hasattr(namespace, "ascontiguousarray"):
            monkeypatch.setattr(namespace, "ascontiguousarray", _contiguous)
    # the dispatch rows allocate with xp = NumPy's own functions (left alone outside the step)
    for name in ("zeros", "empty", "full"):
        monkeypatch.setattr(np, name, _creating(getattr(np, name), while_counting=True))
    monkeypatch.setattr(np, "ascontiguousarray", _contiguous)
    # the binarization of the loaders draws on the device of its images
    monkeypatch.setattr(minivae.data.binarization, "device_of", lambda a: "gpu" if isinstance(a, Dev) else "cpu")
    return fake_device, fake_cublas


def _counting_the_third_call(counted_device, calls, fn):
    """``fn`` whose third call (the first ones build the optimizer's state and compile) adds its
    device calls to ``calls``: our kernels' names, "cuBLAS" and the other calls' names."""
    kernels, gemms = counted_device
    seen = []

    def counted(*args, **kwargs):
        seen.append(None)
        if len(seen) != 3:
            return fn(*args, **kwargs)
        k0, g0 = len(kernels), len(gemms.calls)
        COUNTER.calls.clear()
        COUNTER.on = True
        try:
            return fn(*args, **kwargs)
        finally:
            COUNTER.on = False
            calls.update(name for name, _, _ in kernels[k0:])
            calls["cuBLAS"] = len(gemms.calls) - g0
            calls.update(COUNTER.calls)
    return counted


def step_calls(counted_device, tmp_path, monkeypatch, model, graph=False, **extra):
    """The device calls of the third step of a GPU run of ``model`` (784-512-256-50, batch 100):
    eager, or with ``graph`` a replay of the captured step, that is the graph's nodes (on the
    tests' stand-in for a capture, whose replay runs the step's Python side again)."""
    data = small_data(n_train=500, n_eval=20)
    cfg = config(tmp_path / model, device="gpu", epochs=1, batch_size=100, eager=not graph, model=model,
                 hidden=(512, 256), z_dim=50, **extra)
    trainer = Trainer(cfg, data=data, progress=False, log=lambda *a: None)
    calls = collections.Counter()
    if graph:
        monkeypatch.setattr(_Replayed, "replay", _counting_the_third_call(counted_device, calls, _Replayed.replay))
    else:
        monkeypatch.setattr(Trainer, "_step", _counting_the_third_call(counted_device, calls, Trainer._step))
    trainer.fit()
    assert sum(calls.values()), "no step was counted"
    return calls


def _own_kernels(calls):
    return sum(v for k, v in calls.items() if k.startswith("mv_"))


#: model -> (its options, the most device calls its step may make: ours, cuBLAS's, the rest)
BUDGETS = {
    "vae": ({}, 19, 20, 16),
    "iwae": ({"iw_k": 3}, 25, 20, 26),
    # (the labelled batch: a new shuffle and draw each step; the bounds at beta = 1 for the
    # statistics: 17 calls)
    "m2": ({"n_labelled": 20}, 67, 64, 120),
    "sdgm": ({}, 47, 49, 34),
    # (its Gumbel noise: one launch of mv_gumbel, no copy from the host)
    "gumbel": ({}, 18, 17, 46),
}


@pytest.mark.parametrize("model", BUDGETS)
def test_a_training_step_makes_no_more_device_calls_than_its_budget(counted_device, tmp_path, monkeypatch,
                                                                    model):
    """The step of the default VAE, the IWAE, M2, the SDGM and the Gumbel-softmax VAE: our kernels
    (reparameterization and KL, the Gumbel noise, the Bernoulli and Gaussian log-densities, a
    dense layer's bias and ReLU, the gradients of its ReLU and its bias, the IWAE bound's
    log-sum-exp, the log-softmax of M2 and of the categorical KL, Adam once), the products on
    cuBLAS, and at most the budget of other calls (the rest of the loss, the statistics). A
    change that adds calls to a step fails here: a launch-bound step is as fast as its number of
    calls."""
    extra, own, products, rest = BUDGETS[model]
    calls = step_calls(counted_device, tmp_path, monkeypatch, model, **extra)
    print(f"\n{model}: {_own_kernels(calls)} of our kernels, {calls['cuBLAS']} cuBLAS products, "
          f"{sum(calls.values()) - _own_kernels(calls) - calls['cuBLAS']} other calls: "
          + ", ".join(f"{k} {v}" for k, v in sorted(calls.items())))
    assert calls["mv_adam_f32"] == 1 and calls["mv_bernoulli_fwd_f32"] == calls["mv_bernoulli_bwd_f32"] >= 1
    assert _own_kernels(calls) == own and calls["cuBLAS"] == products
    assert sum(calls.values()) - own - products <= rest


#: model -> (its options, the most device calls a replay of its captured step may make: ours,
#: cuBLAS's, the rest), the nodes of its CUDA graph
GRAPH_BUDGETS = {
    "vae": ({}, 20, 20, 18),
    "iwae": ({"iw_k": 3}, 26, 20, 29),
    "m2": ({"n_labelled": 20}, 66, 64, 107),  # (the labelled batch is copied in before each replay)
    "sdgm": ({}, 48, 49, 36),
    "gumbel": ({}, 19, 17, 48),
}


@pytest.mark.parametrize("model", GRAPH_BUDGETS)
def test_a_captured_step_has_no_more_nodes_than_its_budget(counted_device, tmp_path, monkeypatch, model):
    """Graph mode's step: the eager step's calls, less the host read of its statistics, plus the
    step's own bookkeeping on the device (the step counter, the KL weight, the sums of the
    statistics and of the losses). Each call is a node of the graph, and a replay costs about
    its number of nodes."""
    extra, own, products, rest = GRAPH_BUDGETS[model]
    calls = step_calls(counted_device, tmp_path, monkeypatch, model, graph=True, **extra)
    print(f"\n{model} (graph): {_own_kernels(calls)} of our kernels, {calls['cuBLAS']} cuBLAS products, "
          f"{sum(calls.values()) - _own_kernels(calls) - calls['cuBLAS']} other calls: "
          + ", ".join(f"{k} {v}" for k, v in sorted(calls.items())))
    assert calls["mv_step_advance"] == calls["mv_adam_f32"] == 1
    assert _own_kernels(calls) == own and calls["cuBLAS"] == products
    assert sum(calls.values()) - own - products <= rest
