"""Weight initializers, in place, reproducible under a seed.

Randomness: every initializer takes ``rng``, which may be

* a ``numpy.random.Generator`` (used as is, and advanced),
* an int (a fresh ``numpy.random.default_rng(rng)``), or
* None: this module's default generator, seeded 0 at import and reseeded by ``manual_seed(seed)``.

So ``nn.init.manual_seed(0); model = VAE(...)`` builds the same weights in every process, and
a model that threads one Generator through its layers (``Linear(..., rng=rng)``) does not depend
on what else was initialized before it. Values are drawn in float64 on the CPU and then rounded
to the tensor's dtype and moved to its device: float32 and float64 models built from the same
seed hold the same weights up to rounding, on either device.

Fans follow minivae's layout: a Linear weight is (in, out) (it multiplies as ``x @ W``), so
fan_in = shape[0] and fan_out = shape[1], the transpose of PyTorch's (out, in).
"""
import math

import numpy as np

from ..autograd import Tensor
from ..backend import device_of, to_device
from ..checks import FINITE, NON_NEGATIVE, check_integer, check_ranges, check_real

_default_rng = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed the default generator used when an initializer gets ``rng=None``; ``seed`` is an
    integer of at least 0 (a bool or a string is refused, not read as a seed)."""
    global _default_rng
    _default_rng = np.random.default_rng(check_integer(seed, "seed", minimum=0))


def get_rng(rng=None):
    """Turn ``rng`` (None, an int seed or a Generator) into a ``numpy.random.Generator``."""
    if rng is None:
        return _default_rng
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):  # True is no seed 1
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def _fill(tensor, values):
    """Write ``values`` (float64 NumPy) into ``tensor``'s array in place, in its dtype and device."""
    array = tensor.data if isinstance(tensor, Tensor) else tensor
    if array.dtype.kind != "f":  # the cast below would truncate the values without a word
        raise TypeError(f"initializers fill float tensors, got one of dtype {array.dtype}")
    if isinstance(tensor, Tensor):
        tensor.bump_version()  # a graph that saved the old values must not use them
    host = np.asarray(values, dtype=np.float64).astype(array.dtype)
    # In place: the Parameter object and any view of its array stay valid.
    array[...] = to_device(host, device_of(array))
    return tensor


def calculate_fan_in_and_fan_out(shape):
    """(fan_in, fan_out) of a weight of ``shape`` in minivae's (in, out) layout.

    For more than two dimensions the trailing ones are a receptive field, multiplied into both.
    """
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a weight of at least 2 dimensions, got shape {shape}")
    field = math.prod(shape[2:])
    return shape[0] * field, shape[1] * field


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for an activation (PyTorch's table): linear/identity/sigmoid 1,
    tanh 5/3, relu sqrt(2), leaky_relu sqrt(2 / (1 + slope^2)) (slope ``param``, default 0.01),
    selu 3/4.

    Any other name is refused (ValueError), elu included: as in PyTorch, there is no recommended
    gain for it (its output variance depends on alpha), so pass the gain you mean to the
    initializer yourself.
    """
    if nonlinearity in ("linear", "identity", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        # check_real refuses True (an int, so a slope of 1) and a string such as "0.2".
        slope = 0.01 if param is None else check_real(param, "param (leaky_relu's negative slope)")
        if not math.isfinite(slope):  # an infinite slope would give a gain of 0: all-zero weights
            raise ValueError(f"param (leaky_relu's negative slope) must be finite, got {slope}")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"no recommended gain for nonlinearity {nonlinearity!r}: choose one of linear, "
                     "identity, sigmoid, tanh, relu, leaky_relu, selu, or give the gain yourself")


def uniform_(tensor, a=0.0, b=1.0, rng=None):
    """Fill ``tensor`` in place with draws from U(a, b), a <= b both finite; return it."""
    # NumPy names no bound: "high - low < 0", or an OverflowError for a NaN or infinite one.
    check_ranges(uniform_, {"a": FINITE, "b": FINITE}, a=a, b=b)
    if a > b:
        raise ValueError(f"uniform_: a {a!r} is above b {b!r}: U(a, b) needs a <= b")
    return _fill(tensor, get_rng(rng).uniform(a, b, size=tensor.shape))


def normal_(tensor, mean=0.0, std=1.0, rng=None):
    """Fill ``tensor`` in place with draws from N(mean, std^2), mean finite and std >= 0 finite;
    return it."""
    # NumPy fills NaN for a NaN std and says only "scale < 0" for a negative one.
    check_ranges(normal_, {"mean": FINITE, "std": NON_NEGATIVE}, mean=mean, std=std)
    return _fill(tensor, get_rng(rng).normal(mean, std, size=tensor.shape))


def constant_(tensor, value):
    """Fill ``tensor`` in place with ``value``, a real number; return it."""
    value = check_real(value, "value")  # a bool would fill 0 or 1, a string be parsed or fail in NumPy
    return _fill(tensor, np.full(tensor.shape, value, dtype=np.float64))


def zeros_(tensor):
    """Fill ``tensor`` in place with zeros; return it."""
    return constant_(tensor, 0.0)


def ones_(tensor):
    """Fill ``tensor`` in place with ones; return it."""
    return constant_(tensor, 1.0)


def _is_empty(tensor):
    """Whether ``tensor`` has no elements (a dimension of size 0)."""
    return math.prod(tensor.shape) == 0


def xavier_uniform_(tensor, gain=1.0, rng=None):
    """Glorot & Bengio (2010): U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)), gain >= 0
    and finite; return it (unchanged when it has no elements, as the Kaiming initializers do)."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor.shape)
    check_ranges(xavier_uniform_, {"gain": NON_NEGATIVE}, gain=gain)  # else named as a bound
    if _is_empty(tensor):  # nothing to fill, and shape (0, 0) has fan_in + fan_out = 0
        return tensor
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, rng)


def xavier_normal_(tensor, gain=1.0, rng=None):
    """Glorot & Bengio (2010): N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out)), gain
    >= 0 and finite; return it (unchanged when it has no elements)."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor.shape)
    check_ranges(xavier_normal_, {"gain": NON_NEGATIVE}, gain=gain)  # else named as the std
    if _is_empty(tensor):  # nothing to fill, and its fans may sum to 0
        return tensor
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), rng)


def _kaiming_std(shape, a, mode, nonlinearity):
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    """He et al. (2015): U(-b, b) with b = gain * sqrt(3 / fan), gain from ``nonlinearity``
    (slope ``a`` for leaky_relu); return it.

    With a = sqrt(5) (the default of ``Linear``, as in PyTorch) b = 1 / sqrt(fan_in). A tensor
    without elements (``Linear(0, n)``) is returned unchanged.
    """
    if _is_empty(tensor):  # nothing to fill, and its fan may be 0
        return tensor
    bound = math.sqrt(3.0) * _kaiming_std(tensor.shape, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound, rng)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    """He et al. (2015): N(0, std^2) with std = gain / sqrt(fan); return it (unchanged when it
    has no elements)."""
    if _is_empty(tensor):  # nothing to fill, and its fan may be 0
        return tensor
    return normal_(tensor, 0.0, _kaiming_std(tensor.shape, a, mode, nonlinearity), rng)
