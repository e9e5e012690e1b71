"""Every Function in minivae.ops against finite differences (float64), and float32 against float64.

``CASES`` maps each op class to its cases. ``test_every_op_has_a_case`` walks the ``minivae.ops``
package and fails when a Function subclass has no entry, so a new op cannot land unchecked.
Inputs are kept away from kinks: relu/abs/leaky_relu/elu at 0, clip at its bounds, max ties,
log/sqrt/pow of non-positive values, division by values near 0.
"""
import importlib
import inspect
import pkgutil
import sys
import types
import zlib

import numpy as np
import pytest
from conftest import away_from, distinct

import minivae.ops
from minivae import Function, Tensor
from minivae import functional as F
from minivae.gradcheck import check_float32, gradcheck
from minivae.ops import elementwise as el, linalg as la, norm, reduce as rd, shape as sh, vae


# ----- input specs: each is a function of a generator returning a float64 array ----------------
def U(*shape, low=-1.0, high=1.0):
    """Uniform in [low, high]."""
    return lambda rng: rng.uniform(low, high, shape)


def AWAY(*shape, points=(0.0,), margin=0.1, low=-2.0, high=2.0):
    """Uniform, but at least ``margin`` from each kink in ``points``."""
    return lambda rng: away_from(rng, shape, points, margin, low, high)


def DISTINCT(*shape):
    """No two values closer than 0.1 (max without ties)."""
    return lambda rng: distinct(rng, shape)


def BINARY(*shape):
    """Bernoulli targets in {0, 1}."""
    return lambda rng: (rng.uniform(size=shape) < 0.5).astype(np.float64)


class Const:
    """An input that does not require a gradient (still cast to float32 by check_float32)."""

    def __init__(self, spec):
        self.spec = spec


def case(name, fn, *specs):
    return name, fn, specs


def build(specs, rng):
    return [Tensor(s.spec(rng)) if isinstance(s, Const) else Tensor(s(rng), requires_grad=True)
            for s in specs]


# Fixed integer indices (repeated entries accumulate) and a boolean mask for getitem.
REPEATED = np.array([0, 2, 0, 0, 3])
MASK = np.array([[True, False, True, False], [False, False, True, True], [True, True, False, False]])
COND = np.array([[True, False, True, False], [False, True, True, False], [True, True, False, True]])

CASES = {
    # ---- elementwise ----
    el.Add: [
        case("same shape", F.add, U(3, 4), U(3, 4)),
        case("(3,1)+(1,4)", F.add, U(3, 1), U(1, 4)),
        case("bias (4,)", lambda a, b: a + b, U(2, 3, 4), U(4)),
        case("0-d + (3,2)", F.add, U(), U(3, 2)),
        case("python scalar on the left", lambda a: 1.5 + a, U(3, 4)),
        case("constant operand", F.add, U(3, 4), Const(U(3, 4))),
        case("same tensor twice", lambda a: a + a, U(3, 4)),
    ],
    el.Sub: [
        case("same shape", F.sub, U(3, 4), U(3, 4)),
        case("(3,1)-(1,4)", F.sub, U(3, 1), U(1, 4)),
        case("(4,) - (2,3,4)", lambda a, b: a - b, U(4), U(2, 3, 4)),
        case("python scalar on the left", lambda a: 2.0 - a, U(3, 4)),
    ],
    el.Mul: [
        case("same shape", F.mul, U(3, 4), U(3, 4)),
        case("(3,1)*(1,4)", F.mul, U(3, 1), U(1, 4)),
        case("(2,3,4)*(3,1)", lambda a, b: a * b, U(2, 3, 4), U(3, 1)),
        case("x*x", lambda a: a * a, U(3, 4)),
        case("python scalar", lambda a: a * -0.7, U(3, 4)),
    ],
    el.Div: [
        case("same shape", F.div, U(3, 4), AWAY(3, 4, margin=0.5)),
        case("(3,1)/(1,4)", F.div, U(3, 1), AWAY(1, 4, margin=0.5)),
        case("bias (4,)", lambda a, b: a / b, U(2, 3, 4), AWAY(4, margin=0.5)),
        case("python scalar on the left", lambda b: 2.0 / b, AWAY(3, 4, margin=0.5)),
        case("x/x (one path each way)", lambda a: a / (a * a), AWAY(3, 4, margin=0.5)),
    ],
    el.Neg: [case("(3,4)", F.neg, U(3, 4)), case("unary minus", lambda a: -a, U(2, 3))],
    el.Pow: [
        case("x**2", lambda a: a ** 2, U(3, 4)),
        case("x**3 (any sign)", lambda a: a ** 3, U(3, 4)),
        case("x**2.5 (positive x)", lambda a: a ** 2.5, U(3, 4, low=0.5, high=2.0)),
        case("x**-1.5 (positive x)", lambda a: F.pow(a, -1.5), U(3, 4, low=0.5, high=2.0)),
        case("x**0", lambda a: a ** 0, U(3, 4)),
    ],
    el.Exp: [case("(3,4)", F.exp, U(3, 4, low=-2, high=2)), case("method", lambda a: a.exp(), U(5))],
    el.Log: [case("positive", F.log, U(3, 4, low=0.2, high=3.0)),
             case("method", lambda a: a.log(), U(5, low=0.5, high=2.0))],
    el.Sqrt: [case("positive", F.sqrt, U(3, 4, low=0.2, high=3.0))],
    el.Abs: [case("away from 0", F.abs, AWAY(3, 4))],
    el.Tanh: [case("(3,4)", F.tanh, U(3, 4, low=-3, high=3))],
    el.Sigmoid: [case("(3,4)", F.sigmoid, U(3, 4, low=-6, high=6))],
    el.Relu: [case("away from 0", F.relu, AWAY(3, 4))],
    el.LeakyRelu: [case("default slope", F.leaky_relu, AWAY(3, 4)),
                   case("slope 0.2", lambda a: F.leaky_relu(a, 0.2), AWAY(3, 4))],
    el.Elu: [case("default alpha", F.elu, AWAY(3, 4)),
             case("alpha 1.5", lambda a: F.elu(a, alpha=1.5), AWAY(3, 4))],
    el.Softplus: [case("wide range", F.softplus, U(3, 4, low=-8, high=8))],
    el.LogSigmoid: [case("wide range", F.log_sigmoid, U(3, 4, low=-8, high=8))],
    el.Clip: [
        case("both bounds", lambda a: F.clip(a, -0.5, 0.5), AWAY(3, 4, points=(-0.5, 0.5), margin=0.05)),
        case("lower bound only", lambda a: F.clip(a, lo=0.3), AWAY(3, 4, points=(0.3,), margin=0.05)),
    ],
    el.Where: [
        case("same shape", lambda a, b: F.where(COND, a, b), U(3, 4), U(3, 4)),
        case("broadcast b (1,4)", lambda a, b: F.where(COND, a, b), U(3, 4), U(1, 4)),
        case("python scalar b", lambda a: F.where(COND, a, 0.0), U(3, 4)),
        case("list condition", lambda a, b: F.where([True, False, False, True], a, b), U(3, 4), U(3, 4)),
    ],
    # ---- reductions ----
    rd.Sum: [
        case("all", F.sum, U(3, 4)),
        case("axis 1", lambda a: F.sum(a, axis=1), U(3, 4)),
        case("axis (0,2) keepdims", lambda a: a.sum(axis=(0, 2), keepdims=True), U(2, 3, 4)),
        case("axis -1 keepdims", lambda a: a.sum(axis=-1, keepdims=True), U(2, 3, 4)),
        case("axis (-3,-1)", lambda a: a.sum(axis=(-3, -1)), U(2, 3, 4)),
    ],
    rd.Mean: [
        case("all", F.mean, U(3, 4)),
        case("axis 0", lambda a: F.mean(a, axis=0), U(3, 4)),
        case("axis (0,2) keepdims", lambda a: a.mean(axis=(0, 2), keepdims=True), U(2, 3, 4)),
        case("axis (1,2)", lambda a: a.mean(axis=(1, 2)), U(2, 3, 4)),
    ],
    rd.Max: [
        case("all", F.max, DISTINCT(3, 4)),
        case("axis 1", lambda a: F.max(a, axis=1), DISTINCT(3, 4)),
        case("axis (0,2) keepdims", lambda a: a.max(axis=(0, 2), keepdims=True), DISTINCT(2, 3, 4)),
        case("axis -1", lambda a: a.max(axis=-1), DISTINCT(2, 3, 4)),
    ],
    rd.LogSumExp: [
        case("all", F.logsumexp, U(3, 4, low=-3, high=3)),
        case("axis 1", lambda a: F.logsumexp(a, axis=1), U(3, 4, low=-3, high=3)),
        case("axis (0,2) keepdims", lambda a: F.logsumexp(a, axis=(0, 2), keepdims=True), U(2, 3, 4)),
        case("large values (stable)", lambda a: F.logsumexp(a, axis=-1), U(3, 4, low=700, high=705)),
    ],
    rd.Softmax: [
        case("axis -1", F.softmax, U(3, 4, low=-3, high=3)),
        case("axis 0 of 3-D", lambda a: F.softmax(a, axis=0), U(3, 2, 4, low=-3, high=3)),
        case("large values (stable)", F.softmax, U(3, 4, low=700, high=705)),
    ],
    rd.LogSoftmax: [
        case("axis -1", F.log_softmax, U(3, 4, low=-3, high=3)),
        case("axis 1 of 3-D", lambda a: F.log_softmax(a, axis=1), U(2, 3, 4, low=-3, high=3)),
        case("large values (stable)", F.log_softmax, U(3, 4, low=700, high=705)),
    ],
    # ---- linear algebra ----
    la.Matmul: [
        case("(3,4)@(4,5)", F.matmul, U(3, 4), U(4, 5)),
        case("batched, broadcast batch (2,1,3,4)@(5,4,2)", lambda a, b: a @ b, U(2, 1, 3, 4), U(5, 4, 2)),
        case("(2,3,4)@(4,5)", F.matmul, U(2, 3, 4), U(4, 5)),
        case("(3,4)@(2,4,5)", F.matmul, U(3, 4), U(2, 4, 5)),
        case("numpy-free constant left", lambda b: F.matmul(Tensor(np.eye(3, 4, dtype=b.dtype)), b), U(4, 2)),
    ],
    la.Linear: [
        case("with bias", F.linear, U(3, 4), U(4, 5), U(5)),
        case("without bias", F.linear, U(3, 4), U(4, 5)),
        case("3-D x with bias", F.linear, U(2, 3, 4), U(4, 5), U(5)),
        case("3-D x without bias", F.linear, U(2, 3, 4), U(4, 5)),
        case("constant x", F.linear, Const(U(3, 4)), U(4, 2), U(2)),
    ],
    # ---- shape ----
    sh.Reshape: [
        case("(3,4)->(2,6)", lambda a: F.reshape(a, (2, 6)), U(3, 4)),
        case("-1", lambda a: a.reshape(-1), U(2, 3, 2)),
        case("method with ints", lambda a: a.reshape(4, 1, 3), U(3, 4)),
    ],
    sh.Transpose: [
        case("default (reverse)", F.transpose, U(3, 4)),
        case(".T of 3-D", lambda a: a.T, U(2, 3, 4)),
        case("axes (1,0,2)", lambda a: a.transpose(1, 0, 2), U(2, 3, 4)),
        case("negative axes", lambda a: F.transpose(a, (-1, 0, 1)), U(2, 3, 4)),
    ],
    sh.BroadcastTo: [
        case("(3,1)->(2,3,4)", lambda a: F.broadcast_to(a, (2, 3, 4)), U(3, 1)),
        case("(4,)->(3,4)", lambda a: F.broadcast_to(a, (3, 4)), U(4)),
    ],
    sh.Getitem: [
        case("slices", lambda a: a[1:, ::2], U(3, 4)),
        case("negative step", lambda a: a[::-1, 1:3], U(3, 4)),
        case("integer", lambda a: a[1], U(3, 4)),
        case("integer array, repeated", lambda a: a[REPEATED], U(4, 3)),
        case("two integer arrays, repeated pairs", lambda a: a[[0, 0, 2, 0], [1, 1, 3, 1]], U(3, 4)),
        case("slice + repeated integer list", lambda a: a[:, [1, 1, 3, 1]], U(3, 4)),
        case("boolean mask", lambda a: a[MASK], U(3, 4)),
        case("boolean rows", lambda a: a[np.array([True, False, True])], U(3, 4)),
        case("ellipsis and newaxis", lambda a: a[..., None, 1:3], U(2, 3, 4)),
    ],
    sh.Concatenate: [
        case("axis 0", lambda a, b: F.concatenate([a, b]), U(2, 3), U(4, 3)),
        case("axis 1, three inputs", lambda a, b, c: F.concatenate([a, b, c], axis=1), U(2, 1), U(2, 3), U(2, 2)),
        case("axis -1, same tensor twice", lambda a: F.concatenate([a, a * 2.0], axis=-1), U(2, 3, 2)),
        case("with a constant", lambda a, b: F.concatenate([a, b], axis=0), U(2, 3), Const(U(1, 3))),
    ],
    sh.Stack: [
        case("axis 0", lambda a, b: F.stack([a, b]), U(2, 3), U(2, 3)),
        case("axis 1", lambda a, b, c: F.stack([a, b, c], axis=1), U(2, 3), U(2, 3), U(2, 3)),
        case("axis -1", lambda a, b: F.stack([a, b], axis=-1), U(2, 3), U(2, 3)),
    ],
    # ---- normalization (training mode: batch statistics) ----
    norm.BatchNorm: [
        case("(N,C) affine", norm.batch_norm, U(6, 3, low=-2, high=2), U(3, low=0.5, high=2), U(3)),
        case("(N,C,L) affine", norm.batch_norm, U(3, 2, 4, low=-2, high=2), U(2, low=0.5, high=2), U(2)),
        case("(N,C) no affine", norm.batch_norm, U(5, 4, low=-2, high=2)),
        case("running stats updated, constant x", lambda x, w, b: norm.batch_norm(
            x, w, b, running_mean=np.zeros(3, x.dtype), running_var=np.ones(3, x.dtype)),
             Const(U(6, 3)), U(3), U(3)),
    ],
    # ---- VAE ops (per row: one value per example) ----
    vae.Reparameterize: [
        case("all inputs", F.reparameterize, U(4, 3), U(4, 3, low=-2, high=1), U(4, 3)),
        case("fixed eps", F.reparameterize, U(4, 3), U(4, 3), Const(U(4, 3))),
        case("broadcast mu (3,)", F.reparameterize, U(3), U(4, 3), Const(U(4, 3))),
    ],
    vae.KLNormalStd: [
        case("(4,3)", F.kl_normal_std, U(4, 3), U(4, 3, low=-2, high=1)),
        case("3-D rows", F.kl_normal_std, U(2, 3, 2), U(2, 3, 2)),
    ],
    vae.KLNormalNormal: [
        case("same shapes", F.kl_normal_normal, U(4, 3), U(4, 3), U(4, 3), U(4, 3)),
        case("broadcast prior (3,)", F.kl_normal_normal, U(4, 3), U(4, 3), U(3), U(3)),
        case("broadcast prior (1,3)", F.kl_normal_normal, U(4, 3), U(4, 3), U(1, 3), U(1, 3)),
    ],
    vae.BernoulliLogProb: [
        case("binary targets", F.bernoulli_log_prob, U(4, 5, low=-6, high=6), Const(BINARY(4, 5))),
        case("soft targets, both grads", F.bernoulli_log_prob, U(4, 5, low=-4, high=4), U(4, 5, low=0, high=1)),
        case("3-D rows", F.bernoulli_log_prob, U(2, 3, 2, low=-4, high=4), Const(BINARY(2, 3, 2))),
    ],
    vae.GaussianLogProb: [
        case("all inputs", F.gaussian_log_prob, U(4, 3), U(4, 3), U(4, 3)),
        case("broadcast mu, logvar (3,)", F.gaussian_log_prob, U(4, 3), U(3), U(3)),
    ],
    vae.BinaryCrossEntropyWithLogits: [
        case("mean", F.binary_cross_entropy_with_logits, U(4, 5, low=-4, high=4), Const(BINARY(4, 5))),
        case("sum, both grads", lambda l, x: F.binary_cross_entropy_with_logits(l, x, reduction="sum"),
             U(4, 5, low=-4, high=4), U(4, 5, low=0, high=1)),
        case("none", lambda l, x: F.binary_cross_entropy_with_logits(l, x, reduction="none"),
             U(4, 5, low=-4, high=4), Const(BINARY(4, 5))),
    ],
}

PARAMS = [pytest.param(op, name, fn, specs, id=f"{op.__name__}-{name}")
          for op, cases in CASES.items() for name, fn, specs in cases]


def _rng_for(op, name):
    return np.random.default_rng(zlib.crc32(f"{op.__name__}/{name}".encode()))


def op_classes():
    """Every Function subclass defined in a module of the ``minivae.ops`` package."""
    for info in pkgutil.walk_packages(minivae.ops.__path__, prefix="minivae.ops."):
        importlib.import_module(info.name)
    found = set()
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "minivae.ops" or name.startswith("minivae.ops.")):
            continue
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, Function) and obj is not Function:
                found.add(obj)
    return found


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
    assert out.dtype == np.float64
    assert gradcheck(fn, *inputs)
    assert _records(out, op), f"case {name!r} does not exercise {op.__name__}"


@pytest.mark.parametrize("op, name, fn, specs", PARAMS)
def test_float32_backward_matches_float64(op, name, fn, specs):
    inputs = build(specs, _rng_for(op, name))
    assert check_float32(fn, *inputs)


def _records(out, op):
    """True when ``op`` appears in the graph that produced ``out``."""
    stack, seen = [out], set()
    while stack:
        t = stack.pop()
        if id(t) in seen or t._node is None:
            continue
        seen.add(id(t))
        fn, _, inputs = t._node
        if fn is op:
            return True
        stack.extend(inputs)
    return False


def test_where_condition_spellings():
    a, b = Tensor(np.array([1.0, 2.0])), Tensor(np.array([10.0, 20.0]))
    for cond in ([True, False], np.array([1, 0]), Tensor(np.array([1.0, 0.0]))):
        np.testing.assert_array_equal(F.where(cond, a, b).data, [1.0, 20.0])
    np.testing.assert_array_equal(F.where(False, a, b).data, [10.0, 20.0])


def test_pow_zero_exponent_has_zero_gradient_at_zero():
    x = Tensor(np.array([0.0, 1.5]), requires_grad=True)
    (x ** 0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0])
