"""Finite-difference gradient checks: every hand-written backward is compared with numbers.

``gradcheck(fn, *inputs)`` contracts each output with a random upstream gradient u_k of its own
(never all ones: a sum hides transposed or permuted gradients; independent per output, so that
swapped or mixed-up output gradients show; each component of size 0.5 to 1.5 with a random sign,
so that no output element's gradient is scaled down out of sight) and compares, for every input
that requires a gradient,

* each element of the analytic gradient with the central difference
  (f(x + eps e_i) - f(x - eps e_i)) / (2 eps) when the input is small, and
* the directional derivative <grad, v> with (f(x + eps v) - f(x - eps v)) / (2 eps) along random
  directions v whose components are all of size 0.5 to 1.5 (none vanishes, so no element
  escapes the check) when it is large,

where f(x) = sum_k <u_k, fn(x)_k> (one term for an op with one output). Differences are taken in float64: in float32 the truncation and the
rounding errors of a central difference are both around 1e-3 and nothing can be concluded.
``check_float32`` then compares an op's float32 backward with its own float64 backward.

``gradcheck_report`` runs the same comparisons (the generator ``_comparisons`` serves both) but
measures every one instead of stopping at the first failure, per input: the largest absolute and
relative errors, how many elements or directions were checked, and, for float32, the error that
rounding alone would leave. ``minivae gradcheck`` prints those records as tables.

Inputs are named by ``fn``'s parameter names (``input_names``: those of the op's ``forward`` for
``SomeFunction.apply``), e.g. "input 1 (logvar)".
"""
import inspect

import numpy as np

from .autograd import Tensor, backward, enable_grad, no_grad
from .backend import get_array_module
from .checks import NON_NEGATIVE, POSITIVE, check_integer, check_ranges
from .function import Function

#: Step of the central difference in float64: truncation error ~eps^2, rounding ~1e-16/eps.
EPS = 1e-6
#: Absolute and relative tolerances of the float64 comparison (those of torch.autograd.gradcheck).
ATOL = 1e-5
RTOL = 1e-3
#: Inputs with at most this many elements are checked element by element.
FULL_CHECK_MAX = 256
#: Random directions checked for larger inputs.
N_DIRECTIONS = 8
#: Float32 backward against float64 backward: float32 epsilon is 1.2e-7, and an op's few
#: rounding steps plus a reduction over a row leave well under 1e-4 relative error.
FLOAT32_RTOL = 1e-4
FLOAT32_ATOL = 1e-5


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the finite-difference one (the message says where)."""


def input_names(fn, n):
    """Names of ``fn``'s first ``n`` positional arguments, read from its signature.

    For ``SomeFunction.apply`` they are the parameters of its ``forward`` after ``ctx``; a
    ``*args`` parameter gives ``args[0]``, ``args[1]``...; positions without a name (a callable
    without a readable signature) are ``#0``, ``#1``...
    """
    target, skip = fn, 0
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, Function) and fn.__name__ == "apply":
        target, skip = owner.forward, 1  # forward(ctx, *arrays): ctx is not an input
    try:
        params = list(inspect.signature(target).parameters.values())[skip:]
    except (TypeError, ValueError):
        params = []
    names = []
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            names += [f"{p.name}[{k}]" for k in range(n - len(names))]
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
    names = names[:n]
    return names + [f"#{i}" for i in range(len(names), n)]


def _outputs(out):
    """fn's result as a tuple of Tensors (fn may return one Tensor or a tuple of them); a
    TypeError naming what fn returned otherwise."""
    outs = out if isinstance(out, tuple) else (out,)
    if not outs or not all(isinstance(o, Tensor) for o in outs):
        what = "an empty tuple" if not outs else ", ".join(type(o).__name__ for o in outs)
        raise TypeError(f"fn must return a Tensor or a tuple of Tensors, got {what}")
    return outs


def _contract(fn, inputs, upstream):
    """f(inputs) = sum_k <upstream[k], fn(inputs)[k]> as a float, without recording a graph."""
    with no_grad():
        outs = _outputs(fn(*inputs))
    return sum(float((out.data * u).sum()) for out, u in zip(outs, upstream))


def _analytic(fn, inputs, upstream):
    """fn's outputs and the gradients of <upstream, fn> for each input (None where none is needed).

    The inputs' own ``.grad`` are put back afterwards: a check leaves the caller's gradients as
    they were, as a measurement should."""
    tensors = [t for t in inputs if isinstance(t, Tensor)]
    kept = [t.grad for t in tensors]
    for t in tensors:
        t.grad = None  # backward accumulates: start each input from no gradient
    try:
        with enable_grad():  # gradcheck called inside a no_grad block still records fn
            outs = _outputs(fn(*inputs))
        if not any(out.requires_grad for out in outs):
            raise GradcheckError("fn must return Tensors, at least one depending on an input with "
                                 "requires_grad=True")
        roots = [(out, out.data.dtype.type(1) * u) for out, u in zip(outs, upstream) if out.requires_grad]
        backward([out for out, _ in roots], [u for _, u in roots])
        grads = [t.grad if isinstance(t, Tensor) and t.requires_grad else None for t in inputs]
    finally:
        for t, g in zip(tensors, kept):
            t.grad = g
    return outs, grads


def _fail(i, name, where, analytic, numeric, atol, rtol):
    if np.isfinite(analytic) and np.isfinite(numeric):
        why = f"|diff| {abs(analytic - numeric):.3g} > atol {atol:g} + rtol {rtol:g} * |numeric|"
    else:
        why = "not finite: check at a point where fn and its gradient are finite"
    raise GradcheckError(f"gradient of input {i} ({name}) disagrees at {where}: analytic "
                         f"{analytic:.10g}, numeric {numeric:.10g} ({why})")


def _unvanishing(rng, shape):
    """Random float64 values of size 0.5 to 1.5 with random signs: random enough to tell elements
    apart, and none near 0, which would hide whatever it multiplies."""
    return rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def _comparisons(fn, inputs, upstream, grads, eps, full_check_max, n_directions, rng):
    """Yield ``(input index, where, analytic, numeric)`` for every check of every input.

    ``f(x) = sum_k <upstream[k], fn(x)[k]>`` is differentiated numerically along unit vectors (inputs of at
    most ``full_check_max`` elements) or along ``n_directions`` random directions (larger ones);
    ``grads`` are the analytic gradients, so ``analytic`` is the matching element or ``<grad, v>``.
    Each input's data is restored before anything is yielded. Shared by ``gradcheck`` (which
    stops at the first disagreement) and ``gradcheck_report`` (which measures all of them).
    """
    xp = get_array_module(upstream[0])
    for i, t in enumerate(inputs):
        if not (isinstance(t, Tensor) and t.requires_grad):
            continue
        analytic = np.asarray(grads[i].get() if hasattr(grads[i], "get") else grads[i]) \
            if grads[i] is not None else np.zeros(t.shape)
        original = t.data.copy()

        def numeric_along(direction):
            t.data = original + eps * direction
            plus = _contract(fn, inputs, upstream)
            t.data = original - eps * direction
            minus = _contract(fn, inputs, upstream)
            t.data = original
            return (plus - minus) / (2 * eps)

        if t.size <= full_check_max:
            for idx in np.ndindex(*t.shape):
                e = xp.zeros(t.shape)
                e[idx] = 1.0
                num = numeric_along(e)
                yield i, f"element {idx}", float(analytic[idx]), num
        else:
            for k in range(n_directions):
                v = _unvanishing(rng, t.shape)
                num = numeric_along(xp.asarray(v))
                yield i, f"random direction {k} of {n_directions}", float((analytic * v).sum()), num


def _check_leaves(inputs, names, caller):
    """Refuse an input whose own gradient cannot be checked: one made by recorded ops (the engine
    keeps no gradient on it, and the backward would flow on into its inputs), or one given twice
    (its gradient is the sum over both positions, so a backward that swaps them would pass)."""
    seen = {}
    for i, t in enumerate(inputs):
        if not (isinstance(t, Tensor) and t.requires_grad):
            continue
        if not t.is_leaf:
            raise ValueError(f"{caller}: input {i} ({names[i]}) is the result of recorded ops, which "
                             f"keeps no gradient; pass a leaf, Tensor(x.data.copy(), requires_grad=True)")
        if id(t) in seen:
            j = seen[id(t)]
            raise ValueError(f"{caller}: inputs {j} ({names[j]}) and {i} ({names[i]}) are the same "
                             f"Tensor, so their gradients cannot be checked apart; pass a copy, or use "
                             f"the tensor twice inside fn")
        seen[id(t)] = i


def _check_float64(inputs, names, caller, why="finite differences need float64 (use "
                                                "check_float32 for float32 backward passes)"):
    """Refuse (TypeError, saying ``why``) an input that requires a gradient and is not float64."""
    for i, t in enumerate(inputs):
        if isinstance(t, Tensor) and t.requires_grad and t.dtype != np.float64:
            raise TypeError(f"{caller}: input {i} ({names[i]}) is {t.dtype}; {why}")


#: The ranges of the step and the tolerances (``check_ranges``).
SETTING_RANGES = {"eps": POSITIVE, "atol": NON_NEGATIVE, "rtol": NON_NEGATIVE}


def _check_settings(caller, full_check_max=FULL_CHECK_MAX, n_directions=N_DIRECTIONS, **tolerances):
    """Refuse settings under which a wrong gradient could pass: a NaN step or tolerance (every
    comparison with NaN would be skipped), an infinite tolerance, no random direction (a large
    input would go unchecked); and a zero step, which divides by zero."""
    check_ranges(caller, SETTING_RANGES, **tolerances)
    check_integer(full_check_max, "full_check_max", minimum=0)
    check_integer(n_directions, "n_directions", minimum=1)


def _upstream(fn, inputs, names, rng):
    """Independent random upstream gradients, one per output of fn in its shape (never all ones),
    on fn's device.

    This is fn's first call, so it also refuses (ValueError) a fn that changes a Tensor input in
    place: every later call, the analytic one and the perturbed ones, would start from other
    values (a fn that overwrites its input with zeros would pass any backward).
    """
    before = [t.data.copy() if isinstance(t, Tensor) else None for t in inputs]
    with no_grad():
        outs = _outputs(fn(*inputs))
    for i, (t, old) in enumerate(zip(inputs, before)):
        if old is not None and not (t.shape == old.shape and
                                    get_array_module(old).array_equal(t.data, old, equal_nan=True)):
            raise ValueError(f"fn changed input {i} ({names[i]}) in place; finite differences need "
                             f"a fn that leaves its inputs as they are (compute on a copy)")
    xp = get_array_module(outs[0].data)
    return [xp.asarray(_unvanishing(rng, out.shape)) for out in outs]


def gradcheck(fn, *inputs, eps=EPS, atol=ATOL, rtol=RTOL, full_check_max=FULL_CHECK_MAX,
              n_directions=N_DIRECTIONS, seed=0):
    """Check ``fn``'s analytic gradients against central differences; return True or raise GradcheckError.

    ``fn`` maps the inputs to one Tensor or a tuple of Tensors. Every Tensor input with ``requires_grad`` is checked and
    must be float64 (the check works in float64 only); other arguments are passed unchanged.
    The error names the input (position and argument name), the element or direction, the
    analytic and the numeric value.
    """
    _check_settings(gradcheck, full_check_max, n_directions, eps=eps, atol=atol, rtol=rtol)
    rng = np.random.default_rng(seed)
    names = input_names(fn, len(inputs))
    _check_leaves(inputs, names, "gradcheck")
    _check_float64(inputs, names, "gradcheck")
    upstream = _upstream(fn, inputs, names, rng)
    _, grads = _analytic(fn, inputs, upstream)
    for i, where, ana, num in _comparisons(fn, inputs, upstream, grads, eps, full_check_max,
                                           n_directions, rng):
        # Written as "not within" so that a NaN, which fails every comparison, fails the check.
        if not abs(ana - num) <= atol + rtol * abs(num):
            _fail(i, names[i], where, ana, num, atol, rtol)
    return True


#: Unit roundoff of float32 (half its machine epsilon): the relative error of one rounding.
FLOAT32_UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2


def gradcheck_report(fn, *inputs, dtype="float64", eps=EPS, atol=ATOL, rtol=RTOL,
                     full_check_max=FULL_CHECK_MAX, n_directions=N_DIRECTIONS, seed=0):
    """Measure, rather than assert, how far ``fn``'s analytic gradients are from central differences.

    Runs the checks of ``gradcheck`` (same directions, same seed) but visits every one and
    returns one record (a dict) per input that requires a gradient:

    ``input`` (position), ``name`` (the argument's name, see ``input_names``), ``shape``, ``mode`` ("elements" or "directions"), ``checked`` (how
    many), ``max_abs_err`` (max |analytic - numeric|), ``max_rel_err`` (that error divided by the
    largest |numeric| of the input, 0 when all are 0), ``worst`` (the check that came nearest to
    failing: largest error / tolerance), ``analytic``, ``numeric`` and ``tolerance`` there,
    ``rounding`` and ``passed``.

    ``dtype="float64"``: inputs must be float64; an element passes when |a - n| <= atol + rtol |n|
    (``gradcheck``'s rule), and ``rounding`` is None. ``dtype="float32"``: the analytic gradient
    is computed by float32 copies of the inputs, the numeric one in float64 at the very same
    (float32-representable) point, and an input passes when its largest error is within
    ``check_float32``'s tolerance, FLOAT32_ATOL + FLOAT32_RTOL * max|numeric|; ``rounding`` is
    the error float32 cannot avoid, one unit roundoff (2^-24) of the largest gradient.
    """
    if dtype not in ("float64", "float32"):
        raise ValueError(f"gradcheck_report: dtype must be 'float64' or 'float32', got {dtype!r}")
    _check_settings(gradcheck_report, full_check_max, n_directions, eps=eps, atol=atol, rtol=rtol)
    rng = np.random.default_rng(seed)
    names = input_names(fn, len(inputs))
    _check_leaves(inputs, names, "gradcheck_report")
    if dtype == "float64":
        _check_float64(inputs, names, "gradcheck_report")
        upstream = _upstream(fn, inputs, names, rng)
        _, grads = _analytic(fn, inputs, upstream)
    else:
        as32 = [Tensor(t.data.astype(np.float32), requires_grad=t.requires_grad)
                if isinstance(t, Tensor) else t for t in inputs]
        # The float64 inputs of the numeric side: the float32 values, exactly.
        inputs = [Tensor(t.data.astype(np.float64), requires_grad=t.requires_grad)
                  if isinstance(t, Tensor) else t for t in as32]
        upstream = _upstream(fn, inputs, names, rng)
        _, grads32 = _analytic(fn, as32, [u.astype(np.float32) for u in upstream])
        grads = [None if g is None else g.astype(np.float64) for g in grads32]
    per_input = {}
    for i, where, ana, num in _comparisons(fn, inputs, upstream, grads, eps, full_check_max,
                                           n_directions, rng):
        per_input.setdefault(i, []).append((where, ana, num))
    records = []
    for i, checks in per_input.items():
        t = inputs[i]
        errors = np.array([abs(a - n) for _, a, n in checks])
        numeric = np.array([abs(n) for _, _, n in checks])
        scale = float(numeric.max())
        if dtype == "float64":
            allowed, rounding = atol + rtol * numeric, None
        else:
            allowed = np.full(len(checks), FLOAT32_ATOL + FLOAT32_RTOL * scale)
            rounding = FLOAT32_UNIT_ROUNDOFF * scale
        worst = int(np.argmax(errors / allowed))
        passed = bool((errors <= allowed).all())
        tolerance = float(allowed[worst])
        where, ana, num = checks[worst]
        records.append({
            "input": i, "name": names[i], "shape": tuple(t.shape),
            "mode": "elements" if t.size <= full_check_max else "directions",
            "checked": len(checks),
            "max_abs_err": float(errors.max()),
            "max_rel_err": float(errors.max() / scale) if scale > 0 else 0.0,
            "worst": where, "analytic": ana, "numeric": num,
            "tolerance": tolerance, "rounding": rounding, "passed": passed,
        })
    return records


def check_float32(fn, *inputs, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL, seed=0):
    """Compare ``fn``'s float32 forward and backward with its float64 ones; return True or raise.

    ``inputs`` are float64 Tensors; float32 copies are made of each. Tolerances are relative to
    the size of the float64 result, since float32 rounding scales with the values.
    """
    _check_settings(check_float32, atol=atol, rtol=rtol)
    arguments = input_names(fn, len(inputs))
    _check_leaves(inputs, arguments, "check_float32")
    _check_float64(inputs, arguments, "check_float32", "give float64 inputs: they are the "
                   "reference, and the float32 copies are made from them")
    rng = np.random.default_rng(seed)
    as32 = [Tensor(t.data.astype(np.float32), requires_grad=t.requires_grad) if isinstance(t, Tensor)
            else t for t in inputs]
    upstream = _upstream(fn, inputs, arguments, rng)
    outs64, grads64 = _analytic(fn, inputs, upstream)
    outs32, grads32 = _analytic(fn, as32, [u.astype(np.float32) for u in upstream])
    for out32 in outs32:
        if out32.dtype != np.float32:
            raise GradcheckError(f"float32 inputs gave a {out32.dtype} output: a silent upcast")
    names = ["output"] if len(outs64) == 1 else [f"output {k}" for k in range(len(outs64))]
    pairs = [(name, o64.data, o32.data) for name, o64, o32 in zip(names, outs64, outs32)] + [
        (f"gradient of input {i} ({arguments[i]})", g64, g32)
        for i, (g64, g32) in enumerate(zip(grads64, grads32)) if g64 is not None]
    for name, ref, got in pairs:
        if got.dtype != np.float32:
            raise GradcheckError(f"{name} is {got.dtype} for float32 inputs: a silent upcast")
        scale = float(abs(ref).max()) if ref.size else 0.0
        err = abs(got.astype(np.float64) - ref)
        worst = float(err.max()) if err.size else 0.0
        if not worst <= atol + rtol * scale:  # a NaN fails too
            idx = np.unravel_index(int(err.argmax()), err.shape)
            raise GradcheckError(f"float32 {name} differs from float64 at {idx}: {float(got[idx]):.8g} vs "
                                 f"{float(ref[idx]):.8g} (max error {worst:.3g} > {atol:g} + {rtol:g} * {scale:.3g})")
    return True
