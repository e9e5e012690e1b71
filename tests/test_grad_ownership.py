"""The engine hands a gradient to a leaf's .grad without a copy only when nobody else can see it.

A fresh array that an op's backward returned and that nothing else references becomes ``.grad``
as it is (saving a copy of every weight gradient per step). Everything else is copied: read-only
broadcast views, slices, an array returned for two inputs, an array an op also keeps, the
caller's ``grad=`` argument. Sums of several contributions are accumulated in place only into
arrays the engine allocated itself.
"""
import weakref

import numpy as np
import pytest

import minivae as mv
from minivae import autograd
from minivae import functional as F
from minivae.autograd import Function


def _leaf(*shape, dtype=np.float64):
    return mv.Tensor(np.random.default_rng(0).standard_normal(shape).astype(dtype), requires_grad=True)


class _Recorder(Function):
    """y = 2 x; backward returns a fresh array (and remembers it through a weak reference)."""
    returned = []

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        out = g * 2
        _Recorder.returned.append(weakref.ref(out))
        return out


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


_ADOPTS = pytest.mark.skipif(autograd._UNSHARED_REFS == 0,
                             reason="reference counts cannot prove an array unshared here: always copied")


@_ADOPTS
def test_a_fresh_unshared_gradient_is_adopted_without_copy():
    x = _leaf(3)
    _Recorder.apply(x).sum().backward()
    assert x.grad is _Recorder.returned[-1]()
    np.testing.assert_array_equal(x.grad, np.full(3, 2.0))


@_ADOPTS
def test_linear_weight_gradients_are_not_copied():
    W, b = _leaf(3, 2, dtype=np.float32), _leaf(2, dtype=np.float32)
    seen = []
    original = F.Linear.backward

    def spy(ctx, g):
        grads = original(ctx, g)
        seen.extend(weakref.ref(a) for a in grads if a is not None)
        return grads

    F.Linear.backward = staticmethod(spy)
    try:
        F.linear(mv.tensor(np.ones((4, 3), np.float32)), W, b).sum().backward()
    finally:
        F.Linear.backward = staticmethod(original)
    returned = [r() for r in seen]
    assert any(W.grad is a for a in returned) and any(b.grad is a for a in returned)


def test_one_array_returned_for_two_inputs_is_never_shared():
    a, b = _leaf(3), _leaf(3)
    _SameForBoth.apply(a, b).sum().backward()
    assert not np.shares_memory(a.grad, b.grad)
    a.grad *= 5
    np.testing.assert_array_equal(b.grad, np.ones(3))


def test_an_array_an_op_keeps_is_copied():
    x = _leaf(3)
    y = _KeepsIt.apply(x)
    node_ctx = y._node[1]
    y.sum().backward(retain_graph=True)
    assert not np.shares_memory(x.grad, node_ctx.kept)


def test_views_and_read_only_broadcasts_are_copied():
    x = _leaf(3)
    _ReturnsView.apply(x).sum().backward()
    assert x.grad.base is None and x.grad.flags.writeable
    c = _leaf(2, 3)
    c.sum().backward()  # Sum's backward is a read-only broadcast view
    assert c.grad.flags.writeable and c.grad.flags.owndata


def test_the_callers_grad_argument_is_copied():
    x = _leaf(3)
    g = np.arange(3.0)
    x.backward(g)
    assert not np.shares_memory(x.grad, g)
    y = _leaf(3)
    (y * 1.0).backward(g)  # Mul's backward: g * 1.0 is fresh, g itself is never handed out
    x2 = _leaf(3)
    (x2 + 0.0).backward(g)  # Add's backward passes g itself on
    assert not np.shares_memory(x2.grad, g)
    g[...] = 7
    np.testing.assert_array_equal(x2.grad, np.arange(3.0))


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


def test_shared_intermediate_accumulation_does_not_leak_into_another_gradient():
    # h feeds two branches; its accumulated gradient is handed on by Add to both a and b.
    a, b = _leaf(3), _leaf(3)
    h = a + b
    loss = (h * 2.0 + h * 3.0 + h).sum()
    loss.backward()
    np.testing.assert_array_equal(a.grad, np.full(3, 6.0))
    np.testing.assert_array_equal(b.grad, np.full(3, 6.0))
    assert not np.shares_memory(a.grad, b.grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vae_step_gradients_unchanged_by_adoption(dtype):
    """The gradients are the same numbers whether or not the engine copies them."""
    from minivae.models import VAE
    from minivae.random import Generator

    x = (np.random.default_rng(1).uniform(size=(5, 784)) < 0.3).astype(dtype)
    runs = []
    for refs in (autograd._UNSHARED_REFS, 0):  # 0: adopt nothing, copy every gradient
        saved, autograd._UNSHARED_REFS = autograd._UNSHARED_REFS, refs
        try:
            mv.nn.init.manual_seed(0)
            model = VAE().astype(dtype)
            loss, _ = model.loss(mv.tensor(x), Generator(0))
            loss.backward()
            runs.append([p.grad for p in model.parameters()])
        finally:
            autograd._UNSHARED_REFS = saved
    for g0, g1 in zip(*runs):
        np.testing.assert_array_equal(g0, g1)


def test_zero_dimensional_leaves_accumulate_every_contribution():
    x = mv.tensor(2.0, requires_grad=True)
    (x * x + 3 * x).backward()  # three contributions; 0-d sums are NumPy scalars
    assert x.grad == 7.0


class _Scribbles(Function):
    """y = 3 x; backward records ``grad_owned`` and, when it is True, overwrites g with NaN
    before returning a fresh gradient (what an op that works in place may do)."""
    owned = []

    @staticmethod
    def forward(ctx, x):
        return x * 3

    @staticmethod
    def backward(ctx, g):
        out = g * 3
        _Scribbles.owned.append(ctx.grad_owned)
        if ctx.grad_owned:
            g[...] = np.nan
        return out


@_ADOPTS
def test_backward_may_overwrite_the_upstream_gradient_only_when_the_engine_owns_it():
    _Scribbles.owned.clear()
    x = _leaf(3)
    (_Scribbles.apply(x) * 2.0).sum().backward()  # Mul's backward: a fresh g * 2
    assert _Scribbles.owned == [True]
    np.testing.assert_array_equal(x.grad, np.full(3, 6.0))

    # The caller's grad= argument, and an array two inputs received from Add, are not the
    # engine's alone: the flag is False and no scribble reaches another gradient.
    _Scribbles.owned.clear()
    y = _Scribbles.apply(_leaf(3))
    g = np.arange(3.0)
    y.backward(g)
    np.testing.assert_array_equal(g, np.arange(3.0))
    a, b = _leaf(3), _leaf(3)
    (_Scribbles.apply(a) + _Scribbles.apply(b)).backward(np.ones(3))
    assert _Scribbles.owned[0] is False and _Scribbles.owned[1] is False
    np.testing.assert_array_equal(a.grad, np.full(3, 3.0))
    np.testing.assert_array_equal(b.grad, np.full(3, 3.0))


def test_linear_relu_masks_a_shared_upstream_gradient_without_touching_it():
    # Add hands one array to both layers: the first one to run must not mask it in place.
    rng = np.random.default_rng(0)
    x = mv.tensor(rng.standard_normal((4, 3)))
    W1, W2, b = _leaf(3, 5), mv.Tensor(rng.standard_normal((3, 5)), requires_grad=True), _leaf(5)
    a, c = F.linear_relu(x, W1, b), F.linear_relu(x, W2, b)
    g = rng.standard_normal((4, 5))
    (a + c).backward(g)
    for W, out in ((W1, a), (W2, c)):
        np.testing.assert_allclose(W.grad, x.data.T @ (g * (out.data > 0)), rtol=1e-12)
    np.testing.assert_allclose(b.grad, (g * (a.data > 0)).sum(0) + (g * (c.data > 0)).sum(0), rtol=1e-12)
