"""Tensor's operators and methods that are ops: ``x + y``, ``x @ W``, ``x[i]``, ``x.sum()``...

They are defined here and installed on ``Tensor`` by ``install`` (which ``minivae.ops`` calls when
it is imported) rather than written in ``minivae.autograd``, because the engine comes first: the
ops are built on Tensor, so Tensor cannot import them without an import cycle. ``import minivae``
(or any of its modules) imports ``minivae.ops``, so every Tensor has these methods.
"""
from ..autograd import Tensor
from .elementwise import add, div, exp, log, mul, neg, pow, sub
from .linalg import matmul
from .reduce import max, mean, sum
from .shape import getitem, reshape, transpose


def _sum(self, axis=None, keepdims=False):
    """Sum over ``axis`` (all axes by default)."""
    return sum(self, axis=axis, keepdims=keepdims)


def _mean(self, axis=None, keepdims=False):
    """Mean over ``axis`` (all axes by default)."""
    return mean(self, axis=axis, keepdims=keepdims)


def _max(self, axis=None, keepdims=False):
    """Maximum over ``axis``; the gradient goes to the maximal elements, split evenly on ties."""
    return max(self, axis=axis, keepdims=keepdims)


def _reshape(self, *shape):
    """Return a tensor with the same data in another shape."""
    return reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)


def _transpose(self, *axes):
    """Permute the axes (reverse them when none are given, or None, as NumPy's method)."""
    if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
        return transpose(self, axes[0])
    return transpose(self, axes or None)


def _exp(self):
    """Elementwise exponential."""
    return exp(self)


def _log(self):
    """Elementwise natural logarithm."""
    return log(self)


#: Tensor attribute name -> the function installed under it.
METHODS = {
    "__add__": lambda self, other: add(self, other),
    "__radd__": lambda self, other: add(other, self),
    "__sub__": lambda self, other: sub(self, other),
    "__rsub__": lambda self, other: sub(other, self),
    "__mul__": lambda self, other: mul(self, other),
    "__rmul__": lambda self, other: mul(other, self),
    "__truediv__": lambda self, other: div(self, other),
    "__rtruediv__": lambda self, other: div(other, self),
    "__pow__": lambda self, exponent: pow(self, exponent),
    "__matmul__": lambda self, other: matmul(self, other),
    "__rmatmul__": lambda self, other: matmul(other, self),
    "__neg__": lambda self: neg(self),
    "__getitem__": lambda self, index: getitem(self, index),
    "sum": _sum,
    "mean": _mean,
    "max": _max,
    "reshape": _reshape,
    "transpose": _transpose,
    "T": property(lambda self: transpose(self), doc="The tensor with its axes reversed."),
    "exp": _exp,
    "log": _log,
}


def install():
    """Set every entry of ``METHODS`` as an attribute of ``Tensor``."""
    for name, method in METHODS.items():
        setattr(Tensor, name, method)
