"""Every Function in minivae.ops against finite differences (float64), and float32 against float64.

``CASES`` (in ``minivae.gradcheck_cases``, shared with ``minivae gradcheck`` and the generated
``docs/gradients.md``) maps each op class to its cases. ``test_every_op_has_a_case`` walks the
``minivae.ops`` package and fails when a Function subclass has no entry, so a new op cannot land
unchecked. Inputs are kept away from kinks: relu/abs/leaky_relu/elu at 0, clip at its bounds,
max ties, log/sqrt/pow of non-positive values, division by values near 0.
"""
import inspect
import re
import sys
import types

import numpy as np
import pytest

import minivae.ops
from minivae import Function, Tensor
from minivae import functional as F
from minivae.gradcheck import check_float32, gradcheck
from minivae.gradcheck_cases import BINARY, COND, CASES, away_from, build, distinct, op_classes
from minivae.gradcheck_cases import rng_for as _rng_for
from minivae.ops import elementwise as el, ladder


PARAMS = [pytest.param(op, name, fn, specs, id=f"{op.__name__}-{name}")
          for op, cases in CASES.items() for name, fn, specs in cases]


def test_every_op_has_a_case():
    missing = sorted(op.__name__ for op in op_classes() - set(CASES))
    assert not missing, f"Function subclasses in minivae.ops without a gradcheck case in CASES: {missing}"
    assert all(CASES.values()), "every op needs at least one case"


def test_introspection_sees_a_new_op(monkeypatch):
    """The coverage test above would fail for an op added without a case."""
    module = types.ModuleType("minivae.ops._not_a_real_op")

    class Cube(Function):
        @staticmethod
        def forward(ctx, x):
            return x ** 3

    module.Cube = Cube
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert Cube in op_classes() - set(CASES)


def test_ops_export_every_function():
    """Every op class is reachable from minivae.ops (and thus from minivae.functional)."""
    exported = {obj for obj in vars(minivae.ops).values() if inspect.isclass(obj)}
    assert op_classes() <= exported


@pytest.mark.parametrize("op, name, fn, specs", PARAMS)
def test_gradcheck_float64(op, name, fn, specs):
    inputs = build(specs, _rng_for(op, name))
    out = fn(*inputs)
    assert all(t.dtype == np.float64 for t in (out if isinstance(out, tuple) else (out,)))
    assert gradcheck(fn, *inputs)
    assert _records(out, op), f"case {name!r} does not exercise {op.__name__}"


@pytest.mark.parametrize("op, name, fn, specs", PARAMS)
def test_float32_backward_matches_float64(op, name, fn, specs):
    inputs = build(specs, _rng_for(op, name))
    assert check_float32(fn, *inputs)


def _records(out, op):
    """True when ``op`` appears in the graph that produced ``out``."""
    stack, seen = list(out) if isinstance(out, tuple) else [out], set()
    while stack:
        t = stack.pop()
        if id(t) in seen or t._node is None:
            continue
        seen.add(id(t))
        if t._node.fn is op:
            return True
        stack.extend(t._node.inputs)
    return False


def test_where_condition_spellings():
    a, b = Tensor(np.array([1.0, 2.0])), Tensor(np.array([10.0, 20.0]))
    for cond in ([True, False], np.array([True, False]), Tensor(np.array([1.0, 0.0])) > 0.5,
                 Tensor(np.array([True, False]))):
        np.testing.assert_array_equal(F.where(cond, a, b).data, [1.0, 20.0])
    np.testing.assert_array_equal(F.where(False, a, b).data, [10.0, 20.0])


@pytest.mark.parametrize("cond, dtype", [
    (Tensor(np.array([0.5, 0.0])), "float64"),
    (np.array([0.5, 0.0], np.float32), "float32"),
    (np.array([1, 0]), "int64"),
    ([1, 0], "int64"),
], ids=["float Tensor", "float32 array", "int array", "int list"])
def test_where_refuses_a_condition_that_is_not_boolean(cond, dtype):
    # Before: it was read by its truth, so a probability 0.5 (or -1e-9) picked a without a word.
    a, b = Tensor(np.array([1.0, 2.0])), Tensor(np.array([10.0, 20.0]))
    with pytest.raises(TypeError, match=rf"^where: the condition must be boolean \(a comparison such "
                                        rf"as x.data > 0\), got dtype {dtype}; for a 0/1 mask write mask != 0$"):
        F.where(cond, a, b)


def test_pow_zero_exponent_has_zero_gradient_at_zero():
    x = Tensor(np.array([0.0, 1.5]), requires_grad=True)
    (x ** 0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0])


@pytest.mark.parametrize("shape, axis, keepdims", [((0, 3), 0, False), ((0, 3), 0, True), ((2, 0), -1, False),
                                                   ((0, 3), None, False)])
def test_logsumexp_over_an_empty_axis_is_minus_inf_with_an_empty_gradient(shape, axis, keepdims):
    x = Tensor(np.zeros(shape), requires_grad=True)
    y = F.logsumexp(x, axis=axis, keepdims=keepdims)
    np.testing.assert_array_equal(y.data, np.full(np.sum(x.data, axis=axis, keepdims=keepdims).shape, -np.inf))
    y.backward(np.ones(y.shape))
    assert x.grad.shape == shape and x.grad.dtype == np.float64


@pytest.mark.parametrize("fn", [F.softmax, F.log_softmax])
@pytest.mark.parametrize("shape, axis", [((2, 0), -1), ((0, 3), 0)])
def test_softmax_over_an_empty_axis_is_empty(fn, shape, axis):
    x = Tensor(np.zeros(shape), requires_grad=True)
    y = fn(x, axis=axis)
    assert y.shape == shape
    y.backward(np.ones(y.shape))
    assert x.grad.shape == shape


def test_linear_relu_cases_stay_off_the_kink():
    # The finite differences of linear_relu are only valid where no pre-activation crosses 0.
    from minivae.ops.linalg import LinearRelu

    for name, _, specs in CASES[LinearRelu]:
        x, W, *b = (t.data for t in build(specs, _rng_for(LinearRelu, name)))
        pre = x @ W + (b[0] if b else 0.0)
        assert np.abs(pre).min() > 1e-3, name


def test_linear_relu_equals_linear_then_relu_exactly():
    rng = np.random.default_rng(0)
    x, W, b = (rng.standard_normal(s).astype(np.float32) for s in ((2, 6, 5), (5, 7), (7,)))
    g = rng.standard_normal((2, 6, 7)).astype(np.float32)
    outs, grads = [], []
    for fused in (True, False):
        ts = [Tensor(a.copy(), requires_grad=True) for a in (x, W, b)]
        out = F.linear_relu(*ts) if fused else F.relu(F.linear(*ts))
        (out * Tensor(g)).sum().backward()
        outs.append(out.data)
        grads.append([t.grad for t in ts])
    np.testing.assert_array_equal(outs[0], outs[1])
    for a, c in zip(*grads):
        np.testing.assert_array_equal(a, c)


def test_sigmoid_and_the_gradients_through_it_are_accurate_in_float32_tails():
    """sigmoid(x), and the gradients d/dx softplus(x) = sigmoid(x) and d/dy log_sigmoid(y) =
    sigmoid(-y) at y = -x, in float32 against 1 / (1 + e^-x) in float64: a relative error below
    1e-6 in both tails (a form with 1 + tanh(x / 2) loses all digits for negative x: 0 at x = -20
    instead of 2.1e-9)."""
    x = np.array([-80, -30, -20, -17, -10, -5, -0.5, 0, 0.5, 5, 20, 80], np.float32)
    expected = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(F.sigmoid(Tensor(x)).data, expected, rtol=1e-6, atol=0)
    for fn, at in ((F.softplus, x), (F.log_sigmoid, -x)):
        t = Tensor(at, requires_grad=True)
        fn(t).backward(np.ones_like(x))
        assert t.grad.dtype == np.float32
        np.testing.assert_allclose(t.grad, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("axis", [None, 1])
def test_max_shares_the_gradient_evenly_among_tied_maxima(axis):
    """d max / dx_i = 1 / m for each of the m elements equal to the maximum, 0 elsewhere (finite
    differences cannot check this: a tie is a kink)."""
    data = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, -1.0], [5.0, 4.0, 0.0, 5.0]])
    x = Tensor(data, requires_grad=True)
    y = F.max(x, axis=axis)
    g = np.array(1.5) if axis is None else np.array([1.0, 2.0, 3.0])
    y.backward(g)
    ties = data == data.max(axis=axis, keepdims=True)
    gk = g if axis is None else g[:, None]
    np.testing.assert_array_equal(x.grad, np.where(ties, gk / ties.sum(axis=axis, keepdims=True), 0.0))


def test_logsumexp_of_an_all_minus_inf_slice_is_minus_inf():
    """log(sum(exp(x))) of a slice whose every entry is -inf is log(0) = -inf, not NaN (the shift
    by the maximum must not subtract -inf from -inf); the other slices are unaffected."""
    x = Tensor(np.array([[-np.inf, -np.inf, -np.inf], [0.0, np.log(2.0), -np.inf]]))
    with np.errstate(divide="ignore"):  # log(0) of the empty sums
        rows, columns = F.logsumexp(x, axis=1).data, F.logsumexp(x, axis=0).data
    np.testing.assert_allclose(rows, [-np.inf, np.log(3.0)], rtol=1e-15, atol=0)
    np.testing.assert_allclose(columns, [0.0, np.log(2.0), -np.inf], rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logsumexp_gradient_keeps_its_precision_far_from_0(dtype):
    """The gradient softmax(x) against the float64 formula on the same inputs, to an ulp or two,
    for slices whose maximum is large: exp(x - out) with out = m + log(sum) rounded to x's
    precision loses the log term (float32 at 1e8 gave 1 for each of two equal entries, not 1/2;
    at 1e7, 0.37; near -3000, as importance weights in float32 can be, errors of 1e-4)."""
    big = 1e8 if dtype == np.float32 else 1e17
    x = np.array([[big, big, -np.inf], [1e7, 1e7, 1e7 - 1], [-3000.0, -3000.5, -3001.25]], dtype)
    t = Tensor(x, requires_grad=True)
    F.logsumexp(t, axis=-1).backward(np.array([1.0, 2.0, -1.5], dtype))
    x64 = x.astype(np.float64)
    m = x64.max(axis=-1, keepdims=True)
    want = np.exp(x64 - m) / np.exp(x64 - m).sum(axis=-1, keepdims=True) * np.array([[1.0], [2.0], [-1.5]])
    np.testing.assert_allclose(t.grad, want, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("fn", [F.softmax, F.log_softmax])
def test_softmax_shifts_each_slice_by_its_own_maximum(fn):
    """Slices of very different scales along the other axes (logits near 0 next to logits near
    1000): each slice's result equals the float64 formula evaluated on that slice alone, finite,
    as a shift by one maximum over the whole array would not give (exp(-1000) underflows to 0)."""
    data = np.array([[0.0, 1.0, -2.0], [1000.0, 1001.0, 998.0], [-1000.0, -999.0, -1002.0]])
    out = fn(Tensor(data, requires_grad=True), axis=-1)
    base = np.array([0.0, 1.0, -2.0])  # every row is this one shifted
    log_p = base - np.log(np.exp(base).sum())
    want = np.tile(log_p if fn is F.log_softmax else np.exp(log_p), (3, 1))
    np.testing.assert_allclose(out.data, want, rtol=1e-12, atol=0)


def test_log_softmax_keeps_float32_precision_for_logits_far_from_0():
    """Logits near -90 in float32 against the float64 formula: (x - m) - log(sum(exp(x - m))) is
    within an ulp or two of each result, where x - (m + log(sum(...))) rounds the sum next to
    m = -90 and is off by ulps of 90 (2e-6)."""
    x = np.array([[0.0, -1.0, -2.0]], np.float32) - 90
    out = F.log_softmax(Tensor(x), axis=-1).data
    x64 = x.astype(np.float64)
    want = (x64 - x64.max()) - np.log(np.exp(x64 - x64.max()).sum())
    np.testing.assert_allclose(out, want, rtol=2 * np.finfo(np.float32).eps, atol=0)


# ----- the cases are what their names say ----------------------------------------------------------
def test_away_from_keeps_every_value_off_each_kink():
    """``away_from`` leaves no value within ``margin`` of any of its points (so a finite
    difference never straddles a kink), over many draws and with two points at once."""
    rng = np.random.default_rng(0)
    x = away_from(rng, (20000,), points=(-0.5, 0.5), margin=0.05)
    assert np.abs(x + 0.5).min() >= 0.05 and np.abs(x - 0.5).min() >= 0.05
    x = away_from(rng, (20000,))
    assert np.abs(x).min() >= 0.1 and (x < 0).any() and (x > 0).any()


def test_distinct_values_are_three_quarters_of_the_spacing_apart():
    """No two values of ``distinct`` are closer than 3/4 of its spacing (max has no ties)."""
    rng = np.random.default_rng(0)
    for shape in [(3, 4), (2, 3, 4), (500,)]:
        x = distinct(rng, shape)
        assert x.shape == shape
        assert np.diff(np.sort(x.ravel())).min() >= 0.075


def test_binary_targets_are_0_and_1():
    x = BINARY(50, 4)(np.random.default_rng(0))
    assert x.shape == (50, 4) and x.dtype == np.float64
    assert set(np.unique(x)) == {0.0, 1.0}


def _case(op, name):
    """The inputs (as float64 arrays) and the result of the case ``name`` of ``op``."""
    fn, specs = next((fn, specs) for case_name, fn, specs in CASES[op] if case_name == name)
    inputs = build(specs, _rng_for(op, name))
    return [t.data for t in inputs], fn(*inputs)


# (op, case name): the result the name promises, in NumPy, from the case's inputs
NAMED_RESULTS = {
    (el.LeakyRelu, "default slope"): lambda x: np.where(x > 0, x, 0.01 * x),
    (el.LeakyRelu, "slope 0.2"): lambda x: np.where(x > 0, x, 0.2 * x),
    (el.Elu, "default alpha"): lambda x: np.where(x > 0, x, np.expm1(x)),
    (el.Elu, "alpha 1.5"): lambda x: np.where(x > 0, x, 1.5 * np.expm1(x)),
    (el.Pow, "x**2"): lambda x: x ** 2,
    (el.Pow, "x**3 (any sign)"): lambda x: x ** 3,
    (el.Pow, "x**2.5 (positive x)"): lambda x: x ** 2.5,
    (el.Pow, "x**-1.5 (positive x)"): lambda x: x ** -1.5,
    (el.Pow, "x**0"): lambda x: np.ones_like(x),
    (el.Clip, "both bounds"): lambda x: np.clip(x, -0.5, 0.5),
    (el.Clip, "lower bound only"): lambda x: np.maximum(x, 0.3),
    (el.Clip, "lower bounds (3,1) broadcast x (4,)"): lambda x: np.clip(x, [[-0.5], [0.0], [0.5]], 1.0),
    (el.Where, "python scalar b"): lambda a: np.where(COND, a, 0.0),
    (el.Where, "list condition"): lambda a, b: np.where([True, False, False, True], a, b),
}


@pytest.mark.parametrize("op, name", NAMED_RESULTS, ids=lambda v: getattr(v, "__name__", v))
def test_a_case_computes_what_its_name_says(op, name):
    """A case named for a parameter (a slope, an exponent, a bound) uses that parameter: its
    result is the NumPy formula with it. A clip case clips some elements and leaves others."""
    inputs, out = _case(op, name)
    want = NAMED_RESULTS[op, name](*inputs)
    np.testing.assert_allclose(out.data, want, rtol=1e-15, atol=0)
    if op is el.Clip:
        x = np.broadcast_to(inputs[0], want.shape)
        assert (want != x).any() and (want == x).any(), f"case {name!r} never reaches a bound"


SIGN_BRANCHES = [el.Abs, el.Relu, el.LeakyRelu, el.Elu, el.Sigmoid, el.Softplus, el.LogSigmoid]


@pytest.mark.parametrize("op", SIGN_BRANCHES, ids=lambda op: op.__name__)
def test_cases_of_ops_that_branch_on_the_sign_see_both_signs(op):
    """Each of these ops computes one formula for x >= 0 (or x > 0) and another below: every
    case has inputs on both sides, so both branches are checked. A case named "wide range" also
    reaches |x| > 5, where the stable forms' e^-|x| is small."""
    for name, _, _ in CASES[op]:
        (x,), _ = _case(op, name)
        assert (x < 0).any() and (x > 0).any(), f"case {name!r} of {op.__name__} misses a branch"
        if "wide range" in name:
            assert x.min() < -5 and x.max() > 5, f"case {name!r} of {op.__name__} is not wide"


SHAPES_NAME = re.compile(r"\(([\d, ]*)\)(\s*[-+*/@]\s*\(([\d, ]*)\))*")


@pytest.mark.parametrize("op, name", [(op, name) for op, cases in CASES.items() for name, _, _ in cases
                                      if SHAPES_NAME.fullmatch(name)],
                         ids=lambda v: getattr(v, "__name__", v))
def test_a_case_named_by_its_shapes_has_those_shapes(op, name):
    """"(3,1)+(1,4)" takes inputs of shapes (3, 1) and (1, 4); "(3,4)" inputs of shape (3, 4)."""
    inputs, _ = _case(op, name)
    named = [tuple(int(n) for n in group.split(",") if n.strip()) for group in re.findall(r"\(([\d, ]*)\)", name)]
    assert [x.shape for x in inputs] == (named * len(inputs) if len(named) == 1 else named)


@pytest.mark.parametrize("op, name", [(op, name) for op, cases in CASES.items() for name, _, _ in cases
                                      if "python scalar" in name],
                         ids=lambda v: getattr(v, "__name__", v))
def test_a_python_scalar_case_gives_the_op_a_number(op, name):
    """The op itself meets the number as a constant 0-d input, not a tensor computed from x."""
    _, out = _case(op, name)
    node = out._node
    assert node.fn is op
    assert any(t.ndim == 0 and t._node is None and not t.requires_grad for t in node.inputs)


def test_the_very_unequal_precisions_case_is_very_unequal():
    """The two precisions of each element differ by a factor of at least e^8."""
    (_, logvar_hat, _, logvar_p), _ = _case(ladder.PrecisionWeightedMerge, "very unequal precisions")
    assert np.abs(logvar_hat - logvar_p).min() >= 8


@pytest.mark.parametrize("op", [op for op, cases in CASES.items() if any("large values" in c[0] for c in cases)],
                         ids=lambda op: op.__name__)
def test_large_value_cases_overflow_exp_in_float64(op):
    """A "large values (stable)" case has every input above log(float64 max) = 709.78, where e^x
    overflows: the float64 check then fails for a form without the shift by the maximum, rather
    than only the float32 check after the cast."""
    for name, _, _ in CASES[op]:
        if "large values" in name:
            (x,), _ = _case(op, name)
            assert x.min() > np.log(np.finfo(np.float64).max), f"case {name!r} of {op.__name__}"
