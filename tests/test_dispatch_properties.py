"""Hypothesis properties of the dispatch table (minivae.gpu.dispatch), checked without a GPU.

For every row: on inputs it takes (drawn shapes, edge sizes included: one row, one column, rows
of D not a multiple of 4 or 2, sizes just past MV_BLOCK, MV_COLUMNS, MV_COLUMN_LANES and MV_TILE,
zero-size axes, broadcast and samples axes; values ordinary, large and small, -inf where it
means something) the row's forward and backward equal the op's NumPy code run with the table
off; on inputs it does not take, the op runs its NumPy code, with the same results (or the same
error) and no launch. So a row never takes inputs its kernels refuse.

As in tests/test_dispatch.py, NumPy arrays stand for CuPy's (``dispatch.is_gpu_array`` patched),
the kernels run through their host build (``fake_gpu``) and the products on the stand-in
libcublas (``fake_cublas``).

Tolerances: a value made of n rounded terms whose magnitudes sum to S may differ by
``eps (8 + sqrt(n)) S`` (the kernels sum in their own fixed order, NumPy pairwise; the
square root is the random walk of rounding errors, small enough next to a term of S / n that a
term summed twice or left out is caught); elementwise values (n = 1) by 8 ulps of their parts.
Where the kernels do the NumPy code's operations in its order (ReLU, Adam, products of small
integers) the results are the same bits.
"""
import itertools
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import minivae as mv
import minivae.functional as F
from minivae import ops
from minivae.autograd import backward
from minivae.function import Context
from minivae.gpu import dispatch
from minivae.random import Noise
from test_kernels import assert_same_adam_state, dispatch_table, fake_gpu, run_adam, shim  # noqa: F401  (fixtures)

# The fixtures (the host build, the patched modules) hold nothing an example changes but the
# launch records, which each example clears.
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

DTYPES = st.sampled_from([np.float32, np.float64])
NOISE = Noise(seed=11, offset=3, stream=2)

#: Edge sizes of the kernels: chunks of 4 (and vector loads), MV_COLUMNS = 8 columns and
#: MV_COLUMN_LANES = 32 lanes of a column reduction, MV_BLOCK = 256 threads of 4 elements,
#: MV_TILE = 4096 elements of a forward row tile (one row a tile, not starting on a chunk, for odd
#: D > 1024; rows of D > 4093 cut into segments).
EDGE_ROW = [1, 2, 3, 4, 5, 6, 7, 8, 9, 31, 32, 33, 255, 257, 1023, 1025, 2049, 4093, 4095, 4097, 8195]
EDGE_COLUMNS = [1, 7, 8, 9, 16, 17, 31, 32, 33, 64, 65, 257]


# ------------------------------------------------------------------------------ helpers
def _random(seed, shape, dtype, kind="normal", scale=1.0, low=-1.0, high=1.0):
    """An array of ``shape`` and ``dtype`` from a seed (fast, and shrinks well): normals times
    ``scale``, or uniforms in [low, high)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape) * scale if kind == "normal" else rng.uniform(low, high, shape)
    return np.asarray(a, dtype)


seeds = st.integers(0, 2**32 - 1)


@st.composite
def lead_shapes(draw, D, max_size=12_000, max_dims=3, zero=True):
    """Leading axes (rows, samples) over rows of D elements: small sides, now and then one just
    past a column or block size, or (with ``zero``) one of size 0; at most ``max_size`` elements
    in all."""
    shape = []
    for _ in range(draw(st.integers(0, max_dims))):
        room = max_size // max(1, D * math.prod(shape))  # the largest side that still fits
        if not room:
            break
        pool = [n for n in EDGE_COLUMNS if n <= room]
        shape.append(draw(st.one_of(st.integers(1, min(4, room)), st.sampled_from(pool))))
    if zero and shape and draw(st.integers(0, 9)) == 0:
        shape[draw(st.integers(0, len(shape) - 1))] = 0
    return tuple(shape)


@st.composite
def row_shapes(draw, max_size=12_000, zero=True, max_dims=3):
    """(..., D), at least 1-D: rows of D elements (D = 0 now and then, with ``zero``) under
    leading axes."""
    D = draw(st.one_of(st.integers(1, 12), st.sampled_from(EDGE_ROW)))
    if zero and draw(st.integers(0, 14)) == 0:
        D = 0
    return draw(lead_shapes(D, max_size, max_dims, zero)) + (D,)


def trailing(shape, k):
    """The shape of ``shape``'s last k axes."""
    return tuple(shape[len(shape) - k:]) if k else ()


def sum_to(a, shape):
    """``a`` summed over its leading axes beyond ``shape`` and the axes where ``shape`` has 1 (how the
    engine sums a gradient to its input), and the number of values summed into each."""
    lead = a.ndim - len(shape)
    s = a.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and s.shape[i] != 1)
    s = s.sum(axis=axes, keepdims=True).reshape(shape)
    return s, max(1, a.size // max(1, math.prod(shape)))


def assert_close(got, want, scale, n=1, err_msg=""):
    """``got`` has ``want``'s shape and dtype, the same infinities and NaNs, and finite values
    within ``eps (8 + sqrt(n)) scale`` of ``want`` (``scale`` the sum of the magnitudes of the
    terms that make each value: see the module docstring)."""
    assert type(got) is np.ndarray and got.shape == want.shape and got.dtype == want.dtype, (
        type(got), got.shape, want.shape, got.dtype, want.dtype, err_msg)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite], want[~finite], err_msg=err_msg)
    info = np.finfo(want.dtype)
    bound = np.broadcast_to(info.eps * (8 + math.sqrt(n)) * np.asarray(scale, np.float64), want.shape)
    err = np.abs(got[finite].astype(np.float64) - want[finite])
    bad = ~(err <= bound[finite] + 8 * float(info.tiny))
    assert not bad.any(), (f"{err_msg}: {int(bad.sum())} of {want.size} values differ; first: got "
                           f"{got[finite][bad][:3]}, want {want[finite][bad][:3]}, bound {bound[finite][bad][:3]}")


def _run(monkeypatch, fn, arrays, needs, grads, gpu):
    """fn's outputs (data) and the gradients of the inputs that need one for the upstream ``grads``
    (one per output, None for none), with the table on (``gpu``) or off; and what the first
    output's node ran (None without a node)."""
    tensors = [mv.Tensor(a.copy(), requires_grad=need) for a, need in zip(arrays, needs)]
    with dispatch_table(monkeypatch, gpu):
        out = fn(*tensors)
        outs = list(out) if type(out) is tuple else [out]
        ran = outs[0]._node.fn if outs[0]._node is not None else None
        roots = [(o, g) for o, g in zip(outs, grads) if g is not None]
        if roots and any(needs):
            backward([o for o, _ in roots], [g for _, g in roots])
    return [o.data for o in outs], [t.grad for t in tensors if t.requires_grad], ran


def _both(monkeypatch, calls, op, fn, arrays, needs, grads):
    """fn run on the row of ``op`` (which must take the inputs) and on the op's NumPy code:
    (outputs, gradients) of each."""
    calls.clear()
    got_out, got_grads, ran = _run(monkeypatch, fn, arrays, needs, grads, gpu=True)
    assert ran is dispatch.TABLE[op], (op, ran)
    want_out, want_grads, ran_cpu = _run(monkeypatch, fn, arrays, needs, grads, gpu=False)
    assert ran_cpu is not dispatch.TABLE[op]
    return got_out, got_grads, want_out, want_grads


def _f64(*arrays):
    """The arrays in float64, for the tolerances' magnitudes."""
    return [np.asarray(a, np.float64) for a in arrays]


@st.composite
def broadcast_part(draw, shape):
    """A shape that broadcasts to ``shape``: its trailing axes, some of them 1."""
    part = list(trailing(shape, draw(st.integers(0, len(shape)))))
    for i in range(len(part)):
        if draw(st.integers(0, 3)) == 0:
            part[i] = 1
    return tuple(part)


@st.composite
def gaussian_params(draw, shape, dtype):
    """mu and logvar of ``shape``: mu of ordinary, small or large size; logvar near 0 (where
    e^logvar - 1 - logvar cancels), ordinary, or large."""
    big = dtype == np.float64
    mu_scale = draw(st.sampled_from([1.0, 1e-3, 1e-20, 30.0, 1e100 if big else 1e3]))
    half = draw(st.sampled_from([1e-6, 1.0, 10.0, 300.0 if big else 60.0]))
    mu = _random(draw(seeds), shape, dtype, scale=mu_scale)
    return mu, _random(draw(seeds), shape, dtype, "uniform", low=-half, high=half)


def _needs(n):
    """Which of n inputs need a gradient: at least one."""
    return st.sampled_from([needs for needs in itertools.product([False, True], repeat=n) if any(needs)])


# ------------------------------------------------------------------------------ reparameterization and KL
@SETTINGS
@given(DTYPES, row_shapes(), st.data())
def test_the_kl_row_equals_the_numpy_op(fake_gpu, monkeypatch, dtype, shape, data):
    """KL(N(mu, e^logvar) || N(0, I)) per row, and the gradients of mu and logvar."""
    mu, lv = data.draw(gaussian_params(shape, dtype))
    needs = data.draw(_needs(2))
    g = _random(data.draw(seeds), shape[:-1], dtype)
    (kl,), grads, (want,), want_grads = _both(monkeypatch, fake_gpu[1], "KLNormalStd", F.kl_normal_std,
                                              [mu, lv], needs, [g])
    mu64, lv64, g64 = _f64(mu, lv, g[..., None])
    em1 = np.abs(np.expm1(lv64))
    assert_close(kl, want, (0.5 * (mu64 ** 2 + em1 + np.abs(lv64))).sum(-1), shape[-1], "kl")
    scales = [s for s, need in zip([np.abs(g64 * mu64), np.abs(g64 * 0.5 * em1)], needs) if need]
    for got, w, scale, name in zip(grads, want_grads, scales, ["dmu", "dlogvar"]):
        assert_close(got, w, scale, 1, name)


@SETTINGS
@given(DTYPES, st.data())
def test_the_reparameterization_row_equals_the_numpy_op(fake_gpu, monkeypatch, dtype, data):
    """mu and logvar broadcast to the draw's shape (with ``shape=`` one or two samples axes
    more), 0-d included."""
    base = data.draw(st.one_of(st.just(()), row_shapes(max_dims=2)))
    mu_shape, lv_shape = data.draw(broadcast_part(base)), data.draw(broadcast_part(base))
    shape = data.draw(st.sampled_from([None, base, (2,) + base, (3, 1) + base]))
    out_shape = np.broadcast_shapes(mu_shape, lv_shape, () if shape is None else shape)
    assume(math.prod(out_shape) <= 20_000)
    mu, lv = data.draw(gaussian_params(mu_shape, dtype))
    lv = data.draw(gaussian_params(lv_shape, dtype))[1]
    needs = data.draw(_needs(2))
    g = _random(data.draw(seeds), out_shape, dtype)
    (z,), grads, (want,), want_grads = _both(
        monkeypatch, fake_gpu[1], "ReparameterizeNoise", lambda m, v: F.reparameterize(m, v, NOISE, shape=shape),
        [mu, lv], needs, [g])
    eps, mu64, lv64, g64 = _f64(NOISE.normal(out_shape, dtype), mu, lv, g)
    scaled = np.abs(np.exp(0.5 * lv64) * eps)
    assert_close(z, want, np.abs(mu64) + scaled, 1, "z")
    scales = [sum_to(np.abs(g64), mu_shape), sum_to(np.abs(g64) * 0.5 * scaled, lv_shape)]
    for got, w, (scale, n), name in zip(grads, want_grads, [s for s, need in zip(scales, needs) if need],
                                        ["dmu", "dlogvar"]):
        assert_close(got, w, scale, n, name)


@SETTINGS
@given(DTYPES, row_shapes(max_size=8_000), st.sampled_from([None, 1, 2, 3]), st.data())
def test_the_fused_row_equals_the_numpy_op(fake_gpu, monkeypatch, dtype, shape, samples, data):
    """reparameterize_kl's (z, kl), with S samples or none, and the gradients for an upstream on z,
    on kl or on both."""
    mu, lv = data.draw(gaussian_params(shape, dtype))
    needs = data.draw(_needs(2))
    z_shape = shape if samples is None else (samples,) + shape
    gz, gkl = _random(data.draw(seeds), z_shape, dtype), _random(data.draw(seeds), shape[:-1], dtype)
    gz, gkl = data.draw(st.sampled_from([(gz, gkl), (gz, None), (None, gkl)]))
    (z, kl), grads, (want_z, want_kl), want_grads = _both(
        monkeypatch, fake_gpu[1], "ReparameterizeKL", lambda m, v: F.reparameterize_kl(m, v, NOISE, samples),
        [mu, lv], needs, [gz, gkl])
    eps, mu64, lv64 = _f64(NOISE.normal(z_shape, dtype), mu, lv)
    scaled = np.abs(np.exp(0.5 * lv64) * eps)
    em1 = np.abs(np.expm1(lv64))
    assert_close(z, want_z, np.abs(mu64) + scaled, 1, "z")
    assert_close(kl, want_kl, (0.5 * (mu64 ** 2 + em1 + np.abs(lv64))).sum(-1), shape[-1], "kl")
    scales, S = [np.zeros(shape), np.zeros(shape)], 1 if samples is None else samples
    if gz is not None:
        gz64 = np.abs(gz.astype(np.float64))
        scales = [sum_to(gz64, shape)[0], sum_to(gz64 * 0.5 * scaled, shape)[0]]
    if gkl is not None:
        gkl64 = np.abs(gkl.astype(np.float64))[..., None]
        scales = [scales[0] + gkl64 * np.abs(mu64), scales[1] + gkl64 * 0.5 * em1]
    for got, w, scale, name in zip(grads, want_grads, [s for s, need in zip(scales, needs) if need],
                                   ["dmu", "dlogvar"]):
        assert_close(got, w, scale, S + 1, name)


# ------------------------------------------------------------------------------ log-likelihoods
@SETTINGS
@given(DTYPES, row_shapes(), st.data())
def test_the_bernoulli_row_equals_the_numpy_op(fake_gpu, monkeypatch, dtype, shape, data):
    """Logits (..., D) and targets of their shape or of their trailing axes (0-d: one target for
    all), binary or in [0, 1]; logits small, ordinary, and far past where exp overflows."""
    x_shape = trailing(shape, data.draw(st.integers(0, len(shape))))
    scale = data.draw(st.sampled_from([1e-8, 1.0, 4.0, 30.0, 1e3]))
    logits = _random(data.draw(seeds), shape, dtype, scale=scale)
    x = _random(data.draw(seeds), x_shape, dtype, "uniform", low=0.0, high=1.0)
    if data.draw(st.booleans()):
        x = np.round(x)
    needs = data.draw(_needs(2))
    g = _random(data.draw(seeds), shape[:-1], dtype)
    (out,), grads, (want,), want_grads = _both(monkeypatch, fake_gpu[1], "BernoulliLogProb", F.bernoulli_log_prob,
                                               [logits, x], needs, [g])
    l64, x64, g64 = _f64(logits, x, g[..., None])
    softplus = np.maximum(l64, 0) + np.log1p(np.exp(-np.abs(l64)))
    assert_close(out, want, (np.abs(x64 * l64) + softplus).sum(-1), shape[-1], "log p")
    sigmoid = np.exp(l64 - softplus)
    scales = [(np.abs(g64) * (np.abs(x64) + sigmoid), 1), sum_to(np.abs(g64 * l64), x_shape)]
    for got, w, (scale, n), name in zip(grads, want_grads, [s for s, need in zip(scales, needs) if need],
                                        ["dlogits", "dx"]):
        assert_close(got, w, scale, n, name)


@SETTINGS
@given(DTYPES, row_shapes(), st.data())
def test_the_gaussian_row_equals_the_numpy_op(fake_gpu, monkeypatch, dtype, shape, data):
    """x (..., D), mu and logvar of its shape or of its trailing axes (0-d: a standard normal's);
    variances from collapsed to wide."""
    mu_shape, lv_shape = (trailing(shape, data.draw(st.integers(0, len(shape)))) for _ in range(2))
    big = dtype == np.float64
    x = _random(data.draw(seeds), shape, dtype, scale=data.draw(st.sampled_from([1e-3, 1.0, 1e3])))
    mu = _random(data.draw(seeds), mu_shape, dtype, scale=data.draw(st.sampled_from([1e-3, 1.0, 1e3])))
    half = data.draw(st.sampled_from([1.0, 10.0, 300.0 if big else 40.0]))
    lv = _random(data.draw(seeds), lv_shape, dtype, "uniform", low=-half, high=half)
    needs = data.draw(_needs(3))
    g = _random(data.draw(seeds), shape[:-1], dtype)
    (out,), grads, (want,), want_grads = _both(monkeypatch, fake_gpu[1], "GaussianLogProb", F.gaussian_log_prob,
                                               [x, mu, lv], needs, [g])
    x64, mu64, lv64, g64 = _f64(x, mu, lv, g[..., None])
    t2 = ((x64 - mu64) * np.exp(-0.5 * lv64)) ** 2
    assert_close(out, want, 0.5 * (np.log(2 * np.pi) + np.abs(lv64) + t2).sum(-1), shape[-1], "log p")
    dmu = np.abs(g64) * np.sqrt(t2) * np.exp(-0.5 * lv64)
    scales = [(dmu, 1), sum_to(dmu, mu_shape), sum_to(np.abs(g64) * 0.5 * (t2 + 1), lv_shape)]
    for got, w, (scale, n), name in zip(grads, want_grads, [s for s, need in zip(scales, needs) if need],
                                        ["dx", "dmu", "dlogvar"]):
        assert_close(got, w, scale, n, name)


# ------------------------------------------------------------------------------ log-sum-exp, log-softmax
@st.composite
def logits(draw, shape, dtype):
    """Values of ordinary or large size about 0 or far from it, some -inf (and now and then +inf
    or NaN), and now and then a whole row of -inf."""
    far = draw(st.sampled_from([0.0, -3000.0, 1e7, 1e17 if dtype == np.float64 else 1e8]))
    x = _random(draw(seeds), shape, dtype, scale=draw(st.sampled_from([1.0, 10.0, 1e3]))) + np.asarray(far, dtype)
    rng = np.random.default_rng(draw(seeds))
    special = draw(st.sampled_from([-np.inf, -np.inf, np.inf, np.nan]))
    x[rng.random(shape) < draw(st.sampled_from([0.0, 0.0, 0.2, 0.9]))] = special
    return x


def _lse_parts64(x, axis):
    """The float64 shift (the maximum where it is finite, else 0) and log-sum of x over ``axis``."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = np.max(x, axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        return m, np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


@SETTINGS
@given(DTYPES, st.data())
def test_the_logsumexp_row_equals_the_numpy_op(fake_gpu, monkeypatch, dtype, data):
    """Over the leading axis of R >= 1 rows (k samples), under any columns (none included), with
    the axis written in each way the row takes, keepdims or not."""
    R = data.draw(st.one_of(st.integers(1, 5), st.sampled_from(EDGE_COLUMNS + [1025])))
    shape = (R,) + data.draw(lead_shapes(R, max_dims=2))
    ndim = len(shape)
    axis = data.draw(st.sampled_from([0, -ndim, (0,), [0], np.int64(0), (np.int64(-ndim),)]
                                     + ([None] if ndim == 1 else [])))
    keepdims = data.draw(st.booleans())
    x = data.draw(logits(shape, dtype))
    if shape[1:] and math.prod(shape[1:]) and data.draw(st.booleans()):
        x.reshape(R, -1)[:, 0] = -np.inf  # a column that sums nothing
    g = _random(data.draw(seeds), (1,) * keepdims + shape[1:], dtype)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        (out,), (grad,), (want,), (want_grad,) = _both(
            monkeypatch, fake_gpu[1], "LogSumExp", lambda t: F.logsumexp(t, axis=axis, keepdims=keepdims),
            [x], (True,), [g])
        (x64,) = _f64(x)
        m, ls = _lse_parts64(x64, 0)
        assert_close(out, want, (np.abs(m) + np.abs(ls) + 1).reshape(want.shape), R, "logsumexp")
        g64 = np.abs(g.astype(np.float64)).reshape(m.shape)
        arg = (x64 - m) - ls
        scale = g64 * np.exp(arg) * (np.abs(x64 - m) + np.abs(ls) + 1)
    # NumPy sums a leading axis row after row, so the error of its log-sum grows with R, not
    # sqrt(R), where the terms round alike (large logits: a few distinct values): R**2 for n
    # gives the gradient eps (8 + R) of its scale
    assert_close(grad, want_grad, np.where(np.isfinite(scale), scale, 0), R * R, "gradient")


@SETTINGS
@given(DTYPES, row_shapes(zero=False), st.booleans(), st.data())
def test_the_log_softmax_row_equals_the_numpy_op(fake_gpu, monkeypatch, dtype, shape, positive_axis, data):
    """Over the last axis of C >= 1 classes, under any rows (none included)."""
    if data.draw(st.integers(0, 9)) == 0:
        shape = (0,) + shape  # no rows
    axis = len(shape) - 1 if positive_axis else -1
    x = data.draw(logits(shape, dtype))
    g = _random(data.draw(seeds), shape, dtype)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        (out,), (grad,), (want,), (want_grad,) = _both(
            monkeypatch, fake_gpu[1], "LogSoftmax", lambda t: F.log_softmax(t, axis=axis), [x], (True,), [g])
        x64, g64 = _f64(x, np.abs(g))
        m, ls = _lse_parts64(x64, -1)
        parts = np.abs(x64 - m) + np.abs(ls) + 1
        scale = g64 + np.exp((x64 - m) - ls) * g64.sum(-1, keepdims=True) * (1 + parts)
    C = shape[-1]
    assert_close(out, want, np.where(np.isfinite(parts), parts, 0), C, "log_softmax")
    assert_close(grad, want_grad, np.where(np.isfinite(scale), scale, 0), C, "gradient")


# ------------------------------------------------------------------------------ ReLU and dense layers
@SETTINGS
@given(DTYPES, row_shapes(), st.booleans(), st.data())
def test_the_relu_row_equals_the_numpy_op_bit_for_bit(fake_gpu, monkeypatch, dtype, shape, transposed, data):
    """Any input of at least one axis (a transposed view too), with zeros of both signs, NaNs and
    infinities: the same bits as NumPy's maximum and its mask."""
    x = _random(data.draw(seeds), shape, dtype, scale=data.draw(st.sampled_from([1e-30, 1.0, 1e30])))
    rng = np.random.default_rng(data.draw(seeds))
    for value in (0.0, -0.0, np.nan, np.inf, -np.inf):
        x[rng.random(shape) < 0.05] = value
    g = _random(data.draw(seeds), shape[::-1] if transposed else shape, dtype)
    (y,), (grad,), (want,), (want_grad,) = _both(monkeypatch, fake_gpu[1], "Relu",
                                                 lambda t: F.relu(t.T if transposed else t), [x], (True,), [g])
    np.testing.assert_array_equal(y, want)
    assert not np.signbit(y[y == 0]).any()  # NumPy's maximum(-0.0, 0) is +0
    np.testing.assert_array_equal(grad, want_grad)


DENSE_SIDES = st.one_of(st.integers(0, 4), st.sampled_from([1, 5, 8, 9, 17, 31, 33, 65]))


def _small_integers(seed, shape, dtype):
    """Values in -3 .. 3: their products and sums are exact in any order, so the products on
    cuBLAS and NumPy's give the same bits."""
    return np.random.default_rng(seed).integers(-3, 4, shape).astype(dtype)


@SETTINGS
@given(DTYPES, st.sampled_from(["Matmul", "Linear", "LinearRelu"]), st.booleans(), st.data())
def test_the_dense_rows_equal_the_numpy_ops(fake_gpu, fake_cublas, monkeypatch, dtype, op, integers, data):
    """matmul (m, k) @ (k, n), and linear / linear_relu of x (..., in) (1-D to 3-D) with or without
    a bias, any side 0 or 1: with small integers the same bits as NumPy, with ordinary values to
    rounding."""
    if op == "Matmul":
        m, k, n = (data.draw(DENSE_SIDES) for _ in range(3))
        shapes, fn = [(m, k), (k, n)], F.matmul
    else:
        in_, out_ = data.draw(DENSE_SIDES), data.draw(DENSE_SIDES)
        lead = tuple(data.draw(st.lists(DENSE_SIDES, max_size=2)))
        bias = data.draw(st.booleans())
        shapes = [lead + (in_,), (in_, out_)] + [(out_,)] * bias
        fn = {"Linear": F.linear, "LinearRelu": F.linear_relu}[op]
    integers = integers or op == "LinearRelu"  # (its mask must not hang on a rounding)
    make = _small_integers if integers else _random
    arrays = [make(data.draw(seeds), s, dtype) for s in shapes]
    out_shape = (shapes[0][:-1] + shapes[1][-1:])
    g = make(data.draw(seeds), out_shape, dtype)
    needs = data.draw(_needs(len(arrays)))
    fake_cublas.calls.clear()
    (out,), grads, (want,), want_grads = _both(monkeypatch, fake_gpu[1], op, fn, arrays, needs, [g])
    if integers:
        for got, w in zip([out] + grads, [want] + want_grads):
            assert got.shape == w.shape and got.dtype == w.dtype
            np.testing.assert_array_equal(got, w)
        return
    x, W, *b = [np.abs(a.astype(np.float64)) for a in arrays]
    rows = math.prod(x.shape[:-1])
    x2, g2 = x.reshape(rows, x.shape[-1]), np.abs(g.astype(np.float64)).reshape(rows, W.shape[1])
    assert_close(out, want, (x2 @ W).reshape(out_shape) + (b[0] if b else 0), W.shape[0], "output")
    scales = [((g2 @ W.T).reshape(x.shape), W.shape[1]), (x2.T @ g2, rows), (g2.sum(0), rows)]
    for got, w, (scale, n), name in zip(grads, want_grads, [s for s, need in zip(scales, needs) if need],
                                        ["dx", "dW", "db"]):
        assert_close(got, w, scale, n, name)


# ------------------------------------------------------------------------------ Adam
@SETTINGS
@given(DTYPES, st.lists(st.one_of(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=5),
                                  st.sampled_from([(257,), (1025,), (33, 9)])), min_size=1, max_size=4),
       st.sampled_from([dict(), dict(weight_decay=0.1), dict(amsgrad=True),
                        dict(weight_decay=0.05, decoupled_weight_decay=True, amsgrad=True)]),
       st.data())
def test_the_adam_row_equals_the_numpy_optimizer_bit_for_bit(fake_gpu, monkeypatch, dtype, shapes, kw, data):
    """Parameters of any shapes (empty ones too) in one flat buffer, over steps where some have
    no gradient (so they are updated in runs of different step counts): the same bits."""
    steps = data.draw(st.integers(1, 3))
    rng = np.random.default_rng(data.draw(seeds))
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[(rng.standard_normal(s) * 10.0 ** rng.integers(-6, 3, s)).astype(dtype)
              if rng.random() < 0.8 else None for s in shapes] for _ in range(steps)]
    assert_same_adam_state(*run_adam(monkeypatch, start, grads, True, flush_every=2, **kw),
                           *run_adam(monkeypatch, start, grads, False, flush_every=2, **kw))


# ------------------------------------------------------------------------------ any inputs: the row or the xp code
AXES = st.one_of(st.none(), st.integers(-4, 3), st.sampled_from([0, -1, np.int64(0), np.int64(-1), True, 0.0]),
                 st.lists(st.integers(-3, 3), min_size=1, max_size=2).map(tuple),
                 st.lists(st.integers(-3, 3), min_size=1, max_size=1))
#: op -> (the number of its inputs; the op's parameters as its Function takes them, given the drawn
#: ones (what the row's ``accepts`` and ``forward`` are given too); the op as a function of its
#: tensors, given those parameters)
ANY_INPUTS = {
    "KLNormalStd": (2, lambda p: {}, lambda kw: F.kl_normal_std),
    "ReparameterizeNoise": (2, lambda p: dict(noise=NOISE, shape=p["shape"]),
                            lambda kw: lambda m, v: F.reparameterize(m, v, kw["noise"], shape=kw["shape"])),
    "ReparameterizeKL": (2, lambda p: dict(noise=NOISE, samples=p["samples"]),
                         lambda kw: lambda m, v: F.reparameterize_kl(m, v, kw["noise"], kw["samples"])),
    "BernoulliLogProb": (2, lambda p: {}, lambda kw: F.bernoulli_log_prob),
    "GaussianLogProb": (3, lambda p: {}, lambda kw: F.gaussian_log_prob),
    "LogSumExp": (1, lambda p: dict(axis=p["axis"], keepdims=p["keepdims"]),
                  lambda kw: lambda x: F.logsumexp(x, **kw)),
    "LogSoftmax": (1, lambda p: dict(axis=-1 if p["axis"] is None else p["axis"]),
                   lambda kw: lambda x: F.log_softmax(x, **kw)),
    "Relu": (1, lambda p: {}, lambda kw: F.relu),
    "Matmul": (2, lambda p: {}, lambda kw: F.matmul),
    "Linear": (3, lambda p: {}, lambda kw: F.linear),
    "LinearRelu": (3, lambda p: {}, lambda kw: F.linear_relu),
}
DENSE = ("Matmul", "Linear", "LinearRelu")


@st.composite
def any_inputs(draw, op, mixed=20):
    """Inputs of ``op`` of any shapes (0-d and empty ones too), dtypes (float16 and mixed ones,
    about one in ``mixed``) and layouts (transposed views), mostly shapes that fit together so
    that the op runs; and its parameters (any axes, samples, draw shapes)."""
    n, params, _ = ANY_INPUTS[op]
    if op in ("Linear", "LinearRelu"):
        n = draw(st.sampled_from([2, 3]))  # with a bias or without
    anything = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
    shapes = [draw(st.one_of(anything, hnp.array_shapes(min_dims=1 + (op in DENSE), max_dims=3, min_side=0,
                                                        max_side=4)))]
    for i in range(1, n):
        fits = [st.just(shapes[0]), broadcast_part(shapes[0])]
        if shapes[0]:  # a weight (in, out), then its bias (out,)
            fits.append(st.integers(0, 4).map(lambda k: (shapes[0][-1], k)) if i == 1 else st.just(shapes[1][-1:]))
        shapes.append(draw(st.one_of(anything, *fits, *fits)))
    common = draw(DTYPES)
    arrays = []
    for i, shape in enumerate(shapes):
        dtype = draw(st.sampled_from([common] * (mixed - 3) + [np.float16, np.float32, np.float64]))
        low = 0.0 if op == "BernoulliLogProb" and i == 1 else -2.0
        a = _random(draw(seeds), shape, dtype, "uniform", low=low, high=2.0)
        arrays.append(a.T if draw(st.integers(0, 5)) == 0 else a)
    drawn = dict(axis=draw(AXES), keepdims=draw(st.booleans()), samples=draw(st.sampled_from([None, 0, 1, 2])),
                 shape=draw(st.one_of(st.none(), hnp.array_shapes(min_dims=0, max_dims=3, max_side=3))))
    return arrays, params(drawn)


def _outcome(monkeypatch, fn, arrays, gpu):
    """(outputs and gradients, what ran) of fn, or the error it raised (its type and message)."""
    needs = [a.dtype.kind == "f" for a in arrays]
    try:
        tensors = [mv.Tensor(a.copy(), requires_grad=need) for a, need in zip(arrays, needs)]
        with dispatch_table(monkeypatch, gpu):
            out = fn(*tensors)
            outs = list(out) if type(out) is tuple else [out]
            ran = outs[0]._node.fn if outs[0]._node is not None else None
            if ran is not None:
                rng = np.random.default_rng(0)
                backward(outs, [rng.uniform(0.5, 1.5, o.shape).astype(o.dtype) for o in outs])
        return [o.data for o in outs] + [t.grad for t in tensors if t.requires_grad], ran
    except (TypeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}", None


@settings(SETTINGS, max_examples=300)
@given(st.sampled_from(sorted(ANY_INPUTS)), st.data())
def test_on_any_inputs_a_row_runs_where_it_takes_them_and_the_xp_code_elsewhere(
        fake_gpu, fake_cublas, monkeypatch, op, data):
    """The results, or the error, of the op's NumPy code: where the row takes the inputs it runs
    (and its kernels take what it took); where it does not, the xp code runs, with no launch and
    no product on cuBLAS."""
    arrays, kw = data.draw(any_inputs(op))
    fn = ANY_INPUTS[op][2](kw)
    fake_gpu[1].clear()
    fake_cublas.calls.clear()
    with np.errstate(all="ignore"):
        got, ran = _outcome(monkeypatch, fn, arrays, gpu=True)
        want, ran_cpu = _outcome(monkeypatch, fn, arrays, gpu=False)
    row = dispatch.TABLE[op]
    if isinstance(want, str) or isinstance(got, str):
        event(f"{op}: an error")
        assert got == want
        return
    assert ran_cpu is not row
    took = ran is row
    event(f"{op}: {'the row' if took else 'the xp code'}")
    if not took:
        assert not fake_gpu[1] and not fake_cublas.calls
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        if took:  # (small sizes and values in [-2, 2]: a loose rule is tight enough)
            eps = np.finfo(w.dtype).eps
            largest = float(np.max(np.abs(w[np.isfinite(w)]), initial=1.0))
            np.testing.assert_allclose(g, w, rtol=64 * eps, atol=64 * eps * largest)
        else:
            np.testing.assert_array_equal(g, w)


@settings(SETTINGS, max_examples=300)
@given(st.sampled_from(sorted(ANY_INPUTS)), st.data())
def test_a_row_takes_only_inputs_its_kernels_take(fake_gpu, fake_cublas, monkeypatch, op, data):
    """Called directly (as ``Function.apply`` calls it, on mixed dtypes too), a row whose
    ``accepts`` takes the inputs runs its forward and backward without an error, unless the op's
    own forward refuses the inputs with that very error; its outputs have the inputs' dtype, its
    gradients shapes that the engine sums to the inputs'."""
    arrays, kw = data.draw(any_inputs(op, mixed=4))
    monkeypatch.setattr(dispatch, "is_gpu_array", lambda array: True)
    row = dispatch.select(op, *arrays, **kw)
    event(f"{op}: {'taken' if row else 'not taken'}")
    if row is None:
        return
    ctx = Context()
    ctx.needs_input_grad = (True,) * len(arrays)
    with np.errstate(all="ignore"):
        try:
            out = row.forward(ctx, *arrays, **kw)
        except (TypeError, ValueError) as exc:
            with pytest.raises(type(exc), match=re.escape(str(exc))):
                getattr(ops, op).forward(Context(), *arrays, **kw)
            return
        outs = out if type(out) is tuple else (out,)
        assert all(o.dtype == arrays[0].dtype for o in outs)
        grads = row.backward(ctx, *[np.ones(o.shape, o.dtype) for o in outs])
    grads = grads if type(grads) is tuple else (grads,)  # (one input: its gradient alone)
    assert len(grads) == len(arrays)
    for g, a in zip(grads, arrays):
        assert g is None or (g.dtype == a.dtype and sum_to(np.zeros(g.shape), a.shape)[0].shape == a.shape)
