"""Elementwise ops. Binary ops broadcast like NumPy; the engine sums gradients back to each shape.

Each class docstring states the forward formula, the derivative and, where it matters, the
numerically stable form that is computed. ``g`` is the gradient arriving from the output.
"""
import numbers

from ..autograd import Tensor, tensor
from ..backend import get_array_module
from ..checks import check_real, plain_array
from ..function import Function, compute_dtype


class Add(Function):
    """add(a, b) = a + b.

    d/da = 1, d/db = 1: both inputs receive g unchanged.
    """

    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, g):
        return g, g


class Sub(Function):
    """sub(a, b) = a - b.

    d/da = 1, d/db = -1.
    """

    @staticmethod
    def forward(ctx, a, b):
        return a - b

    @staticmethod
    def backward(ctx, g):
        return g, (-g if ctx.needs_input_grad[1] else None)


class Mul(Function):
    """mul(a, b) = a * b.

    d/da = b, d/db = a (product rule).
    """

    @staticmethod
    def forward(ctx, a, b):
        ctx.save(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        need_a, need_b = ctx.needs_input_grad
        return (g * b if need_a else None), (g * a if need_b else None)


class Div(Function):
    """div(a, b) = a / b.

    d/da = 1 / b, d/db = -a / b^2 = -(a / b) / b.
    """

    @staticmethod
    def forward(ctx, a, b):
        out = a / b
        ctx.save(b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        b, out = ctx.saved
        ga = g / b
        return ga, (-ga * out if ctx.needs_input_grad[1] else None)


class Neg(Function):
    """neg(x) = -x.

    d/dx = -1.
    """

    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, g):
        return -g


class Pow(Function):
    """pow(x, p) = x^p for a constant scalar exponent p.

    d/dx = p * x^(p-1).
    """

    @staticmethod
    def forward(ctx, x, exponent):
        ctx.save(x)
        ctx.exponent = exponent
        return x ** exponent

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        p = ctx.exponent
        if p == 0:  # x^0 = 1 is constant; p * x^(p-1) would give 0 * inf = NaN at x = 0
            return g * 0
        return g * (p * x ** (p - 1))


class Exp(Function):
    """exp(x) = e^x.

    d/dx = e^x, so backward reuses the saved output instead of the input.
    """

    @staticmethod
    def forward(ctx, x):
        out = get_array_module(x).exp(x)
        ctx.save(out)
        return out

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved[0]


class Log(Function):
    """log(x), the natural logarithm.

    d/dx = 1 / x.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return get_array_module(x).log(x)

    @staticmethod
    def backward(ctx, g):
        return g / ctx.saved[0]


class Sqrt(Function):
    """sqrt(x) = x^(1/2).

    d/dx = 1 / (2 sqrt(x)), computed from the saved output.
    """

    @staticmethod
    def forward(ctx, x):
        out = get_array_module(x).sqrt(x)
        ctx.save(out)
        return out

    @staticmethod
    def backward(ctx, g):
        return g / (2 * ctx.saved[0])


class Abs(Function):
    """abs(x) = |x|.

    d/dx = sign(x) (taken as 0 at the kink x = 0).
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return get_array_module(x).abs(x)

    @staticmethod
    def backward(ctx, g):
        return g * get_array_module(g).sign(ctx.saved[0])


class Tanh(Function):
    """tanh(x) = (e^x - e^-x) / (e^x + e^-x).

    d/dx = 1 - tanh(x)^2, computed from the saved output.
    """

    @staticmethod
    def forward(ctx, x):
        out = get_array_module(x).tanh(x)
        ctx.save(out)
        return out

    @staticmethod
    def backward(ctx, g):
        out = ctx.saved[0]
        return g * (1 - out * out)


def _sigmoid(xp, x):
    """1 / (1 + e^-x) without overflow or cancellation: with e = e^-|x|, in (0, 1] for every x,
    1 / (1 + e) where x >= 0 and e / (1 + e) where x < 0. (0.5 * (1 + tanh(x / 2)) cancels for
    negative x: in float32 it is 0 at x = -20, where sigmoid is 2.1e-9.)"""
    e = xp.exp(-xp.abs(x))
    d = 1 + e
    return xp.where(x >= 0, 1 / d, e / d)


def _softplus(xp, x):
    """log(1 + e^x) as max(x, 0) + log1p(e^-|x|): exp never overflows and small terms keep precision."""
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


class Sigmoid(Function):
    """sigmoid(x) = 1 / (1 + e^-x).

    d/dx = sigmoid(x) * (1 - sigmoid(x)), computed from the saved output.
    Stable form: with e = e^-|x|, 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0: exp never
    overflows, and small values of the negative tail keep their relative precision (no 1 - ...).
    """

    @staticmethod
    def forward(ctx, x):
        out = _sigmoid(get_array_module(x), x)
        ctx.save(out)
        return out

    @staticmethod
    def backward(ctx, g):
        out = ctx.saved[0]
        return g * (out * (1 - out))


class Relu(Function):
    """relu(x) = max(x, 0).

    d/dx = 1 where x > 0, else 0 (0 at the kink x = 0).
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save(x > 0)
        return get_array_module(x).maximum(x, 0)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved[0]


class LeakyRelu(Function):
    """leaky_relu(x) = x where x > 0, else slope * x.

    d/dx = 1 where x > 0, else slope.
    """

    @staticmethod
    def forward(ctx, x, slope=0.01):
        xp = get_array_module(x)
        positive = x > 0
        ctx.save(positive)
        ctx.slope = slope
        return xp.where(positive, x, x * slope)

    @staticmethod
    def backward(ctx, g):
        return get_array_module(g).where(ctx.saved[0], g, g * ctx.slope)


class Elu(Function):
    """elu(x) = x where x > 0, else alpha * (e^x - 1).

    d/dx = 1 where x > 0, else alpha * e^x (from the saved input, as PyTorch's elu).
    Stable form: expm1(x) keeps precision for x near 0; exp is only taken of min(x, 0). The
    derivative is not elu(x) + alpha: that sum cancels, and is 0 in float32 below x = -17.4 (in
    float64 below -37.4), where alpha * e^x is still 3e-8 alpha (6e-17 alpha).
    """

    @staticmethod
    def forward(ctx, x, alpha=1.0):
        xp = get_array_module(x)
        ctx.save(x)
        ctx.alpha = alpha
        return xp.where(x > 0, x, alpha * xp.expm1(xp.minimum(x, 0)))

    @staticmethod
    def backward(ctx, g):
        xp = get_array_module(g)
        (x,) = ctx.saved
        return xp.where(x > 0, g, g * (ctx.alpha * xp.exp(xp.minimum(x, 0))))


class Softplus(Function):
    """softplus(x) = log(1 + e^x).

    d/dx = sigmoid(x).
    Stable form: max(x, 0) + log1p(e^-|x|), which never overflows and keeps precision for very
    negative x.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return _softplus(get_array_module(x), x)

    @staticmethod
    def backward(ctx, g):
        return g * _sigmoid(get_array_module(g), ctx.saved[0])


class LogSigmoid(Function):
    """log_sigmoid(x) = log(1 / (1 + e^-x)) = -softplus(-x).

    d/dx = 1 - sigmoid(x) = sigmoid(-x).
    Stable form: min(x, 0) - log1p(e^-|x|); the naive log(sigmoid(x)) gives -inf below about -90
    in float32.
    """

    @staticmethod
    def forward(ctx, x):
        xp = get_array_module(x)
        ctx.save(x)
        return xp.minimum(x, 0) - xp.log1p(xp.exp(-xp.abs(x)))

    @staticmethod
    def backward(ctx, g):
        return g * _sigmoid(get_array_module(g), -ctx.saved[0])


class Clip(Function):
    """clip(x, lo, hi) = min(max(x, lo), hi).

    d/dx = 1 where lo <= x <= hi, else 0.
    """

    @staticmethod
    def forward(ctx, x, lo=None, hi=None):
        xp = get_array_module(x)
        # not &=: an array bound may broadcast x to a larger shape, which x's mask cannot hold
        inside = xp.ones(x.shape, dtype=bool)
        if lo is not None:
            inside = inside & (x >= lo)
        if hi is not None:
            inside = inside & (x <= hi)
        ctx.save(inside)
        return xp.clip(x, lo, hi)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved[0]


class Where(Function):
    """where(cond, a, b) = a where cond is true, else b (cond is a constant boolean array).

    d/da = 1 where cond, else 0; d/db = 0 where cond, else 1.
    """

    @staticmethod
    def forward(ctx, a, b, cond):
        xp = get_array_module(a, b)
        # A condition given on the host (a list, a NumPy mask) goes to the device of a and b:
        # CuPy's where refuses a NumPy array, which NumPy's takes.
        cond = xp.asarray(cond)
        ctx.save(cond)
        try:
            return xp.where(cond, a, b)
        except ValueError:
            raise ValueError(f"where: cannot broadcast the condition {xp.shape(cond)} with "
                             f"{a.shape} and {b.shape}") from None

    @staticmethod
    def backward(ctx, g):
        xp = get_array_module(g)
        cond = ctx.saved[0]
        need_a, need_b = ctx.needs_input_grad
        return (xp.where(cond, g, 0) if need_a else None), (xp.where(cond, 0, g) if need_b else None)


add = Add.apply
sub = Sub.apply
mul = Mul.apply
div = Div.apply
neg = Neg.apply
exp = Exp.apply
log = Log.apply
sqrt = Sqrt.apply
abs = Abs.apply  # noqa: A001 - the public name matches NumPy's
tanh = Tanh.apply
sigmoid = Sigmoid.apply
relu = Relu.apply
softplus = Softplus.apply
log_sigmoid = LogSigmoid.apply


def pow(x, exponent):  # noqa: A001 - the public name matches NumPy's
    """x ** exponent for a constant real number ``exponent``, a Python or NumPy scalar but not a
    bool (see ``Pow``)."""
    if not isinstance(exponent, numbers.Real):
        raise TypeError(f"pow: the exponent must be a real Python or NumPy number, got "
                        f"{type(exponent).__name__}; for a tensor exponent write exp(b * log(x))")
    return Pow.apply(x, exponent=_python_number(exponent, "pow: the exponent"))


def _python_number(value, name):
    """``value`` as a Python int or float when it is a number: a Python or NumPy scalar, or a 0-d
    array (NumPy's own stand-in for a scalar); None when it is anything else (an array with axes,
    a Tensor, ...), for the caller to refuse or take as it is. A bool (Python's, NumPy's or a 0-d
    bool array) is refused by ``check_real``, a TypeError naming ``name``: to Python it is the
    int 1 or 0, so ``x ** True`` would be x and a slope True the identity, without a word.

    Why: under NumPy's promotion rules a NumPy float64 or int64 scalar, or a 0-d float64 array,
    makes a float32 result float64, while a Python number adopts the array's dtype.
    """
    if getattr(value, "ndim", None) == 0 and not isinstance(value, Tensor):
        value = value.item()
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return check_real(value, name) if isinstance(value, numbers.Real) else None


def _number_parameter(value, op, name):
    """The constant parameter ``name`` of ``op`` as a Python number (see ``_python_number``). A
    Tensor is refused (no gradient reaches the parameter), and so is an array with axes (the op
    takes one value, not one per element)."""
    number = _python_number(value, f"{op}: {name}")
    if number is None:
        shape = f" of shape {value.shape}" if hasattr(value, "shape") else ""
        raise TypeError(f"{op}: {name} must be a number, got {type(value).__name__}{shape}")
    return number


def leaky_relu(x, slope=0.01):
    """Leaky ReLU with negative-side slope ``slope``, a number but not a bool (see ``LeakyRelu``)."""
    return LeakyRelu.apply(x, slope=_number_parameter(slope, "leaky_relu", "slope"))


def elu(x, alpha=1.0):
    """ELU with saturation ``-alpha``, a number but not a bool (see ``Elu``)."""
    return Elu.apply(x, alpha=_number_parameter(alpha, "elu", "alpha"))


def clip(x, lo=None, hi=None):
    """Clamp ``x`` into [lo, hi] (see ``Clip``).

    Each bound is None, a number (a 0-d array counts as one; a bool does not), or an array that
    broadcasts with ``x`` (per-column bounds, say), on ``x``'s device and of the dtype clip
    computes in: ``x``'s, or the default dtype for an integer ``x``. Bounds are constants (no
    gradient reaches them); for a bound that needs one, write ``where(x < lo, lo, x)``.
    """
    x = x if isinstance(x, Tensor) else tensor(x)  # as Clip.apply would make it
    return Clip.apply(x, lo=_clip_bound(x, lo, "lo"), hi=_clip_bound(x, hi, "hi"))


def _clip_bound(x, bound, name):
    """``bound`` checked for ``clip(x, ...)``: numbers as Python numbers (they keep a float32
    result float32, see ``_python_number``), arrays as they are once they match the dtype clip
    computes in: ``x``'s, or the default dtype for an integer or boolean ``x`` (as every op on
    one). An array of another dtype would change the result's dtype, which the gradient could
    not follow (an int64 bound would make clip of an int64 tensor float64)."""
    if isinstance(bound, Tensor):
        raise TypeError(f"clip: {name} is a Tensor; bounds are constants, so pass a number or an "
                        f"array (or use where(...) for a bound that needs a gradient)")
    if bound is None:
        return None
    # As an operand's: the bound is no operand, so Function.apply never sees it, and a matrix
    # bound made clip's result a matrix (its ``*`` a matrix product), a masked one a masked array
    bound = plain_array(bound, f"clip: {name}")
    number = _python_number(bound, f"clip: {name}")
    if number is not None:
        return number
    array_type = type(x.data)
    if not isinstance(bound, array_type):
        raise TypeError(f"clip: {name} must be None, a number or an array on x's device "
                        f"({array_type.__module__}.{array_type.__name__}), got {type(bound).__name__}")
    computed = compute_dtype(x.dtype)
    if bound.dtype != computed:
        tensor_dtype = x.dtype if computed == x.dtype else f"{x.dtype}, computed in {computed}"
        raise TypeError(f"clip: {name} has dtype {bound.dtype} and the tensor {tensor_dtype}; "
                        "convert the bound with astype first (casts are never silent)")
    return bound


def where(cond, a, b):
    """Pick ``a`` where ``cond`` is true and ``b`` elsewhere; ``cond`` carries no gradient (see ``Where``).

    ``cond`` must be boolean (a comparison, a bool array, list or Tensor), as in PyTorch: a
    float condition read by its truth would take 0.5, or -1e-9, as true without a word."""
    cond = cond.data if isinstance(cond, Tensor) else cond
    cond = get_array_module(cond).asarray(plain_array(cond, "where: cond"))  # asarray drops a mask
    if cond.dtype != bool:
        raise TypeError(f"where: the condition must be boolean (a comparison such as x.data > 0), "
                        f"got dtype {cond.dtype}; for a 0/1 mask write mask != 0")
    return Where.apply(a, b, cond=cond)
