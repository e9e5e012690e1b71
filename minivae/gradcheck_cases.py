"""The gradcheck cases of every op: inputs that exercise each Function, kept away from kinks.

``CASES`` maps each op class of ``minivae.ops`` to a list of ``(name, fn, specs)`` cases; a spec
is a function of a NumPy generator returning a float64 array (``U``, ``AWAY``, ``DISTINCT``,
``BINARY``), or ``Const(spec)`` for an input that needs no gradient. The test suite
(``tests/test_ops_gradcheck.py``), ``minivae gradcheck`` and the generated ``docs/gradients.md``
all read this one table, so a case added here is tested, reported and documented.

Inputs are kept away from kinks: relu/abs/leaky_relu/elu at 0, clip at its bounds, max ties,
log/sqrt/pow of non-positive values, division by values near 0.

``model_case(name)`` builds the same kind of check for a whole model: a small instance's loss
as a function of every parameter, with fixed data and fixed reparameterization noise.
"""
import importlib
import inspect
import pkgutil
import re
import sys
import zlib

import numpy as np

from . import functional as F
from . import ops as _ops_package
from .autograd import Tensor
from .function import Function
from .ops import elementwise as el, linalg as la, norm, reduce as rd, shape as sh, vae
from .ops import ladder


def away_from(rng, shape, points=(0.0,), margin=0.1, low=-2.0, high=2.0):
    """Uniform values in [low, high] pushed at least ``margin`` away from every point in ``points``
    (relu/abs at 0, clip at its bounds), so a finite difference never straddles a kink."""
    x = rng.uniform(low, high, shape)
    for p in points:
        near = np.abs(x - p) < margin
        x = np.where(near, p + np.where(x >= p, margin, -margin) * rng.uniform(1, 2, shape), x)
    return x


def distinct(rng, shape, spacing=0.1):
    """Values at least 3/4 ``spacing`` apart in random order: no ties for max.

    Value k is ``k * spacing`` plus a jitter below ``spacing / 4``, so neighbours may come as
    close as ``spacing - spacing / 4``.
    """
    n = int(np.prod(shape))
    return (rng.permutation(n) * spacing + rng.uniform(0, spacing / 4, n) - n * spacing / 2).reshape(shape)


# ----- input specs: each is a function of a generator returning a float64 array ----------------
def U(*shape, low=-1.0, high=1.0):
    """Uniform in [low, high]."""
    return lambda rng: rng.uniform(low, high, shape)


def AWAY(*shape, points=(0.0,), margin=0.1, low=-2.0, high=2.0):
    """Uniform, but at least ``margin`` from each kink in ``points``."""
    return lambda rng: away_from(rng, shape, points, margin, low, high)


def DISTINCT(*shape):
    """No two values closer than 0.075 (max without ties; ``distinct`` with a spacing of 0.1)."""
    return lambda rng: distinct(rng, shape)


def BINARY(*shape):
    """Bernoulli targets in {0, 1}."""
    return lambda rng: (rng.uniform(size=shape) < 0.5).astype(np.float64)


class Const:
    """An input that does not require a gradient (still cast to float32 by check_float32)."""

    def __init__(self, spec):
        self.spec = spec


def _noise(seed, offset):
    """A fixed counter-addressed draw: the same eps at every call, as a finite difference needs."""
    from .random import Noise

    return Noise(seed=seed, offset=offset)


def case(name, fn, *specs):
    """One gradcheck case: a name, a function of the inputs, and one input spec per argument."""
    return name, fn, specs


def build(specs, rng):
    """The float64 input Tensors of a case: ``Const`` specs are constants, the rest require grad."""
    return [Tensor(s.spec(rng)) if isinstance(s, Const) else Tensor(s(rng), requires_grad=True)
            for s in specs]


# Fixed integer indices (repeated entries accumulate) and a boolean mask for getitem.
REPEATED = np.array([0, 2, 0, 0, 3])
MASK = np.array([[True, False, True, False], [False, False, True, True], [True, True, False, False]])
COND = np.array([[True, False, True, False], [False, True, True, False], [True, True, False, True]])
ROW_BOUNDS = np.array([[-0.5], [0.0], [0.5]])  # clip's lower bound per row of the (3, 4) result

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
        case("lower bounds (3,1) broadcast x (4,)", lambda a: F.clip(a, ROW_BOUNDS.astype(a.dtype), 1.0),
             AWAY(4, points=(*ROW_BOUNDS.ravel(), 1.0), margin=0.05)),
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
        case("large values (stable)", lambda a: F.logsumexp(a, axis=-1), U(3, 4, low=710, high=715)),
    ],
    rd.Softmax: [
        case("axis -1", F.softmax, U(3, 4, low=-3, high=3)),
        case("axis 0 of 3-D", lambda a: F.softmax(a, axis=0), U(3, 2, 4, low=-3, high=3)),
        case("large values (stable)", F.softmax, U(3, 4, low=710, high=715)),
    ],
    rd.LogSoftmax: [
        case("axis -1", F.log_softmax, U(3, 4, low=-3, high=3)),
        case("axis 1 of 3-D", lambda a: F.log_softmax(a, axis=1), U(2, 3, 4, low=-3, high=3)),
        case("large values (stable)", F.log_softmax, U(3, 4, low=710, high=715)),
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
    la.LinearRelu: [
        # every pre-activation x @ W + b of these seeds is >= 1e-3 from the kink at 0, far beyond
        # the finite-difference step (tests/test_ops_gradcheck.py checks it)
        case("with bias", F.linear_relu, U(3, 4), U(4, 5), U(5)),
        case("without bias", F.linear_relu, U(3, 4), U(4, 5)),
        case("3-D x with bias", F.linear_relu, U(2, 3, 4), U(4, 5), U(5)),
        case("constant x", F.linear_relu, Const(U(3, 4)), U(4, 2), U(2)),
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
    vae.ReparameterizeNoise: [
        case("Philox noise", lambda mu, logvar: F.reparameterize(mu, logvar, _noise(7, 3)), U(4, 3),
             U(4, 3, low=-2, high=1)),
        case("3 samples per row", lambda mu, logvar: F.reparameterize(mu, logvar, _noise(7, 3), shape=(3, 4, 3)),
             U(4, 3), U(4, 3)),
    ],
    vae.ReparameterizeKL: [  # two outputs: a random upstream gradient for each
        case("z and kl", lambda mu, logvar: F.reparameterize_kl(mu, logvar, _noise(7, 3)), U(4, 3), U(4, 3, low=-2, high=1)),
        case("3 samples per row", lambda mu, logvar: F.reparameterize_kl(mu, logvar, _noise(7, 3), samples=3),
             U(4, 3), U(4, 3)),
        case("3-D rows", lambda mu, logvar: F.reparameterize_kl(mu, logvar, _noise(5, 1)), U(2, 3, 2), U(2, 3, 2)),
        case("z only", lambda mu, logvar: F.reparameterize_kl(mu, logvar, _noise(7, 3))[0], U(4, 3), U(4, 3)),
        case("kl only", lambda mu, logvar: F.reparameterize_kl(mu, logvar, _noise(7, 3))[1], U(4, 3), U(4, 3)),
    ],
    vae.KLNormalStd: [
        case("(4,3)", F.kl_normal_std, U(4, 3), U(4, 3, low=-2, high=1)),
        case("3-D rows", F.kl_normal_std, U(2, 3, 2), U(2, 3, 2)),
        case("mu (4,1) against logvar (4,3)", F.kl_normal_std, U(4, 1), U(4, 3)),
        case("logvar (4,1) against mu (4,3)", F.kl_normal_std, U(4, 3), U(4, 1)),
    ],
    vae.KLNormalNormal: [
        case("same shapes", F.kl_normal_normal, U(4, 3), U(4, 3), U(4, 3), U(4, 3)),
        case("broadcast prior (3,)", F.kl_normal_normal, U(4, 3), U(4, 3), U(3), U(3)),
        case("broadcast prior (1,3)", F.kl_normal_normal, U(4, 3), U(4, 3), U(1, 3), U(1, 3)),
        case("log-variances (4,1) against means (4,3)", F.kl_normal_normal, U(4, 3), U(4, 1), U(4, 3), U(4, 1)),
        case("logvar_q (4,3) against the rest (4,1)", F.kl_normal_normal, U(4, 1), U(4, 3), U(4, 1), U(4, 1)),
    ],
    vae.BernoulliLogProb: [
        case("binary targets", F.bernoulli_log_prob, U(4, 5, low=-6, high=6), Const(BINARY(4, 5))),
        case("soft targets, both grads", F.bernoulli_log_prob, U(4, 5, low=-4, high=4), U(4, 5, low=0, high=1)),
        case("3-D rows", F.bernoulli_log_prob, U(2, 3, 2, low=-4, high=4), Const(BINARY(2, 3, 2))),
        case("logits (4,1) against soft targets (4,3), both grads", F.bernoulli_log_prob,
             U(4, 1, low=-4, high=4), U(4, 3, low=0, high=1)),
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
        case("mean, logits (5,) against targets (4,5)", F.binary_cross_entropy_with_logits,
             U(5, low=-4, high=4), Const(BINARY(4, 5))),
        case("sum, logits (5,) against soft targets (4,5), both grads",
             lambda l, x: F.binary_cross_entropy_with_logits(l, x, reduction="sum"),
             U(5, low=-4, high=4), U(4, 5, low=0, high=1)),
    ],
    # ---- Ladder VAE (two outputs: mu_q and logvar_q) ----
    ladder.PrecisionWeightedMerge: [
        case("same shapes", ladder.precision_weighted_merge, U(4, 3), U(4, 3, low=-3, high=3),
             U(4, 3), U(4, 3, low=-3, high=3)),
        case("bottom-up (3,2) against samples (2,3,2)", ladder.precision_weighted_merge,
             U(3, 2), U(3, 2), U(2, 3, 2), U(2, 3, 2)),
        case("very unequal precisions", ladder.precision_weighted_merge, U(4, 3),
             U(4, 3, low=-8, high=-4), U(4, 3), U(4, 3, low=4, high=8)),
        case("constant prior", ladder.precision_weighted_merge, U(4, 3), U(4, 3),
             Const(U(4, 3)), Const(U(4, 3))),
        case("mu_q only (no gradient reaches logvar_q)", lambda *a: ladder.precision_weighted_merge(*a)[0],
             U(4, 3), U(4, 3), U(4, 3), U(4, 3)),
        case("logvar_q only (no gradient reaches mu_q)", lambda *a: ladder.precision_weighted_merge(*a)[1],
             U(4, 3), U(4, 3), U(4, 3), U(4, 3)),
    ],
}


def rng_for(op, name):
    """The generator of one case, seeded by its op and name (stable across runs and orderings)."""
    return np.random.default_rng(zlib.crc32(f"{op.__name__}/{name}".encode()))


def op_classes():
    """Every Function subclass defined in a module of the ``minivae.ops`` package."""
    for info in pkgutil.walk_packages(_ops_package.__path__, prefix="minivae.ops."):
        importlib.import_module(info.name)
    found = set()
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "minivae.ops" or name.startswith("minivae.ops.")):
            continue
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, Function) and obj is not Function:
                found.add(obj)
    return found


def public_name(op):
    """The ``minivae.functional`` name of an op class: ``LogSumExp`` -> ``logsumexp``,
    ``KLNormalStd`` -> ``kl_normal_std`` (None when the op has no public function)."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", op.__name__).lower()
    for candidate in (snake, op.__name__.lower()):
        if candidate in getattr(_ops_package, "__all__", ()):
            return candidate
    return None


def find_op(name):
    """The op class called ``name`` (class or function name, any case) among the ops of
    ``minivae.ops`` and the keys of ``CASES``; ValueError if none."""
    key = name.lower().replace("-", "_")
    ops = sorted(op_classes() | set(CASES), key=lambda c: c.__name__)
    for op in ops:
        if key in (op.__name__.lower(), public_name(op)):
            return op
    known = ", ".join(sorted(public_name(op) or op.__name__ for op in ops))
    raise ValueError(f"unknown op {name!r}; choose from: {known}")


#: The sizes of the small model that ``model_case`` checks (every parameter element by element).
SMALL_MODEL = dict(x_dim=12, z_dim=3, hidden=(8,))
#: Ladder models need two stochastic layers for the precision-weighted merge to be checked.
#: M1+M2 gets a fresh small M1 (its weights are frozen, so only M2's are checked).
MODEL_SIZES = {"ladder": dict(hidden=(8, 6), z_dims=(3, 2)), "ladder-m2": dict(hidden=(8, 6), z_dims=(3, 2)),
               "m1m2": dict(m1=dict(x_dim=12, z_dim=4, hidden=(8,)))}


def model_case(name="vae", batch=4, seed=0, **kwargs):
    """A gradcheck case for a whole model: ``(parameter names, fn, inputs)``.

    ``fn(x, *params)`` is the model's training loss on a fixed batch ``x`` of binary images
    with fixed reparameterization noise (a fresh ``minivae.random.Generator(seed)`` at every
    call, so every call draws the same numbers), evaluated with ``params`` in place of the model's parameters, so the inputs
    may be float64 or float32 copies: the rest of the model (a frozen part, batch normalization's
    running statistics) is cast to the dtype of ``x`` at each call. ``inputs`` are float64: x (a
    constant), then a copy of every trainable parameter (``requires_grad``; a frozen part such as
    M1+M2's M1 is a constant), in ``named_parameters`` order.
    """
    from .models import build_model
    from .random import Generator

    rng = np.random.default_rng(seed)
    sizes = dict(SMALL_MODEL, **MODEL_SIZES.get(name, {}))
    model = build_model(name, **dict(sizes, rng=rng, **kwargs)).astype(np.float64)
    x = (rng.uniform(size=(batch, model.x_dim)) < 0.5).astype(np.float64)
    slots, names = [], []
    for mname, module in model.named_modules():
        for key, p in module._parameters.items():
            if (p is not None and p.requires_grad
                    and all(p is not module2._parameters[k2] for module2, k2 in slots)):
                slots.append((module, key))
                names.append(f"{mname}.{key}" if mname else key)
    inputs = [Tensor(x)] + [Tensor(module._parameters[key].data.copy(), requires_grad=True)
                            for module, key in slots]

    def loss(x, *params):
        # Float32 copies of the inputs (``gradcheck_report(dtype="float32")``) would otherwise
        # meet float64 frozen weights and running statistics, which the ops refuse to mix.
        model.astype(x.dtype)
        originals = [module._parameters[key] for module, key in slots]
        for (module, key), p in zip(slots, params):
            module._parameters[key] = p
        try:
            return model.loss(x, Generator(seed))[0]
        finally:
            for (module, key), p in zip(slots, originals):
                module._parameters[key] = p

    return names, loss, inputs


# ----- reports: the tables of ``minivae gradcheck`` --------------------------------------------

def report_op(op, dtype="float64"):
    """``gradcheck_report`` of every case of ``op``: a list of (case name, input label, record)."""
    from .gradcheck import gradcheck_report

    rows = []
    for name, fn, specs in CASES[op]:
        inputs = build(specs, rng_for(op, name))
        for record in gradcheck_report(fn, *inputs, dtype=dtype):
            rows.append((name, record["name"], record))
    return rows


def report_model(name="vae", dtype="float64"):
    """``gradcheck_report`` of a small model's loss (``model_case``) with respect to every
    parameter: a list of ("loss", parameter name, record)."""
    from .gradcheck import gradcheck_report

    names, fn, inputs = model_case(name)
    return [("loss", names[record["input"] - 1], record)
            for record in gradcheck_report(fn, *inputs, dtype=dtype)]


def criteria(dtype):
    """One line saying what is compared and when a row passes, for the head of the tables."""
    from .gradcheck import ATOL, EPS, FLOAT32_ATOL, FLOAT32_RTOL, RTOL

    if dtype == "float64":
        return (f"float64 analytic gradient vs float64 central differences (eps {EPS:g}); "
                f"pass: |a - n| <= {ATOL:g} + {RTOL:g} |n| at every element / direction")
    return (f"float32 analytic gradient vs float64 central differences (eps {EPS:g}) at the same "
            f"float32 point; pass: max |a - n| <= {FLOAT32_ATOL:g} + {FLOAT32_RTOL:g} max |n|; "
            f"rounding = 2^-24 max |n|, the error of one float32 rounding of the largest gradient")


def format_table(title, rows, dtype="float64"):
    """The rows of ``report_op`` / ``report_model`` as a plain-text table under ``title``."""
    head = ["case", "input", "shape", "checked", "max abs err", "max rel err"]
    if dtype == "float32":
        head.append("rounding")
    head.append("result")
    body = []
    for case_name, label, r in rows:
        line = [case_name, label, str(r["shape"]), f"{r['checked']} {r['mode']}",
                f"{r['max_abs_err']:.2e}", f"{r['max_rel_err']:.2e}"]
        if dtype == "float32":
            line.append(f"{r['rounding']:.2e}")
        line.append("pass" if r["passed"] else f"FAIL at {r['worst']}: analytic {r['analytic']:.8g}, "
                                                 f"numeric {r['numeric']:.8g}")
        body.append(line)
    widths = [max(len(row[k]) for row in [head] + body) for k in range(len(head) - 1)]
    lines = [title]
    for row in [head] + body:
        cells = [c.ljust(w) for c, w in zip(row, widths)] + [row[-1]]
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)
