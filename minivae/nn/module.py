"""Module, Parameter and the containers (Sequential, ModuleList).

A Module owns three registries, filled by plain attribute assignment:

* ``_parameters``: name -> Parameter (or None, for an optional parameter such as a missing bias),
* ``_buffers``: name -> backend array that is state but not trained (BatchNorm's running
  statistics), registered with ``register_buffer``,
* ``_modules``: name -> child Module.

Names are dotted through the tree (``encoder.0.weight``), as in PyTorch, and ``state_dict`` maps
those names to NumPy arrays so a model can be saved in an ``.npz`` file without pickle.
"""
import contextlib
import operator
from collections import namedtuple

import numpy as np

from ..autograd import Tensor, _can_unlock, no_grad
from ..backend import device_of, is_array, resolve_device, to_device
from ..checks import check_bool, check_mapping


class StateDictError(ValueError):
    """``load_state_dict`` was given names, shapes or dtypes that do not match the module."""


#: What a non-strict ``load_state_dict`` reports: the names it did not find and did not know.
IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Parameter(Tensor):
    """A Tensor that is a trainable weight of a Module: a leaf with ``requires_grad=True``.

    Assigning a Parameter to an attribute of a Module registers it. Its data takes the dtypes
    ``mv.tensor`` gives: Python numbers and lists the default dtype (float32, integers included,
    as they require gradients); arrays and NumPy scalars keep theirs.
    """
    __slots__ = ()  # Tensor uses __slots__; an empty tuple keeps Parameter free of a __dict__

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter({self.data!r})"


def _check_name(module, kind, name, into=None):
    """Refuse ``name`` for a parameter, buffer or submodule (``kind``) of ``module``:

    * unless it is a non-empty string without ".": state_dict joins the names of the tree with
      ".", so "fc.weight" next to a submodule "fc", or an empty name, would give two arrays the
      same key and lose one;
    * when it names an attribute of the class (a method such as ``forward`` or ``state_dict``)
      or one that every Module sets (``training``, ``_parameters``, ...): normal attribute
      lookup finds those before the registries, so ``module.forward`` would stay the method while
      state_dict saved the parameter, and a buffer named "training" would replace the flag;
    * when ``into`` is the registry of a registration by name (``register_parameter``,
      ``register_buffer``, a Sequential's dict), also when any other attribute of ``module``,
      plain or registered elsewhere, has that name, as in PyTorch. An assignment
      (``into=None``) may replace one: ``module.x = Parameter(...)`` says which ``x`` it means.
    """
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a string, got {type(name).__name__}")
    if not name:
        raise KeyError(f"{kind} name is empty")
    if "." in name:  # KeyError as in PyTorch (it prints its message quoted: hence "")
        raise KeyError(f'{kind} name "{name}" contains "."')
    if name in _MODULE_ATTRIBUTES or hasattr(type(module), name):
        raise KeyError(f'{kind} name "{name}" is taken by the attribute {type(module).__name__}.'
                       f"{name}, which the {kind} would replace or be hidden by")
    if into is not None and name not in into and hasattr(module, name):
        raise KeyError(f'{kind} name "{name}": attribute "{name}" already exists (delete it '
                       "first to register the name anew)")


def _move_array(array, device):
    return None if array is None else to_device(array, device)


class Module:
    """Base class of every layer and model: subclasses set attributes in ``__init__`` (after
    ``super().__init__()``) and define ``forward``; calling the module calls ``forward``.

    ``training`` is True after construction; ``train()`` / ``eval()`` set it on the whole tree
    (BatchNorm uses batch statistics in training and running statistics in evaluation).
    """

    def __init__(self):
        # object.__setattr__ because our own __setattr__ needs these dicts to exist already.
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    # ----- registration -------------------------------------------------------------------------
    def _registries(self):
        regs = self.__dict__.get("_parameters"), self.__dict__.get("_buffers"), self.__dict__.get("_modules")
        if regs[0] is None:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning "
                                 "parameters, buffers or submodules")
        return regs

    def __setattr__(self, name, value):
        if isinstance(value, (Parameter, Module)) or name in self.__dict__.get("_parameters", ()) \
                or name in self.__dict__.get("_buffers", ()) or name in self.__dict__.get("_modules", ()):
            params, buffers, modules = self._registries()
            if isinstance(value, Parameter):
                _check_name(self, "parameter", name)
                self._forget(name, keep=params)
                params[name] = value
            elif isinstance(value, Module):
                _check_name(self, "submodule", name)
                self._forget(name, keep=modules)
                modules[name] = value
            elif name in params:
                if value is not None:
                    raise TypeError(f"cannot assign a {type(value).__name__} to parameter {name!r}: "
                                    "use a Parameter (or None), or set its .data")
                params[name] = None
            elif name in buffers:
                if value is not None and not is_array(value):
                    raise TypeError(f"cannot assign a {type(value).__name__} to buffer {name!r}: "
                                    "buffers hold NumPy or CuPy arrays")
                buffers[name] = value
            else:
                if value is not None:
                    raise TypeError(f"cannot assign a {type(value).__name__} to submodule {name!r}")
                modules[name] = None
            return
        object.__setattr__(self, name, value)

    def _forget(self, name, keep):
        """Remove ``name`` from the instance dict and from every registry but ``keep``, the one it
        is about to be assigned in. A name already in ``keep`` stays where it is (assigning to a
        dict key keeps its position), so a replaced stage of a Sequential runs where the old one
        did and the order of ``parameters()`` (the optimizer's state order) does not change."""
        for reg in self._registries():
            if reg is not keep:
                reg.pop(name, None)
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        # Only reached when normal lookup fails, i.e. for registered names.
        d = self.__dict__
        for reg in ("_parameters", "_buffers", "_modules"):
            if reg in d and name in d[reg]:
                return d[reg][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for reg in ("_parameters", "_buffers", "_modules"):
            if name in self.__dict__.get(reg, ()):
                del self.__dict__[reg][name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        """Register ``param`` (a Parameter, or None for an absent optional weight) under ``name``.

        A name that another attribute already has (plain, a buffer or a submodule; or one of the
        class, such as ``forward``) is refused with a KeyError, as in PyTorch; assigning
        ``module.name = param`` replaces a plain attribute, buffer or submodule on purpose."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}): expected a Parameter or None, "
                            f"got {type(param).__name__}")
        params = self._registries()[0]
        _check_name(self, "parameter", name, into=params)
        params[name] = param  # a name already registered keeps its position

    def register_buffer(self, name, array):
        """Register ``array`` (a NumPy or CuPy array, or None) as non-trained state saved in
        ``state_dict``. A NumPy scalar or a Tensor is refused (TypeError): a buffer is written
        in place and moved by ``to()`` as an array.

        A name that another attribute already has (plain, a parameter or a submodule; or one of
        the class, such as ``forward``) is refused with a KeyError, as in PyTorch."""
        if array is not None and not is_array(array):
            raise TypeError(f"register_buffer({name!r}): expected a NumPy or CuPy array, "
                            f"got {type(array).__name__}")
        buffers = self._registries()[1]
        _check_name(self, "buffer", name, into=buffers)
        buffers[name] = array  # a name already registered keeps its position

    # ----- traversal ----------------------------------------------------------------------------
    def named_children(self):
        """Yield (name, module) for each direct submodule."""
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self):
        """Yield each direct submodule."""
        for _, m in self.named_children():
            yield m

    def _walk(self, prefix=None):
        """Yield (dotted name, module) for this module and every descendant, once each, in
        pre-order; the names are built only when ``prefix`` is a string (None otherwise: the
        nameless walk that ``parameters`` and ``zero_grad`` take on every step is 4x cheaper)."""
        seen = set()
        stack = [(prefix, self)]
        while stack:  # an explicit stack (pre-order), as in the engine: no recursion limit
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            if name is None:
                stack.extend([(None, c) for c in reversed(m._modules.values()) if c is not None])
            else:
                kids = [(f"{name}.{k}" if name else k, c) for k, c in m.named_children()]
                stack.extend(reversed(kids))

    def named_modules(self, prefix=""):
        """Yield (dotted name, module) for this module ("" for itself) and every descendant, once each."""
        return self._walk(prefix)

    def modules(self):
        """Yield this module and every descendant, once each."""
        for _, m in self._walk():
            yield m

    def _parameter_items(self, prefix=None, recurse=True):
        """(dotted name, Parameter) for every parameter once (a shared one appears once); names
        only when ``prefix`` is a string, as in ``_walk``."""
        seen = set()
        for mname, m in (self._walk(prefix) if recurse else [(prefix, self)]):
            for name, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (None if mname is None else f"{mname}.{name}" if mname else name), p

    def named_parameters(self, prefix="", recurse=True):
        """Yield (dotted name, Parameter) for every parameter; a shared parameter appears once."""
        return self._parameter_items(prefix, recurse)

    def parameters(self, recurse=True):
        """Yield every Parameter of the tree once (the input an optimizer expects)."""
        for _, p in self._parameter_items(None, recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        """Yield (dotted name, array) for every registered buffer that is not None."""
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mname, m in mods:
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{mname}.{name}" if mname else name), b

    def buffers(self, recurse=True):
        """Yield every buffer array."""
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        """Call ``fn(module)`` once on every module of the tree, children before their parent
        and siblings in the order they were added, as PyTorch does (for ``Sequential(a, b)``:
        a, b, then the Sequential), so a custom init that draws from one generator fills the
        layers in the order they are listed; return self."""
        order, seen = [], set()
        stack = [(self, False)]
        while stack:  # post-order with an explicit stack, as in _walk: no recursion limit
            m, children_done = stack.pop()
            if children_done:
                order.append(m)
            elif id(m) not in seen:
                seen.add(id(m))
                stack.append((m, True))  # comes back to m once its children are done
                stack.extend((c, False) for c in reversed(list(m.children())))
        for m in order:
            fn(m)
        return self

    # ----- modes and gradients ------------------------------------------------------------------
    def train(self, mode=True):
        """Set ``training`` to ``mode`` on this module and every descendant; return self.

        ``mode`` must be True or False (TypeError otherwise, as ``check_bool``): ``train("False")``
        or ``train("eval")`` would be read by its truth and leave the model in training."""
        mode = check_bool(mode, "training mode")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        """Evaluation mode (``train(False)``): BatchNorm uses its running statistics; return self."""
        return self.train(False)

    def zero_grad(self):
        """Drop every parameter's gradient (set to None: cheaper than zero-filling, and never
        writes into an array the engine may share between tensors)."""
        for _, m in self._walk():  # a shared parameter is reset twice: harmless, and cheaper than dedup
            for p in m._parameters.values():
                if p is not None:
                    p.grad = None

    def requires_grad_(self, requires_grad=True):
        """Turn gradient tracking on or off for every parameter (to freeze a part); return self."""
        requires_grad = check_bool(requires_grad, "requires_grad")  # also when there is no parameter
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def num_parameters(self):
        """The number of scalar weights in the tree."""
        return sum(int(p.size) for p in self.parameters())

    # ----- devices and dtypes -------------------------------------------------------------------
    def to(self, device):
        """Move every parameter, gradient and buffer to ``device`` ("cpu", "gpu", "auto"); return self.

        The Parameter objects stay the same (only their ``.data`` is replaced), so an optimizer
        built before the move keeps working (it moves its own state on the next step).
        """
        device = resolve_device(device)
        for p in self.parameters():
            p._replace_data(to_device(p.data, device))
            p.grad = _move_array(p.grad, device)
        for m in self.modules():
            for name, b in m._buffers.items():
                m._buffers[name] = _move_array(b, device)
        return self

    def astype(self, dtype):
        """Convert every float parameter and float buffer to ``dtype`` in place (gradients are
        dropped); return self. Integer buffers (counters) keep their dtype.

        ``dtype`` must be a float dtype (TypeError otherwise): an integer, bool or string dtype
        would truncate the weights and leave parameters that cannot take a gradient."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"astype takes a float dtype such as float32 or float64, got {dtype}")
        for p in self.parameters():
            if p.data.dtype.kind == "f":
                p._replace_data(p.data.astype(dtype))
                p.grad = None
        for m in self.modules():
            for name, b in m._buffers.items():
                if b is not None and b.dtype.kind == "f":
                    m._buffers[name] = b.astype(dtype)
        return self

    # ----- state ------------------------------------------------------------------------------
    def _state_entries(self):
        """name -> (owner module, registry name, key) for every saved array, in state_dict order."""
        entries = {}
        for mname, m in self.named_modules():
            for reg in ("_parameters", "_buffers"):
                for key, value in getattr(m, reg).items():
                    if value is None:
                        continue
                    name = f"{mname}.{key}" if mname else key
                    entries.setdefault(name, (m, reg, key))
        return entries

    def state_dict(self):
        """Return {dotted name: NumPy array} for every parameter and buffer (copies, on the CPU).

        The values are plain arrays, so ``np.savez(path, **model.state_dict())`` saves a model
        and ``np.load(path, allow_pickle=False)`` reads it back without running any code.
        """
        out = {}
        for name, (m, reg, key) in self._state_entries().items():
            value = getattr(m, reg)[key]
            array = value.data if isinstance(value, Tensor) else value
            host = to_device(array, "cpu")
            out[name] = host.copy() if host is array else host  # never hand out our own array
        return out

    def load_state_dict(self, state, strict=True):
        """Copy the arrays of ``state`` (name -> array) into the parameters and buffers, in place.

        Every problem is collected and reported at once, before anything is changed: names the
        module lacks or the state lacks (only when ``strict``), and shape or dtype mismatches
        (always: a silent cast or reshape would hide a wrong checkpoint), and arrays that cannot
        be written (a buffer that a live graph saved for its backward pass). Returns
        ``IncompatibleKeys(missing_keys, unexpected_keys)``. A key that is not a string can name
        nothing (a list of arrays turned into a dict by position, say), so it is refused with a
        TypeError, strict or not, and so is a ``state`` that is no mapping (a list of arrays).
        """
        check_mapping(state, "state_dict", "parameter and buffer names to arrays (such as a module's state_dict())")
        bad_keys = [f"{k!r} ({type(k).__name__})" for k in state if not isinstance(k, str)]
        if bad_keys:
            raise TypeError(f"state_dict keys must be parameter or buffer names (strings), "
                            f"got {', '.join(bad_keys)}")
        entries = self._state_entries()
        missing = [n for n in entries if n not in state]
        unexpected = [n for n in state if n not in entries]
        problems = []
        if strict and missing:
            problems.append("missing key(s) in state_dict: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected key(s) in state_dict: " + ", ".join(unexpected))
        updates = []
        for name, (m, reg, key) in entries.items():
            if name not in state:
                continue
            owner = getattr(m, reg)[key]
            target = owner.data if isinstance(owner, Tensor) else owner
            value = state[name]
            value = value.data if isinstance(value, Tensor) else value
            if not hasattr(value, "shape"):
                value = np.asarray(value)
            if tuple(value.shape) != tuple(target.shape):
                problems.append(f"{name}: shape {tuple(value.shape)} in state_dict, "
                                f"{tuple(target.shape)} in the module")
            elif value.dtype != target.dtype:
                problems.append(f"{name}: dtype {value.dtype} in state_dict, {target.dtype} in the "
                                "module (convert one with astype first)")
            elif not _can_write(owner, target):
                problems.append(f"{name}: the module's array is read-only (saved for the backward "
                                "pass of a graph that is still alive: run backward or drop it first; "
                                "or made read-only by its owner)")
            else:
                updates.append((owner, target, value))
        if problems:
            raise StateDictError(f"error(s) loading state_dict into {type(self).__name__}:\n  "
                                 + "\n  ".join(problems))
        for owner, target, value in updates:
            if isinstance(owner, Tensor):
                owner.bump_version()  # a graph that saved the old values must not use them
            # In place, so views of the arrays and the Parameter objects stay valid.
            target[...] = to_device(value, device_of(target))
        return IncompatibleKeys(missing, unexpected)

    # ----- calling and printing -----------------------------------------------------------------
    def forward(self, *args, **kwargs):
        """Compute the module's output; every subclass defines it."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self):
        """One line of the module's own settings for ``repr`` (subclasses override it)."""
        return ""

    def __repr__(self):
        """PyTorch's layout: ``Name(extra)`` for a module without children whose ``extra_repr``
        is one line; otherwise each line of ``extra_repr``, then each child, on its own
        indented line, so that settings never run into the first child."""
        extra_repr = self.extra_repr()
        extra = extra_repr.split("\n") if extra_repr else []
        children = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self.named_children()]
        if not children and len(extra) <= 1:
            return f"{type(self).__name__}({''.join(extra)})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(extra + children) + "\n)"


#: The attributes every Module sets in ``__init__`` (its registries and ``training``), which a
#: parameter, buffer or submodule of the same name would replace.
_MODULE_ATTRIBUTES = frozenset(vars(Module()))


@contextlib.contextmanager
def evaluating(module):
    """Put ``module`` in eval mode with no graph recorded, restoring its mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        with no_grad():
            yield
    finally:
        module.train(was_training)


def _can_write(owner, target):
    """Whether ``load_state_dict`` can write into ``target``, the array of ``owner`` (a Tensor,
    or for a buffer the array itself), checked before anything is written.

    A NumPy array a live graph saved is read-only (see ``minivae.function``). For a Tensor's
    array that is no obstacle where ``bump_version`` can unlock it, since the version check then
    stops those graphs. A buffer has no version, so nothing would stop a graph that saved it
    from using the new values: it is refused. CuPy arrays have no read-only flag.
    """
    if not isinstance(target, np.ndarray) or target.flags.writeable:
        return True
    return isinstance(owner, Tensor) and _can_unlock(target)


class ModuleList(Module):
    """A list of modules, each registered (named "0", "1", ...) so their parameters are found.

    It has no forward: iterate over it in the parent's forward.

    The names are the stages' positions, so state_dict keys ("1.weight") say where a stage is,
    with two exceptions that keep a key meaning the same stage: a slice keeps the names of the
    whole (``a[1:]`` holds "1" and "2", and its state_dict loads into ``a``), and ``append``
    never replaces a stage (it takes the next free number). ``insert``, ``pop`` and ``del``
    move stages, so afterwards every stage named by digits is renamed after its new position
    ("0", "1", ..., as PyTorch renumbers), in a slice too; any other name, such as "fc" from a
    Sequential's dict, is kept: renumbering it would change the keys of a checkpoint for no reason.

    An optimizer holds the Parameters it was built with: after ``insert`` it does not train the
    new stage, and after a removal it keeps the removed stage's state (and its place in the
    optimizer's state_dict). Build the optimizer after changing the list.
    """

    def __init__(self, modules=()):
        super().__init__()
        self.extend(modules)

    def _check(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__} holds Modules, got {type(module).__name__}")
        return module

    def append(self, module):
        """Add ``module`` at the end, named by its position, or by the next integer not taken
        (a slice keeps the names of the whole, a named Sequential may hold "2"); return self."""
        n = len(self._modules)
        while str(n) in self._modules:  # never replace a stage
            n += 1
        self._modules[str(n)] = self._check(module)
        return self

    def extend(self, modules):
        """Add each of ``modules`` at the end; return self."""
        for m in modules:
            self.append(m)
        return self

    def insert(self, index, module):
        """Put ``module`` before the stage at position ``index`` (as ``list.insert``: negative
        counts from the end, and past either end means at that end); the stages are renamed
        after their positions (see the class docstring)."""
        stages = list(self._modules.items())
        stages.insert(self._index(index), ("0", self._check(module)))  # digits: named by position
        self._renumber(stages)

    def pop(self, index=-1):
        """Remove the stage at position ``index`` (default: the last) and return it; the stages
        after it are renamed after their new positions (see the class docstring)."""
        index = self._position(index)
        module = self[index]
        del self[index]
        return module

    def __delitem__(self, index):
        """Remove the stage at position ``index``, or the stages of a slice; the stages after
        them are renamed after their new positions (see the class docstring)."""
        stages = list(self._modules.items())
        del stages[index if isinstance(index, slice) else self._position(index)]
        self._renumber(stages)

    def _renumber(self, stages):
        """Hold ``stages``, (name, module) pairs in their new order, renaming each stage named by
        digits after its position (other names are never digits, so no two stages meet)."""
        self._modules.clear()  # in place: the same dict, as every other change to the registry
        for position, (name, module) in enumerate(stages):
            self._modules[str(position) if name.isdigit() else name] = module

    def _index(self, i):
        """``i`` as an int: indices are integers (a name such as "0" is refused)."""
        try:
            return operator.index(i)
        except TypeError:
            raise TypeError(f"{type(self).__name__} indices must be integers, not "
                            f"{type(i).__name__}") from None

    def _position(self, i):
        """The position, from 0, of the stage at index ``i`` (negative counts from the end)."""
        i, n = self._index(i), len(self._modules)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {type(self).__name__} of length {n}")
        return i % n

    def _key(self, i):
        """The name of the stage at index ``i`` (an integer; negative counts from the end)."""
        return list(self._modules)[self._position(i)]

    def __getitem__(self, i):
        if isinstance(i, slice):
            # The stages keep their names, so the slice's state_dict keys are those of the whole
            # (and load into the same stages of an equal list). The constructor would renumber.
            part = ModuleList()
            part._modules.update(list(self._modules.items())[i])
            return part
        return self._modules[self._key(i)]

    def __setitem__(self, i, module):
        self._modules[self._key(i)] = self._check(module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Modules applied one after another: ``Sequential(Linear(784, 512), ReLU(), Linear(512, 10))``.

    A single dict argument names the stages: ``Sequential({"fc": Linear(2, 3), "act": ReLU()})``;
    ``insert``, ``pop`` and ``del`` keep those that are not digits (see ``ModuleList``).
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            for name, m in modules[0].items():
                name = str(name)
                if name in self._modules:  # {1: a, "1": b} would keep b alone, without a word
                    raise KeyError(f'submodule name "{name}" is given twice (as {name!r} and as a '
                                   "key that reads the same as a string)")
                _check_name(self, "submodule", name, into=self._modules)
                self._modules[name] = self._check(m)
        else:
            self.extend(modules)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Sequential(dict(list(self._modules.items())[i]))  # names kept, as in ModuleList
        return super().__getitem__(i)

    def forward(self, x):
        """Feed ``x`` through each module in order."""
        for m in self:
            x = m(x)
        return x
