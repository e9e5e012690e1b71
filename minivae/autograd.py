"""The reverse-mode engine: Tensor, Function, no_grad and anomaly mode.

A Tensor wraps one backend array. Calling a Function on tensors runs its ``forward`` on the raw
arrays and, when any input needs a gradient, records a node: the function, its inputs and a
context holding what ``backward`` will need. ``Tensor.backward`` walks those nodes in reverse
topological order (an explicit stack, so deep graphs never hit Python's recursion limit), asks each
Function for the gradient of every input, sums gradients that reach the same tensor, and stores
the result in the ``.grad`` of leaf tensors. Broadcasting is undone here, in ``_unbroadcast``, so
no op carries that logic itself.
"""
import contextlib
import sys
import threading

import numpy as np

from .backend import device_of, get_array_module, get_default_dtype, to_device


class _State(threading.local):
    grad_enabled = True
    anomaly = False


_state = _State()


@contextlib.contextmanager
def no_grad():
    """Context manager (and decorator) under which no graph is recorded: for evaluation and updates."""
    previous, _state.grad_enabled = _state.grad_enabled, False
    try:
        yield
    finally:
        _state.grad_enabled = previous


@contextlib.contextmanager
def enable_grad():
    """Context manager that records the graph again inside a ``no_grad`` block."""
    previous, _state.grad_enabled = _state.grad_enabled, True
    try:
        yield
    finally:
        _state.grad_enabled = previous


def is_grad_enabled():
    """True when operations currently record a graph."""
    return _state.grad_enabled


@contextlib.contextmanager
def detect_anomaly():
    """Check every forward output and backward gradient for NaN/Inf and name the op that made it.

    Slow (one ``isfinite`` per array), so meant for debugging a loss that went NaN.
    """
    previous, _state.anomaly = _state.anomaly, True
    try:
        yield
    finally:
        _state.anomaly = previous


class AnomalyError(FloatingPointError):
    """Raised in anomaly mode when an op's forward or backward produces NaN or Inf."""


class Context:
    """What a Function's forward leaves for its backward.

    ``save(*arrays)`` keeps arrays (read back as ``saved``); any other attribute may be set
    freely (axes, shapes). ``needs_input_grad`` tells backward which gradients are wanted.
    ``grad_owned``, set by the engine just before backward, is True when the upstream gradient
    array is the engine's alone (no other tensor, context or caller holds it or a view of it):
    backward may then overwrite it instead of allocating a new array.
    """
    __slots__ = ("saved", "needs_input_grad", "grad_owned", "__dict__")

    def save(self, *arrays):
        """Keep arrays for backward; only what backward needs (e.g. exp keeps its output)."""
        self.saved = arrays


class Function:
    """Base of every op: subclasses define ``forward(ctx, *arrays, **params)`` and ``backward(ctx, grad)``.

    Both work on raw backend arrays, never on Tensors. ``backward`` returns one gradient per
    array input (a tuple, or a single array for one input), None where none is needed, in the
    broadcast shape of the output; the engine sums it back to each input's shape.
    """

    @staticmethod
    def forward(ctx, *arrays, **params):
        """Compute the op's output array from the input arrays."""
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        """Return the gradient of the loss with respect to each input, given the output's gradient."""
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **params):
        """Run the op on tensors (or numbers / arrays, taken as constants) and record the graph node."""
        tensors = _as_tensors(cls, inputs)
        ctx = Context()
        ctx.needs_input_grad = needs = tuple([t.requires_grad for t in tensors])
        arrays = [t.data for t in tensors]
        state = _state
        anomaly = state.anomaly
        if anomaly:
            _check_finite(cls, "forward input", arrays)
        try:
            out = cls.forward(ctx, *arrays, **params)
        except ValueError as exc:
            if len(arrays) > 1 and "could not be broadcast" in str(exc):
                _explain_broadcast(cls, arrays)
            raise
        if isinstance(out, np.generic):  # NumPy reduces to scalars; keep every .data an ndarray
            out = np.asarray(out)
        result = Tensor.__new__(Tensor)
        result.data = out
        result.grad = None
        if state.grad_enabled and True in needs:
            result.requires_grad = True
            result._node = (cls, ctx, tensors)
        else:
            result.requires_grad = False
            result._node = None
        if anomaly:
            _check_finite(cls, "forward", [out])
        return result


def _explain_broadcast(fn, arrays):
    """Replace NumPy's broadcasting error with one that names the op (when the inputs are at fault)."""
    shapes = [tuple(a.shape) for a in arrays]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"{fn.__name__}: cannot broadcast shapes "
                         f"{' and '.join(map(str, shapes))} together") from None


def _check_finite(fn, stage, arrays):
    for a in arrays:
        if a is not None and a.dtype.kind in "fc":
            xp = get_array_module(a)
            if not bool(xp.isfinite(a).all()):
                raise AnomalyError(f"{fn.__name__} {stage} produced NaN or Inf "
                                   f"(array of shape {tuple(a.shape)}, dtype {a.dtype})")


def _as_tensors(fn, inputs):
    """Wrap the inputs of one op as Tensors with one device and one float dtype.

    Python numbers adopt the dtype of the tensor inputs so that ``x * 2`` stays float32; arrays of
    another float dtype are refused rather than silently up- or down-cast.
    """
    # Fast path, the common case: Tensors on the CPU that share one dtype, taken as they are.
    dtype = None
    for x in inputs:
        if type(x) is not Tensor and not isinstance(x, Tensor) or type(x.data) is not np.ndarray \
                or (dtype is not None and x.data.dtype != dtype):
            break
        dtype = x.data.dtype
    else:
        return list(inputs)
    ref = None  # the first float tensor (else the first tensor) sets the dtype and device
    for x in inputs:
        if isinstance(x, Tensor):
            if ref is None:
                ref = x
            elif device_of(x.data) != device_of(ref.data):
                raise RuntimeError(f"{fn.__name__}: inputs are on different devices "
                                   f"({device_of(ref.data)} and {device_of(x.data)}); move them with .to()")
            elif x.data.dtype != ref.data.dtype and x.data.dtype.kind == "f":
                if ref.data.dtype.kind == "f":
                    raise TypeError(f"{fn.__name__}: cannot mix {ref.dtype} and {x.dtype} tensors; "
                                    f"convert one with .astype() first")
                ref = x
    if ref is None:
        return [tensor(x) for x in inputs]
    dtype = ref.data.dtype
    xp = get_array_module(ref.data)
    if dtype.kind != "f":  # integer or boolean tensors only: NumPy's own promotion rules apply
        return [x if isinstance(x, Tensor) else Tensor(xp.asarray(x)) for x in inputs]
    out = []
    for x in inputs:
        if isinstance(x, Tensor):
            # integer and boolean tensors are constants: they take the float dtype, never upcast it
            out.append(x if x.data.dtype == dtype else Tensor(x.data.astype(dtype)))
            continue
        kind = getattr(getattr(x, "dtype", None), "kind", None)
        # NumPy scalars (np.sqrt(2.0)) are numbers like Python's and adopt the dtype too.
        if kind == "f" and x.dtype != dtype and not isinstance(x, np.generic):
            raise TypeError(f"{fn.__name__}: a {x.dtype} array cannot be combined with a {dtype} tensor "
                            f"without a silent cast; convert it first")
        if kind is not None and device_of(x) != device_of(ref.data):
            raise RuntimeError(f"{fn.__name__}: a {device_of(x)} array cannot be combined with a "
                               f"{device_of(ref.data)} tensor; move it first")
        out.append(Tensor(xp.asarray(x, dtype=dtype)))
    return out


def _unbroadcast(grad, shape, fn):
    """Sum ``grad`` over the axes that broadcasting added or stretched so it takes ``shape``."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1)
    reduced = grad.sum(axis=axes, keepdims=True) if axes else grad
    if lead:
        reduced = reduced.reshape(reduced.shape[lead:])
    if reduced.shape != shape:
        raise RuntimeError(f"{fn.__name__}.backward returned a gradient of shape {grad.shape}, "
                           f"which does not reduce to the input shape {shape}")
    return reduced


class Tensor:
    """An n-dimensional array that records the operations applied to it, for reverse-mode gradients.

    ``data`` is the backend array (NumPy or CuPy). Leaf tensors made with ``requires_grad=True``
    receive ``grad`` after ``backward``; gradients accumulate across calls until reset.
    """
    __slots__ = ("data", "grad", "requires_grad", "_node", "__weakref__")
    # Make NumPy defer to Tensor's reflected operators (array + tensor -> Tensor.__radd__).
    __array_ufunc__ = None

    def __init__(self, data, requires_grad=False):
        xp = get_array_module(data)
        self.data = data if isinstance(data, xp.ndarray) else xp.asarray(data)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only float tensors can require gradients, got dtype {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._node = None

    # ----- properties -------------------------------------------------------------------------
    shape = property(lambda self: self.data.shape, doc="The shape of the data array.")
    dtype = property(lambda self: self.data.dtype, doc="The dtype of the data array.")
    ndim = property(lambda self: self.data.ndim, doc="The number of dimensions.")
    size = property(lambda self: self.data.size, doc="The number of elements.")
    device = property(lambda self: device_of(self.data), doc='"cpu" or "gpu".')
    is_leaf = property(lambda self: self._node is None, doc="True unless made by a recorded op.")

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    def __len__(self):
        return len(self.data)

    # ----- conversion -------------------------------------------------------------------------
    def item(self):
        """Return the single element as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.item()

    def numpy(self):
        """Return the data as a NumPy array (copied from the GPU if needed); no gradient flows."""
        return to_device(self.data, "cpu")

    def detach(self):
        """Return a tensor sharing the data but cut from the graph."""
        return Tensor(self.data)

    def to(self, device):
        """Return this tensor on ``device`` ("cpu" or "gpu"); a leaf keeps ``requires_grad``."""
        if device_of(self.data) == device:
            return self
        return Tensor(to_device(self.data, device), requires_grad=self.requires_grad)

    def astype(self, dtype):
        """Return a copy with another dtype, cut from the graph (casts are explicit, never silent)."""
        return Tensor(self.data.astype(dtype), requires_grad=self.requires_grad)

    # ----- the backward pass ------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into the ``.grad`` of every leaf that requires it.

        ``grad`` is the gradient of the final objective with respect to this tensor; it may be
        omitted only for a one-element tensor. The graph's saved arrays are freed afterwards
        unless ``retain_graph`` is True.
        """
        xp = get_array_module(self.data)
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input had requires_grad=True, or it was made under no_grad)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() on a non-scalar tensor of shape {self.shape} needs "
                                   "grad=, the gradient of the objective with respect to it")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if grad.dtype != self.dtype:
                raise TypeError(f"backward(): grad is {grad.dtype}, tensor is {self.dtype}")
            if grad.shape != self.shape:
                raise ValueError(f"backward(): grad has shape {grad.shape}, tensor has {self.shape}")
        # Keyed by the tensors themselves: Tensor hashes by identity (it defines no __eq__).
        grads = {self: grad}
        owned = set()  # ids of sums the engine allocated and has shown to no one (see _unshared)
        anomaly = _state.anomaly
        in_grads = ig = acc = None
        for node in _topological_order(self, leaves=False):
            g = grads.pop(node, None)
            if g is None:
                continue
            g_owned = id(g) in owned
            if g_owned:
                owned.discard(id(g))  # from here on g is handed to an op, which may share it
            fn, ctx, inputs = node._node
            if ctx is None:
                raise RuntimeError("backward() through a graph that was already freed; "
                                   "pass retain_graph=True to the first backward()")
            ctx.grad_owned = g_owned or _unshared(g)
            in_grads = fn.backward(ctx, g)
            if type(in_grads) is not tuple:
                in_grads = (in_grads,)
            if anomaly:
                _check_finite(fn, "backward", in_grads)
            for inp, ig in zip(inputs, in_grads):
                if ig is None or not inp.requires_grad:
                    continue
                data = inp.data
                if ig.shape != data.shape:
                    ig = _unbroadcast(ig, data.shape, fn)
                if ig.dtype != data.dtype:
                    raise RuntimeError(f"{fn.__name__}.backward returned {ig.dtype} for a "
                                       f"{data.dtype} input")
                acc = grads.get(inp)
                if acc is None:
                    grads[inp] = ig
                elif id(acc) in owned:
                    acc += ig  # in place: the engine allocated acc and no one else has seen it
                else:
                    acc = grads[inp] = acc + ig
                    if not isinstance(acc, np.generic):  # 0-d sums are immutable NumPy scalars
                        owned.add(id(acc))
            in_grads = ig = acc = g = None  # hold no stale references (_unshared counts them)
            if not retain_graph:
                node._node = (fn, None, ())  # drop the saved arrays and the inputs they came from
        # What is left are the leaves' complete sums (every op that feeds them has run).
        while grads:
            leaf, g = grads.popitem()  # every key requires grad: the loop above enters no other
            if leaf.grad is not None:
                leaf.grad = leaf.grad + g  # never in place: the caller may hold .grad
            elif id(g) in owned or _unshared(g):
                leaf.grad = g  # nobody else sees this array: no copy needed
            else:
                # g may be a read-only broadcast view, shared with another leaf, or still
                # held elsewhere (the caller's grad=, an op's context).
                leaf.grad = g.copy()
            g = None

    # ----- operators (the ops module is bound at the bottom of this file) -----------------------
    def __add__(self, other): return F.add(self, other)
    def __radd__(self, other): return F.add(other, self)
    def __sub__(self, other): return F.sub(self, other)
    def __rsub__(self, other): return F.sub(other, self)
    def __mul__(self, other): return F.mul(self, other)
    def __rmul__(self, other): return F.mul(other, self)
    def __truediv__(self, other): return F.div(self, other)
    def __rtruediv__(self, other): return F.div(other, self)
    def __pow__(self, exponent): return F.pow(self, exponent)
    def __matmul__(self, other): return F.matmul(self, other)
    def __rmatmul__(self, other): return F.matmul(other, self)
    def __neg__(self): return F.neg(self)
    def __getitem__(self, index): return F.getitem(self, index)

    # Comparisons give plain boolean arrays: they have no gradient, and __eq__ stays identity.
    def __lt__(self, other): return self.data < _raw(other)
    def __le__(self, other): return self.data <= _raw(other)
    def __gt__(self, other): return self.data > _raw(other)
    def __ge__(self, other): return self.data >= _raw(other)

    def sum(self, axis=None, keepdims=False):
        """Sum over ``axis`` (all axes by default)."""
        return F.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        """Mean over ``axis`` (all axes by default)."""
        return F.mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        """Maximum over ``axis``; the gradient goes to the maximal elements, split evenly on ties."""
        return F.max(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        """Return a tensor with the same data in another shape."""
        return F.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def transpose(self, *axes):
        """Permute the axes (reverse them when none are given)."""
        return F.transpose(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else (axes or None))

    T = property(lambda self: F.transpose(self), doc="The tensor with its axes reversed.")

    def exp(self):
        """Elementwise exponential."""
        return F.exp(self)

    def log(self):
        """Elementwise natural logarithm."""
        return F.log(self)


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def _refcount(array):
    """``sys.getrefcount`` one call deep: as ``_unshared`` counts its argument."""
    return sys.getrefcount(array)


def _calibrate_unshared():
    """The reference count ``_refcount`` reports for an array held by one local variable only.

    0 (never adopt an array, always copy) where reference counts cannot tell that a view holds
    the array (an interpreter without ``sys.getrefcount``, or with other counting rules).
    """
    if not hasattr(sys, "getrefcount"):
        return 0
    a = np.empty(1)
    alone = _refcount(a)
    view = a[:]  # a view keeps a reference to the array that owns the memory
    shared = _refcount(a)
    del view
    return alone if shared == alone + 1 and _refcount(a) == alone else 0


_UNSHARED_REFS = _calibrate_unshared()


def _unshared(g):
    """True when ``g`` can become a leaf's ``.grad`` without a copy: a writable NumPy array that
    owns its memory and is referenced by nothing but the engine's one local variable.

    Any other holder shows in the reference count: a second tensor's pending gradient (an op
    that returned the same array for two inputs), an op's context, the caller's ``grad=``
    argument, or a view (views keep a reference to the array owning the memory). A read-only
    broadcast view or a slice is not a base array and is always copied. CuPy arrays are always
    copied (their views may share memory through a memory pointer alone).
    """
    # The caller's variable, this function's argument and getrefcount's own: the same three
    # references _calibrate_unshared counts for an array nobody else holds.
    return (type(g) is np.ndarray and g.base is None and g.flags.writeable
            and sys.getrefcount(g) <= _UNSHARED_REFS)


def _topological_order(root, constants=False, leaves=True):
    """Nodes reachable from ``root``, each after every node that uses it (an explicit-stack DFS).

    Inputs that need no gradient are skipped unless ``constants`` (for drawing the whole graph);
    leaves (tensors no op made) are left out when ``leaves`` is False (the backward pass gives
    them their gradient after all op nodes, so they need no place in the order).
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in visited:
            continue
        visited.add(node)
        recorded = node._node
        if recorded is None:
            if leaves:
                order.append(node)
            continue
        stack.append((node, True))
        stack.extend([(inp, False) for inp in recorded[2]
                      if (constants or inp.requires_grad) and inp not in visited])
    order.reverse()
    return order


def tensor(data, requires_grad=False, dtype=None):
    """Make a Tensor from a number, a list or an array.

    Python numbers and lists of floats become the default dtype (float32); arrays keep their
    dtype unless ``dtype`` is given. Integer data stays integer (and cannot require gradients).
    """
    if isinstance(data, Tensor):
        data = data.data
    xp = get_array_module(data)
    if dtype is not None:
        array = xp.asarray(data, dtype=dtype)
    elif isinstance(data, xp.ndarray) or isinstance(data, np.generic):
        array = xp.asarray(data)
    else:
        array = np.asarray(data)
        if array.dtype.kind == "f" or (requires_grad and array.dtype.kind in "iub"):
            array = array.astype(get_default_dtype())
    return Tensor(array, requires_grad=requires_grad)


# The ops import this module (for Function and Tensor), so they are bound last.
from . import ops as F  # noqa: E402
