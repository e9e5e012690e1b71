"""The reverse-mode engine: Tensor, no_grad and anomaly mode.

A Tensor wraps one backend array. Calling an op (a ``minivae.function.Function``) on tensors runs
its ``forward`` on the raw arrays and, when any input needs a gradient, records a ``Node``: the
function, its inputs, a context holding what ``backward`` will need, and its outputs. Every output
tensor points to its node. ``Tensor.backward`` walks those nodes in reverse topological order (an
explicit stack, so deep graphs never hit Python's recursion limit), calls each node's backward
once with the gradients of all its outputs, sums gradients that reach the same tensor, and stores
the result in the ``.grad`` of leaf tensors. Broadcasting is undone here, in ``_unbroadcast``, so
no op carries that logic itself.

``Tensor.register_hook(fn)`` asks for a tensor's gradient once it is complete (summed over every
use): ``fn(grad)`` is called then and may return a replacement. Every tensor carries a version
number, raised by ``bump_version`` whenever the library changes its array in place (an optimizer
step, loading a checkpoint); a node remembers the versions of the inputs it saved, and backward
refuses to run it when one has changed (see ``minivae.function`` for the whole rule). A tensor
whose array is a view of another's memory (``W.T``, ``W[0]``, ``W.detach()``) shares that
memory's version through its ``_base``, as in PyTorch: a change to W is a change to its views.
The base of a view of a leaf is the leaf; that of a view of an op's result is a
``_MemoryVersion``, which holds the version without the result (and so without its graph). A
tensor made from another tensor (``detach()``, ``Tensor(mu)``, ``nn.Parameter(mu)``,
``mv.tensor(mu)`` without a cast) shares its array and so its version, as in PyTorch: an
optimizer step on the parameter reaches a graph that saved mu. One made from a bare array
(``Tensor(mu.data)``) has a version of its own, since nothing says whose memory it is; so has a
parameter once the library gives it an array of other memory (``Module.astype``, ``Module.to``,
Adam's flat buffer: ``Tensor._replace_data``).

Tensor's arithmetic operators (``+``, ``@``, ``x[i]``, ``x.sum()``...) are ops, so the
``minivae.ops`` package, which comes after this module, installs them on the class.
"""
import contextlib
import functools
import threading

import numpy as np

from .backend import (device_name, device_of, get_array_module, get_default_dtype, resolve_device,
                      to_device)
from .checks import check_bool, check_sequence, plain_array


class _State(threading.local):
    grad_enabled = True
    anomaly = False


_state = _State()


class _GradMode:
    """Context manager (and decorator) under which operations record a graph if ``enabled``;
    the previous mode comes back on leaving, however the block ends."""

    def __init__(self, enabled):
        self.enabled = enabled

    def __enter__(self):
        self.previous, _state.grad_enabled = _state.grad_enabled, self.enabled
        return self

    def __exit__(self, *exc_info):
        _state.grad_enabled = self.previous
        return False

    def __call__(self, fn):
        """``fn`` wrapped so that every call runs under this mode."""
        enabled = self.enabled

        @functools.wraps(fn)
        def run_in_mode(*args, **kwargs):
            # A context of its own per call: calls may nest (recursion) or run in several threads.
            with _GradMode(enabled):
                return fn(*args, **kwargs)
        return run_in_mode


class set_grad_enabled(_GradMode):
    """Switch the recording of graphs on (``mode`` True) or off for this thread, at once.

    Called alone (``mv.set_grad_enabled(False)``), the mode holds until it is set again, as with
    ``torch.set_grad_enabled``. As a context manager, the mode before the call comes back on
    leaving the block, however it ends. As a decorator, every call of the function runs under
    ``mode``, and decorating it leaves the current mode as it was.
    """

    def __init__(self, mode):
        super().__init__(check_bool(mode, "set_grad_enabled(mode)"))
        self.previous, _state.grad_enabled = _state.grad_enabled, self.enabled

    def __enter__(self):
        return self  # the call has set the mode already

    def __call__(self, fn):
        """``fn`` wrapped so that every call runs under ``mode``; the mode set by the call that
        made this decorator is undone, as a decorator changes nothing until the function runs."""
        _state.grad_enabled = self.previous
        return super().__call__(fn)


def no_grad():
    """Context manager (and decorator) under which no graph is recorded: for evaluation and updates."""
    return _GradMode(False)


def enable_grad():
    """Context manager (and decorator) that records the graph again inside a ``no_grad`` block."""
    return _GradMode(True)


def is_grad_enabled():
    """True when operations currently record a graph."""
    return _state.grad_enabled


@contextlib.contextmanager
def detect_anomaly():
    """Context manager under which an AnomalyError names the op where NaN or Inf first appears.

    An op's forward is at fault when it produces NaN from inputs without NaN (log(-1), inf - inf)
    or Inf from finite inputs (an overflow such as exp(1000), or 1 / 0); its backward, when it
    produces a gradient holding NaN from upstream gradients, inputs and saved arrays without
    NaN, or Inf from finite ones (the derivative of sqrt at 0). Values that arrive already
    non-finite are not blamed on the op that receives them: the op that made them was flagged
    there, or they are the caller's own, such as a -inf mask given to ``where`` before a
    ``logsumexp``, which gives finite results and gradients. But a NaN that no op made (in a
    leaf's data, such as a batch of images, or a constant) is named at the first op that takes
    it: NaN is never a value a caller means, and that op is where it enters the graph.

    Slow (one ``isfinite`` per array), so meant for debugging a loss that went NaN.
    """
    previous, _state.anomaly = _state.anomaly, True
    try:
        yield
    finally:
        _state.anomaly = previous


class AnomalyError(FloatingPointError):
    """Raised in anomaly mode by the op whose forward or backward first produced NaN or Inf."""


def _nan_and_inf(arrays):
    """Whether the float arrays among ``arrays`` (None skipped) hold NaN, and whether they hold Inf."""
    has_nan = has_inf = False
    for a in arrays:
        if a is None or a.dtype.kind not in "fc":
            continue
        xp = get_array_module(a)
        if not bool(xp.isfinite(a).all()):
            has_nan = has_nan or bool(xp.isnan(a).any())
            has_inf = has_inf or bool(xp.isinf(a).any())
    return has_nan, has_inf


def _check_finite(fn, stage, results, sources, source_words):
    """Raise AnomalyError when ``fn``'s ``stage`` ("forward" or "backward") is where NaN or Inf
    starts: one of ``results`` holds NaN that ``sources`` (what the stage computed it from,
    described by ``source_words``) did not hold, or Inf where every source was finite."""
    had = None  # (NaN, Inf) in the sources: looked at only when a result is not finite
    for k, a in enumerate(results):
        made_nan, made_inf = _nan_and_inf([a])
        if not (made_nan or made_inf):
            continue
        if had is None:
            had = _nan_and_inf(sources)
        had_nan, had_inf = had
        if made_nan and not had_nan:
            kind, free = "NaN", "without NaN"
        elif made_inf and not (had_nan or had_inf):
            kind, free = "Inf", "all finite"
        else:
            continue
        what = "output" if stage == "forward" else "gradient for input"
        raise AnomalyError(f"{fn.__name__} {stage} produced {kind} in {what} {k} (shape "
                           f"{tuple(a.shape)}, dtype {a.dtype}) from {source_words} {free}")


def _check_real(array, what, given):
    """Refuse ``array``, made from ``given``, unless it holds real numbers: booleans, integers or
    floats. NumPy casts None (an object) to NaN and a complex number to its real part, each with
    no error, and fails on a string inside a float conversion that names nothing."""
    if array.dtype.kind not in "biuf":
        got = repr(given) if array.ndim == 0 else f"{type(given).__name__} of dtype {array.dtype}"
        raise TypeError(f"{what} must be real numbers (booleans, integers or floats), got {got}")


def _unbroadcast(grad, shape, fn):
    """Sum ``grad`` over the axes that broadcasting added or stretched so it takes ``shape``.

    An added axis of length 1 (one sample of (B, D) parameters, drawn as (1, B, D)) needs no sum:
    the reshape that drops it gives the same numbers without a pass over the array."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = []
    for i, n in enumerate(grad.shape):
        if n != 1 and (i < lead or shape[i - lead] == 1):  # added, or stretched from 1
            axes.append(i)
    reduced = grad.sum(axis=tuple(axes), keepdims=True) if axes else grad
    if lead:
        reduced = reduced.reshape(reduced.shape[lead:])
    if reduced.shape != shape:
        raise RuntimeError(f"{fn.__name__}.backward returned a gradient of shape {grad.shape}, "
                           f"which does not reduce to the input shape {shape}")
    return reduced


def _memory_owner(t):
    """What holds the version of ``t``'s memory, for a view of ``t`` to share: ``t``'s base if it
    has one, ``t`` itself for a leaf. An op's result gets a ``_MemoryVersion`` as its base here:
    holding the result would keep its graph alive with the view."""
    if t._base is not None:
        return t._base
    if t._node is None:
        return t
    t._base = holder = _MemoryVersion(t)  # from now on t's version is the one t and its views share
    node = t._node
    root = _memory_root(t.data)
    if node.ctx is not None and any(_memory_root(a) is root for a in node.ctx.saved):
        # The op that made t saved it for its backward (exp keeps its output; logsumexp keeps
        # it with the summed axis, and returns a reshape of it): that backward must now see a
        # change made through a view, as it sees changes of its inputs. (t is no view of an
        # input, or it would have a base: what it shares memory with is its op's own.)
        node.saved_outputs += ((holder, holder._version),)
    return holder


def _memory_root(array):
    """The object at the end of the ``.base`` chain, which owns the memory: an array, or the
    buffer an array was made over (``np.frombuffer``'s bytes, a memory map, another library's
    tensor), which has no ``.base`` of its own."""
    while getattr(array, "base", None) is not None:
        array = array.base
    return array


def _can_unlock(array):
    """Whether ``bump_version`` can make the read-only ``array`` writable again: a plain NumPy
    array, unless it views memory that is itself read-only. NumPy's own rule decides: the flag
    is set, then put back."""
    if type(array) is not np.ndarray:
        return False
    try:
        array.setflags(write=True)
    except ValueError:
        return False
    array.setflags(write=False)
    return True


class Tensor:
    """An n-dimensional array that records the operations applied to it, for reverse-mode gradients.

    ``data`` is the backend array (NumPy or CuPy). Leaf tensors made with ``requires_grad=True``
    receive ``grad`` after ``backward``; gradients accumulate across calls until reset.
    """
    __slots__ = ("data", "grad", "_requires_grad", "_node", "_version", "_base", "_hooks", "__weakref__")
    # Make NumPy defer to Tensor's reflected operators (array + tensor -> Tensor.__radd__).
    __array_ufunc__ = None

    def __init__(self, data, requires_grad=False):
        source = data if isinstance(data, Tensor) else None
        if source is not None:  # its array, as tensor() and nn.Parameter take it
            data = source.data
        data = plain_array(data, "Tensor data")
        xp = get_array_module(data)
        self.data = data if isinstance(data, xp.ndarray) else _as_array(data, requires_grad)
        _check_real(self.data, "Tensor data", data)
        self._node = None  # before requires_grad, whose setter asks whether this is a leaf
        self.requires_grad = requires_grad
        self.grad = None
        self._version = 0
        # What holds the version of the memory ``data`` views (``_memory_owner``). A tensor
        # made over another's array shares it: an in-place change through either one must reach
        # a graph that saved the other, or its backward would use the new values without a word.
        self._base = None if source is None else _memory_owner(source)
        self._hooks = None

    @property
    def requires_grad(self):
        """Whether a backward pass computes this tensor's gradient (into ``.grad`` for a leaf)."""
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, requires_grad):
        """Set whether the gradient is computed: True or False (``check_bool``); integer and
        boolean data, which has none, is refused. The constructor sets it here too, so that a
        later change cannot skip the checks."""
        requires_grad = check_bool(requires_grad, "requires_grad")
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only float tensors can require gradients, got dtype {self.data.dtype}")
        if self._node is not None and not requires_grad:
            # backward would skip this input of the ops that use it, and the gradient through it
            # would be missing from the leaves' .grad without a word
            raise RuntimeError("requires_grad cannot be turned off on the result of recorded ops "
                               "(only on a leaf); use detach() for a tensor cut from the graph")
        self._requires_grad = requires_grad

    @property
    def version(self):
        """How many times the library changed ``data`` in place (see ``bump_version``); for a
        view of another tensor's memory, that memory's version."""
        return self._version if self._base is None else self._base._version

    def bump_version(self):
        """Record an in-place change of ``data``: call it just before writing into the array.

        The optimizers and ``Module.load_state_dict`` do. A graph that saved this tensor for its
        backward then refuses to use the changed values: ``backward()`` raises an error naming
        the op. On the CPU a saved array is read-only until its graph is released (see
        ``minivae.function``); this makes it writable again, since the version check takes over.
        A view's change is a change of the tensor it views.
        """
        if self._base is not None:
            self._base.bump_version()  # which unlocks the memory's owner
        else:
            self._version += 1
        data = self.data
        # (A view made while its memory was locked keeps the flag after the unlock.)
        if type(data) is np.ndarray and not data.flags.writeable and _can_unlock(data):
            data.setflags(write=True)

    def _replace_data(self, array):
        """Make ``array`` this tensor's ``data`` (``Module.to``, ``Module.astype``, Adam's flat
        buffer). When it is other memory than the memory whose version this tensor shared (it
        was made from another tensor, ``nn.Parameter(t)``), the version follows the array: the
        tensor gets one of its own, starting from the shared one. Else a step on the tensor would
        stop a graph that saved the other's memory, which nothing wrote into, and a change of
        that memory would stop the graphs that saved this tensor."""
        if self._base is not None and _memory_root(array) is not _memory_root(self._base.data):
            self._version, self._base = self._base._version, None
        self.data = array

    def register_hook(self, hook):
        """Call ``hook(grad)`` with this tensor's gradient once it is complete in a backward pass.

        "Complete" means summed over every use of the tensor, so the hook runs once per pass. It
        may return a replacement array (not a Tensor) of the same shape and dtype (or None to
        keep ``grad``); the replacement is what flows on to the inputs, or into ``.grad`` for a
        leaf (the hook runs before accumulation). Returns a handle whose ``remove()`` unregisters the hook.
        """
        if not callable(hook):
            raise TypeError(f"register_hook: expected a callable, got {type(hook).__name__}")
        if not self.requires_grad:
            raise RuntimeError("register_hook on a tensor that does not require grad "
                               "(no gradient will ever reach it)")
        if self._hooks is None:
            self._hooks = []
        self._hooks.append(hook)
        return HookHandle(self, hook)

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
        """The length of the first axis; a 0-d tensor has none (as in NumPy and PyTorch)."""
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self.data)

    def __iter__(self):
        """The tensors ``self[0]``, ``self[1]``, ... along the first axis (each one a getitem op
        of the graph). A 0-d tensor cannot be iterated, as in NumPy (without this, Python would
        index it until the first error and yield nothing)."""
        if self.data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(len(self)))

    def __bool__(self):
        """The truth of the single element, as in NumPy; any other size is ambiguous (without
        this, Python would fall back to ``len`` and call every non-empty tensor true)."""
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous "
                             "(it has not one element); compare .data with .any() or .all()")
        return bool(self.data)

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
        """Return a tensor sharing the data (and its version) but cut from the graph."""
        return Tensor(self)

    def to(self, device):
        """Return this tensor on ``device`` ("cpu", "gpu" or "auto", as ``Module.to`` takes it),
        a new leaf that keeps ``requires_grad``; itself where it is there already. A result of
        recorded ops is refused (``_check_may_leave_graph``)."""
        target = device_name(device)  # "cuda" or "GPU" is "gpu"
        if target == "auto":  # the device "auto" picks on this machine
            target = resolve_device(target)
        if device_of(self.data) == target:
            return self
        self._check_may_leave_graph("to")
        return Tensor(to_device(self.data, device), requires_grad=self.requires_grad)

    def astype(self, dtype):
        """Return a copy with another dtype, a new leaf that keeps ``requires_grad`` (casts are
        explicit, never silent). A result of recorded ops is refused (``_check_may_leave_graph``)."""
        self._check_may_leave_graph("astype")
        return Tensor(self.data.astype(dtype), requires_grad=self.requires_grad)

    def _check_may_leave_graph(self, method):
        """Refuse to copy a result of recorded ops into a new leaf: the gradient would stop at the
        copy without a word, and never reach the parameters the result came from."""
        if self._node is not None:
            raise RuntimeError(f"{method}: this tensor is the result of recorded ops, and a copy "
                               "would cut it from their graph (its gradient would never reach "
                               "their inputs); convert the inputs before the forward "
                               "(Module.astype, Module.to), or detach() it first to cut it on purpose")

    # ----- the backward pass ------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into the ``.grad`` of every leaf that requires it.

        ``grad`` is the gradient of the final objective with respect to this tensor; it may be
        omitted only for a one-element tensor. The graph's saved arrays are freed afterwards
        unless ``retain_graph`` is True. (``minivae.autograd.backward([a, b], [ga, gb])``
        starts from several tensors at once.)
        """
        retain_graph = check_bool(retain_graph, "backward: retain_graph")  # "no" would keep the graph
        _backward_pass([self], [grad], retain_graph)

    # Comparisons give plain boolean arrays: they have no gradient, and __eq__ stays identity.
    def __lt__(self, other): return self.data < _raw(other)
    def __le__(self, other): return self.data <= _raw(other)
    def __gt__(self, other): return self.data > _raw(other)
    def __ge__(self, other): return self.data >= _raw(other)


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


class _MemoryVersion:
    """The version of an op's result's memory, kept apart from the result once a view of it
    exists (``detach()``, a reshape under ``no_grad``). Such a view may be changed in place (an
    optimizer refining a detached latent, ``nn.init``), which changes what a graph saved from the
    result; sharing this version makes that graph refuse its backward, as for a parameter. It
    stands in for the result as a base: ``_version``, ``data``, ``_base`` and ``bump_version``."""
    __slots__ = ("_version", "data", "_base")

    def __init__(self, result):
        self._version, self.data, self._base = result._version, result.data, None

    bump_version = Tensor.bump_version


class HookHandle:
    """What ``Tensor.register_hook`` returns: ``remove()`` unregisters the hook."""
    __slots__ = ("tensor", "hook")

    def __init__(self, tensor, hook):
        self.tensor, self.hook = tensor, hook

    def remove(self):
        """Unregister the hook (once; later calls do nothing)."""
        hooks = self.tensor._hooks
        if hooks is not None and self.hook in hooks:
            hooks.remove(self.hook)


def _run_hooks(t, grad):
    """``grad`` after each of ``t``'s hooks (a hook returning None keeps it)."""
    for hook in t._hooks:
        new = hook(grad)
        if new is None:
            continue
        if isinstance(new, np.generic):  # what NumPy's arithmetic makes of a 0-d array
            new = np.asarray(new)
        new = plain_array(new, "a gradient hook's result")  # an ndarray, but no op skips its mask
        xp = get_array_module(grad)
        if not isinstance(new, xp.ndarray):  # a Tensor would end up in .grad or in a backward
            raise TypeError(f"a gradient hook returned a {type(new).__name__}; it must return None "
                            f"or a {xp.__name__}.ndarray, as the gradient it gets is one")
        if new.shape != grad.shape or new.dtype != grad.dtype:
            raise RuntimeError(f"a gradient hook returned {new.dtype} {tuple(new.shape)} for a "
                               f"gradient of {grad.dtype} {tuple(grad.shape)}")
        grad = new
    return grad


def backward(tensors, grads, retain_graph=False):
    """Accumulate into the ``.grad`` of every leaf the gradient of sum_k <grads[k], tensors[k]>.

    ``grads[k]`` is the gradient of the objective with respect to ``tensors[k]`` (None only for a
    one-element tensor: then 1). Each node's backward runs once, after every use of its outputs
    has sent back its gradient; the graph's saved arrays are freed afterwards unless
    ``retain_graph`` is True.

    Gradients that reach the same tensor are summed as ``acc = g if acc is None else acc + g``,
    always into a new array: an op may hand one array to several inputs (``add`` gives g to
    both), so adding into it in place would change another tensor's gradient too. A leaf keeps
    the summed array as its ``.grad`` when that array is surely its own (not a view, not given to
    another leaf, and no context outlives the pass); otherwise it gets a copy. A tensor's hooks
    run when its sum is complete: just before its node's backward, or at the end for a leaf.
    """
    retain_graph = check_bool(retain_graph, "backward: retain_graph")  # "no" would keep the graph
    tensors, grads = _check_roots(tensors, grads)
    _backward_pass(tensors, grads, retain_graph)


def _backward_pass(tensors, grads, retain_graph):
    """``backward`` from roots as ``_check_roots`` returns them: ``tensors`` a sequence of
    Tensors and ``grads`` one of as many gradients (``retain_graph`` a bool). ``Tensor.backward``
    starts here, since ``[self]`` and ``[grad]`` are such sequences: the checks could not fail."""
    pending = {}  # tensor -> the sum of the gradients that reached it so far
    for t, g in zip(tensors, grads):
        _accumulate(pending, t, _root_gradient(t, g))
    anomaly = _state.anomaly
    for node in _topological_order(tensors):
        if node.ctx is None:
            raise RuntimeError("backward() through a graph that was already freed; "
                               "pass retain_graph=True to the first backward()")
        out_grads = _output_gradients(node, pending)
        if out_grads is None:
            continue  # no gradient reached this op (an op after it returned None)
        if node.versions or node.saved_outputs:  # a node that saved no input has none to check
            node.check_versions()
        in_grads = _node_backward(node, out_grads, anomaly)
        for inp, g in zip(node.inputs, in_grads):
            if g is not None and inp._requires_grad:
                _accumulate(pending, inp, _input_gradient(node.fn, g, inp.data))
        if not retain_graph:
            node.release()  # drop the saved arrays and the input tensors
    # What is left are the leaves' complete sums (every op that feeds them has run).
    _store_leaf_gradients(pending, retain_graph)


def _store_leaf_gradients(pending, retain_graph):
    """Add each leaf's complete gradient in ``pending`` to its ``.grad``, after its hooks. A leaf
    keeps the summed array itself only where it is surely its own (see ``backward``)."""
    given = set()  # ids of the arrays already given to a leaf in this pass
    for leaf, g in pending.items():
        if leaf._hooks:
            hooked = _run_hooks(leaf, g)
            g = g if hooked is g else hooked.copy()  # a replacement may be the hook's own array
        if leaf.grad is not None:
            leaf.grad = _array(leaf.grad + g)  # a new array: the caller may hold the old .grad
            continue
        if retain_graph or getattr(g, "base", None) is not None or id(g) in given:
            g = g.copy()  # a context may keep g, or g is a view, or another leaf has it
        given.add(id(g))
        leaf.grad = g


def _accumulate(pending, t, g):
    """Add ``g`` to the sum of the gradients of ``t`` in ``pending``, as a new array: ``g`` may be
    an array that an op also handed to another input (see ``backward``)."""
    acc = pending.get(t)
    pending[t] = g if acc is None else _array(acc + g)


def _output_gradients(node, pending):
    """The complete gradient of each of ``node``'s outputs, taken out of ``pending`` and passed
    through the output's hooks (None for an output that none reached, or that is gone); None
    when no gradient reached any output."""
    out_grads, reached = [], False
    for ref in node.outputs:
        out = ref()
        g = pending.pop(out, None)
        if g is not None:
            reached = True
            if out._hooks:
                g = _run_hooks(out, g)
        out_grads.append(g)
    return out_grads if reached else None


def _node_backward(node, out_grads, anomaly):
    """The gradients for ``node``'s inputs from its backward, as a tuple of one per input (None
    where an input needs none); in anomaly mode, refused where the backward made NaN or Inf."""
    fn, ctx = node.fn, node.ctx
    in_grads = fn.backward(ctx, *out_grads)
    if type(in_grads) is not tuple:
        in_grads = (in_grads,)
    if len(in_grads) != len(node.inputs):
        raise RuntimeError(f"{fn.__name__}.backward returned {len(in_grads)} gradient(s) for "
                           f"{len(node.inputs)} input(s); return one per input (None for none)")
    if anomaly:
        _check_finite(fn, "backward", in_grads,
                      out_grads + [t.data for t in node.inputs] + list(ctx.saved),
                      "upstream gradients, inputs and saved arrays")
    return in_grads


def _input_gradient(fn, g, data):
    """``g``, the gradient that ``fn.backward`` returned for the input whose array is ``data``,
    summed back to that input's shape (``_unbroadcast``); another dtype is refused, never cast."""
    g = _array(g)
    if g.shape != data.shape:
        g = _unbroadcast(g, data.shape, fn)
    if g.dtype != data.dtype:
        raise RuntimeError(f"{fn.__name__}.backward returned {g.dtype} for a {data.dtype} input")
    return g


def _array(g):
    """``g`` as an array: NumPy's arithmetic on 0-d arrays returns NumPy scalars (``g * out`` in
    a backward, ``acc + g`` here), but every gradient, a leaf's ``.grad`` and what a hook gets,
    is an array (writable, with the array's methods), as for any other shape and on CuPy."""
    return np.asarray(g) if isinstance(g, np.generic) else g


def _check_roots(tensors, grads):
    """``tensors`` and ``grads`` of ``backward`` as two tuples of one length, ``tensors`` all
    Tensors. Why: zip would drop the tensors that have no gradient (or the gradients that have
    no tensor) without a word, and a Tensor given alone would be read as its rows."""
    for name, value in (("tensors", tensors), ("grads", grads)):
        if isinstance(value, Tensor):
            raise TypeError(f"backward(): {name} must be a sequence with one entry per tensor, got "
                            "a Tensor; write t.backward(grad), or backward([t], [grad])")
    tensors = check_sequence(tensors, "backward(): tensors", "Tensors")
    grads = check_sequence(grads, "backward(): grads", "gradients (None, arrays or Tensors)")
    if len(grads) != len(tensors):
        raise ValueError(f"backward(): {len(tensors)} tensor(s) but {len(grads)} gradient(s); give "
                         "one gradient per tensor (None for a one-element tensor)")
    for k, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"backward(): tensors[{k}] is a {type(t).__name__}, not a Tensor")
    return tensors, grads


def _root_gradient(t, grad):
    """The starting gradient of ``t`` for a backward pass: a new array of t's shape and dtype."""
    xp = get_array_module(t.data)
    if not t.requires_grad:
        raise RuntimeError("backward() on a tensor that does not require grad "
                           "(no input had requires_grad=True, or it was made under no_grad)")
    if grad is None:
        if t.data.size != 1:
            raise RuntimeError(f"backward() on a non-scalar tensor of shape {t.shape} needs "
                               "grad=, the gradient of the objective with respect to it")
        return xp.ones_like(t.data)
    # A copy: the caller keeps its array, and no leaf's .grad may alias it. Numbers and lists
    # take t's dtype; an array or tensor of another float dtype is refused, never cast.
    grad = plain_array(grad, "backward(): grad")  # the copy would drop a mask
    if isinstance(grad, Tensor):
        grad = grad.data.copy()
    elif getattr(grad, "dtype", None) is not None and grad.dtype.kind == "f" \
            and not isinstance(grad, np.generic):
        grad = xp.array(grad)
    else:
        given = grad if hasattr(grad, "dtype") else np.asarray(grad)
        _check_real(given, "backward(): grad", grad)
        grad = xp.array(given, dtype=t.dtype)
    if grad.dtype != t.dtype:
        raise TypeError(f"backward(): grad is {grad.dtype}, tensor is {t.dtype}")
    if grad.shape != t.shape:
        raise ValueError(f"backward(): grad has shape {grad.shape}, tensor has {t.shape}")
    return grad


def _topological_order(roots):
    """The nodes the tensors ``roots`` were computed through, each before the nodes that made its
    inputs, so that a node runs after every use of its outputs has sent back its gradient.

    An explicit-stack depth-first search (deep graphs never hit Python's recursion limit); a
    tensor made by no op (a leaf, or a constant) has no node and ends the search there.
    """
    order, visited = [], set()
    stack = [(t._node, False) for t in roots if t._node is not None]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in visited:
            continue
        visited.add(node)
        stack.append((node, True))
        for inp in node.inputs:
            if inp._node is not None and inp._node not in visited:
                stack.append((inp._node, False))
    order.reverse()
    return order


def tensor(data, requires_grad=False, dtype=None):
    """Make a Tensor from a number, a list or an array.

    Python floats and lists with a float become the default dtype (float32); arrays and NumPy
    scalars keep their dtype unless ``dtype`` is given. Python integers and booleans (and lists
    of them) stay integer or boolean, ops on them computing in floating point, except with
    ``requires_grad=True``: then they become the default dtype too, as in ``nn.Parameter``.
    An integer array cannot require gradients.
    """
    if isinstance(data, Tensor):
        if dtype is None or data.dtype == dtype:
            return Tensor(data, requires_grad=requires_grad)  # its array, and so its version
        data = data.data
    data = plain_array(data, "Tensor data")  # before the cast, which would drop a mask
    if dtype is not None:
        array = get_array_module(data).asarray(data)
        _check_real(array, "Tensor data", data)  # before the cast, which makes None a NaN
        data = array.astype(dtype, copy=False)
    return Tensor(data, requires_grad=requires_grad)


def _as_array(data, requires_grad):
    """``data``, not an array of the backend, as one: a NumPy scalar with its dtype; Python
    numbers and lists in NumPy's dtype, except floats (and integers that will require gradients)
    in the default dtype."""
    if isinstance(data, np.generic):
        return np.asarray(data)
    array = np.asarray(data)
    if array.dtype.kind == "f" or (requires_grad and array.dtype.kind in "iub"):
        array = array.astype(get_default_dtype())
    return array
