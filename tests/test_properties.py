"""Hypothesis properties: broadcasting gradients, reductions over any axes, getitem scatter-add.

Each expected gradient is computed independently in NumPy from a random upstream gradient (never
all ones, which would hide a misplaced or transposed gradient).
"""
import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from minivae import Tensor
from minivae import functional as F

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


@st.composite
def reduce_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4))
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
    """A slice on axis 0 and a (repeating) integer list on axis 1."""
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4))
    ints = draw(st.lists(st.integers(-shape[1], shape[1] - 1), min_size=1, max_size=6))
    start = draw(st.integers(0, shape[0] - 1))
    return draw(arrays(shape)), (slice(start, None), ints)


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
