"""Shape ops: reshape, transpose, broadcast_to, getitem, concatenate, stack.

They move elements without changing values, so each backward moves the gradient back; and
integer or boolean tensors keep their dtype through them (``Function.moves_elements``).
"""
import numbers

from ..autograd import Tensor
from ..backend import get_array_module
from ..checks import check_sequence
from ..function import Function
from .axes import _index, normalize_axis


class Reshape(Function):
    """reshape(x, shape): the same elements in another shape.

    d/dx: g reshaped back to the input's shape.
    """

    moves_elements = True

    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape an array of shape {x.shape} "
                             f"({x.size} elements) into {tuple(shape)}") from None

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape)


class Transpose(Function):
    """transpose(x, axes): permute the axes (reverse them when axes is None).

    d/dx: g permuted by the inverse permutation.
    """

    moves_elements = True

    @staticmethod
    def forward(ctx, x, axes=None):
        if axes is None:
            axes = tuple(reversed(range(x.ndim)))
        else:
            axes = tuple(normalize_axis("transpose", a, x.ndim) for a in axes)
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: {axes} is not a permutation of the axes of shape {x.shape}")
        ctx.inverse = tuple(sorted(range(x.ndim), key=axes.__getitem__))
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, g):
        return g.transpose(ctx.inverse)


class BroadcastTo(Function):
    """broadcast_to(x, shape): repeat x along new or size-1 axes, as NumPy broadcasting does.

    d/dx: g summed over the repeated axes, which the engine's one unbroadcasting helper does,
    so backward returns g as it is.
    """

    moves_elements = True

    @staticmethod
    def forward(ctx, x, shape):
        try:
            return get_array_module(x).broadcast_to(x, shape)
        except ValueError:
            raise ValueError(f"broadcast_to: cannot broadcast shape {x.shape} to {tuple(shape)}") from None

    @staticmethod
    def backward(ctx, g):
        return g


def _own_index(index, xp):
    """``index`` with each part that is not a slice, an integer, None or Ellipsis (an array, a
    mask, a list, a nested tuple) made an array of its own.

    Why: the backward scatters into the positions of the index it kept, so a caller's array
    changed before the backward would move the gradient silently; and NumPy reads a nested
    tuple as an integer array, which ``_is_advanced`` must see as one."""
    parts = index if isinstance(index, tuple) else (index,)
    own = tuple(p if p is None or p is Ellipsis or isinstance(p, (slice, numbers.Integral))
                else _index_array(p, xp) for p in parts)
    return own if isinstance(index, tuple) else own[0]


def _index_array(part, xp):
    """``part`` of an index as an array of its own, refused (IndexError) unless it holds integers
    or booleans: NumPy's own error for ``x[1.0]`` names neither the op nor the value. An empty
    list selects nothing, as in NumPy, though ``array([])`` alone would be of floats."""
    array = xp.array(part)
    if array.size == 0 and not hasattr(part, "dtype"):  # NumPy reads [] as no positions, not as floats
        array = array.astype(xp.intp)
    if array.dtype.kind not in "biu":
        got = repr(part) if array.ndim == 0 else f"an array of dtype {array.dtype}"
        raise IndexError(f"getitem: an index must be an integer, a slice, None, Ellipsis, or an "
                         f"integer or boolean array, got {got}")
    return array


def _is_advanced(index):
    """True when ``index`` (as ``_own_index`` makes it) uses integer or boolean arrays, whose
    repeated entries must accumulate."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(hasattr(p, "shape") for p in parts)


class Getitem(Function):
    """getitem(x, index) = x[index] (slices, integers, integer or boolean arrays).

    d/dx: zeros of x's shape with g added at the indexed positions; an element picked k times
    receives the sum of its k gradients (scatter-add, not assignment).
    """

    moves_elements = True

    @staticmethod
    def forward(ctx, x, index):
        index = _own_index(index, get_array_module(x))
        ctx.shape, ctx.index = x.shape, index
        return x[index]

    @staticmethod
    def backward(ctx, g):
        xp = get_array_module(g)
        out = xp.zeros(ctx.shape, dtype=g.dtype)
        if not _is_advanced(ctx.index):
            out[ctx.index] = g
        elif xp.__name__ == "numpy":
            xp.add.at(out, ctx.index, g)
        else:
            import cupyx  # only reached with CuPy arrays, so CuPy is installed

            cupyx.scatter_add(out, ctx.index, g)
        return out


class Concatenate(Function):
    """concatenate(xs, axis): join arrays along an existing axis.

    d/dx_k: the slice of g that x_k occupies.
    """

    moves_elements = True

    @staticmethod
    def forward(ctx, *xs, axis=0):
        if not xs:
            raise ValueError("concatenate: needs at least one array")
        if xs[0].ndim == 0:
            raise ValueError("concatenate: 0-d arrays have no axis to join along (stack them instead)")
        xp = get_array_module(*xs)
        axis = normalize_axis("concatenate", axis, xs[0].ndim)
        try:
            out = xp.concatenate(xs, axis=axis)
        except ValueError:
            raise ValueError(f"concatenate: shapes {[x.shape for x in xs]} do not match "
                             f"off axis {axis}") from None
        ctx.axis = axis
        ctx.bounds = [0]
        for x in xs:  # every x has the axis: concatenate checked their shapes
            ctx.bounds.append(ctx.bounds[-1] + x.shape[axis])
        return out

    @staticmethod
    def backward(ctx, g):
        lead = (slice(None),) * ctx.axis
        return tuple(g[lead + (slice(lo, hi),)] for lo, hi in zip(ctx.bounds, ctx.bounds[1:]))


class Stack(Function):
    """stack(xs, axis): join same-shaped arrays along a new axis.

    d/dx_k: g indexed at position k of the new axis.
    """

    moves_elements = True

    @staticmethod
    def forward(ctx, *xs, axis=0):
        if not xs:
            raise ValueError("stack: needs at least one array")
        xp = get_array_module(*xs)
        # the new axis is one of the result's, which has one more than the inputs
        axis = normalize_axis("stack", axis, xs[0].ndim + 1)
        ctx.axis, ctx.n = axis, len(xs)
        try:
            return xp.stack(xs, axis=axis)
        except ValueError:
            raise ValueError(f"stack: all shapes must be equal, got {[x.shape for x in xs]}") from None

    @staticmethod
    def backward(ctx, g):
        lead = (slice(None),) * ctx.axis
        return tuple(g[lead + (k,)] for k in range(ctx.n))


def _shape_tuple(op, shape):
    """``shape`` as a tuple of ints; an integer (a Python or NumPy int) is a 1-D shape, as in
    NumPy. Anything else (None, a float, a string, a bool) is a TypeError naming ``op``, where
    NumPy's own message would name no op ("'NoneType' object is not iterable"). Each size is read
    by the rule of an axis (``axes._index``): a bool is refused, as NumPy's shapes refuse it, for
    to Python it is the int 1 or 0, so ``reshape(x, (True, 4))`` would give x the shape (1, 4)."""
    try:
        return (_index(op, shape),)
    except TypeError:
        pass
    try:
        return tuple(_index(op, n) for n in shape)
    except TypeError:
        raise TypeError(f"{op}: shape must be an integer or a sequence of integers, got {shape!r}") from None


def reshape(x, shape):
    """Reshape ``x`` (one dimension may be -1, inferred from the others)."""
    shape = _shape_tuple("reshape", shape)
    if any(n < -1 for n in shape):  # NumPy 2 infers any negative size, as if it were -1
        raise ValueError(f"reshape: sizes must be at least 0, or -1 for the one inferred, got {shape}")
    return Reshape.apply(x, shape=shape)


def transpose(x, axes=None):
    """Permute the axes of ``x`` (reverse them when ``axes`` is None, else a tuple or list of
    every axis once)."""
    if axes is not None and not isinstance(axes, (tuple, list)):  # NumPy: "'int' object is not iterable"
        raise TypeError(f"transpose: axes must be None or a tuple of every axis, got {axes!r}")
    return Transpose.apply(x, axes=axes)


def broadcast_to(x, shape):
    """Broadcast ``x`` to ``shape`` (a read-only view; its gradient is summed back)."""
    return BroadcastTo.apply(x, shape=_shape_tuple("broadcast_to", shape))


def getitem(x, index):
    """``x[index]``; tensor indices are used by value and carry no gradient."""
    if isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    elif isinstance(index, Tensor):
        index = index.data
    return Getitem.apply(x, index=index)


def _check_tensors(op, xs):
    """``xs``, the tensors ``op`` joins, as a tuple. One Tensor or array is refused (TypeError)
    rather than read as the sequence of its rows: ``concatenate(x)`` would flatten x's first
    two axes, and ``stack(x)`` copy it, without a word."""
    if isinstance(xs, Tensor) or hasattr(xs, "shape"):
        raise TypeError(f"{op}: xs must be a sequence of tensors, got a {type(xs).__name__} of "
                        f"shape {tuple(xs.shape)}; write {op}([a, b])")
    return check_sequence(xs, f"{op}: xs", "tensors")


def concatenate(xs, axis=0):
    """Join a sequence of tensors along an existing axis."""
    return Concatenate.apply(*_check_tensors("concatenate", xs), axis=axis)


def stack(xs, axis=0):
    """Join a sequence of same-shaped tensors along a new axis."""
    return Stack.apply(*_check_tensors("stack", xs), axis=axis)
