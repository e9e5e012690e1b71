"""Optimizers (SGD with momentum, Adam, AdamW, RMSprop), gradient clipping (by norm or by value)
and learning-rate schedules.

Conventions shared by every optimizer here:

* ``p.grad`` is read-only. The engine may hand one gradient array to several tensors (``a + b``
  gives both the same array), so an update never writes into it; ``clip_grad_norm_`` and
  ``clip_grad_value_`` replace ``p.grad`` with a clipped copy instead of clipping in place.
* Updates are in place (``p.data`` is modified, not replaced).
* Adam keeps its parameters in one flat array per dtype and device: at its first step each
  ``p.data`` becomes a view of that array, and the moments ``exp_avg`` and ``exp_avg_sq`` are
  views of flat arrays with the same layout. On the GPU a step gathers the gradients into one
  flat array and updates all parameters with one kernel launch; on the CPU the same operations
  run parameter by parameter on views of the flat arrays (one parameter's arrays stay in the
  cache across the passes). When ``p.data`` or a state array has been replaced since (``Module.to``,
  ``astype``, assigning ``opt.state[i]``), the next step builds the layout anew from the current
  arrays. SGD and RMSprop update parameter by parameter.
* An optimizer that a training step captured as a CUDA graph can run (Adam, RMSprop) gives the
  scalars of its update at step count t with learning rate lr, ``update_scalars(t, lr)``:
  ``eps_s``, ``neg_step`` and ``decay``. Graph mode computes them on the host for every step into
  a table in device memory and sets ``step_scalars`` to the current step's row, which the update
  then reads in place of its Python numbers (a graph replays the numbers it captured).
* Parameters whose ``grad`` is None are skipped (their state and step count do not advance).
* ``state_dict()`` is a flat ``{str: numpy array | int | float}``: hyperparameters by name,
  ``"flush_every"``, ``"num_params"``, and per parameter ``"state.<i>.<key>"`` (``i`` is the
  position in the ``params`` list). Save the arrays with ``np.savez`` and the numbers with
  ``json``; nothing needs pickle. ``load_state_dict`` restores hyperparameters and state
  exactly, so training resumed from a checkpoint is bit-for-bit the uninterrupted run.

Subnormal moments: when a gradient entry stays exactly zero (MNIST border pixels),
its moments decay geometrically, reach the subnormal range after some hundred steps and then
stick there (0.9 * 4 * 2^-149 rounds back to 4 * 2^-149), and subnormal arithmetic is slow on
CPUs. Every ``flush_every`` steps (default 10; 0 turns it off) the optimizer sets moment
entries below the dtype's smallest normal number (``finfo.tiny``, 1.2e-38 in float32) to zero.
This changes no result beyond rounding: in Adam the flushed second moment adds at most
sqrt(tiny) / sqrt(1 - beta2^t) ~ 3e-18 to a denominator that holds eps = 1e-8, far below half an
ulp of eps, and a flushed first moment moves a parameter by less than lr * tiny / eps ~ 1e-33.
The flush is the same on every device (on the GPU it costs four launches per moment array, eight
without amsgrad, every ten steps).

On the GPU, Adam's update is the kernel that ``minivae.gpu.dispatch`` registers for ``"Adam"``
(``kernels/adam.cu``): one launch over the flat arrays instead of the twelve element-wise passes
of the xp form (more with weight decay or amsgrad), with the same rounded operations in the same
order, so both give the same bits.
"""
import math
import numbers

import numpy as np

from .autograd import Tensor
from .backend import device_of, get_array_module, is_array, to_device
from .checks import FINITE, NON_NEGATIVE, check_bool, check_integer, check_mapping, check_ranges, out_of_range
from .gpu import dispatch

#: Steps between two flushes of subnormal optimizer state, on every device (0: never).
FLUSH_EVERY = 10


def _below_one(v):
    """Whether ``v`` is a decay rate in [0, 1) (1 would never forget; NaN fails the test)."""
    return 0 <= v < 1


_BETA = (_below_one, "in [0, 1), as each of betas")
#: Hyperparameter name -> (test, what the value must be): checked at construction
#: (``check_ranges``) and by ``load_state_dict`` (``out_of_range``). A NaN learning rate would
#: turn every parameter into NaN at the first step.
_RANGES = {"lr": NON_NEGATIVE, "momentum": NON_NEGATIVE, "dampening": FINITE,
           "weight_decay": NON_NEGATIVE, "eps": NON_NEGATIVE, "beta1": _BETA, "beta2": _BETA,
           "min_lr": NON_NEGATIVE, "gamma": NON_NEGATIVE, "decay": NON_NEGATIVE,
           "alpha": (_below_one, "in [0, 1)"),
           # inf is no clipping (the norm measured alone); a negative bound would flip the gradients
           "max_norm": (lambda v: v >= 0, ">= 0"), "clip_value": NON_NEGATIVE}


class Optimizer:
    """Base class: holds the parameter list and the per-parameter state.

    Subclasses list their scalar hyperparameters in ``_hyper`` (saved by ``state_dict``), the
    names of their per-parameter state in ``_state_keys`` (those to clear of subnormals in
    ``_flushed``), and define ``_update(i, p, g, state)``, which updates ``p.data`` in place.
    (Adam, which updates runs of parameters over flat arrays, has a ``step`` of its own, which
    calls an ``_update`` of its own.)
    """
    _hyper = ("lr",)
    _state_keys = ("step",)

    def __init__(self, params, lr, flush_every=FLUSH_EVERY):
        if isinstance(params, Tensor):
            params = [params]
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        seen = set()
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: parameter {i} is a {type(p).__name__}, "
                                "not a Tensor")
            if not p.is_leaf:
                raise ValueError(f"{type(self).__name__}: parameter {i} is not a leaf tensor "
                                 "(it was computed by an op); optimize the leaves it came from")
            if p.dtype.kind != "f":
                raise TypeError(f"{type(self).__name__}: parameter {i} has dtype {p.dtype}; "
                                "only float tensors can be optimized")
            if id(p) in seen:
                raise ValueError(f"{type(self).__name__}: parameter {i} appears twice in the list")
            seen.add(id(p))
        check_ranges(type(self), _RANGES, lr=lr)
        self.params = params
        self.lr = float(lr)
        # int() would make 2.5 a 2 and "10" a 10; a negative period would flush at every step
        self.flush_every = check_integer(flush_every, "flush_every", minimum=0)
        self.state = [dict() for _ in params]
        #: None, or a device array (eps_s, neg_step, decay) that the update reads in place of the
        #: numbers of ``update_scalars``: set by graph mode (see the module docstring).
        self.step_scalars = None

    # ----- the public API -------------------------------------------------------------------------
    def step(self, flush=None):
        """Update every parameter that has a gradient, in place (every gradient's shape is
        checked first, so a bad one leaves all parameters unchanged).

        ``flush``: whether the state is then cleared of subnormals; None (the default) does it
        every ``flush_every`` steps. A step captured as a CUDA graph fixes it when captured."""
        self._check_grads()
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            state = self._state_on_device(i, p)
            state["step"] = state.get("step", 0) + 1
            p.bump_version()  # a graph that saved p's old values must not use them
            self._update(i, p, g, state)
            if self._flush_now(state["step"], flush):
                for key in self._flushed:
                    if key in state:
                        flush_subnormals(state[key])

    def update_scalars(self, t, lr):
        """The scalars of the update at step count ``t`` with learning rate ``lr`` that a step
        captured as a CUDA graph reads from memory (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} cannot run in a step captured as a CUDA graph: "
                                  "it reads its numbers from the host")

    def set_steps(self, t):
        """Set the step count of every parameter that has state to ``t``. A training step captured
        as a CUDA graph runs its Python side (which counts steps) once, at the capture, and the
        device takes the replays: the trainer records the device's count here before a checkpoint."""
        for state in self.state:
            if "step" in state:
                state["step"] = int(t)

    def zero_grad(self):
        """Set every parameter's gradient to None (never zero-filled in place: grads may alias)."""
        for p in self.params:
            p.grad = None

    def state_dict(self):
        """The flat checkpoint dict: hyperparameters, ``num_params`` and ``state.<i>.<key>``
        entries (NumPy copies or Python numbers); see the module docstring."""
        out = {name: _plain(getattr(self, name)) for name in self._hyper}
        out["flush_every"] = self.flush_every
        out["num_params"] = len(self.params)
        for i, state in enumerate(self.state):
            for key, value in state.items():
                if hasattr(value, "shape"):
                    host = to_device(value, "cpu")
                    # A CPU state array is the live one, which later steps change in place: the
                    # checkpoint gets a copy (a GPU array's transfer is one already).
                    out[f"state.{i}.{key}"] = host.copy() if host is value else host
                else:
                    out[f"state.{i}.{key}"] = _plain(value)
        return out

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and per-parameter state from ``state_dict``, checking every
        name, number (a real number in its range; flush_every and each step count an integer
        >= 0), shape and dtype first (nothing changes when anything is wrong)."""
        check_mapping(state_dict, "state_dict", "names to values (such as an optimizer's state_dict())")
        sd = dict(state_dict)
        problems = []
        scalars = self._hyper + ("flush_every", "num_params")
        for name in scalars:
            if name not in sd:
                problems.append(f"missing key {name!r}")
            elif not _is_number(sd[name]):
                problems.append(f"{name} must be a number, got {sd[name]!r}")
        problems += out_of_range({name: sd[name] for name in self._hyper
                                  if name in sd and _is_number(sd[name])}, _RANGES)
        flush_every = sd.get("flush_every")
        if _is_number(flush_every) and not _is_count(flush_every):
            problems.append(f"flush_every must be an integer >= 0, got {flush_every!r}")
        n = sd.get("num_params")
        if _is_number(n) and n != len(self.params):
            problems.append(f"the state is for {n} parameters, this optimizer has {len(self.params)}")
        new_state = [dict() for _ in self.params]
        for key, value in sd.items():
            if key in scalars:
                continue
            parts = key.split(".") if isinstance(key, str) else []
            if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() \
                    or parts[2] not in self._state_keys:
                problems.append(f"unexpected key {key!r} for {type(self).__name__}")
                continue
            i, name = int(parts[1]), parts[2]
            if i >= len(self.params):
                problems.append(f"{key}: there is no parameter {i}")
                continue
            p = self.params[i]
            if name == "step":
                if not _is_number(value):
                    problems.append(f"{key} must be a number, got {value!r}")
                elif not _is_count(value):  # int() would make 2.5 a 2, and fail on NaN or inf
                    problems.append(f"{key} must be an integer >= 0, got {value!r}")
                else:
                    new_state[i][name] = int(value)
                continue
            value = np.asarray(value) if not hasattr(value, "shape") else value
            if tuple(value.shape) != tuple(p.data.shape) or value.dtype != p.data.dtype:
                problems.append(f"{key}: {tuple(value.shape)} {value.dtype} in the state, parameter "
                                f"{i} is {tuple(p.data.shape)} {p.data.dtype}")
                continue
            # A fresh contiguous copy on the parameter's device: updates write into it.
            new_state[i][name] = to_device(np.array(to_device(value, "cpu")), device_of(p.data))
        for i, st in enumerate(new_state):
            if st and "step" not in st:
                problems.append(f"state.{i}: arrays without a step count")
        if problems:
            raise ValueError(f"cannot load {type(self).__name__} state: " + "; ".join(problems))
        for name in self._hyper:  # each keeps its Python type (bools were saved as 0/1)
            setattr(self, name, type(getattr(self, name))(sd[name]))
        self.flush_every = int(sd["flush_every"])
        self.state = new_state

    # ----- helpers for subclasses -------------------------------------------------------------
    _flushed = ()  # names of the state arrays cleared of subnormals every flush_every steps

    def _check_grads(self):
        """Refuse a gradient (set by hand: backward gives the right kind) that does not match its
        parameter: another shape, or another dtype or device, which the update would cast
        silently or carry into the state (a float64 momentum for a float32 parameter)."""
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if not is_array(g):  # a list or a Tensor has no dtype (a list no shape) to check below
                raise TypeError(f"parameter {i}: its gradient must be a NumPy or CuPy array of shape "
                                f"{p.data.shape}, got {type(g).__name__}")
            if g.shape != p.data.shape:
                raise ValueError(f"parameter {i}: gradient of shape {g.shape} for a parameter "
                                 f"of shape {p.data.shape}")
            if g.dtype != p.data.dtype or device_of(g) != device_of(p.data):
                raise TypeError(f"parameter {i}: a {g.dtype} gradient on the {device_of(g)} for a "
                                f"{p.data.dtype} parameter on the {device_of(p.data)}; convert it "
                                "first")

    def _update(self, i, p, g, state):
        raise NotImplementedError

    def _flush_now(self, t, flush):
        """Whether the step at step count ``t`` clears the state of subnormals: ``flush``, or
        when it is None every ``flush_every`` steps."""
        return bool(self.flush_every) and t % self.flush_every == 0 if flush is None else flush

    def _state_on_device(self, i, p):
        """The state of parameter ``i``, moved to ``p``'s device if ``Module.to`` moved ``p``."""
        state = self.state[i]
        for key, value in state.items():
            if hasattr(value, "shape") and device_of(value) != device_of(p.data):
                state[key] = to_device(value, device_of(p.data))
        return state


def flush_subnormals(array, work=None):
    """Set the entries of ``array`` with |x| < finfo.tiny to +0, in place (see the module docstring).

    As a multiplication by a keep-mask of ones and zeros (x * 1 = x; x * 0 = +-0) and an addition
    of +0 (-0 + 0 = +0, x + 0 = x): the same result as ``copyto(array, 0, where=|array| < tiny)``
    in four fast passes, where ``copyto`` with ``where=`` alone is ten times slower. NaN is kept
    (its mask is 0, and NaN * 0 is NaN). ``work``: an array like ``array`` to build the mask in.
    """
    xp = get_array_module(array)
    keep = xp.abs(array, out=work)
    xp.greater_equal(keep, xp.finfo(array.dtype).tiny, out=keep)  # 1.0 or 0.0
    xp.multiply(array, keep, out=array)
    array += 0.0


def _is_number(value):
    """Whether ``value`` is a real number as a state_dict holds one: a Python or NumPy number
    (a bool too: ``state_dict`` saves amsgrad as 0 or 1), or a 0-d array of one, as ``np.load``
    gives back a number saved with ``np.savez``."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.dtype.kind in "biuf"
    return isinstance(value, numbers.Real)


def _is_count(value):
    """Whether the number ``value`` (``_is_number``) is a whole number >= 0, as a step count or
    flush_every is: False for NaN and infinities, and for a bool (which a count never is: True
    would be taken as 1), as ``check_integer`` refuses it in the constructor."""
    if np.asarray(value).dtype.kind == "b":
        return False
    return value >= 0 and float(value).is_integer()


def _plain(value):
    """A Python int or float for JSON (bools become ints)."""
    if isinstance(value, (int, np.integer, np.bool_)):  # a bool is an int
        return int(value)
    return float(value)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (PyTorch's formulation):

        d = g + weight_decay * p
        buf = d (first step), then buf = momentum * buf + (1 - dampening) * d
        d = d + momentum * buf (nesterov) or d = buf
        p = p - lr * d
    """
    _hyper = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    _state_keys = ("step", "momentum_buffer")
    _flushed = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 flush_every=FLUSH_EVERY):
        super().__init__(params, lr, flush_every)
        check_ranges(type(self), _RANGES, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        nesterov = check_bool(nesterov, "nesterov")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening 0")
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), nesterov

    def _update(self, i, p, g, state):
        d = p.data * self.weight_decay + g if self.weight_decay else g
        if self.momentum:
            mom = state.get("momentum_buffer")
            if mom is None:
                state["momentum_buffer"] = mom = d.copy()  # never alias the gradient
            else:
                mom *= self.momentum
                mom += d * (1 - self.dampening) if self.dampening else d
            d = mom * self.momentum + d if self.nesterov else mom
        p.data += d * -self.lr


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, optional L2 weight decay and AMSGrad:

        g = g + weight_decay * p                 (coupled L2, as torch.optim.Adam)
        m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
        vmax = max(vmax, v) and v := vmax       (amsgrad only)
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    The last line is computed as p - (lr s / c1) * m / (sqrt(v) + eps s), with c1 = 1 - beta1^t
    and s = sqrt(1 - beta2^t): the same number up to rounding, in five passes over the arrays.
    With ``decoupled_weight_decay`` (AdamW, Loshchilov & Hutter 2019) the decay is
    p = p (1 - lr weight_decay) before the update instead of a gradient term.

    The parameters live in one flat array per dtype and device (see the module docstring): on
    the GPU a step is one launch of the kernel registered for ``"Adam"`` in
    ``minivae.gpu.dispatch`` over all of them, on the CPU the xp code below, parameter by
    parameter. Parameters with different step counts (one
    that had no gradient at some step) are updated in separate runs, each with its own t.
    """
    _hyper = ("lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "decoupled_weight_decay")
    _state_keys = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _flushed = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, decoupled_weight_decay=False, flush_every=FLUSH_EVERY):
        super().__init__(params, lr, flush_every)
        beta1, beta2 = betas
        check_ranges(type(self), _RANGES, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.weight_decay, self.amsgrad = float(weight_decay), check_bool(amsgrad, "amsgrad")
        self.decoupled_weight_decay = check_bool(decoupled_weight_decay, "decoupled_weight_decay")
        self._layouts = []  # built at the first step

    @property
    def betas(self):
        """(beta1, beta2)."""
        return self.beta1, self.beta2

    def step(self, flush=None):
        """Update every parameter that has a gradient, in place: one flat update per run of
        parameters (see the class docstring). Every gradient's shape is checked first.

        ``flush``: whether the moments are then cleared of subnormals; None (the default) does
        it every ``flush_every`` steps. A step captured as a CUDA graph fixes it when captured.

        Raises ValueError, and changes nothing, when ``step_scalars`` is set and the parameters
        to update have different step counts (one had no gradient at an earlier step): they hold
        the scalars of one step count (the bias corrections depend on it)."""
        self._check_grads()
        if self.step_scalars is not None:
            self._check_one_step_count()
        if not self._layouts or not all(layout.holds(self.params, self.state, self.amsgrad)
                                        for layout in self._layouts):
            self._layouts = self._build_layouts()
        for layout in self._layouts:
            for a, b in layout.runs(self.params, self.state):
                for j in range(a, b):
                    self._advance(layout, j)
                t = self.state[layout.members[a]]["step"]
                self._update(layout, a, b, t, flush=self._flush_now(t, flush))

    def _check_one_step_count(self):
        """Refuse a step whose parameters to update have several step counts, which the one
        step count's scalars in ``step_scalars`` cannot serve."""
        counts = sorted({state.get("step", 0) for p, state in zip(self.params, self.state)
                         if p.grad is not None})
        if len(counts) > 1:
            raise ValueError(f"step_scalars hold the update's scalars of one step count, but the "
                             f"parameters to update have step counts {counts} (some had no "
                             "gradient at an earlier step)")

    def _advance(self, layout, j):
        """Start the step of member ``j`` of ``layout``: a new version of its parameter, one more
        step in its count, and its moments as the layout's views of them."""
        # a graph that saved the parameter's old values must not use them
        self.params[layout.members[j]].bump_version()
        state = self.state[layout.members[j]]
        state["step"] = state.get("step", 0) + 1
        for key, views in layout.views.items():
            if key != "param":
                if key not in state:  # no moments yet, or reset by load_state_dict
                    views[j][...] = 0
                state[key] = views[j]

    def update_scalars(self, t, lr):
        """The scalars of the update at step count ``t`` with learning rate ``lr``: b1, b2,
        ``eps_s`` = eps sqrt(1 - b2^t), ``neg_step`` = -lr sqrt(1 - b2^t) / (1 - b1^t), the coupled
        ``weight_decay`` and AdamW's ``decay`` = 1 - lr weight_decay (None without it)."""
        c1 = 1 - self.beta1 ** t
        s = math.sqrt(1 - self.beta2 ** t)
        decoupled = self.decoupled_weight_decay and self.weight_decay
        return dict(b1=self.beta1, b2=self.beta2, eps_s=self.eps * s, neg_step=-(lr * s / c1),
                    weight_decay=0.0 if self.decoupled_weight_decay else self.weight_decay,
                    decay=1 - lr * self.weight_decay if decoupled else None)

    def _build_layouts(self):
        groups = {}
        for i, p in enumerate(self.params):
            groups.setdefault((p.data.dtype, device_of(p.data)), []).append(i)
        return [_FlatLayout(members, self.params, self.state, self.amsgrad) for members in groups.values()]

    def _gathered(self, layout, a, b):
        """The gradients of members a .. b - 1 as one flat array (a parameter's own gradient,
        flattened, when there is one; else copied into the layout's gradient array)."""
        grads = [self.params[i].grad.reshape(-1) for i in layout.members[a:b]]
        if len(grads) == 1:
            return grads[0]
        out = layout.grad[layout.offsets[a]:layout.offsets[b]]
        get_array_module(out).concatenate(grads, out=out)
        return out

    def _update(self, layout, a, b, t, flush):
        """One Adam step at step count t of the members a .. b - 1 of ``layout``, in place: one
        launch of the registered kernel over their flat arrays, or the xp code parameter by
        parameter (on views of the same arrays; arrays of one parameter stay in the CPU's cache
        across the update's passes, where the whole flat array would not). With ``flush`` the
        moments are then cleared of subnormals in the same way: over the flat arrays after the
        kernel, parameter by parameter after the xp code."""
        scalars = self.update_scalars(t, self.lr)
        lo, hi = layout.offsets[a], layout.offsets[b]
        flat = [layout.param[lo:hi], layout.moments["exp_avg"][lo:hi], layout.moments["exp_avg_sq"][lo:hi]]
        kernel = dispatch.select("Adam", *flat)
        if kernel is not None:
            p, m, v = flat
            vmax = layout.moments["max_exp_avg_sq"][lo:hi] if self.amsgrad else None
            kernel.forward(p, self._gathered(layout, a, b), m, v, vmax, step_scalars=self.step_scalars,
                           **scalars)
            if flush:  # the gathered gradient is used up: its array is the flush's work array
                for moment in layout.moments.values():
                    flush_subnormals(moment[lo:hi], work=layout.grad[lo:hi])
            return
        if self.step_scalars is not None:
            raise ValueError("step_scalars (device-resident step scalars) need the GPU update kernel")
        for j in range(a, b):
            part = slice(layout.offsets[j], layout.offsets[j + 1])
            moments = {key: m[part] for key, m in layout.moments.items()}
            _adam_update(layout.param[part], self.params[layout.members[j]].grad.reshape(-1),
                         moments["exp_avg"], moments["exp_avg_sq"], moments.get("max_exp_avg_sq"),
                         work=layout.work_for(j), **scalars)
            if flush:
                for moment in moments.values():
                    flush_subnormals(moment, work=layout.work_for(j)[0])


def _adam_update(p, g, m, v, vmax, *, b1, b2, eps_s, neg_step, weight_decay, decay, work):
    """Adam's update in place, over xp (see Adam): ``eps_s`` = eps sqrt(1 - b2^t), ``neg_step`` =
    -lr sqrt(1 - b2^t) / (1 - b1^t); ``decay`` (AdamW's 1 - lr wd, or None) scales p first,
    ``weight_decay`` adds the coupled L2 term; ``work`` = (buf, gw), two arrays like p that the
    update may overwrite (gw may be g itself), so a step allocates nothing. Each operation is
    rounded once, in this order: the GPU kernel (kernels/adam.cuh) performs the same ones and
    gives the same bits."""
    xp = get_array_module(p)
    buf, gw = work
    if decay is not None:
        p *= decay
    elif weight_decay:
        xp.multiply(p, weight_decay, out=buf)
        g = xp.add(buf, g, out=gw)  # (wd p) + g
    m *= b1
    xp.multiply(g, 1 - b1, out=buf)
    m += buf
    v *= b2
    xp.multiply(g, 1 - b2, out=buf)
    buf *= g
    v += buf
    if vmax is not None:
        xp.maximum(vmax, v, out=vmax)
        v = vmax
    xp.sqrt(v, out=buf)
    buf += eps_s
    xp.divide(m, buf, out=buf)
    buf *= neg_step
    p += buf


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.01): p = p (1 - lr wd) before each update."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, flush_every=FLUSH_EVERY):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad,
                         decoupled_weight_decay=True, flush_every=flush_every)


class RMSprop(Optimizer):
    """RMSprop (Tieleman & Hinton 2012) with optional momentum and L2 weight decay, as
    torch.optim.RMSprop (not centered):

        g = g + weight_decay * p                 (coupled L2)
        v = alpha v + (1 - alpha) g^2            (v starts at 0)
        d = g / (sqrt(v) + eps)
        buf = momentum buf + d,  d := buf        (momentum > 0 only; buf starts at 0)
        p = p - lr d

    There is no bias correction, so ``update_scalars`` are the same at every step count: ``eps``
    and -lr. The update runs parameter by parameter, the same xp operations on NumPy and CuPy.
    """
    _hyper = ("lr", "alpha", "eps", "weight_decay", "momentum")
    _state_keys = ("step", "square_avg", "momentum_buffer")
    _flushed = ("square_avg", "momentum_buffer")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 flush_every=FLUSH_EVERY):
        super().__init__(params, lr, flush_every)
        check_ranges(type(self), _RANGES, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)
        self.alpha, self.eps = float(alpha), float(eps)
        self.weight_decay, self.momentum = float(weight_decay), float(momentum)

    def update_scalars(self, t, lr):
        """The scalars of the update (see the module docstring): ``eps_s`` = eps and ``neg_step``
        = -lr at every step count ``t``; no ``decay`` (the weight decay is coupled)."""
        return dict(eps_s=self.eps, neg_step=-lr, decay=None)

    def _update(self, i, p, g, state):
        xp = get_array_module(p.data)
        if "square_avg" not in state:  # the first step, or a state loaded from before it
            state["square_avg"] = xp.zeros_like(p.data)
        if self.momentum and "momentum_buffer" not in state:
            state["momentum_buffer"] = xp.zeros_like(p.data)
        if self.step_scalars is None:
            eps, neg_step = self.eps, -self.lr
        else:  # read when the step runs: rounded to p's dtype, as the Python numbers are
            eps, neg_step = (self.step_scalars[k].astype(p.dtype) for k in (0, 1))
        if self.weight_decay:
            g = p.data * self.weight_decay + g  # (wd p) + g, as Adam
        v = state["square_avg"]
        v *= self.alpha
        buf = g * (1 - self.alpha)
        buf *= g
        v += buf
        xp.sqrt(v, out=buf)
        buf += eps
        xp.divide(g, buf, out=buf)
        if self.momentum:
            mom = state["momentum_buffer"]
            mom *= self.momentum
            mom += buf
            xp.multiply(mom, neg_step, out=buf)
        else:
            buf *= neg_step
        p.data += buf


class _FlatLayout:
    """The parameters of one dtype and device (``members``, indices into the parameter list) as
    views of one flat array, with Adam's moments and the step's gradient as flat arrays of the
    same layout: parameter ``members[j]`` holds elements ``offsets[j]:offsets[j + 1]``; and the
    two work arrays of the xp update (``work``, as long as the largest member), rebuilt with it.

    Built from the current ``p.data`` and state arrays (the moments of a parameter without state
    are zero), which are then replaced by views of the flat arrays: ``views[key][j]``.
    """

    def __init__(self, members, params, states, amsgrad):
        first = params[members[0]].data
        xp, device = get_array_module(first), device_of(first)
        self.members, self.amsgrad = members, amsgrad
        self.offsets = [0]
        for i in members:
            self.offsets.append(self.offsets[-1] + params[i].data.size)
        n = self.offsets[-1]
        # Arrays like the parameters (empty_like keeps an ndarray subclass), flat. Each shape is a
        # tuple: CuPy's empty_like and zeros_like take a shape of 0 for the prototype's own shape.
        self.param = xp.empty_like(first, shape=(n,))
        # The gathered gradient of the kernel's update, then the work array of its flush.
        self.grad = xp.empty_like(first, shape=(n,))
        # The xp update's two work arrays, as long as the largest member: the update runs member
        # by member, and reusing the same memory for each keeps it in the CPU's cache.
        longest = max(b - a for a, b in zip(self.offsets, self.offsets[1:]))
        self.work = (xp.empty_like(first, shape=(longest,)), xp.empty_like(first, shape=(longest,)))
        keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
        self.moments = {key: xp.zeros_like(first, shape=(n,)) for key in keys}
        self.views = {key: [] for key in ("param",) + keys}
        for j, i in enumerate(members):
            p, part = params[i], slice(self.offsets[j], self.offsets[j + 1])
            self.param[part] = p.data.reshape(-1)
            p._replace_data(self.param[part].reshape(p.data.shape))
            self.views["param"].append(p.data)
            for key, flat in self.moments.items():
                view = flat[part].reshape(p.data.shape)
                if states[i].get(key) is not None:
                    view[...] = to_device(states[i][key], device)
                    states[i][key] = view
                self.views[key].append(view)

    def work_for(self, j):
        """The two work arrays cut to the length of member ``j`` (for the xp update and the
        subnormal flush)."""
        size = self.offsets[j + 1] - self.offsets[j]
        return self.work[0][:size], self.work[1][:size]

    def holds(self, params, states, amsgrad):
        """Whether every member's data and moments are still the views this layout made."""
        if amsgrad != self.amsgrad:
            return False
        for j, i in enumerate(self.members):
            if params[i].data is not self.views["param"][j]:
                return False
            for key in self.moments:
                value = states[i].get(key)
                if value is not None and value is not self.views[key][j]:
                    return False
        return True

    def runs(self, params, states):
        """Maximal runs of consecutive members that have a gradient and one step count: the
        (first, last + 1) positions in ``members`` that one flat update covers."""
        out = []
        for j, i in enumerate(self.members):
            if params[i].grad is None:
                continue
            step = states[i].get("step", 0)
            if out and out[-1][1] == j and out[-1][2] == step:
                out[-1][1] = j + 1
            else:
                out.append([j, j + 1, step])
        return [(a, b) for a, b, _ in out]


def clip_grad_norm_(params, max_norm, norm_type=2.0):
    """Scale all gradients together so that their joint norm is at most ``max_norm`` (a number
    >= 0; inf measures the norm without clipping); return the norm before clipping, a 0-d array
    on the gradients' device (0.0 when no parameter has a gradient).

    The joint norm is the ``norm_type`` norm (2 or inf) of all gradient entries together. Every
    ``p.grad`` is replaced by ``p.grad * min(1, max_norm / (norm + 1e-6))``, a new array:
    gradients may alias one another, so they are never scaled in place. The factor stays on the
    device and is applied also when it is 1 (which changes no bit), as in PyTorch: nothing is
    read back to the host, so a training step captured as a CUDA graph can clip. Gradients are
    reduced in their own dtype (no float64 temporaries) and keep it; a NaN or Inf norm
    propagates into the gradients, as in PyTorch, so the caller's NaN check sees it.
    """
    check_ranges(clip_grad_norm_, _RANGES, max_norm=max_norm)
    grads = _with_gradients(params)
    if not grads:
        return 0.0
    xp = get_array_module(grads[0].grad)
    norm_type = float(norm_type)
    # A zero-size gradient (a layer without inputs) adds nothing, and has no maximum.
    sized = [p.grad for p in grads if p.grad.size]
    if not sized:
        total = xp.zeros((), dtype=grads[0].grad.dtype)
    elif norm_type == math.inf:
        total = xp.stack([xp.abs(g).max() for g in sized]).max()  # NaN if any is
    elif norm_type == 2.0:
        # Sums of squares, not dot products: CuPy's dot calls cuBLAS, which a capture refuses.
        total = xp.sqrt(sum(xp.square(g).sum() for g in sized))
    else:
        raise ValueError(f"norm_type must be 2 or inf, got {norm_type}")
    coef = xp.minimum(float(max_norm) / (total + 1e-6), 1.0)
    for p in grads:
        _replace_gradient(p, p.grad * coef.astype(p.grad.dtype, copy=False))
    return total


def clip_grad_value_(params, clip_value):
    """Clip every gradient entry to [-clip_value, clip_value] (a number >= 0): each ``p.grad``
    is replaced by a clipped copy (gradients may alias one another, see ``clip_grad_norm_``).
    All on the device; a NaN entry stays NaN."""
    check_ranges(clip_grad_value_, _RANGES, clip_value=clip_value)
    for p in _with_gradients(params):
        _replace_gradient(p, get_array_module(p.grad).clip(p.grad, -clip_value, clip_value))


def _with_gradients(params):
    """The parameters of ``params`` (one Tensor or an iterable of them) that have a gradient."""
    if isinstance(params, Tensor):
        params = [params]
    return [p for p in params if p.grad is not None]


def _replace_gradient(p, grad):
    """Make ``grad`` the gradient of ``p``, as an array: NumPy's results on a 0-d array are
    NumPy scalars, which no gradient is (they cannot be written into)."""
    p.grad = get_array_module(grad).asarray(grad)


class LRScheduler:
    """Sets ``optimizer.lr`` from a closed-form function of the step count (so resuming from
    ``state_dict`` gives exactly the same rates). Call ``step()`` once per optimizer step (or
    per epoch, if the schedule is counted in epochs)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_step = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, t):
        """The learning rate after ``t`` calls of ``step()``."""
        raise NotImplementedError

    def step(self):
        """Advance one step and set the optimizer's learning rate."""
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)

    def state_dict(self):
        """{"base_lr": float, "last_step": int}: plain numbers for a JSON checkpoint."""
        return {"base_lr": self.base_lr, "last_step": self.last_step}

    def load_state_dict(self, state):
        """Restore the schedule position and set the optimizer's learning rate accordingly.
        Both entries are checked first (nothing changes when one is wrong): a missing one gets a
        ValueError naming it, ``base_lr`` must be a number >= 0 that the schedule can start from
        (``_check_peak``) and ``last_step`` an integer >= 0."""
        check_mapping(state, "state", "names to values (such as a scheduler's state_dict())")
        missing = [name for name in ("base_lr", "last_step") if name not in state]
        if missing:
            raise ValueError(f"cannot load {type(self).__name__} state: missing key "
                             + " and ".join(map(repr, missing)))
        check_ranges(type(self), {"base_lr": _RANGES["lr"]}, base_lr=state["base_lr"])
        last_step = check_integer(state["last_step"], "last_step", minimum=0)
        self._check_peak(float(state["base_lr"]), "the state's base_lr")
        self.base_lr = float(state["base_lr"])
        self.last_step = last_step
        self.optimizer.lr = self.lr_at(self.last_step)

    def _check_peak(self, lr, what):
        """Refuse (ValueError) a peak rate ``lr`` (``what`` names it in the message) that this
        schedule cannot start from; any rate >= 0 suits the schedules but ``CosineLR``."""


class CosineLR(LRScheduler):
    """Linear warm-up over ``warmup_steps`` (from base_lr / warmup_steps to base_lr), then a
    half cosine from base_lr down to ``min_lr`` at ``total_steps``, constant afterwards."""

    def __init__(self, optimizer, total_steps, min_lr=0.0, warmup_steps=0):
        check_ranges(type(self), _RANGES, min_lr=min_lr)
        self.min_lr = float(min_lr)
        self._check_peak(optimizer.lr, "the optimizer's lr")
        self.total_steps = check_integer(total_steps, "total_steps", minimum=1)
        self.warmup_steps = check_integer(warmup_steps, "warmup_steps", minimum=0)
        super().__init__(optimizer)

    def _check_peak(self, lr, what):
        """Refuse a peak rate below ``min_lr``, from the optimizer or from a loaded state: the
        "decay" from it to min_lr would be a rise."""
        if self.min_lr > lr:
            raise ValueError(f"CosineLR: min_lr {self.min_lr:g} is above {what} {lr:g}: the schedule "
                             "would raise the rate; give a min_lr of at most the lr")

    def lr_at(self, t):
        """See the class docstring."""
        if t < self.warmup_steps:
            return self.base_lr * (t + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (t - self.warmup_steps) / span)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class StepLR(LRScheduler):
    """base_lr * gamma ** (t // step_size): decay by ``gamma`` every ``step_size`` steps."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        check_ranges(type(self), _RANGES, gamma=gamma)
        self.step_size = check_integer(step_size, "step_size", minimum=1)
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def lr_at(self, t):
        """See the class docstring."""
        return self.base_lr * self.gamma ** (t // self.step_size)


class StagedLR(LRScheduler):
    """Stages that grow geometrically: stage i = 0, 1, ... lasts ``first_steps * growth ** i``
    steps at the rate base_lr * decay ** i. The defaults are the schedule of the IWAE paper
    (Burda et al. 2015, section 5): 3^i passes over the data at 0.001 * 10^(-i/7), so with
    ``first_steps`` one epoch's steps and base_lr 1e-3, its eight stages are its 3,280 epochs
    (the stages go on past them, each 3 times longer and 10^(1/7) slower)."""

    def __init__(self, optimizer, first_steps, growth=3, decay=10 ** (-1 / 7)):
        self.first_steps = check_integer(first_steps, "first_steps", minimum=1)
        self.growth = check_integer(growth, "growth", minimum=1)
        check_ranges(type(self), _RANGES, decay=decay)
        self.decay = float(decay)
        super().__init__(optimizer)

    def stage_at(self, t):
        """The stage that step ``t`` falls in."""
        stage, end = 0, self.first_steps
        while t >= end:
            stage += 1
            end += self.first_steps * self.growth ** stage
        return stage

    def lr_at(self, t):
        """See the class docstring."""
        return self.base_lr * self.decay ** self.stage_at(t)
