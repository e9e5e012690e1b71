"""Reductions: sum, mean, max, logsumexp, and the softmax family along an axis."""
from ..backend import get_array_module
from ..checks import check_bool
from ..function import Function
from .axes import normalize_axes, normalize_axis


def _expand(g, axes, keepdims):
    """Re-insert the reduced axes as size 1 so ``g`` broadcasts against the input."""
    if keepdims or not axes:
        return g
    shape = list(g.shape)
    for a in axes:
        shape.insert(a, 1)
    return g.reshape(shape)


class Sum(Function):
    """sum(x, axis) = sum of x over the axes.

    d/dx_i = 1 for every summed element: g is broadcast back over the reduced axes.
    """

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes = normalize_axes("sum", axis, x.ndim)
        ctx.shape, ctx.keepdims = x.shape, keepdims
        return x.sum(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        return get_array_module(g).broadcast_to(_expand(g, ctx.axes, ctx.keepdims), ctx.shape)


class Mean(Function):
    """mean(x, axis) = sum(x, axis) / n, with n the number of elements reduced.

    d/dx_i = 1 / n.
    """

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes = normalize_axes("mean", axis, x.ndim)
        ctx.shape, ctx.keepdims = x.shape, keepdims
        n = 1
        for a in ctx.axes:
            n *= x.shape[a]
        ctx.n = n
        return x.mean(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        return get_array_module(g).broadcast_to(_expand(g / ctx.n, ctx.axes, ctx.keepdims), ctx.shape)


class Max(Function):
    """max(x, axis) = the largest element along the axes.

    d/dx_i = 1 / m for the m elements equal to the maximum (ties share the gradient evenly),
    0 elsewhere. Reducing an axis of size 0 is an error (an empty slice has no maximum), even
    when the result has no elements either, as in NumPy.
    """

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        axes = normalize_axes("max", axis, x.ndim)
        try:
            out = x.max(axis=axes, keepdims=True)
        except ValueError:  # NumPy's "zero-size array to reduction operation maximum ..."
            empty = [a for a in axes if x.shape[a] == 0]
            raise ValueError(f"max: an empty slice has no maximum (axis {empty[0]} of shape "
                             f"{x.shape} has size 0)") from None
        mask = x == out
        ctx.save(mask / mask.sum(axis=axes, keepdims=True, dtype=x.dtype))
        ctx.axes, ctx.keepdims = axes, keepdims
        return out if keepdims else out.reshape([n for i, n in enumerate(x.shape) if i not in axes])

    @staticmethod
    def backward(ctx, g):
        return _expand(g, ctx.axes, ctx.keepdims) * ctx.saved[0]


def _logsumexp_parts(xp, x, axes):
    """(m, log(sum(exp(x - m)))) over ``axes`` with keepdims: the log-sum-exp is their sum, and
    with m = max(x) no exp overflows. Kept apart for log_softmax, which subtracts them one at a
    time (see ``LogSoftmax``).

    Over an empty axis the sum is empty: log(0) = -inf, as in scipy and torch (max has no value
    there to shift by, so m = 0)."""
    shape = [1 if i in axes else n for i, n in enumerate(x.shape)]
    if any(x.shape[a] == 0 for a in axes):
        return xp.zeros(shape, dtype=x.dtype), xp.full(shape, -xp.inf, dtype=x.dtype)
    m = x.max(axis=axes, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)  # an all -inf slice must give -inf, not NaN
    return m, xp.log(xp.exp(x - m).sum(axis=axes, keepdims=True))


class LogSumExp(Function):
    """logsumexp(x, axis) = log(sum_i exp(x_i)).

    d/dx_i = exp(x_i - logsumexp(x)) = softmax(x)_i.
    Stable form: m + log(sum(exp(x - m))) with m = max(x), so no term overflows. The gradient is
    exp((x - m) - log(sum(...))), the two parts subtracted one at a time as in ``LogSoftmax``,
    never exp(x - out): out rounds m + log(sum(...)) to x's precision, which loses the log term
    when m is large (float32 at m = 1e8: two equal entries get 1 each, not 1/2). Over an empty
    axis: -inf (the log of an empty sum), with an empty gradient.
    On CuPy arrays reduced over the leading axis alone (the IWAE bound over its k samples), the
    dispatch table's kernels run instead: one launch per direction.
    """

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        xp = get_array_module(x)
        axes = normalize_axes("logsumexp", axis, x.ndim)
        m, log_sum = _logsumexp_parts(xp, x, axes)
        out = m + log_sum
        ctx.save(x, m, log_sum)
        ctx.axes, ctx.keepdims = axes, keepdims
        return out if keepdims else out.reshape([n for i, n in enumerate(x.shape) if i not in axes])

    @staticmethod
    def backward(ctx, g):
        x, m, log_sum = ctx.saved
        xp = get_array_module(g)
        d = xp.subtract(x, m, out=xp.empty_like(x))  # exp((x - m) - log_sum), in one array
        d -= log_sum
        xp.exp(d, out=d)
        d *= _expand(g, ctx.axes, ctx.keepdims)
        return d


class Softmax(Function):
    """softmax(x)_i = exp(x_i) / sum_j exp(x_j) along ``axis``.

    d/dx: the Jacobian is diag(s) - s s^T, so the input gradient is s * (g - sum(g * s)).
    Stable form: exp(x - max(x)) before normalizing. Over an empty axis: an empty result.
    """

    @staticmethod
    def forward(ctx, x, axis=-1):
        xp = get_array_module(x)
        axis = normalize_axis("softmax", axis, x.ndim)
        m = x.max(axis=axis, keepdims=True) if x.shape[axis] else 0  # an empty axis has no max
        e = xp.exp(x - m)
        out = e / e.sum(axis=axis, keepdims=True)
        ctx.save(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        s = ctx.saved[0]
        return s * (g - (g * s).sum(axis=ctx.axis, keepdims=True))


class LogSoftmax(Function):
    """log_softmax(x)_i = x_i - logsumexp(x) along ``axis``.

    d/dx: the input gradient is g - softmax(x) * sum(g).
    Stable form: (x - m) - log(sum(exp(x - m))) with m = max(x). Never log(softmax(x)), which
    underflows to -inf; nor x - (m + log(sum(...))): rounding m + log(sum(...)) to x's precision
    loses the digits of the small log term when m is large (float32 near -90: errors of 2e-6,
    not 1e-7).
    On CuPy arrays over the last axis (a classifier's classes), the dispatch table's kernels run
    instead: one launch per direction.
    """

    @staticmethod
    def forward(ctx, x, axis=-1):
        xp = get_array_module(x)
        axis = normalize_axis("log_softmax", axis, x.ndim)
        m, log_sum = _logsumexp_parts(xp, x, (axis,))
        out = (x - m) - log_sum
        ctx.save(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        out = ctx.saved[0]
        return g - get_array_module(g).exp(out) * g.sum(axis=ctx.axis, keepdims=True)


def sum(x, axis=None, keepdims=False):  # noqa: A001 - the public name matches NumPy's
    """Sum over ``axis`` (None: all axes; an int or a tuple of ints)."""
    return Sum.apply(x, axis=axis, keepdims=check_bool(keepdims, "sum: keepdims"))


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (None: all axes; an int or a tuple of ints)."""
    return Mean.apply(x, axis=axis, keepdims=check_bool(keepdims, "mean: keepdims"))


def max(x, axis=None, keepdims=False):  # noqa: A001 - the public name matches NumPy's
    """Maximum over ``axis``; the gradient is shared evenly among tied maxima."""
    return Max.apply(x, axis=axis, keepdims=check_bool(keepdims, "max: keepdims"))


def logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x))) over ``axis``, computed without overflow."""
    return LogSumExp.apply(x, axis=axis, keepdims=check_bool(keepdims, "logsumexp: keepdims"))


def softmax(x, axis=-1):
    """Softmax along one axis."""
    return Softmax.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    """Log-softmax along one axis, computed without underflow."""
    return LogSoftmax.apply(x, axis=axis)
