"""Function, the base of every op; its Context; and Node, the record of one op in the graph.

An op is a ``Function`` subclass with two static methods over raw backend arrays (never Tensors):

* ``forward(ctx, *arrays, **params)`` returns one array, or a tuple of arrays for an op with
  several outputs;
* ``backward(ctx, *grads)`` receives one upstream gradient per output (``None`` for an output no
  gradient reached; a one-output op simply writes ``backward(ctx, g)``) and returns one gradient
  per input: a tuple, or a bare array for one input, ``None`` where an input needs none, each in
  the broadcast shape (the engine sums it back to the input's shape).

``Function.apply(*inputs, **params)`` runs ``forward`` on tensors and returns one Tensor, or a
tuple of Tensors (one per output). When some input requires a gradient (and ``no_grad`` is not
active) it records a ``Node`` that every output tensor points to; ``Tensor.backward`` (in
``minivae.autograd``) walks those nodes. On CuPy inputs, ``apply`` first asks the dispatch table
of ``minivae.gpu`` (``minivae.gpu.dispatch.select``) whether a CUDA kernel is registered for the
op and takes these inputs; then the row's forward and backward run instead of the op's own
(``minivae.gpu.dispatch.explain`` says which path an op takes, and why).

Saved arrays are guarded against in-place changes between forward and backward, which would
make the gradients silently wrong, in two ways:

* every Tensor has a version number that the library raises (``Tensor.bump_version``) whenever
  it writes into ``data`` in place (optimizer steps, ``Module.load_state_dict``); a node records
  the versions of the inputs whose arrays its context saved, and ``check_versions`` (called by
  the engine just before the node's backward) raises ``InPlaceModificationError`` naming the op
  and the input. An op's output that is a view of an input's memory (a transpose, a reshape, a
  slice of W) gets what holds that memory's version as its ``_base`` (``autograd._memory_owner``)
  and so shares it: an optimizer step on W is seen by a node that saved ``W.T``. This works for
  NumPy and CuPy arrays alike.
* NumPy arrays are also protected against writes that bypass the library
  (``x.data[:] = 10``): the arrays a context saves are made read-only
  (``arr.setflags(write=False)``) until the node is released (after its backward, or when the
  graph is dropped), so such a write fails at once with NumPy's "read-only" error. Only arrays
  that own their memory are locked (a view cannot be made writable again while its base is
  read-only), so a write through a view, or into the base of a saved view, is not caught. Nor
  is one made after a node that locked an array was released while another live graph also
  saved it (the lock is a best effort, kept simple: no table of holders); the version numbers,
  which the library's own writes raise, guard every graph. CuPy arrays have no such flag; on
  the GPU only the version numbers guard.

This module sits above ``minivae.autograd``: recording a node means making Tensors, so it needs
the Tensor class, while the engine only reads the fields of the nodes it is given.
"""
import weakref

import numpy as np

from .autograd import (AnomalyError, Tensor, _check_finite, _check_real, _memory_owner, _memory_root,
                       _nan_and_inf, _state, tensor)
from .backend import device_of, get_array_module, get_default_dtype
from .checks import plain_array
from .gpu import dispatch


class Context:
    """What a Function's forward leaves for its backward.

    ``save(*arrays)`` keeps arrays (read back as ``saved``); any other attribute may be set
    freely (axes, shapes). ``needs_input_grad`` tells backward which gradients are wanted.
    """
    __slots__ = ("needs_input_grad", "__dict__")
    saved = ()  # until save() is called

    def save(self, *arrays):
        """Keep arrays for backward; only what backward needs (e.g. exp keeps its output).

        The saved NumPy arrays are read-only until the node is released (see the module
        docstring), so backward must compute into new arrays, never into a saved one.
        """
        self.saved = arrays


class InPlaceModificationError(RuntimeError):
    """A tensor that an op saved for its backward was changed in place before that backward ran."""


class Node:
    """One recorded op: ``fn`` (the Function class, or the dispatch-table row that ran it on CuPy
    arrays: either has the ``backward`` to call), ``ctx`` (its Context), ``inputs`` (the input
    Tensors), ``outputs`` (weak references to the output Tensors, in order), ``versions``
    (``(input index, version when the op ran)`` for each input whose array the context saved),
    ``saved_outputs`` (``(version holder, version)`` of an output the context saved, added when a
    view of it is first made: ``autograd._memory_owner``) and ``read_only`` (the NumPy arrays
    this node made read-only).

    The outputs are weak references so that a tensor and its node never form a reference cycle:
    an output the caller dropped simply receives no gradient. After a backward pass without
    ``retain_graph`` the engine calls ``release``, which frees the saved arrays and the inputs.
    """
    __slots__ = ("fn", "ctx", "inputs", "outputs", "versions", "saved_outputs", "read_only")

    def __init__(self, fn, ctx, inputs, outputs, versions, read_only):
        self.fn = fn
        self.ctx = ctx
        self.inputs = inputs
        self.outputs = outputs
        self.versions = versions
        self.saved_outputs = ()
        self.read_only = read_only

    def check_versions(self):
        """Raise InPlaceModificationError if an input this op saved was changed in place since."""
        for i, version in self.versions:
            t = self.inputs[i]
            if t.version != version:
                raise InPlaceModificationError(
                    f"{self.fn.__name__}: input {i} (a {t.dtype} tensor of shape {tuple(t.shape)}) "
                    f"was changed in place after the forward pass (version {version}, now "
                    f"{t.version}), but {self.fn.__name__}.backward needs its old value; call "
                    f"backward() before changing it (e.g. before optimizer.step()), or run the "
                    f"forward pass again")
        for holder, version in self.saved_outputs:
            if holder._version != version:
                raise InPlaceModificationError(
                    f"{self.fn.__name__}: its output was changed in place through a view (e.g. an "
                    f"optimizer step on a detached copy) after the forward pass (version {version}, "
                    f"now {holder._version}), but {self.fn.__name__}.backward needs its old value; "
                    f"call backward() before changing it, or run the forward pass again")

    def release(self):
        """Free the context and the inputs, and make the arrays locked by this node writable."""
        self._unlock()
        self.ctx, self.inputs = None, ()

    def __del__(self):
        self._unlock()  # a graph dropped without a backward pass must not leave arrays read-only

    def _unlock(self):
        for a in self.read_only:
            a.setflags(write=True)
        self.read_only = ()

    def __repr__(self):
        return f"Node({self.fn.__name__}, {len(self.inputs)} inputs, {len(self.outputs)} outputs)"


class Function:
    """Base of every op: subclasses define ``forward(ctx, *arrays, **params)`` and ``backward(ctx, *grads)``.

    See the module docstring for the contract; ``apply`` is how an op is called on tensors.
    """

    #: True for an op that only moves its inputs' elements (a reshape, an index, a join): when
    #: no input is float, integer and boolean inputs keep their dtype, as in NumPy and PyTorch.
    #: Every other op computes in floating point (see ``_as_tensors``).
    moves_elements = False

    @staticmethod
    def forward(ctx, *arrays, **params):
        """Compute the op's output array (or tuple of arrays) from the input arrays."""
        raise NotImplementedError

    @staticmethod
    def backward(ctx, *grads):
        """Return the gradient of the loss with respect to each input, given each output's gradient."""
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **params):
        """Run the op on tensors (or numbers / arrays, taken as constants) and record the graph node.

        Returns one Tensor, or a tuple of Tensors when ``forward`` returns a tuple of arrays.
        """
        tensors = _as_tensors(cls, inputs)
        ctx = Context()
        ctx.needs_input_grad = needs = tuple([t._requires_grad for t in tensors])
        arrays = [t.data for t in tensors]
        anomaly = _state.anomaly
        if anomaly:
            _check_leaf_inputs(cls, tensors)
        # A CUDA kernel registered for this op and these (CuPy) inputs, or None: the op's own code.
        impl = dispatch.select(cls.__name__, *arrays, **params) or cls
        try:
            out = impl.forward(ctx, *arrays, **params)
        except ValueError as exc:
            if len(arrays) > 1 and any(words in str(exc) for words in _BROADCAST_ERRORS):
                _explain_broadcast(cls, arrays)
            raise
        several = type(out) is tuple
        outs = out if several else (out,)
        if anomaly:
            _check_finite(cls, "forward", outs, arrays, "inputs")
        record = _state.grad_enabled and any(needs)
        results = [_output_tensor(a, tensors, record) for a in outs]
        if record:
            node = Node(impl, ctx, tensors, tuple(map(weakref.ref, results)),
                        _saved_versions(ctx.saved, tensors), _lock(ctx.saved))
            for t in results:
                t._node = node
        return tuple(results) if several else results[0]


def _check_leaf_inputs(fn, tensors):
    """In anomaly mode, raise AnomalyError naming ``fn`` when one of its input ``tensors`` that no
    op made (a leaf's data or a constant: no node) holds NaN, where the NaN enters the graph
    (see ``detect_anomaly``)."""
    for k, t in enumerate(tensors):
        if t._node is None and _nan_and_inf([t.data])[0]:
            raise AnomalyError(f"{fn.__name__} forward input {k} (shape {tuple(t.data.shape)}, dtype "
                               f"{t.data.dtype}) holds NaN that no op made: a leaf's data or a constant")


def _output_tensor(array, inputs, requires_grad):
    """A Tensor of the op's output ``array``, its fields set directly: ``Tensor.__init__`` checks
    data from outside, and the op computed this array from checked inputs. A view of an input's
    memory shares that memory's version (``_viewed``)."""
    if isinstance(array, np.generic):  # NumPy reduces to scalars; keep every .data an ndarray
        array = np.asarray(array)
    t = Tensor.__new__(Tensor)  # the fields set here are all of __init__'s
    t.data, t.grad, t._requires_grad, t._node = array, None, requires_grad, None
    t._version, t._hooks = 0, None
    t._base = None if array.base is None else _viewed(array, inputs)
    return t


def _saved_versions(saved, inputs):
    """``(index, version)`` of each of the op's ``inputs`` whose array, or memory a view of it
    looks into, is among the ``saved`` arrays: the versions its backward must find unchanged."""
    if not saved:
        return ()
    ids = list(map(id, saved))
    versions = []
    for i, t in enumerate(inputs):
        if id(t.data) in ids or _views_into(saved, t.data):
            versions.append((i, t.version))
    return tuple(versions)


def _lock(saved):
    """Make the ``saved`` NumPy arrays that own their memory read-only (a view cannot be made
    writable again while its base is read-only) and return them, for the node to unlock."""
    read_only = []
    for a in saved:
        if type(a) is np.ndarray and a.base is None and a.flags.writeable:
            a.setflags(write=False)
            read_only.append(a)
    return read_only


def _viewed(array, tensors):
    """What holds the version of the memory ``array`` (a view) looks into, if it is an input's
    (``autograd._memory_owner``), else None: a view's version is that memory's. Several
    parameters may be views of one flat array (Adam's layout): of several inputs, the one the
    view overlaps is the one; a one-input op's view can only be of its input."""
    for t in tensors:
        if _looks_into(array, t.data, overlap_known=len(tensors) == 1):
            return _memory_owner(t)
    return None


def _views_into(saved, array):
    """Whether one of the ``saved`` arrays is a view into ``array``'s memory (an op, or a GPU
    row, may save ``logvar.reshape(...)`` rather than ``logvar``: a change of logvar changes it)."""
    for v in saved:
        if getattr(v, "base", None) is not None and _looks_into(v, array):
            return True
    return False


def _looks_into(view, array, overlap_known=False):
    """Whether ``view`` uses part of ``array``'s memory: both have one memory root, and the parts
    they use overlap (views of one flat array may not). ``overlap_known`` skips the overlap test
    where sharing the root implies it."""
    return _memory_root(view) is _memory_root(array) and (
        overlap_known or get_array_module(array).may_share_memory(view, array))


#: NumPy's words for shapes that do not broadcast: a ufunc's, and ``np.broadcast_shapes``'s (which
#: ops call to find their output's shape before computing it).
_BROADCAST_ERRORS = ("could not be broadcast", "cannot be broadcast")


def _explain_broadcast(fn, arrays):
    """Replace NumPy's broadcasting error with one that names the op (when the inputs are at fault)."""
    shapes = [tuple(a.shape) for a in arrays]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"{fn.__name__}: cannot broadcast shapes "
                         f"{' and '.join(map(str, shapes))} together") from None


def _as_tensors(fn, inputs):
    """Wrap the inputs of one op as Tensors with one device and one float dtype.

    Python numbers adopt the dtype of the tensor inputs so that ``x * 2`` stays float32; arrays of
    another float dtype are refused rather than silently up- or down-cast. Ops compute in floating
    point: integer and boolean inputs take the float dtype of the others, or the default dtype
    when none is float (as in PyTorch: ``sigmoid`` of uint8 pixels, or ``pixels / 255.0``, in
    NumPy's integer rules would wrap around or become float64). An op that only moves elements
    (``Function.moves_elements``) computes nothing: without a float input, its inputs keep their
    dtypes, so ``labels[idx]`` stays integer.
    """
    if _taken_as_they_are(inputs):  # the common case, found without the checks below
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
    if ref is None:  # no tensor: each input becomes one as tensor() makes it
        inputs = [tensor(x) for x in inputs]
        ref = next((x for x in inputs if x.data.dtype.kind == "f"), inputs[0])
    dtype = ref.data.dtype
    if dtype.kind != "f" and fn.moves_elements and not any(map(_is_float, inputs)):
        dtype = None  # each input keeps its dtype (NumPy joins an int32 and an int64 as int64)
    else:
        dtype = compute_dtype(dtype, inputs)
    return [_input_tensor(fn, x, dtype, ref) for x in inputs]


def _input_tensor(fn, x, dtype, ref):
    """The input ``x`` of the op ``fn`` as a Tensor of ``dtype`` (None: its own) on the device of
    ``ref``, a tensor input. A number, list or array becomes a constant, once checked: real
    numbers, and an array of another float dtype or on another device refused, never cast."""
    if isinstance(x, Tensor):
        # integer and boolean tensors are constants: they take the float dtype, never upcast it
        return x if dtype is None or x.data.dtype == dtype else Tensor(x.data.astype(dtype))
    what = f"{fn.__name__}: an operand"
    x = plain_array(x, what)
    kind = getattr(getattr(x, "dtype", None), "kind", None)
    given = x if kind is not None else np.asarray(x)  # a number or a list, as NumPy reads it
    _check_real(given, what, x)
    # NumPy scalars (np.sqrt(2.0)) are numbers like Python's: they adopt the dtype, and are
    # filled on the tensor's device below (they live on no device of their own).
    if kind == "f" and x.dtype != dtype and not isinstance(x, np.generic):
        raise TypeError(f"{fn.__name__}: a {x.dtype} array cannot be combined with a {dtype} tensor "
                        f"without a silent cast; convert it first")
    if kind is not None and not isinstance(x, np.generic) and device_of(x) != device_of(ref.data):
        raise RuntimeError(f"{fn.__name__}: a {device_of(x)} array cannot be combined with a "
                           f"{device_of(ref.data)} tensor; move it first")
    xp = get_array_module(ref.data)
    if kind is None and given.ndim == 0 or isinstance(x, np.generic):
        # A number: a 0-d array filled where the tensor lives, never copied there from the host
        # (on the GPU such a copy is a transfer that a CUDA graph being captured cannot make).
        return Tensor(xp.full((), x, dtype=dtype))
    return Tensor(xp.asarray(x, dtype=dtype))


def _taken_as_they_are(inputs):
    """Whether the op's ``inputs`` are Tensors on the CPU that share one float dtype (or there are
    none): then ``_as_tensors`` has nothing to convert or refuse."""
    dtype = None
    for x in inputs:
        if not isinstance(x, Tensor) or type(x.data) is not np.ndarray:
            return False
        if dtype is not None and x.data.dtype != dtype:
            return False
        dtype = x.data.dtype
    return dtype is None or dtype.kind == "f"


def compute_dtype(dtype, inputs=()):
    """The dtype an op computes in whose first float tensor (else first tensor) input has
    ``dtype``: that dtype when it is floating; otherwise, since integer and boolean inputs take
    the float dtype of the others, the dtype of the first float array among ``inputs`` (a
    Tensor or a NumPy scalar sets none), else the default dtype."""
    if dtype.kind == "f":
        return dtype
    return next((x.dtype for x in inputs if not isinstance(x, (Tensor, np.generic))
                 and getattr(getattr(x, "dtype", None), "kind", None) == "f"), get_default_dtype())


def _is_float(x):
    """Whether ``x``, an op's input (a Tensor, an array, a number or a list), holds floats."""
    data = x.data if isinstance(x, Tensor) else x
    dtype = getattr(data, "dtype", None)
    return (dtype if dtype is not None else np.asarray(data).dtype).kind == "f"
