"""Matrix products: matmul, linear (x @ W + b) fused into one node, and linear + ReLU in one node."""
from ..backend import as_rows, get_array_module
from ..function import Function


def _check_inner(name, a_shape, b_shape):
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise ValueError(f"{name}: needs arrays of at least 2 dimensions, got shapes "
                         f"{tuple(a_shape)} and {tuple(b_shape)} (use reshape for vectors)")
    if a_shape[-1] != b_shape[-2]:
        raise ValueError(f"{name}: shapes {tuple(a_shape)} and {tuple(b_shape)} do not match "
                         f"({a_shape[-1]} != {b_shape[-2]})")


class Matmul(Function):
    """matmul(a, b) = a @ b over the last two axes (leading axes broadcast).

    d/da = g @ b^T, d/db = a^T @ g (from d(a b) = da b + a db); the engine sums any broadcast
    batch axes.
    """

    @staticmethod
    def forward(ctx, a, b):
        _check_inner("matmul", a.shape, b.shape)
        ctx.save(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        need_a, need_b = ctx.needs_input_grad
        ga = g @ b.swapaxes(-1, -2) if need_a else None
        gb = a.swapaxes(-1, -2) @ g if need_b else None
        return ga, gb


def _linear_forward(ctx, name, x, W, b):
    """x @ W + b into a fresh array (shapes checked, x and W saved for the backward pass)."""
    if x.ndim == 0:  # x of shape (in,) is one row; a 0-d x has no inputs axis at all
        raise ValueError(f"{name}: x must have shape (..., in), with at least one axis, got shape ()")
    if W.ndim != 2:
        raise ValueError(f"{name}: the weight must be 2-D (in, out), got shape {W.shape}")
    if x.shape[-1] != W.shape[0]:  # the shapes as given: a row x (in,) is not named (1, in)
        raise ValueError(f"{name}: shapes {x.shape} and {W.shape} do not match ({x.shape[-1]} != {W.shape[0]})")
    if b is not None and b.shape != (W.shape[1],):
        raise ValueError(f"{name}: the bias must have shape ({W.shape[1]},), got {b.shape}")
    ctx.save(x, W)
    out = x @ W
    if b is not None:
        out += b  # out is a fresh array, so adding in place is safe and saves a temporary
    return out


def _linear_backward(ctx, g, x, W):
    """(d/dx, d/dW[, d/db]) of x @ W + b for the upstream gradient g of its output."""
    needs = ctx.needs_input_grad
    gx = g @ W.T if needs[0] else None
    g2 = as_rows(g)
    gW = as_rows(x).T @ g2 if needs[1] else None
    if len(needs) == 2:
        return gx, gW
    return gx, gW, (g2.sum(axis=0) if needs[2] else None)


class Linear(Function):
    """linear(x, W, b) = x @ W + b, with x of shape (..., in), W (in, out), b (out,).

    d/dx = g @ W^T, d/dW = x^T @ g (leading axes of x flattened into rows), d/db = sum of g over
    rows. One node instead of two saves a temporary and a graph step per layer.
    """

    @staticmethod
    def forward(ctx, x, W, b=None):
        return _linear_forward(ctx, "linear", x, W, b)

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved
        return _linear_backward(ctx, g, x, W)


class LinearRelu(Function):
    """linear_relu(x, W, b) = max(x @ W + b, 0): a dense layer and its ReLU in one node.

    With a = x @ W + b, the gradient reaching a is g * [a > 0] (0 at the kink a = 0, as ``relu``);
    from there the rules of ``linear``: d/dx = g_a @ W^T, d/dW = x^T @ g_a, d/db = sum of g_a over
    rows. The ReLU is applied in place to the product, so the layer allocates one array instead of
    two and the graph has one node instead of two (``MLP`` uses it for every ReLU layer).
    """

    @staticmethod
    def forward(ctx, x, W, b=None):
        out = _linear_forward(ctx, "linear_relu", x, W, b)
        xp = get_array_module(out)
        xp.maximum(out, 0, out=out)
        ctx.active = out > 0
        return out

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved
        return _linear_backward(ctx, g * ctx.active, x, W)


matmul = Matmul.apply


def linear(x, W, b=None):
    """x @ W + b as one op (see ``Linear``); ``b`` may be None."""
    return Linear.apply(x, W) if b is None else Linear.apply(x, W, b)


def linear_relu(x, W, b=None):
    """max(x @ W + b, 0) as one op (see ``LinearRelu``); ``b`` may be None."""
    return LinearRelu.apply(x, W) if b is None else LinearRelu.apply(x, W, b)
