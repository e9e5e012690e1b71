"""A float32 training step stays float32: no silent float64 upcast anywhere in it.

Two checks on one step of the default VAE (forward, backward, Adam with its subnormal flush):

* every array NumPy computes from the batch and the parameters is float32: the arrays are
  wrapped in an ndarray subclass that sees every ufunc call (``__array_ufunc__``, which covers
  operators, reductions and matmul) and every array function (``__array_function__``) and
  records the dtype of each result, temporaries included;
* every array the graph keeps (outputs, saved arrays), every gradient and the optimizer state
  is float32.

Not covered: the standard normals themselves, which ``minivae.random`` draws with a Box-Muller
transform computed in float64 and rounded once, by design (bit-for-bit twin of the GPU kernel);
they enter the step as float32.
"""
import numpy as np
import pytest

import minivae as mv
import minivae.nn  # noqa: F401 - registers mv.nn
import minivae.optim as optim
from minivae.function import Function
from minivae.models import VAE
from minivae.random import Generator


class _Watch(np.ndarray):
    """An ndarray that records the dtype of every array NumPy computes from it (and wraps it)."""
    log = []

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = tuple(a.view(np.ndarray) if isinstance(a, _Watch) else a for a in inputs)
        outs = kwargs.get("out")
        if outs is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, _Watch) else o for o in outs)
        result = getattr(ufunc, method)(*plain, **kwargs)
        if outs is not None:
            for o in outs:
                if o is not None:
                    _Watch.log.append((f"{ufunc.__name__}.{method}(out=)", o.dtype))
            return outs[0] if len(outs) == 1 else outs
        return _wrap(result, f"{ufunc.__name__}.{method}")

    def __array_function__(self, func, types, args, kwargs):
        result = super().__array_function__(func, types, args, kwargs)
        return _wrap(result, func.__name__)


def _wrap(result, name):
    if isinstance(result, tuple):
        return tuple(_wrap(r, name) for r in result)
    if isinstance(result, (np.ndarray, np.generic)):
        _Watch.log.append((name, result.dtype))
    if isinstance(result, np.ndarray) and not isinstance(result, _Watch):
        return result.view(_Watch)
    return result


def _model_and_batch(batch=8):
    mv.nn.init.manual_seed(0)
    model = VAE()
    x = (np.random.default_rng(0).uniform(size=(batch, 784)) < 0.3).astype(np.float32)
    return model, x


def test_no_float64_array_is_computed_in_a_float32_step():
    model, x = _model_and_batch()
    for p in model.parameters():
        p.data = p.data.view(_Watch)
    opt = optim.Adam(model.parameters(), lr=1e-3, flush_every=1)  # flush in this very step
    noise = Generator(0)
    _Watch.log.clear()
    for _ in range(2):  # the first step creates the optimizer state, the second updates it
        loss, _ = model.loss(mv.tensor(x.view(_Watch)), noise)
        model.zero_grad()
        loss.backward()
        opt.step()
    dtypes = {d for _, d in _Watch.log}
    wide = sorted({name for name, d in _Watch.log if d.kind == "f" and d != np.float32})
    assert _Watch.log and np.dtype(np.float32) in dtypes
    assert not wide, f"float64 (or other float) arrays computed in a float32 step by: {wide}"
    assert all(isinstance(p.data, _Watch) for p in model.parameters())  # the check saw the update


def test_the_watch_sees_an_upcast_inside_an_op(monkeypatch):
    """The check above would fail if an op computed a float64 temporary."""
    from minivae.ops import linalg

    original = linalg.LinearRelu.forward

    def upcasting_forward(ctx, x, W, b=None):
        return original(ctx, (x * np.float64(1.0)).astype(x.dtype), W, b)  # float64 inside, float32 out

    monkeypatch.setattr(linalg.LinearRelu, "forward", staticmethod(upcasting_forward))
    model, x = _model_and_batch()
    for p in model.parameters():
        p.data = p.data.view(_Watch)
    _Watch.log.clear()
    model.loss(mv.tensor(x.view(_Watch)), Generator(0))
    assert "multiply.__call__" in {name for name, d in _Watch.log if d == np.float64}


def test_graph_gradients_and_optimizer_state_are_float32(monkeypatch):
    model, x = _model_and_batch()
    seen = []
    original = Function.apply.__func__

    def recording_apply(cls, *inputs, **params):
        out = original(cls, *inputs, **params)
        outs = out if isinstance(out, tuple) else (out,)
        seen.extend((cls.__name__, "output", t.data) for t in outs)
        if outs[0]._node is not None:
            ctx = outs[0]._node.ctx
            seen.extend((cls.__name__, "saved", a) for a in getattr(ctx, "saved", ())
                        if hasattr(a, "dtype"))
        return out

    monkeypatch.setattr(Function, "apply", classmethod(recording_apply))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss, _ = model.loss(mv.tensor(x), Generator(0))
    loss.backward()
    opt.step()
    assert seen
    bad = [(op, what, a.dtype) for op, what, a in seen if a.dtype.kind == "f" and a.dtype != np.float32]
    assert not bad, bad
    for p in model.parameters():
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32
    for state in opt.state:
        assert {v.dtype for v in state.values() if hasattr(v, "dtype")} == {np.dtype(np.float32)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormal_flush_is_exactly_copyto_where_tiny(dtype):
    """The flush's fast form (multiply by a keep-mask, add +0) equals the obvious one bit for bit."""
    rng = np.random.default_rng(0)
    tiny = np.finfo(dtype).tiny
    a = rng.standard_normal(5000).astype(dtype)
    a[::7], a[1::7], a[2::7], a[3::7] = tiny / 3, -tiny / 5, -0.0, 0.0
    a[4::11], a[5::13], a[6::17], a[8::19] = np.nan, -np.inf, tiny, -tiny
    expected = a.copy()
    np.copyto(expected, 0, where=np.abs(expected) < tiny)
    p = mv.nn.Parameter(np.zeros_like(a))
    flushed = a.copy()
    optim.flush_subnormals(flushed)
    assert np.array_equal(np.isnan(flushed), np.isnan(expected))
    ok = ~np.isnan(expected)
    bits = np.uint32 if dtype == np.float32 else np.uint64
    np.testing.assert_array_equal(flushed[ok].view(bits), expected[ok].view(bits))


def test_gaussian_log_prob_gradient_stays_finite_at_a_collapsed_variance():
    """logvar = -100, x - mu = 1e-3 (a collapsed posterior) in float32: finite per-row values, and
    for an upstream gradient of 1e-3 per row (as a mean over 1000 examples gives) finite gradients
    equal to the float64 ones to float32 rounding. (d/dx alone, (x - mu) / var = 2.7e40, exceeds
    float32; the upstream gradient must enter before the last multiplication.)"""
    grads = {}
    for dtype in (np.float64, np.float32):
        x = mv.Tensor(np.full((4, 3), 1e-3, dtype), requires_grad=True)
        mu = mv.Tensor(np.zeros((4, 3), dtype), requires_grad=True)
        logvar = mv.Tensor(np.full((4, 3), -100.0, dtype), requires_grad=True)
        out = mv.functional.gaussian_log_prob(x, mu, logvar)
        assert np.all(np.isfinite(out.data))
        out.backward(np.full(4, 1e-3, dtype))
        grads[dtype] = [t.grad for t in (x, mu, logvar)]
    for g32, g64 in zip(grads[np.float32], grads[np.float64]):
        assert np.all(np.isfinite(g32))
        np.testing.assert_allclose(g32, g64, rtol=1e-5)
