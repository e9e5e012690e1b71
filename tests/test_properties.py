"""Hypothesis properties: broadcasting gradients, reductions over any axes, getitem scatter-add.

Each expected gradient is computed independently in NumPy from a random upstream gradient (never
all ones, which would hide a misplaced or transposed gradient).
"""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from minivae import Tensor
from minivae import functional as F
from minivae.autograd import backward
from minivae.gradcheck import FLOAT32_ATOL, FLOAT32_RTOL

SETTINGS = settings(max_examples=60, deadline=None)

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4)


def arrays(shape, low=-2.0, high=2.0):
    """A float64 array of ``shape`` drawn from a seed (fast, and shrinks well)."""
    return st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s).uniform(low, high, shape))


def sum_to(g, shape):
    """Reference unbroadcasting: sum the leading extra axes, then every axis where ``shape`` has 1."""
    g = g.sum(axis=tuple(range(g.ndim - len(shape))))
    return g.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True).reshape(shape)


@st.composite
def broadcast_case(draw):
    (sa, sb), out = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4))
    a = draw(arrays(sa))
    b = draw(arrays(sb, 0.5, 2.0)) * draw(st.sampled_from([-1.0, 1.0]))  # |b| >= 0.5 for div
    g = draw(arrays(out))
    return a, b, g


@SETTINGS
@given(broadcast_case(), st.sampled_from(["add", "sub", "mul", "div"]))
def test_broadcasting_gradients(case, op):
    a, b, g = case
    ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    out = getattr(F, op)(ta, tb)
    expected_out = {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b}[op]
    np.testing.assert_allclose(out.data, expected_out)
    out.backward(g)
    da = {"add": g, "sub": g, "mul": g * b, "div": g / b}[op]
    db = {"add": g, "sub": -g, "mul": g * a, "div": -g * a / b**2}[op]
    assert ta.grad.shape == a.shape and tb.grad.shape == b.shape
    np.testing.assert_allclose(ta.grad, sum_to(np.broadcast_to(da, g.shape), a.shape), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tb.grad, sum_to(np.broadcast_to(db, g.shape), b.shape), rtol=1e-12, atol=1e-12)


def assert_close(got, want, dtype, err_msg="", cancelled=None):
    """``got`` is an array of ``dtype`` and of ``want``'s shape, equal to the float64 ``want`` up to
    rounding: to 1e-12 in float64; in float32, within ``FLOAT32_ATOL + FLOAT32_RTOL * max|want|``
    (the rule of ``check_float32``: float32 rounding scales with the largest value). Where a value
    is what is left of larger terms that cancel, ``cancelled`` gives the summed magnitudes of
    those terms per value: their float32 rounding, ``16 eps`` of them, is allowed on top."""
    assert type(got) is np.ndarray, (type(got), err_msg)
    assert got.dtype == dtype and got.shape == np.shape(want), (got.dtype, got.shape, np.shape(want), err_msg)
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=err_msg)
    else:
        finite = np.abs(want)[np.isfinite(want)]  # -inf where logsumexp sums nothing
        scale = float(finite.max()) if finite.size else 0.0
        bound = FLOAT32_ATOL + FLOAT32_RTOL * scale
        if cancelled is None:
            np.testing.assert_allclose(got, want, rtol=0, atol=bound, err_msg=err_msg)
        else:  # a bound per value; a NaN in got fails it
            bound = bound + 16 * float(np.finfo(np.float32).eps) * np.asarray(cancelled)
            np.testing.assert_array_less(np.abs(got - want), bound, err_msg=err_msg)


# d(op)/da and d(op)/db of each binary op, written in NumPy on the broadcast arrays
BINARY_OPS = {
    "add": (np.add, lambda a, b: (1.0, 1.0)),
    "sub": (np.subtract, lambda a, b: (1.0, -1.0)),
    "mul": (np.multiply, lambda a, b: (b, a)),
    "div": (np.divide, lambda a, b: (1 / b, -a / b**2)),
}
dtypes = st.sampled_from([np.float32, np.float64])


@settings(max_examples=120, deadline=None)
@given(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=0, max_side=3),
       st.sampled_from(sorted(BINARY_OPS)), dtypes, st.integers(0, 2**32 - 1))
def test_binary_ops_with_empty_axes_in_float32_and_float64(shapes, op, dtype, seed):
    """add/sub/mul/div under any broadcast pair, 0-d inputs and size-0 axes included (the cases
    above have none), in either dtype: the result and both gradients keep the inputs' dtype, and
    each gradient is the NumPy derivative times a random upstream, summed over the axes that
    input was broadcast along."""
    (sa, sb), out = shapes
    rng = np.random.default_rng(seed)
    a = rng.uniform(-2, 2, sa).astype(dtype)
    b = (rng.uniform(0.5, 2, sb) * rng.choice([-1.0, 1.0], sb)).astype(dtype)  # |b| >= 0.5 for div
    ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    result = getattr(F, op)(ta, tb)
    forward, derivatives = BINARY_OPS[op]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert_close(result.data, forward(a64, b64), dtype)
    g = rng.standard_normal(out).astype(dtype)
    result.backward(g)
    da, db = (np.broadcast_to(d * g.astype(np.float64), out) for d in derivatives(a64, b64))
    assert_close(ta.grad, sum_to(da, sa), dtype, "d/da")
    assert_close(tb.grad, sum_to(db, sb), dtype, "d/db")


@SETTINGS
@given(shapes, st.sampled_from(sorted(BINARY_OPS)), dtypes, st.integers(0, 2**32 - 1))
def test_binary_ops_of_one_tensor_with_itself(shape, op, dtype, seed):
    """op(a, a): both operand slots are the same tensor, so its gradient is the sum of the two
    partial derivatives at b = a (2 g for add, 0 for sub and div, 2 a g for mul): the engine
    must add the two contributions, neither dropping one nor letting one overwrite the other."""
    rng = np.random.default_rng(seed)
    a = (rng.uniform(0.5, 2, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)
    t = Tensor(a, requires_grad=True)
    result = getattr(F, op)(t, t)
    forward, derivatives = BINARY_OPS[op]
    a64 = a.astype(np.float64)
    assert_close(result.data, forward(a64, a64), dtype)
    g = rng.standard_normal(shape).astype(dtype)
    result.backward(g)
    da, db = derivatives(a64, a64)
    assert_close(t.grad, (da + db) * g.astype(np.float64), dtype)


@SETTINGS
@given(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3), st.sampled_from(sorted(BINARY_OPS)),
       st.floats(0.5, 2.0), st.booleans(), dtypes, st.integers(0, 2**32 - 1))
def test_binary_ops_with_a_python_number(shape, op, number, number_first, dtype, seed):
    """A Python number on either side is a constant that takes the tensor's dtype (float32 stays
    float32, as in PyTorch), and the tensor's gradient is the partial derivative of its side."""
    rng = np.random.default_rng(seed)
    a = (rng.uniform(0.5, 2, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)
    t = Tensor(a, requires_grad=True)
    result = getattr(F, op)(number, t) if number_first else getattr(F, op)(t, number)
    forward, derivatives = BINARY_OPS[op]
    a64 = a.astype(np.float64)
    args = (number, a64) if number_first else (a64, number)
    assert_close(result.data, forward(*args), dtype)
    g = rng.standard_normal(shape).astype(dtype)
    result.backward(g)
    d = derivatives(*args)[1 if number_first else 0]
    assert_close(t.grad, np.broadcast_to(d * g.astype(np.float64), shape), dtype)


@st.composite
def reduce_case(draw, max_dims=4, min_side=1, max_side=4):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=min_side, max_side=max_side))
    nd = len(shape)
    axes = draw(st.lists(st.integers(0, nd - 1), unique=True, max_size=nd))
    # Any spelling: None, one int, a tuple; some axes written as negative numbers.
    signs = draw(st.lists(st.booleans(), min_size=len(axes), max_size=len(axes)))
    axes = tuple(a - nd if neg else a for a, neg in zip(axes, signs))
    axis = draw(st.sampled_from([None, axes] + ([axes[0]] if len(axes) == 1 else [])))
    keepdims = draw(st.booleans())
    x = draw(arrays(shape))
    return x, axis, keepdims


@SETTINGS
@given(reduce_case(), st.sampled_from(["sum", "mean"]), st.integers(0, 2**32 - 1))
def test_sum_mean_any_axes(case, op, seed):
    x, axis, keepdims = case
    t = Tensor(x, requires_grad=True)
    out = getattr(F, op)(t, axis=axis, keepdims=keepdims)
    ref = getattr(np, op)(x, axis=axis, keepdims=keepdims)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.data, ref, rtol=1e-12)
    g = np.random.default_rng(seed).standard_normal(ref.shape)
    out.backward(g)
    axes = tuple(range(x.ndim)) if axis is None else tuple(np.atleast_1d(axis) % x.ndim)
    n = int(np.prod([x.shape[a] for a in axes]))  # 1 for an empty tuple of axes
    expanded = g if keepdims else np.expand_dims(g, axes)
    expected = np.broadcast_to(expanded, x.shape) / (n if op == "mean" else 1)
    np.testing.assert_allclose(t.grad, expected, rtol=1e-12)


def scatter_reference(shape, index, g):
    """Where each picked element came from, by value: label the elements, index the labels, and add
    each upstream entry to its label's total (bincount sums repeated labels)."""
    labels = np.arange(int(np.prod(shape))).reshape(shape)
    picked = labels[index]
    return np.bincount(picked.ravel(), weights=g.ravel(), minlength=labels.size).reshape(shape)


def _check_getitem(x, index, seed):
    t = Tensor(x, requires_grad=True)
    out = t[index]
    np.testing.assert_array_equal(out.data, x[index])
    g = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(g)
    np.testing.assert_allclose(t.grad, scatter_reference(x.shape, index, g), rtol=1e-12, atol=1e-12)
    return g


@st.composite
def basic_index_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    index = draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    return draw(arrays(shape)), index


@SETTINGS
@given(basic_index_case(), st.integers(0, 2**32 - 1))
def test_getitem_slices(case, seed):
    x, index = case
    _check_getitem(x, index, seed)


@st.composite
def integer_index_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    # Small result shapes with few distinct values: repeated indices are the common case.
    index = draw(hnp.integer_array_indices(shape, result_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=6)))
    return draw(arrays(shape)), index


@SETTINGS
@given(integer_index_case(), st.integers(0, 2**32 - 1))
def test_getitem_integer_arrays_accumulate(case, seed):
    x, index = case
    g = _check_getitem(x, index, seed)
    # The same, spelled with NumPy's unbuffered scatter-add on the random upstream.
    expected = np.zeros(x.shape)
    np.add.at(expected, index, g)
    t = Tensor(x, requires_grad=True)
    t[index].backward(g)
    np.testing.assert_allclose(t.grad, expected, rtol=1e-12, atol=1e-12)


@st.composite
def mixed_index_case(draw):
    """A slice on axis 0 and a (repeating) integer list, or tuple, on axis 1 (NumPy reads a tuple
    inside the index as an integer array too)."""
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4))
    ints = draw(st.lists(st.integers(-shape[1], shape[1] - 1), min_size=1, max_size=6))
    start = draw(st.integers(0, shape[0] - 1))
    return draw(arrays(shape)), (slice(start, None), draw(st.sampled_from([list, tuple]))(ints))


@SETTINGS
@given(mixed_index_case(), st.integers(0, 2**32 - 1))
def test_getitem_slice_and_repeated_list(case, seed):
    x, index = case
    _check_getitem(x, index, seed)


@st.composite
def mask_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    mask = draw(hnp.arrays(bool, shape))
    return draw(arrays(shape)), mask


@SETTINGS
@given(mask_case(), st.integers(0, 2**32 - 1))
def test_getitem_boolean_mask(case, seed):
    x, mask = case
    _check_getitem(x, mask, seed)


# ----- every other broadcasting op: NumPy forward, gradients by central differences of it ------
# Each op is checked against its formula written in plain NumPy on the broadcast arrays, and its
# gradients against central differences of that NumPy formula with respect to each input at the
# input's own shape (so a gradient that is not summed back over a broadcast axis, or is summed
# over the wrong one, differs by whole multiples). Shapes come from mutually broadcastable
# shapes with 0-d inputs, size-1 axes and empty axes; per-row ops (a sum over the last axis)
# need a result with at least one axis. Inputs are float32 or float64; float32 results and
# gradients must stay float32 and agree with the float64 reference to float32 rounding.

def _pwm(mh, a, mp, c):
    var_q = 1 / (np.exp(-a) + np.exp(-c))
    mu_q = (mh * np.exp(-a) + mp * np.exp(-c)) * var_q
    return mu_q, np.broadcast_to(np.log(var_q), mu_q.shape)


def _bce(reduction):
    def ref(l, x):
        loss = np.logaddexp(0, l) - x * l
        return loss if reduction == "none" else loss.mean() if reduction == "mean" else loss.sum()
    return ref


# name: (engine function, NumPy reference, number of inputs, per-row)
BROADCAST_OPS = {
    "reparameterize": (F.reparameterize, lambda mu, lv, eps: mu + np.exp(lv / 2) * eps, 3, False),
    "kl_normal_std": (F.kl_normal_std, lambda mu, lv: 0.5 * (mu**2 + np.exp(lv) - 1 - lv).sum(-1), 2, True),
    "kl_normal_normal": (F.kl_normal_normal, lambda mq, lq, mp, lp: 0.5 * (
        lp - lq + (np.exp(lq) + (mq - mp) ** 2) / np.exp(lp) - 1).sum(-1), 4, True),
    "bernoulli_log_prob": (F.bernoulli_log_prob, lambda l, x: (x * l - np.logaddexp(0, l)).sum(-1), 2, True),
    "gaussian_log_prob": (F.gaussian_log_prob, lambda x, mu, lv: -0.5 * (
        np.log(2 * np.pi) + lv + (x - mu) ** 2 / np.exp(lv)).sum(-1), 3, True),
    "bce mean": (F.binary_cross_entropy_with_logits, _bce("mean"), 2, False),
    "bce sum": (lambda l, x: F.binary_cross_entropy_with_logits(l, x, reduction="sum"), _bce("sum"), 2, False),
    "bce none": (lambda l, x: F.binary_cross_entropy_with_logits(l, x, reduction="none"), _bce("none"), 2, False),
    "precision_weighted_merge": (F.precision_weighted_merge, _pwm, 4, False),
}


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _numeric_grads(ref, arrays, upstream, eps=1e-6):
    """d/d(input) of sum_k <upstream_k, ref(*arrays)_k> by central differences, for every input."""
    def f(xs):
        return sum(float((np.asarray(o) * u).sum()) for o, u in zip(_as_tuple(ref(*xs)), upstream))

    grads = []
    for i, a in enumerate(arrays):
        grad = np.zeros(a.shape)
        for idx in np.ndindex(*a.shape):
            xs = [np.array(x, dtype=np.float64) for x in arrays]
            xs[i][idx] += eps
            plus = f(xs)
            xs[i][idx] -= 2 * eps
            grad[idx] = (plus - f(xs)) / (2 * eps)
        grads.append(grad)
    return grads


def _check_against_numpy(fn, ref, arrays, seed, dtype=np.float64, cancelled=None):
    """fn's outputs equal ref's, and the gradient of every input equals the central differences
    of ref, for random upstream gradients (one per output). With ``dtype=np.float32`` the inputs
    and upstreams are rounded to float32 first; outputs and gradients must stay float32 and agree
    with ref (in float64, at the same points) to float32 rounding (``assert_close``).
    ``cancelled(arrays, upstream)``, given, returns for each input's gradient the summed
    magnitudes of the terms that cancel into it (or None), as ``assert_close`` takes them."""
    arrays = [np.asarray(a, dtype=dtype) for a in arrays]
    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    arrays = [a.astype(np.float64) for a in arrays]
    outs, expected = _as_tuple(fn(*tensors)), _as_tuple(ref(*arrays))
    assert len(outs) == len(expected)
    for out, exp in zip(outs, expected):
        assert out.shape == np.shape(exp) and out.dtype == dtype
        if dtype == np.float64:
            np.testing.assert_allclose(out.data, exp, rtol=1e-10, atol=1e-12)
        else:
            assert_close(out.data, np.asarray(exp), dtype)
    rng = np.random.default_rng(seed)
    upstream = [rng.standard_normal(out.shape).astype(dtype) for out in outs]
    backward(list(outs), upstream)
    upstream = [u.astype(np.float64) for u in upstream]
    numeric = _numeric_grads(ref, arrays, upstream)
    scales = cancelled(arrays, upstream) if cancelled is not None else [None] * len(arrays)
    for i in range(len(arrays)):
        grad = tensors[i].grad
        assert type(grad) is np.ndarray and grad.shape == arrays[i].shape and grad.dtype == dtype, i
        if dtype == np.float64:
            np.testing.assert_allclose(grad, numeric[i], rtol=1e-5, atol=1e-6, err_msg=f"input {i}")
        else:
            assert_close(grad, numeric[i], dtype, f"input {i}", scales[i])


@pytest.mark.parametrize("name", sorted(BROADCAST_OPS))
@settings(max_examples=100, deadline=None)
@given(data=st.data(), dtype=dtypes, seed=st.integers(0, 2**32 - 1))
def test_broadcasting_ops_against_numpy(name, data, dtype, seed):
    fn, ref, n, per_row = BROADCAST_OPS[name]
    shapes, out = data.draw(hnp.mutually_broadcastable_shapes(
        num_shapes=n, min_dims=0, max_dims=3, min_side=0, max_side=3).filter(lambda s: s.result_shape or not per_row))
    inputs = [data.draw(arrays(shape, -1.5, 1.5)) for shape in shapes]
    # the mean of no elements is NaN, with no gradient to compare
    assume(name != "bce mean" or np.prod(out) > 0)
    if name.startswith("bce"):  # targets in [0, 1]
        inputs[1] = np.asarray((inputs[1] + 1.5) / 3)
    _check_against_numpy(fn, ref, inputs, seed, dtype)


@SETTINGS
@given(hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, min_side=0, max_side=3),
       dtypes, st.integers(0, 2**32 - 1))
def test_where_broadcasts_condition_and_both_branches(shapes, dtype, seed):
    (sc, sa, sb), _ = shapes
    rng = np.random.default_rng(seed)
    cond = rng.uniform(size=sc) < 0.5
    a, b = rng.uniform(-2, 2, sa), rng.uniform(-2, 2, sb)
    _check_against_numpy(lambda a, b: F.where(cond, a, b), lambda a, b: np.where(cond, a, b), [a, b], seed, dtype)


@SETTINGS
@given(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=0, max_side=3),
       dtypes, st.integers(0, 2**32 - 1))
def test_where_with_one_tensor_in_both_branches(shapes, dtype, seed):
    """where(cond, a, a * 2): one tensor reaches both branches, so its gradient is g where cond
    and 2 g elsewhere, summed over the axes the condition broadcast it along."""
    (sc, sa), _ = shapes
    rng = np.random.default_rng(seed)
    cond = rng.uniform(size=sc) < 0.5
    _check_against_numpy(lambda a: F.where(cond, a, a * 2.0), lambda a: np.where(cond, a, a * 2.0),
                         [rng.uniform(-2, 2, sa)], seed, dtype)


@SETTINGS
@given(shapes, st.data(), st.integers(0, 2**32 - 1))
def test_broadcast_to_sums_the_gradient_back(target, data, seed):
    # a trailing part of the target with some axes set to 1
    kept = data.draw(st.integers(0, len(target)))
    ones = data.draw(st.lists(st.booleans(), min_size=kept, max_size=kept))
    shape = tuple(1 if one else n for one, n in zip(ones, target[len(target) - kept:]))
    x = np.random.default_rng(seed).uniform(-2, 2, shape)
    _check_against_numpy(lambda a: F.broadcast_to(a, target), lambda a: np.broadcast_to(a, target), [x], seed)


@SETTINGS
@given(hnp.mutually_broadcastable_shapes(signature="(n,k),(k,m)->(n,m)", max_dims=3,
                                         min_side=0, max_side=3),
       dtypes, st.integers(0, 2**32 - 1))
def test_matmul_broadcasts_batch_axes(shapes, dtype, seed):
    """Batched matmul, batch axes broadcast, any size 0 included (an empty inner axis gives
    zeros, and zero gradients), in float32 and float64."""
    (sa, sb), _ = shapes
    rng = np.random.default_rng(seed)
    _check_against_numpy(F.matmul, np.matmul, [rng.uniform(-1, 1, sa), rng.uniform(-1, 1, sb)], seed, dtype)


@SETTINGS
@given(hnp.mutually_broadcastable_shapes(signature="(n,k),(k,m)->(n,m)", max_dims=4, min_side=0, max_side=3),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_matmul_matches_pytorch(shapes, square, seed):
    """Batched matmul against torch.matmul in float64, results and gradients; or x @ x for one
    square tensor, whose gradient is g x^T + x^T g summed over the broadcast batch axes."""
    torch = pytest.importorskip("torch")
    (sa, sb), _ = shapes
    rng = np.random.default_rng(seed)
    if square:
        sa = sa[:-1] + (sa[-2],)
        inputs = [rng.uniform(-1, 1, sa)]
        ours, theirs = (lambda a: a @ a), (lambda a: a @ a)
    else:
        inputs = [rng.uniform(-1, 1, sa), rng.uniform(-1, 1, sb)]
        ours, theirs = F.matmul, torch.matmul
    ts = [Tensor(x, requires_grad=True) for x in inputs]
    tts = [torch.tensor(x, requires_grad=True) for x in inputs]
    out, tout = ours(*ts), theirs(*tts)
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    tout.backward(torch.tensor(g))
    for t, tt in zip(ts, tts):
        np.testing.assert_allclose(t.grad, tt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sa, sb", [((3,), (3, 2)), ((2, 3), (3,)), ((3,), (3,)), ((), (2, 2))])
def test_matmul_refuses_vectors(sa, sb):
    """matmul takes arrays of two or more axes only (its documented contract: reshape a vector
    first); NumPy and PyTorch would promote a 1-D operand to a row or a column. linear takes a
    1-D x (the property above draws it)."""
    with pytest.raises(ValueError, match="matmul: needs arrays of at least 2 dimensions"):
        F.matmul(Tensor(np.ones(sa)), Tensor(np.ones(sb)))


@SETTINGS
@given(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3), st.integers(0, 3), st.integers(0, 3),
       st.booleans(), dtypes, st.integers(0, 2**32 - 1))
def test_linear_bias_broadcasts_over_every_leading_axis(lead, n_in, n_out, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-1, 1, lead + (n_in,)), rng.uniform(-1, 1, (n_in, n_out))]
    if bias:
        arrays.append(rng.uniform(-1, 1, n_out))
    for fn, ref in ((F.linear, lambda x, W, b=0.0: x @ W + b),
                    (F.linear_relu, lambda x, W, b=0.0: np.maximum(x @ W + b, 0))):
        pre = arrays[0] @ arrays[1] + (arrays[2] if bias else 0.0)
        if fn is F.linear_relu and np.any(np.abs(pre) < 1e-3):
            continue  # central differences across the kink
        _check_against_numpy(fn, ref, arrays, seed, dtype)


@SETTINGS
@given(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=0, max_side=3),
       st.sampled_from([None, (2,), (1,)]), dtypes, st.integers(0, 2**32 - 1))
def test_reparameterize_with_noise_broadcasts(shapes, extra, dtype, seed):
    from minivae.random import Noise

    (smu, slv), out = shapes
    rng = np.random.default_rng(seed)
    noise = Noise(seed=seed % 1000, offset=3)
    shape = None if extra is None else extra + out
    eps = noise.normal(out if shape is None else shape, dtype=np.float64)
    _check_against_numpy(lambda mu, lv: F.reparameterize(mu, lv, noise, shape=shape),
                         lambda mu, lv: mu + np.exp(lv / 2) * eps,
                         [rng.uniform(-1, 1, smu), rng.uniform(-1, 1, slv)], seed, dtype)


@SETTINGS
@given(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=3), st.sampled_from([None, 1, 3]), dtypes,
       st.integers(0, 2**32 - 1))
def test_reparameterize_kl_any_rows_and_samples(shape, samples, dtype, seed):
    """The fused (z, kl) of reparameterize_kl for rows of any shape (size-0 axes included) and
    S samples per row, in both dtypes: z = mu + exp(logvar / 2) eps with the draw's normals (of
    shape (S,) + mu.shape), kl per row, both against NumPy, and the gradients of mu and logvar
    (through z summed over the samples, and through kl) against central differences."""
    from minivae.random import Noise

    noise = Noise(seed=seed % 1000, offset=5)
    eps = noise.normal(shape if samples is None else (samples,) + shape, dtype=np.float64)
    rng = np.random.default_rng(seed)

    def ref(mu, lv):
        return mu + np.exp(lv / 2) * eps, 0.5 * (mu**2 + np.exp(lv) - 1 - lv).sum(-1)

    _check_against_numpy(lambda mu, lv: F.reparameterize_kl(mu, lv, noise, samples=samples), ref,
                         [rng.uniform(-1, 1, shape), rng.uniform(-1, 1, shape)], seed, dtype)


# ----- unary elementwise ops: any shape, both dtypes, the documented value at each kink -----------
def _sigmoid64(x):
    return 1 / (1 + np.exp(-x))


# name: (engine function, NumPy forward, NumPy derivative, input range, kinks). Kinks are points
# where the derivative jumps; inputs land on them on purpose, and the derivative there is the
# one each op's docstring states (and PyTorch uses): 0 for relu and abs at 0, the negative
# side's slope for leaky_relu and elu at 0, 1 for clip at either bound.
UNARY_OPS = {
    "neg": (F.neg, np.negative, lambda x: -np.ones_like(x), (-2, 2), ()),
    "exp": (F.exp, np.exp, np.exp, (-3, 3), ()),
    "log": (F.log, np.log, lambda x: 1 / x, (0.2, 3), ()),
    "sqrt": (F.sqrt, np.sqrt, lambda x: 0.5 / np.sqrt(x), (0.2, 3), ()),
    "abs": (F.abs, np.abs, np.sign, (-2, 2), (0.0,)),
    "tanh": (F.tanh, np.tanh, lambda x: 1 / np.cosh(x) ** 2, (-3, 3), ()),
    "sigmoid": (F.sigmoid, _sigmoid64, lambda x: _sigmoid64(x) * _sigmoid64(-x), (-8, 8), ()),
    "relu": (F.relu, lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0, (-2, 2), (0.0,)),
    "leaky_relu 0.2": (lambda t: F.leaky_relu(t, 0.2), lambda x: np.where(x > 0, x, 0.2 * x),
                       lambda x: np.where(x > 0, 1.0, 0.2), (-2, 2), (0.0,)),
    "elu 1.5": (lambda t: F.elu(t, 1.5), lambda x: np.where(x > 0, x, 1.5 * (np.exp(x) - 1)),
                lambda x: np.where(x > 0, 1.0, 1.5 * np.exp(x)), (-2, 2), (0.0,)),
    "softplus": (F.softplus, lambda x: np.log(1 + np.exp(x)), _sigmoid64, (-8, 8), ()),
    "log_sigmoid": (F.log_sigmoid, lambda x: -np.log(1 + np.exp(-x)), lambda x: _sigmoid64(-x), (-8, 8), ()),
    "pow 3": (lambda t: t ** 3, lambda x: x ** 3, lambda x: 3 * x ** 2, (-2, 2), ()),
    "pow 0": (lambda t: t ** 0, lambda x: np.ones_like(x), np.zeros_like, (-2, 2), (0.0,)),
    "pow 0.5": (lambda t: F.pow(t, 0.5), np.sqrt, lambda x: 0.5 / np.sqrt(x), (0.2, 3), ()),
    "pow -1.5": (lambda t: t ** -1.5, lambda x: x ** -1.5, lambda x: -1.5 * x ** -2.5, (0.5, 2), ()),
    "clip": (lambda t: F.clip(t, -0.5, 0.7), lambda x: np.clip(x, -0.5, 0.7),
             lambda x: ((x >= -0.5) & (x <= 0.7)) * 1.0, (-2, 2), (-0.5, 0.7)),
    "clip hi": (lambda t: F.clip(t, hi=0.25), lambda x: np.minimum(x, 0.25), lambda x: (x <= 0.25) * 1.0,
                (-2, 2), (0.25,)),
}


@st.composite
def unary_case(draw, name):
    """An input of any shape (0-d and size-0 axes included) in the op's range, a quarter of its
    elements set exactly on a kink when the op has one, and a dtype."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    low, high = UNARY_OPS[name][3]
    kinks = UNARY_OPS[name][4]
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.uniform(low, high, shape)
    if kinks:
        x = np.where(rng.uniform(size=shape) < 0.25, rng.choice(kinks, shape), x)
    return x, draw(dtypes), seed


@pytest.mark.parametrize("name", sorted(UNARY_OPS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_unary_ops_any_shape_both_dtypes(name, data):
    """Each unary op keeps the shape and the dtype of its input (float32 stays float32), equals
    its formula in NumPy (evaluated in float64 on the same values), and its gradient is the
    formula's derivative times a random upstream, at kinks too."""
    x, dtype, seed = data.draw(unary_case(name))
    fn, forward, derivative, _, _ = UNARY_OPS[name]
    x = x.astype(dtype)
    x64 = x.astype(np.float64)
    t = Tensor(x, requires_grad=True)
    out = fn(t)
    assert_close(out.data, forward(x64), dtype)
    g = np.random.default_rng(seed + 1).standard_normal(x.shape).astype(dtype)
    out.backward(g)
    assert_close(t.grad, derivative(x64) * g.astype(np.float64), dtype)


@pytest.mark.parametrize("name", ["abs", "relu", "leaky_relu 0.2", "elu 1.5", "clip", "clip hi", "pow 0"])
def test_unary_kinks_take_pytorchs_derivative(name):
    """At the kinks the engine's derivative is PyTorch's, exactly (so models and tests move
    between the two without surprises)."""
    torch = pytest.importorskip("torch")
    spell = {"abs": torch.abs, "relu": torch.relu, "leaky_relu 0.2": lambda t: torch.nn.functional.leaky_relu(t, 0.2),
             "elu 1.5": lambda t: torch.nn.functional.elu(t, 1.5), "clip": lambda t: torch.clamp(t, -0.5, 0.7),
             "clip hi": lambda t: torch.clamp(t, max=0.25), "pow 0": lambda t: t ** 0}[name]
    fn, _, _, _, kinks = UNARY_OPS[name]
    x = np.array(sorted(set(kinks) | {-1.0, -0.25, 0.0, 0.25, 1.0}))
    g = np.arange(1.0, x.size + 1)
    t = Tensor(x, requires_grad=True)
    out = fn(t)
    out.backward(g)
    tt = torch.tensor(x, requires_grad=True)
    spell(tt).backward(torch.tensor(g))
    np.testing.assert_array_equal(out.data, spell(torch.tensor(x)).numpy())
    np.testing.assert_array_equal(t.grad, tt.grad.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elu_gradient_keeps_its_precision_deep_in_the_negative_tail(dtype):
    """elu's derivative below 0 is alpha e^x to a few ulp of itself, however small: computed as
    elu(x) + alpha it cancelled, off by 1e-3 of itself at x = -10 in float32, and 0 below -17
    (-37 in float64), where PyTorch gives alpha e^x."""
    x = np.array([-0.5, -5.0, -10.0, -17.0, -18.0, -30.0, -40.0, -80.0], dtype)
    g = np.linspace(0.5, 2.0, x.size).astype(dtype)
    t = Tensor(x, requires_grad=True)
    F.elu(t, 1.5).backward(g)
    want = g.astype(np.float64) * 1.5 * np.exp(x.astype(np.float64))
    np.testing.assert_allclose(t.grad, want, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype, x", [
    (np.float32, [-80.0, -20.0, -1.0, 0.0, 1.0, 20.0, 90.0, 200.0]),
    (np.float64, [-700.0, -40.0, -20.0, -1.0, 0.0, 1.0, 20.0, 40.0, 800.0]),
])
def test_softplus_and_log_sigmoid_keep_their_precision_in_both_tails(dtype, x):
    """softplus(x) = log(1 + e^x) and log_sigmoid(-x) = -softplus(x) against the float64 formula
    log(1 + e^x) = logaddexp(0, x), to a few ulp of each value: the tiny side (softplus(-40) =
    4.2e-18, log_sigmoid(40) = -4.2e-18) keeps its digits, which log(1 + e) in place of log1p(e)
    rounds to 0, and the far side stays finite (log(sigmoid(x)) is -inf below -104 in float32).
    The tiny side stops where e^x leaves the normal numbers of the dtype."""
    x = np.array(x, dtype)
    want = np.logaddexp(0, x.astype(np.float64))
    rtol = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(F.softplus(Tensor(x)).data, want, rtol=rtol, atol=0)
    np.testing.assert_allclose(F.log_sigmoid(Tensor(-x)).data, -want, rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elu_keeps_its_precision_just_below_0(dtype):
    """elu(x) = alpha (e^x - 1) for x < 0 near 0, against alpha expm1(x) in float64: to a few ulp,
    where e^x - 1 computed as written cancels (off by 1e-4 of itself at x = -1e-4 in float32)."""
    x = np.array([-1e-4, -1e-6, -1e-8, -3e-3], dtype)
    want = 1.5 * np.expm1(x.astype(np.float64))
    np.testing.assert_allclose(F.elu(Tensor(x), 1.5).data, want, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elu_takes_no_exp_of_large_positive_inputs(dtype):
    """elu and its gradient at x far above 0 (where e^x overflows) are x and 1, without an
    overflow on the way: exp is only taken of min(x, 0), as the docstring says."""
    x = np.array([100.0, 1000.0, 3e38], dtype)
    t = Tensor(x, requires_grad=True)
    with np.errstate(over="raise"):
        out = F.elu(t)
        out.backward(np.full_like(x, 2.0))
    np.testing.assert_array_equal(out.data, x)
    np.testing.assert_array_equal(t.grad, np.full_like(x, 2.0))


def test_leaky_relu_and_elu_default_to_pytorchs_parameters():
    """leaky_relu's default slope is 0.01 and elu's default alpha is 1.0, as in PyTorch."""
    x = np.array([-2.0, -0.5, 0.0, 1.5])
    np.testing.assert_allclose(F.leaky_relu(Tensor(x)).data, [-0.02, -0.005, 0.0, 1.5], rtol=1e-15, atol=0)
    np.testing.assert_allclose(F.elu(Tensor(x)).data, [np.expm1(-2.0), np.expm1(-0.5), 0.0, 1.5],
                               rtol=1e-15, atol=0)


def test_relu_of_infinities_and_nan():
    """relu(-inf) = 0 and relu(inf) = inf (an x * (x > 0) form gives NaN at -inf); a NaN stays
    NaN, so that anomaly mode can see it."""
    out = F.relu(Tensor(np.array([-np.inf, np.inf, np.nan, -1.0, 2.0]))).data
    np.testing.assert_array_equal(out, [0.0, np.inf, np.nan, 0.0, 2.0])


def test_clip_of_an_array_with_array_bounds():
    """clip takes a NumPy array (not only a Tensor) for x, with array bounds as with numbers."""
    x = np.array([[-1.0, 0.5, 2.0], [0.25, -3.0, 0.75]])
    lo = np.array([0.0, 0.0, 0.5])
    out = F.clip(x, lo, 1.0)
    assert isinstance(out, Tensor) and out.dtype == np.float64
    np.testing.assert_array_equal(out.data, [[0.0, 0.5, 1.0], [0.25, 0.0, 0.75]])


@SETTINGS
@given(hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, min_side=0, max_side=3),
       st.sampled_from(["both", "lo", "hi"]), dtypes, st.integers(0, 2**32 - 1))
def test_clip_with_array_bounds_that_broadcast_x(shapes, which, dtype, seed):
    """clip(x, lo, hi) with per-element bounds (arrays of x's dtype) that broadcast against x and
    may make the result larger than x: the result is min(max(x, lo), hi) in the broadcast shape,
    and x's gradient is the upstream where lo <= x <= hi (bounds included), summed back to x's
    shape. Bounds may cross (lo > hi gives hi, with no gradient), as in NumPy and PyTorch."""
    (sx, slo, shi), _ = shapes
    rng = np.random.default_rng(seed)
    # multiples of 1/4, so that many elements lie exactly on a bound, which passes the gradient
    x = (rng.integers(-8, 9, sx) / 4).astype(dtype)
    lo = (rng.integers(-6, 3, slo) / 4).astype(dtype) if which != "hi" else None
    hi = (rng.integers(-2, 7, shi) / 4).astype(dtype) if which != "lo" else None
    out_shape = np.broadcast_shapes(sx, slo if lo is not None else (), shi if hi is not None else ())
    x64 = x.astype(np.float64)
    lo64 = -np.inf if lo is None else lo.astype(np.float64)
    hi64 = np.inf if hi is None else hi.astype(np.float64)
    t = Tensor(x, requires_grad=True)
    result = F.clip(t, lo, hi)
    assert_close(result.data, np.minimum(np.maximum(x64, lo64), hi64) + np.zeros(out_shape), dtype)
    g = rng.standard_normal(out_shape).astype(dtype)
    result.backward(g)
    inside = (x64 >= lo64) & (x64 <= hi64)
    assert_close(t.grad, sum_to(np.where(inside, g.astype(np.float64), 0.0), x.shape), dtype)


# ----- reductions over any axes, with size-0 axes, in both dtypes --------------------------------
def _lse(x, axis, keepdims):
    """log(sum(exp(x))) as written, without the shift (the inputs are small): an independent
    spelling of the stable form; an empty sum gives log(0) = -inf."""
    with np.errstate(divide="ignore"):
        return np.log(np.exp(x).sum(axis=axis, keepdims=keepdims))


def _reduced_size(shape, axis):
    axes = range(len(shape)) if axis is None else np.atleast_1d(axis) % len(shape)
    return int(np.prod([shape[a] for a in axes]))


@settings(max_examples=80, deadline=None)
@given(reduce_case(max_dims=3, min_side=0, max_side=3), st.sampled_from(["sum", "mean", "logsumexp"]), dtypes,
       st.integers(0, 2**32 - 1))
def test_reductions_with_empty_axes_both_dtypes(case, op, dtype, seed):
    """sum, mean and logsumexp over any axes (None, one, a tuple, negative), keepdims or not, of
    arrays with size-0 axes, in float32 and float64: the result equals NumPy's (logsumexp: -inf
    over an empty axis), and the gradient the central differences of the NumPy formula (an empty
    gradient where x is empty). The mean of no elements is NaN, with no gradient to compare."""
    x, axis, keepdims = case
    assume(op != "mean" or _reduced_size(x.shape, axis) > 0)
    ref = {"sum": lambda a: np.sum(a, axis=axis, keepdims=keepdims),
           "mean": lambda a: np.mean(a, axis=axis, keepdims=keepdims),
           "logsumexp": lambda a: _lse(a, axis, keepdims)}[op]
    fn = getattr(F, op)
    _check_against_numpy(lambda t: fn(t, axis=axis, keepdims=keepdims), ref, [x], seed, dtype)


@settings(max_examples=80, deadline=None)
@given(reduce_case(max_dims=3, min_side=0, max_side=3), dtypes, st.integers(0, 2**32 - 1))
def test_max_any_axes_shares_ties_and_refuses_empty_slices(case, dtype, seed):
    """max over any axes, values on a coarse grid so that ties are common: the result is NumPy's
    maximum, and each of the m elements equal to their slice's maximum receives 1/m of the
    upstream (computed here from NumPy's maximum and a count of the ties), the others 0. Over a
    size-0 axis there is no maximum: a ValueError, as NumPy (and torch.amax) raise."""
    x, axis, keepdims = case
    x = (np.round(x * 2) / 2).astype(dtype)  # -2, -1.5, ..., 2
    t = Tensor(x, requires_grad=True)
    if _reduced_size(x.shape, axis) == 0:
        with pytest.raises(ValueError, match="empty slice has no maximum"):
            F.max(t, axis=axis, keepdims=keepdims)
        return
    out = F.max(t, axis=axis, keepdims=keepdims)
    want = np.max(x, axis=axis, keepdims=keepdims)
    assert_close(out.data, want.astype(np.float64), dtype)
    g = np.random.default_rng(seed).standard_normal(want.shape).astype(dtype)
    out.backward(g)
    ties = x == np.max(x, axis=axis, keepdims=True)
    g_kept = g.astype(np.float64).reshape(np.max(x, axis=axis, keepdims=True).shape)
    assert_close(t.grad, np.where(ties, g_kept / ties.sum(axis=axis, keepdims=True), 0.0), dtype)


@st.composite
def one_axis_case(draw):
    """An array of 1 to 3 axes (size-0 ones included) and one of its axes, maybe negative."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=3))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return draw(arrays(shape, -3.0, 3.0)), axis


def _softmax(x, axis):
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


@settings(max_examples=80, deadline=None)
@given(one_axis_case(), st.sampled_from(["softmax", "log_softmax"]), dtypes, st.integers(0, 2**32 - 1))
def test_softmax_and_log_softmax_along_any_axis(case, op, dtype, seed):
    """softmax and log_softmax along any one axis (negative too) of arrays with size-0 axes, in
    both dtypes: the result is exp(x) / sum(exp(x)) (or its log, x - log(sum(exp(x)))) along that
    axis only, and the gradient the central differences of that NumPy formula."""
    x, axis = case
    ref = {"softmax": lambda a: _softmax(a, axis),
           "log_softmax": lambda a: a - _lse(a, axis, keepdims=True)}[op]
    fn = getattr(F, op)
    _check_against_numpy(lambda t: fn(t, axis=axis), ref, [x], seed, dtype)


@settings(max_examples=40, deadline=None)
@given(reduce_case(max_dims=3, min_side=1, max_side=3), st.sampled_from(["max", "logsumexp", "softmax", "log_softmax"]),
       st.integers(0, 2**32 - 1))
def test_reductions_match_pytorch(case, op, seed):
    """max (as torch.amax, which also shares the gradient among ties), logsumexp, softmax and
    log_softmax over the same axes as in PyTorch: the same results and gradients, in float64."""
    torch = pytest.importorskip("torch")
    x, axis, keepdims = case
    dims = tuple(range(x.ndim)) if axis is None else tuple(int(a) for a in np.atleast_1d(axis))
    assume(dims)  # PyTorch reads dim=() as every axis, NumPy (and minivae) as none
    if op == "max":
        x = np.round(x * 2) / 2  # ties
        ours = lambda t: F.max(t, axis=axis, keepdims=keepdims)  # noqa: E731
        theirs = lambda t: torch.amax(t, dim=dims, keepdim=keepdims)  # noqa: E731
    elif op == "logsumexp":
        ours = lambda t: F.logsumexp(t, axis=axis, keepdims=keepdims)  # noqa: E731
        theirs = lambda t: torch.logsumexp(t, dim=dims, keepdim=keepdims)  # noqa: E731
    else:
        ours = lambda t: getattr(F, op)(t, axis=dims[0])  # noqa: E731
        theirs = lambda t: getattr(torch, op)(t, dim=dims[0])  # noqa: E731
    t, tt = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out, tout = ours(t), theirs(tt)
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(g)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(t.grad, tt.grad.numpy(), rtol=1e-12, atol=1e-12)


# ----- shape ops: forward as NumPy, backward by labels ---------------------------------------------
def moved_gradients(numpy_op, shapes, g):
    """Where the upstream ``g`` of an op that only moves elements goes, worked out by value:
    number every element of every input (one running count), apply the NumPy op to those
    labels, and add each upstream entry to the element whose label landed there (bincount sums
    the entries of an element used twice, e.g. an input passed twice). Returns one gradient per
    input shape."""
    sizes = [int(np.prod(s)) for s in shapes]
    starts = np.cumsum([0] + sizes)
    labels = [np.arange(a, b).reshape(s) for a, b, s in zip(starts, starts[1:], shapes)]
    picked = np.asarray(numpy_op(*labels))
    total = np.bincount(picked.ravel(), weights=g.ravel().astype(np.float64), minlength=starts[-1])
    return [total[a:b].reshape(s) for a, b, s in zip(starts, starts[1:], shapes)]


def _check_moves(fn, numpy_op, xs, seed, dtype, uses=None):
    """``fn`` on tensors of the arrays ``xs`` (each used at the positions listed in ``uses``,
    default once each, in order) equals ``numpy_op`` on the arrays exactly, and each tensor's
    gradient is what ``moved_gradients`` says (an input used twice gets both shares; one not
    used, none)."""
    uses = list(range(len(xs))) if uses is None else uses
    xs = [np.asarray(x, dtype=dtype) for x in xs]
    tensors = [Tensor(x, requires_grad=True) for x in xs]
    out = fn(*[tensors[i] for i in uses])
    want = numpy_op(*[xs[i] for i in uses])
    assert out.dtype == dtype and out.shape == want.shape
    np.testing.assert_array_equal(out.data, want)
    g = np.random.default_rng(seed).standard_normal(out.shape).astype(dtype)
    out.backward(g)
    per_use = moved_gradients(numpy_op, [xs[i].shape for i in uses], g)
    for k, t in enumerate(tensors):
        if k not in uses:  # a tensor the op never saw gets no gradient
            assert t.grad is None
            continue
        expected = sum((per_use[j] for j, i in enumerate(uses) if i == k), np.zeros(xs[k].shape))
        assert_close(t.grad, expected, dtype, f"input {k}")


@st.composite
def reshape_case(draw):
    """A shape, and another of the same size: the axes shuffled, some neighbours merged, ones
    inserted, and one entry written -1 where that leaves the shape unambiguous."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3))
    parts = list(draw(st.permutations(shape)))
    merged = []
    for n in parts:
        if merged and draw(st.booleans()):
            merged[-1] *= n
        else:
            merged.append(n)
    for _ in range(draw(st.integers(0, 2))):
        merged.insert(draw(st.integers(0, len(merged))), 1)
    if merged and draw(st.booleans()):
        k = draw(st.integers(0, len(merged) - 1))
        if np.prod(merged[:k] + merged[k + 1:]) != 0:  # -1 with a zero elsewhere is ambiguous
            merged[k] = -1
    return shape, tuple(merged)


@SETTINGS
@given(reshape_case(), st.booleans(), dtypes, st.integers(0, 2**32 - 1))
def test_reshape_to_any_shape_of_the_same_size(case, as_method, dtype, seed):
    """reshape (as a function, or the method with the sizes as separate arguments) to any shape
    of the same size, -1 included, 0-d and size-0 shapes included: NumPy's result, and the
    upstream goes back to the element each entry came from."""
    shape, target = case
    x = np.random.default_rng(seed).uniform(-2, 2, shape)
    fn = (lambda t: t.reshape(*target)) if as_method else (lambda t: F.reshape(t, target))
    _check_moves(fn, lambda a: a.reshape(target), [x], seed, dtype)


@st.composite
def transpose_case(draw):
    """A shape and a permutation of its axes, each written as a positive or negative number, or
    None (reverse them)."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3))
    if draw(st.booleans()):
        return shape, None
    perm = draw(st.permutations(range(len(shape))))
    return shape, tuple(a - len(shape) if draw(st.booleans()) else a for a in perm)


@SETTINGS
@given(transpose_case(), st.booleans(), dtypes, st.integers(0, 2**32 - 1))
def test_transpose_by_any_permutation(case, as_method, dtype, seed):
    """transpose by any permutation (negative axes, None, the method and .T): NumPy's result,
    and the upstream permuted back (a forward permutation used again in backward, instead of its
    inverse, sends entries to the wrong places for every 3-cycle)."""
    shape, axes = case
    x = np.random.default_rng(seed).uniform(-2, 2, shape)
    if as_method:
        fn = (lambda t: t.T) if axes is None else (lambda t: t.transpose(*axes))
    else:
        fn = lambda t: F.transpose(t, axes)  # noqa: E731
    _check_moves(fn, lambda a: np.transpose(a, axes), [x], seed, dtype)


@st.composite
def join_case(draw, new_axis):
    """Arrays to join: for concatenate, one shape off ``axis`` and any size (0 included) along
    it; for stack, one shape. Each of 1 to 4 positions takes one of the arrays, so that one
    tensor may be joined to itself."""
    base = draw(hnp.array_shapes(min_dims=0 if new_axis else 1, max_dims=3, min_side=0, max_side=3))
    nd = len(base) + (1 if new_axis else 0)
    axis = draw(st.integers(-nd, nd - 1))
    n = draw(st.integers(1, 3))
    if new_axis:
        shapes = [base] * n
    else:
        k = axis % nd
        shapes = [base[:k] + (draw(st.integers(0, 3)),) + base[k + 1:] for _ in range(n)]
    uses = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return [rng.uniform(-2, 2, s) for s in shapes], axis, uses, seed


@SETTINGS
@given(join_case(new_axis=False), dtypes)
def test_concatenate_any_axis_sizes_and_repeats(case, dtype):
    """concatenate along any axis (negative too) of pieces of any size along it (0 included),
    one tensor possibly several times: NumPy's result, and each piece's slice of the upstream
    back to it (summed over its uses)."""
    xs, axis, uses, seed = case
    _check_moves(lambda *ts: F.concatenate(ts, axis=axis), lambda *a: np.concatenate(a, axis=axis),
                 xs, seed, dtype, uses)


@SETTINGS
@given(join_case(new_axis=True), dtypes)
def test_stack_any_axis_and_repeats(case, dtype):
    """stack along any new axis (negative too, up to one past the last) of arrays of any shape
    (0-d and size-0 included), one tensor possibly several times: NumPy's result, and each
    position's entry of the upstream back to its tensor (summed over its uses)."""
    xs, axis, uses, seed = case
    _check_moves(lambda *ts: F.stack(ts, axis=axis), lambda *a: np.stack(a, axis=axis), xs, seed, dtype, uses)


@st.composite
def basic_index_any_shape_case(draw):
    """Basic indices (slices with any steps, negative included; integers; None; Ellipsis) of
    arrays that may be 0-d or have size-0 axes, which the getitem tests above leave out."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    index = draw(hnp.basic_indices(shape, min_dims=0, allow_newaxis=True, allow_ellipsis=True))
    return draw(arrays(shape)), index


@SETTINGS
@given(basic_index_any_shape_case(), dtypes, st.integers(0, 2**32 - 1))
def test_getitem_of_0d_and_empty_arrays(case, dtype, seed):
    x, index = case
    _check_moves(lambda t: t[index], lambda a: a[index], [x], seed, dtype)


@SETTINGS
@given(integer_index_case(), dtypes, st.integers(0, 2**32 - 1))
def test_getitem_integer_arrays_in_both_dtypes(case, dtype, seed):
    """Integer-array indices (negative and repeated entries) in float32 as in float64: the
    scatter-add of the backward keeps the dtype."""
    x, index = case
    _check_moves(lambda t: t[index], lambda a: a[index], [x], seed, dtype)



@st.composite
def mixed_index_any_case(draw):
    """Per axis a slice (any step), an integer, or an integer array; the arrays share one shape
    (0-d and empty included), so they broadcast together. Arrays and integers separated by a
    slice put the indexed axes first, as NumPy's rules say; next to each other, in place."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    res = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3))
    parts = []
    for n in shape:
        kind = draw(st.sampled_from(["slice", "int", "array"]))
        if kind == "slice":
            parts.append(draw(st.slices(n)))
        elif kind == "int":
            parts.append(draw(st.integers(-n, n - 1)))
        else:
            parts.append(draw(hnp.arrays(np.intp, res, elements=st.integers(-n, n - 1))))
    return draw(arrays(shape)), tuple(parts)


@SETTINGS
@given(mixed_index_any_case(), dtypes, st.integers(0, 2**32 - 1))
def test_getitem_mixed_slices_integers_and_arrays(case, dtype, seed):
    x, index = case
    _check_moves(lambda t: t[index], lambda a: a[index], [x], seed, dtype)

# ----- batch normalization ------------------------------------------------------------------------
@st.composite
def batch_norm_case(draw):
    """(N, C) or (N, C, L) input with at least two values per channel, and whether it is affine."""
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    shape = (n, c) + ((draw(st.integers(1, 3)),) if draw(st.booleans()) else ())
    assume(n * (shape[2] if len(shape) == 3 else 1) >= 2)
    return shape, draw(st.booleans())


def _bn_reference(x, gamma=None, beta=None, eps=1e-5):
    """Batch normalization as its docstring writes it, over every axis but the channel axis 1."""
    axes = (0,) if x.ndim == 2 else (0, 2)
    c = (1, -1) if x.ndim == 2 else (1, -1, 1)
    xhat = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    return xhat if gamma is None else xhat * gamma.reshape(c) + beta.reshape(c)


def _bn_cancelled_terms(arrays, upstream, eps=1e-5):
    """The summed magnitudes of the terms of x's gradient, |gamma| / std (|g| + mean|g| + |xhat|
    mean|g xhat|): with few values per channel they cancel to far less than themselves (two values
    leave only what eps adds), so float32 rounding scales with them, not with the gradient."""
    x, gamma = arrays[0], (arrays[1] if len(arrays) > 1 else np.ones(arrays[0].shape[1]))
    axes = (0,) if x.ndim == 2 else (0, 2)
    c = (1, -1) if x.ndim == 2 else (1, -1, 1)
    std = np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    xhat, g = np.abs(x - x.mean(axis=axes, keepdims=True)) / std, np.abs(upstream[0])
    terms = g + g.mean(axis=axes, keepdims=True) + xhat * (g * xhat).mean(axis=axes, keepdims=True)
    return [np.abs(gamma).reshape(c) / std * terms] + [None] * (len(arrays) - 1)


@SETTINGS
@given(batch_norm_case(), dtypes, st.integers(0, 2**32 - 1))
def test_batch_norm_training_any_shape(case, dtype, seed):
    """batch_norm in training mode for (N, C) and (N, C, L) inputs, affine or not, in both
    dtypes: the result is (x - mean) / sqrt(var + eps) * gamma + beta with the biased batch
    variance per channel, and every gradient (x through the mean and variance too, gamma, beta)
    the central differences of that NumPy formula. The running statistics, given, move by
    momentum toward the batch mean and the unbiased batch variance."""
    (shape, affine) = case
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, shape)
    axes = (0,) if len(shape) == 2 else (0, 2)
    assume(x.astype(dtype).astype(np.float64).var(axis=axes).min() > 1e-2)  # finite differences need a spread
    inputs = [x] + ([rng.uniform(0.5, 2, shape[1]), rng.uniform(-1, 1, shape[1])] if affine else [])
    _check_against_numpy(F.batch_norm, _bn_reference, inputs, seed, dtype, _bn_cancelled_terms)

    x32 = x.astype(dtype)
    mean, var = rng.uniform(-1, 1, shape[1]).astype(dtype), rng.uniform(0.5, 2, shape[1]).astype(dtype)
    old_mean, old_var = mean.astype(np.float64), var.astype(np.float64)
    F.batch_norm(Tensor(x32), running_mean=mean, running_var=var, momentum=0.25)
    x64 = x32.astype(np.float64)
    assert_close(mean, 0.75 * old_mean + 0.25 * x64.mean(axis=axes), dtype)
    assert_close(var, 0.75 * old_var + 0.25 * x64.var(axis=axes, ddof=1), dtype)


@SETTINGS
@given(batch_norm_case(), dtypes, st.integers(0, 2**32 - 1))
def test_batch_norm_evaluation_any_shape(case, dtype, seed):
    """batch_norm in evaluation mode: (x - running_mean) / sqrt(running_var + eps) * gamma + beta,
    with the running statistics as constants; the gradients of x, gamma and beta against central
    differences of that NumPy formula, in both dtypes."""
    (shape, affine) = case
    rng = np.random.default_rng(seed)
    mean, var = rng.uniform(-1, 1, shape[1]).astype(dtype), rng.uniform(0.5, 2, shape[1]).astype(dtype)
    c = (1, -1) if len(shape) == 2 else (1, -1, 1)

    def ref(x, gamma=None, beta=None):
        xhat = (x - mean.astype(np.float64).reshape(c)) / np.sqrt(var.astype(np.float64).reshape(c) + 1e-5)
        return xhat if gamma is None else xhat * gamma.reshape(c) + beta.reshape(c)

    inputs = [rng.uniform(-2, 2, shape)] + ([rng.uniform(0.5, 2, shape[1]), rng.uniform(-1, 1, shape[1])]
                                            if affine else [])
    _check_against_numpy(lambda *ts: F.batch_norm(*ts, running_mean=mean, running_var=var, training=False),
                         ref, inputs, seed, dtype)
