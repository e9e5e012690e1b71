"""Finite-difference gradient checks: every hand-written backward is compared with numbers.

``gradcheck(fn, *inputs)`` contracts the output with a random upstream gradient u (never all
ones: a sum hides transposed or permuted gradients) and compares, for every input that requires
a gradient,

* each element of the analytic gradient with the central difference
  (f(x + eps e_i) - f(x - eps e_i)) / (2 eps) when the input is small, and
* the directional derivative <grad, v> with (f(x + eps v) - f(x - eps v)) / (2 eps) along random
  directions v whose components are all of size 0.5 to 1.5 (none vanishes, so no element
  escapes the check) when it is large,

where f(x) = <u, fn(x)>. Differences are taken in float64: in float32 the truncation and the
rounding errors of a central difference are both around 1e-3 and nothing can be concluded.
``check_float32`` then compares an op's float32 backward with its own float64 backward.
"""
import numpy as np

from .autograd import Tensor, no_grad
from .backend import get_array_module

#: Step of the central difference in float64: truncation error ~eps^2, rounding ~1e-16/eps.
EPS = 1e-6
#: Absolute and relative tolerances of the float64 comparison (those of torch.autograd.gradcheck).
ATOL = 1e-5
RTOL = 1e-3
#: Inputs with at most this many elements are checked element by element.
FULL_CHECK_MAX = 256
#: Random directions checked for larger inputs.
N_DIRECTIONS = 8
#: Float32 backward against float64 backward: float32 epsilon is 1.2e-7, and an op's few
#: rounding steps plus a reduction over a row leave well under 1e-4 relative error.
FLOAT32_RTOL = 1e-4
FLOAT32_ATOL = 1e-5


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the finite-difference one (the message says where)."""


def _contract(fn, inputs, upstream):
    """f(inputs) = <upstream, fn(inputs)> as a float, without recording a graph."""
    with no_grad():
        out = fn(*inputs)
    return float((out.data * upstream).sum())


def _analytic(fn, inputs, upstream):
    for t in inputs:
        if isinstance(t, Tensor):
            t.grad = None
    out = fn(*inputs)
    if not isinstance(out, Tensor) or not out.requires_grad:
        raise GradcheckError("fn must return a Tensor that depends on an input with requires_grad=True")
    out.backward(out.data.dtype.type(1) * upstream)
    grads = [t.grad if isinstance(t, Tensor) and t.requires_grad else None for t in inputs]
    return out, grads


def _fail(i, where, analytic, numeric, atol, rtol):
    raise GradcheckError(f"gradient of input {i} disagrees at {where}: analytic {analytic:.10g}, "
                         f"numeric {numeric:.10g} (|diff| {abs(analytic - numeric):.3g} > "
                         f"atol {atol:g} + rtol {rtol:g} * |numeric|)")


def gradcheck(fn, *inputs, eps=EPS, atol=ATOL, rtol=RTOL, full_check_max=FULL_CHECK_MAX,
              n_directions=N_DIRECTIONS, seed=0):
    """Check ``fn``'s analytic gradients against central differences; return True or raise GradcheckError.

    ``fn`` maps the inputs to one Tensor. Every Tensor input with ``requires_grad`` is checked and
    must be float64 (the check works in float64 only); other arguments are passed unchanged.
    The error names the input, the element or direction, the analytic and the numeric value.
    """
    rng = np.random.default_rng(seed)
    for i, t in enumerate(inputs):
        if isinstance(t, Tensor) and t.requires_grad and t.dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {t.dtype}; finite differences need float64 "
                            f"(use check_float32 for float32 backward passes)")
    with no_grad():
        probe = fn(*inputs)
    xp = get_array_module(probe.data)
    upstream = xp.asarray(rng.standard_normal(probe.shape))
    _, grads = _analytic(fn, inputs, upstream)

    for i, t in enumerate(inputs):
        if not (isinstance(t, Tensor) and t.requires_grad):
            continue
        analytic = np.asarray(grads[i].get() if hasattr(grads[i], "get") else grads[i]) \
            if grads[i] is not None else np.zeros(t.shape)
        original = t.data.copy()

        def numeric_along(direction):
            t.data = original + eps * direction
            plus = _contract(fn, inputs, upstream)
            t.data = original - eps * direction
            minus = _contract(fn, inputs, upstream)
            t.data = original
            return (plus - minus) / (2 * eps)

        if t.size <= full_check_max:
            for idx in np.ndindex(*t.shape):
                e = xp.zeros(t.shape)
                e[idx] = 1.0
                num, ana = numeric_along(e), float(analytic[idx])
                if abs(ana - num) > atol + rtol * abs(num):
                    _fail(i, f"element {idx}", ana, num, atol, rtol)
        else:
            for k in range(n_directions):
                v = rng.uniform(0.5, 1.5, t.shape) * rng.choice([-1.0, 1.0], t.shape)
                num = numeric_along(xp.asarray(v))
                ana = float((analytic * v).sum())
                if abs(ana - num) > atol + rtol * abs(num):
                    _fail(i, f"random direction {k} of {n_directions}", ana, num, atol, rtol)
    return True


def check_float32(fn, *inputs, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL, seed=0):
    """Compare ``fn``'s float32 forward and backward with its float64 ones; return True or raise.

    ``inputs`` are float64 Tensors; float32 copies are made of each. Tolerances are relative to
    the size of the float64 result, since float32 rounding scales with the values.
    """
    rng = np.random.default_rng(seed)
    as32 = [Tensor(t.data.astype(np.float32), requires_grad=t.requires_grad) if isinstance(t, Tensor)
            else t for t in inputs]
    with no_grad():
        probe = fn(*inputs)
    xp = get_array_module(probe.data)
    upstream = xp.asarray(rng.standard_normal(probe.shape))
    out64, grads64 = _analytic(fn, inputs, upstream)
    out32, grads32 = _analytic(fn, as32, upstream.astype(np.float32))
    if out32.dtype != np.float32:
        raise GradcheckError(f"float32 inputs gave a {out32.dtype} output: a silent upcast")
    pairs = [("output", out64.data, out32.data)] + [
        (f"gradient of input {i}", g64, g32) for i, (g64, g32) in enumerate(zip(grads64, grads32))
        if g64 is not None]
    for name, ref, got in pairs:
        if got.dtype != np.float32:
            raise GradcheckError(f"{name} is {got.dtype} for float32 inputs: a silent upcast")
        scale = float(abs(ref).max()) if ref.size else 0.0
        err = abs(got.astype(np.float64) - ref)
        worst = float(err.max()) if err.size else 0.0
        if worst > atol + rtol * scale:
            idx = np.unravel_index(int(err.argmax()), err.shape)
            raise GradcheckError(f"float32 {name} differs from float64 at {idx}: {float(got[idx]):.8g} vs "
                                 f"{float(ref[idx]):.8g} (max error {worst:.3g} > {atol:g} + {rtol:g} * {scale:.3g})")
    return True
