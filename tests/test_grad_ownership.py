"""A leaf's .grad is its own array: nothing else holds it or a view of it.

Ops may hand one array to several inputs, return views or broadcasts, or keep what they return;
callers hold the ``grad=`` they pass and the ``.grad`` they read. Whatever the path, writing
into one leaf's ``.grad`` changes nothing else, and nothing else changes it.
"""
import numpy as np
import pytest

import minivae as mv
from minivae import Function
from minivae import functional as F


def _leaf(*shape, dtype=np.float64):
    return mv.Tensor(np.random.default_rng(0).standard_normal(shape).astype(dtype), requires_grad=True)


class _SameForBoth(Function):
    """y = a + b, whose backward returns one fresh array for both inputs."""

    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, g):
        out = g * 1.0
        return out, out


class _KeepsIt(Function):
    """y = x, whose backward returns an array it also keeps in its context."""

    @staticmethod
    def forward(ctx, x):
        return x.copy()

    @staticmethod
    def backward(ctx, g):
        ctx.kept = g * 1.0
        return ctx.kept


class _ReturnsView(Function):
    """y = x, whose backward returns a view into a larger fresh array."""

    @staticmethod
    def forward(ctx, x):
        return x.copy()

    @staticmethod
    def backward(ctx, g):
        big = np.zeros((2,) + g.shape, g.dtype)
        big[0] = g
        return big[0]


def test_one_array_returned_for_two_inputs_is_never_shared():
    a, b = _leaf(3), _leaf(3)
    _SameForBoth.apply(a, b).sum().backward()
    assert not np.shares_memory(a.grad, b.grad)
    a.grad *= 5
    np.testing.assert_array_equal(b.grad, np.ones(3))


def test_add_of_two_leaves_gives_each_its_own_gradient():
    # Add's backward hands the same upstream array (here the fresh g @ W^T) to both inputs.
    a, b, W = _leaf(2, 3), _leaf(2, 3), _leaf(3, 4)
    ((a + b) @ W).sum().backward()
    assert not np.shares_memory(a.grad, b.grad)
    expected = b.grad.copy()
    a.grad[...] = 0
    np.testing.assert_array_equal(b.grad, expected)


def test_an_array_an_op_keeps_is_copied():
    x = _leaf(3)
    y = _KeepsIt.apply(x)
    ctx = y._node.ctx
    y.sum().backward(retain_graph=True)
    assert not np.shares_memory(x.grad, ctx.kept)
    x.grad[...] = 9
    np.testing.assert_array_equal(ctx.kept, np.ones(3))


def test_saved_arrays_are_never_a_leafs_grad():
    # exp keeps its output for backward; the gradient of x is exp(x) * g and must not be it.
    x = _leaf(3)
    y = F.exp(x)
    saved = y._node.ctx.saved[0]
    y.backward(np.ones(3), retain_graph=True)
    assert not np.shares_memory(x.grad, saved) and not np.shares_memory(x.grad, y.data)


def test_views_and_read_only_broadcasts_are_copied():
    x = _leaf(3)
    _ReturnsView.apply(x).sum().backward()
    assert x.grad.base is None and x.grad.flags.writeable
    c = _leaf(2, 3)
    c.sum().backward()  # Sum's backward is a read-only broadcast view
    assert c.grad.flags.writeable and c.grad.flags.owndata


def test_the_callers_grad_argument_is_never_a_leafs_grad():
    g = np.arange(3.0)
    x = _leaf(3)
    x.backward(g)  # the root itself is the leaf
    assert not np.shares_memory(x.grad, g)
    x2 = _leaf(3)
    (x2 + 0.0).backward(g)  # Add's backward passes g itself on
    assert not np.shares_memory(x2.grad, g)
    g_tensor = mv.tensor(np.arange(3.0))
    x3 = _leaf(3)
    (x3 + 0.0).backward(g_tensor)
    assert not np.shares_memory(x3.grad, g_tensor.data)
    g[...] = 7
    g_tensor.data[...] = 7
    np.testing.assert_array_equal(x2.grad, np.arange(3.0))
    np.testing.assert_array_equal(x3.grad, np.arange(3.0))


def test_accumulated_gradients_and_leaf_grad_across_backward_calls():
    x = _leaf(4)
    loss = (x * x + x * 3.0 + F.exp(x)).sum()  # four contributions reach x
    loss.backward(retain_graph=True)
    expected = 2 * x.data + 3 + np.exp(x.data)
    np.testing.assert_allclose(x.grad, expected, rtol=1e-12)
    first = x.grad
    kept = first.copy()
    loss.backward()
    np.testing.assert_array_equal(first, kept)  # the .grad a caller holds is never written into
    np.testing.assert_allclose(x.grad, 2 * expected, rtol=1e-12)


def test_a_second_graph_accumulates_into_grad_without_touching_the_first_array():
    x = _leaf(3)
    (x * 2.0).sum().backward()
    first = x.grad
    (x * 5.0).sum().backward()
    np.testing.assert_array_equal(first, np.full(3, 2.0))
    np.testing.assert_array_equal(x.grad, np.full(3, 7.0))


def test_shared_intermediate_accumulation_does_not_leak_into_another_gradient():
    # h feeds three branches; its summed gradient is handed on by Add to both a and b.
    a, b = _leaf(3), _leaf(3)
    h = a + b
    loss = (h * 2.0 + h * 3.0 + h).sum()
    loss.backward()
    np.testing.assert_array_equal(a.grad, np.full(3, 6.0))
    np.testing.assert_array_equal(b.grad, np.full(3, 6.0))
    assert not np.shares_memory(a.grad, b.grad)


def test_an_intermediate_used_twice_gets_both_contributions_once():
    # y feeds two ops and a third use through Add(y, y): its node must run once, with the full sum.
    x = _leaf(3)
    y = x * 2.0
    (y * y + (y + y)).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * (2 * y.data + 2), rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parameter_gradients_of_a_model_are_distinct_writable_arrays(dtype):
    from minivae.models import VAE
    from minivae.random import Generator

    x = (np.random.default_rng(1).uniform(size=(5, 784)) < 0.3).astype(dtype)
    mv.nn.init.manual_seed(0)
    model = VAE().astype(dtype)
    loss, _ = model.loss(mv.tensor(x), Generator(0))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    for i, g in enumerate(grads):
        assert g.dtype == dtype and g.flags.writeable
        assert not any(np.shares_memory(g, other) for other in grads[i + 1:])
        assert not any(np.shares_memory(g, p.data) for p in model.parameters())


def test_zero_dimensional_leaves_accumulate_every_contribution():
    x = mv.tensor(2.0, requires_grad=True)
    (x * x + 3 * x).backward()  # three contributions; 0-d sums are NumPy scalars
    assert x.grad == 7.0


@pytest.mark.parametrize("second_backward", [False, True])
def test_zero_dimensional_gradients_are_writable_arrays(second_backward):
    """NumPy's arithmetic on 0-d arrays returns NumPy scalars (read-only, without ``setflags`` or
    item assignment); the gradients of 0-d tensors are arrays all the same, as for every other
    shape: what a hook gets, the ``.grad`` of a leaf, and its sum over two backward passes."""
    x = mv.tensor(2.0, requires_grad=True)
    seen = []
    y = F.exp(x * 1.5)
    y.register_hook(lambda g: seen.append(g))
    for _ in range(1 + second_backward):
        (y * y + F.exp(x)).backward(retain_graph=True)
    for g in seen + [x.grad]:
        assert type(g) is np.ndarray and g.shape == () and g.dtype == x.dtype and g.flags.writeable
    expected = (1 + second_backward) * (3 * np.exp(6.0) + np.exp(2.0))
    np.testing.assert_allclose(x.grad, expected, rtol=1e-6)  # float32, the default dtype
    x.grad[...] = 0.0  # it is the leaf's own array
