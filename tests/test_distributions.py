"""The log-densities and KLs the models use (the fused ops of minivae.functional and the helpers
of minivae.distributions) against NumPy formulas (no SciPy), and the shared sampling helpers."""
import decimal
import math

import numpy as np
import pytest

import minivae as mv
import minivae.distributions as D
from minivae import functional as F
from minivae.gpu.graph import StepNoise
from minivae.gradcheck import gradcheck
from minivae.random import Generator, Noise
from test_kernels import (TOL, WIDE_GAUSSIAN_ROWS, WIDE_KL_ROWS, assert_same_gumbel,  # noqa: F401  (fixtures)
                          dispatch_table, fake_gpu, shim)
from test_loss_statistics import CASES, build

LOG_2PI = math.log(2 * math.pi)
rng = np.random.default_rng(0)


def _t(a, requires_grad=False):
    return mv.tensor(np.asarray(a), requires_grad=requires_grad)


def _np_log_normal(z, mu, logvar):
    return (-0.5 * (LOG_2PI + logvar + (z - mu) ** 2 / np.exp(logvar))).sum(-1)


def _np_log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_log_standard_normal():
    z = rng.standard_normal((5, 3))
    out = F.gaussian_log_prob(_t(z), 0.0, 0.0)
    assert out.shape == (5,)
    np.testing.assert_allclose(out.data, (-0.5 * (LOG_2PI + z ** 2)).sum(1), rtol=1e-13)


def test_log_normal():
    z, mu, logvar = rng.standard_normal((3, 4, 6))
    np.testing.assert_allclose(F.gaussian_log_prob(_t(z), _t(mu), _t(logvar)).data,
                               _np_log_normal(z, mu, logvar), rtol=1e-13)


def test_samples_by_examples_reduce_the_last_axis():
    # (S, B, D) -> (S, B): S samples of each of B examples, broadcasting (B, D) parameters.
    z, mu, logvar = rng.standard_normal((2, 3, 4)), rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    out = F.gaussian_log_prob(_t(z), 0.0, 0.0)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out.data, (-0.5 * (LOG_2PI + z ** 2)).sum(-1), rtol=1e-13)
    out = F.gaussian_log_prob(_t(z), _t(mu), _t(logvar))
    expected = (-0.5 * (LOG_2PI + logvar + (z - mu) ** 2 / np.exp(logvar))).sum(-1)
    np.testing.assert_allclose(out.data, expected, rtol=1e-13)
    logits = rng.standard_normal((2, 3, 5))
    y = np.eye(5)[rng.integers(0, 5, (2, 3))]
    np.testing.assert_allclose(D.log_categorical(_t(y), _t(logits)).data,
                               (y * _np_log_softmax(logits)).sum(-1), rtol=1e-12)


def test_log_bernoulli_logits():
    x = (rng.uniform(size=(4, 7)) < 0.5).astype(np.float64)
    logits = rng.standard_normal((4, 7)) * 3
    p = 1 / (1 + np.exp(-logits))
    expected = (x * np.log(p) + (1 - x) * np.log(1 - p)).sum(1)
    np.testing.assert_allclose(F.bernoulli_log_prob(_t(logits), _t(x)).data, expected, rtol=1e-12)
    # confidently wrong logits stay finite (the naive log(sigmoid) form gives -inf in float32)
    extreme = F.bernoulli_log_prob(_t(np.array([[-200.0, 200.0]], np.float32)),
                                   _t(np.array([[1.0, 0.0]], np.float32)))
    np.testing.assert_allclose(extreme.data, [-400.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bernoulli_logit_gradient_at_negative_logits_is_the_same_on_both_paths(dtype):
    # d/dl = x - sigmoid(l). Where x has the logits' shape the op ran an in-place pass with
    # sigmoid = (1 + tanh(l / 2)) / 2, which cancels for negative l: 0 at x = 0, l = -20 in float32
    # (l = -40 in float64) while the path for images that broadcast up gave -2.06e-9 (-4.2e-18).
    # Both paths must give x - sigmoid(l) to a few ulp of itself, the same numbers.
    logits = np.array([-0.5, -5.0, -10.0, -20.0, -40.0, -80.0, 3.0, 0.0], dtype)
    x = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.3, 1.0], dtype)
    want = x - 1 / (1 + np.exp(-logits.astype(np.float64)))
    grads = []
    for logits_shape, x_shape in (((2, 8), (2, 8)), ((8,), (2, 8))):  # in place; x adds an axis
        lt = _t(np.broadcast_to(logits, logits_shape).copy(), requires_grad=True)
        F.bernoulli_log_prob(lt, _t(np.broadcast_to(x, x_shape).copy())).backward(np.ones(2, dtype))
        grads.append(lt.grad.reshape(-1, 8).sum(0) / 2)
        np.testing.assert_allclose(grads[-1], want, rtol=4 * np.finfo(dtype).eps, atol=0)
    np.testing.assert_array_equal(grads[0], grads[1])


def _x_minus_sigmoid_cases(dtype):
    """Logits (mostly far positive, where sigmoid(l) rounds to 1) with targets 1, 1/2 and 0, and
    x - sigmoid(l) in float64 from forms with no cancellation: sigmoid(-l) at x = 1,
    -tanh(l / 2) / 2 at x = 1/2 and -sigmoid(l) at x = 0."""
    logits = np.array([0.5, 5.0, 10.0, 20.0, 40.0, 80.0, -3.0, 0.0, 20.0, 40.0, -20.0], dtype)
    x = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.0, 1.0], dtype)
    l64 = logits.astype(np.float64)
    want = np.where(x == 1, 1 / (1 + np.exp(l64)),
                    np.where(x == 0.5, -0.5 * np.tanh(0.5 * l64), -1 / (1 + np.exp(-l64))))
    return logits, x, want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_logit_gradient_where_sigmoid_rounds_to_one(dtype):
    # d/dl = x - sigmoid(l) cancels where sigmoid(l) is near 1: at x = 1, l = 20 it was 0 in
    # float32 (l = 40 in float64) where it is 2.06e-9 (4.2e-18), and off by 4e-4 of itself at
    # l = 10. Written around sigmoid(-|l|) it is right to a few ulp of itself on bernoulli_log_prob's
    # two paths (its in-place pass and the one for images that broadcast up), the same numbers,
    # and in binary_cross_entropy_with_logits (sigmoid(l) - x).
    logits, x, want = _x_minus_sigmoid_cases(dtype)
    n, grads = len(x), []
    for logits_shape, x_shape in (((2, n), (2, n)), ((n,), (2, n))):  # in place; x adds an axis
        lt = _t(np.broadcast_to(logits, logits_shape).copy(), requires_grad=True)
        F.bernoulli_log_prob(lt, _t(np.broadcast_to(x, x_shape).copy())).backward(np.ones(2, dtype))
        grads.append(lt.grad.reshape(-1, n).sum(0) / 2)
        np.testing.assert_allclose(grads[-1], want, rtol=4 * np.finfo(dtype).eps, atol=0)
    np.testing.assert_array_equal(grads[0], grads[1])
    lt = _t(logits, requires_grad=True)
    F.binary_cross_entropy_with_logits(lt, _t(x), reduction="sum").backward()
    np.testing.assert_array_equal(lt.grad, -grads[0])


def test_log_categorical():
    k = 5
    logits = rng.standard_normal((6, k)) * 4
    labels = rng.integers(0, k, 6)
    y = np.eye(k)[labels]
    expected = _np_log_softmax(logits)[np.arange(6), labels]
    out = D.log_categorical(_t(y), _t(logits))
    assert out.shape == (6,)
    np.testing.assert_allclose(out.data, expected, rtol=1e-12)
    big = D.log_categorical(_t(np.array([[0.0, 1.0]], np.float32)),
                            _t(np.array([[1000.0, 0.0]], np.float32)))
    np.testing.assert_allclose(big.data, [-1000.0])  # no overflow, no -inf


def test_log_categorical_broadcasts_leading_axes_but_not_the_classes():
    logits = rng.standard_normal((3, 4, 5))
    y = np.eye(5)[[0, 2, 4, 1]]  # (B, K) labels against (S, B, K) logits, as the models score them
    np.testing.assert_allclose(D.log_categorical(_t(y), _t(logits)).data,
                               (_np_log_softmax(logits) * y).sum(-1), rtol=1e-12)
    # Before: a (B, 1) column broadcast over the classes and summed all their log-probabilities.
    for bad_y, bad_logits in [(np.ones((4, 1)), logits), (np.eye(4), logits), (np.array(1.0), logits[0, 0])]:
        with pytest.raises(ValueError, match=r"^log_categorical: y_onehot \(.*\) and logits \(.*\) must "
                                             "have the same number of classes on their last axis$"):
            D.log_categorical(_t(bad_y), _t(bad_logits))


def test_log_uniform_categorical_refuses_an_integer_dtype():
    # Before: dtype=int filled the prior with int(-log 10) = -2.
    with pytest.raises(TypeError, match="^log_uniform_categorical: dtype must be floating, got int64$"):
        D.log_uniform_categorical(3, 10, dtype=np.int64)


def test_log_uniform_categorical_is_a_vector_of_minus_log_k():
    prior = D.log_uniform_categorical(7, 10)
    assert prior.shape == (7,) and prior.dtype == np.float32 and not prior.requires_grad
    np.testing.assert_allclose(prior.data, -math.log(10), rtol=1e-7)
    assert D.log_uniform_categorical(3, 4, dtype=np.float64).dtype == np.float64
    # it equals log_categorical under uniform logits for any label
    y = np.eye(10)[[1, 4, 9]]
    np.testing.assert_allclose(D.log_categorical(_t(y), _t(np.zeros((3, 10)))).data,
                               D.log_uniform_categorical(3, 10, dtype=np.float64).data, rtol=1e-13)


@pytest.mark.parametrize("call, error, match", [
    (lambda: D.log_uniform_categorical(2.5, 3), TypeError, "batch_size must be an integer, got 2.5"),
    (lambda: D.log_uniform_categorical(-1, 3), ValueError, "batch_size must be at least 0, got -1"),
    (lambda: D.log_uniform_categorical(2, 2.5), TypeError, "num_classes must be an integer, got 2.5"),
    (lambda: D.log_uniform_categorical(2, True), TypeError, "num_classes must be an integer, got True"),
    (lambda: D.log_uniform_categorical(2, 0), ValueError, "num_classes must be at least 1, got 0"),
    (lambda: D.one_hot(np.array([0]), 2.5, _t(np.zeros(1))), TypeError, "num_classes must be an integer, got 2.5"),
    (lambda: D.one_hot(np.array([], np.int64), -1, _t(np.zeros(1))), ValueError,
     "num_classes must be at least 1, got -1"),
])
def test_class_counts_and_batch_sizes_must_be_integers(call, error, match):
    """A batch size 2.5 gave 2 rows and 2.5 classes a prior of -log 2.5, silently; 0 classes met
    a bare "math domain error" and a float or negative count a NumPy error naming nothing."""
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("shape", [3, (3,), [3]])
def test_standard_normal_takes_an_integer_or_a_sequence_as_its_shape(shape):
    z = D.standard_normal(Generator(4), shape, _t(np.zeros(1, np.float32)))
    np.testing.assert_array_equal(z, Generator(4).normal(3))


@pytest.mark.parametrize("draw, kind", [(D.standard_normal, "normal"), (D.standard_gumbel, "gumbel")])
def test_the_draws_take_their_dtype_from_a_tensor_or_an_array(draw, kind):
    # Before: an array failed with "'memoryview' object has no attribute 'dtype'" (a NumPy
    # array's .data is its buffer).
    for like in (np.zeros(1), _t(np.zeros(1))):
        z = draw(Generator(4), (2, 3), like)
        np.testing.assert_array_equal(z, getattr(Generator(4), kind)((2, 3), np.float64))
        assert z.dtype == np.float64


def test_kls():
    mu_q, lv_q, mu_p, lv_p = rng.standard_normal((4, 3, 4))
    kl_std = 0.5 * (mu_q ** 2 + np.exp(lv_q) - 1 - lv_q).sum(1)
    np.testing.assert_allclose(F.kl_normal_std(_t(mu_q), _t(lv_q)).data, kl_std, rtol=1e-12)
    kl_qp = 0.5 * (lv_p - lv_q + (np.exp(lv_q) + (mu_q - mu_p) ** 2) / np.exp(lv_p) - 1).sum(1)
    np.testing.assert_allclose(F.kl_normal_normal(_t(mu_q), _t(lv_q), _t(mu_p), _t(lv_p)).data, kl_qp,
                               rtol=1e-12)
    np.testing.assert_allclose(F.kl_normal_normal(_t(mu_q), _t(lv_q), _t(mu_q), _t(lv_q)).data, 0.0,
                               atol=1e-12)


def test_kl_std_equals_the_monte_carlo_expectation():
    # KL(q || p) = E_q[log q(z) - log p(z)]: the closed form agrees with a large sample of the
    # distribution functions themselves (a consistency check of log_normal and the KL).
    mu, lv = np.array([[0.3, -1.0]]), np.array([[-0.5, 0.4]])
    eps = np.random.default_rng(1).standard_normal((200_000, 2))
    z = mu + np.exp(lv / 2) * eps
    log_q = F.gaussian_log_prob(_t(z), _t(mu), _t(lv)).data
    mc = (log_q - F.gaussian_log_prob(_t(z), 0.0, 0.0).data).mean()
    assert mc == pytest.approx(float(F.kl_normal_std(_t(mu), _t(lv)).data[0]), abs=0.01)


def test_gradients_flow_through_the_wrappers():
    logits = _t(rng.standard_normal((3, 4)), requires_grad=True)
    y = _t(np.eye(4)[[0, 2, 3]])
    assert gradcheck(lambda l: D.log_categorical(y, l), logits)
    z = _t(rng.standard_normal((3, 2)), requires_grad=True)
    mu = _t(rng.standard_normal((3, 2)), requires_grad=True)
    lv = _t(rng.standard_normal((3, 2)), requires_grad=True)
    assert gradcheck(lambda z, m, v: F.gaussian_log_prob(z, m, v) + F.gaussian_log_prob(z, 0.0, 0.0), z, mu, lv)


def test_float32_stays_float32():
    z = _t(rng.standard_normal((3, 2)).astype(np.float32))
    assert F.gaussian_log_prob(z, 0.0, 0.0).dtype == np.float32
    assert D.log_categorical(z, z).dtype == np.float32


def _kl_and_log_prob_with_grads(mu_q, lv_q, mu_p, lv_p, z):
    args = [_t(a, requires_grad=True) for a in (mu_q, lv_q, mu_p, lv_p, z)]
    kl = F.kl_normal_normal(*args[:4])
    lp = F.gaussian_log_prob(args[4], args[2], args[3])
    (kl.sum() + lp.sum()).backward()
    return kl.data, lp.data, [a.grad for a in args]


def _exp_minus_1_minus(x):
    """e^x - 1 - x by its series (|x| < 1), to float64 precision without cancellation."""
    return math.fsum(x ** k / math.factorial(k) for k in range(2, 30))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kl_near_the_prior_is_exact_to_a_few_ulp_of_logvar(dtype):
    # A collapsed unit has mu = 0 and logvar near 0, where e^logvar - 1 - logvar cancels: the
    # naive form lost ulp(1) and gave -1e-8 in float32 at logvar = 3e-6 (the KL is 2.25e-12) and
    # -3e-17 in float64 at logvar = 1e-8. The KL of kl_normal_std and of reparameterize_kl must be
    # within a few ulp(logvar) of the exact value (never negative), and d/dlogvar = (e^logvar - 1) / 2
    # within a few ulp of itself; so must kl_normal_normal's against N(0, 1), whose naive form
    # gave 0 in float32 at logvar = 1e-4 (the KL is 2.5e-9).
    lv = np.array([[0.1, 1e-3, -2e-4, 1e-4, 3e-6, -3e-6, 1e-8, -1e-8]], dtype).T  # one per row
    mu = np.zeros_like(lv)
    eps = np.finfo(dtype).eps
    want = np.array([0.5 * _exp_minus_1_minus(float(v)) for v in lv[:, 0]])
    want_grad = 0.5 * np.expm1(lv.astype(np.float64))
    for name, fn in {"kl_normal_std": F.kl_normal_std,
                     "reparameterize_kl": lambda m, v: F.reparameterize_kl(m, v, Generator(1))[1],
                     "kl_normal_normal": lambda m, v: F.kl_normal_normal(m, v, 0.0, 0.0)}.items():
        logvar = _t(lv, requires_grad=True)
        kl = fn(_t(mu), logvar)
        kl.backward(np.ones(len(lv), dtype))
        assert (kl.data >= 0).all(), name
        np.testing.assert_array_less(np.abs(kl.data - want), 4 * eps * np.abs(lv[:, 0]), err_msg=name)
        np.testing.assert_allclose(logvar.grad, want_grad, rtol=4 * eps, atol=0, err_msg=name)


def _kl_exactly(mu_q, logvar_q, mu_p=0.0, logvar_p=0.0):
    """(KL, d/dmu_q, d/dlogvar_q, d/dlogvar_p) of KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)) for
    one coordinate, from 40-digit decimals (no overflow at any size), each rounded to float64
    (inf past its largest number)."""
    with decimal.localcontext() as context:
        context.prec = 40
        mq, lq, mp, lp = (decimal.Decimal(float(a)) for a in (mu_q, logvar_q, mu_p, logvar_p))
        d, var_p = mq - mp, lp.exp()
        ratio_m1 = (lq - lp).exp() - 1
        r_m1 = ratio_m1 + d * d / var_p
        return tuple(float(v) for v in ((r_m1 - (lq - lp)) / 2, d / var_p, ratio_m1 / 2, -r_m1 / 2))


def _exactly_in(dtype, rows):
    """_kl_exactly of each row of arguments rounded to ``dtype``, as columns in ``dtype`` (values
    past its largest number inf)."""
    with np.errstate(over="ignore"):
        return np.array([_kl_exactly(*row) for row in np.array(rows, dtype)]).T.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kl_to_the_prior_is_finite_wherever_its_value_is(dtype):
    # KL = mu^2 / 2 + (e^logvar - 1) / 2 - logvar / 2 and d/dlogvar = (e^logvar - 1) / 2 stay below
    # float32's largest number up to logvar = 89.42, while e^logvar - 1 overflows from 88.72: the
    # KL and its gradient were inf there. They must agree with the exact values, and be inf
    # where the KL is past the largest number.
    mu, lv = (np.array([[row[i]] for row in WIDE_KL_ROWS[dtype]], dtype) for i in (0, 1))
    want, _, want_grad, _ = _exactly_in(dtype, WIDE_KL_ROWS[dtype])
    assert np.isfinite(want[:-1]).all() and np.isinf(want[-1]) and np.isinf(want_grad[-1])
    for name, fn in {"kl_normal_std": F.kl_normal_std,
                     "reparameterize_kl": lambda m, v: F.reparameterize_kl(m, v, Generator(1))[1]}.items():
        logvar = _t(lv, requires_grad=True)
        kl = fn(_t(mu), logvar)
        kl.backward(np.ones(len(lv), dtype))
        np.testing.assert_allclose(kl.data, want, rtol=8 * np.finfo(dtype).eps, err_msg=name)
        np.testing.assert_allclose(logvar.grad[:, 0], want_grad, rtol=8 * np.finfo(dtype).eps, err_msg=name)


# (mu_q, logvar_q, mu_p, logvar_p) of one-term rows where the variance ratio minus 1 or
# (mu_q - mu_p)^2 / e^logvar_p overflows but the KL, their sum halved, does not; the last row's
# KL is past the largest number
WIDE_KL_NORMAL_ROWS = {
    np.float32: [(0.0, 89.0, 0.0, 0.0), (0.5, 88.0, 0.5, -1.0), (1.0, -100.0, 0.0, -88.9),
                 (0.0, 89.5, 0.0, 0.0)],
    np.float64: [(0.0, 710.0, 0.0, 0.0), (0.5, 709.0, 0.5, -1.0), (1.0, -800.0, 0.0, -709.9),
                 (0.0, 710.5, 0.0, 0.0)]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kl_between_gaussians_is_finite_wherever_its_value_is(dtype):
    # As for the KL to the prior: the ratio of the variances minus 1 overflowed float32 from
    # logvar_q - logvar_p = 88.72, and d^2 / e^logvar_p at logvar_p = -88.9 with d = 1, where the
    # KL and the log-variances' gradients are below float32's largest number. They must agree
    # with the exact values (d / e^logvar_p, the gradient of mu_q, is past it in the third row).
    rows = WIDE_KL_NORMAL_ROWS[dtype]
    want_kl, want_mu_q, want_lv_q, want_lv_p = _exactly_in(dtype, rows)
    assert np.isfinite(want_kl[:-1]).all() and np.isinf(want_kl[-1]) and np.isinf(want_mu_q[2])
    args = [_t(np.array([[row[i]] for row in rows], dtype), requires_grad=True) for i in range(4)]
    kl = F.kl_normal_normal(*args)
    kl.backward(np.ones(len(rows), dtype))
    for got, want in ((kl.data, want_kl), (args[0].grad[:, 0], want_mu_q), (args[2].grad[:, 0], -want_mu_q),
                      (args[1].grad[:, 0], want_lv_q), (args[3].grad[:, 0], want_lv_p)):
        np.testing.assert_allclose(got, want, rtol=8 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_gaussian_log_density_and_its_logvar_gradient_are_finite_wherever_their_values_are(dtype):
    # t^2 = (x - mu)^2 e^-logvar overflows float32 from t = 1.8e19, and made the log-density
    # -(log(2 pi) + logvar + t^2) / 2 and d/dlogvar = g (t^2 - 1) / 2 inf with it, though they are
    # finite up to t = 2.6e19 (d/dlogvar for g = 1e-3 up to 8.2e20). They must agree with the
    # exact values, and d/dlogvar be 0 where g is 0 (it was 0 * inf = NaN).
    rows = np.array(WIDE_GAUSSIAN_ROWS[dtype], dtype)
    with decimal.localcontext() as context:  # to 40 digits, where e^720 fits
        context.prec = 40
        exact = []
        for x, lv, g in (map(decimal.Decimal, map(float, row)) for row in rows):
            t2 = x * x * (-lv).exp()
            exact.append((-(decimal.Decimal(LOG_2PI) + lv + t2) / 2, g * (t2 - 1) / 2))
    with np.errstate(over="ignore"):
        want, want_grad = np.array(exact, np.float64).T.astype(dtype)
    assert np.isfinite(want[:2]).all() and np.isneginf(want[2:]).all() and np.isfinite(want_grad).all()
    logvar = _t(rows[:, 1:2], requires_grad=True)
    log_prob = F.gaussian_log_prob(_t(rows[:, :1]), 0.0, logvar)
    log_prob.backward(rows[:, 2])
    np.testing.assert_allclose(log_prob.data, want, rtol=8 * np.finfo(dtype).eps)
    np.testing.assert_allclose(logvar.grad[:, 0], want_grad, rtol=8 * np.finfo(dtype).eps)


def test_collapsed_prior_variance_gives_finite_kl_and_log_density_in_float32():
    # A collapsed unit (seen in a Ladder-M2 run evaluated with batch-norm running statistics):
    # the prior's log-variance is -89.3, where e^-logvar overflows float32, and the posterior
    # matches it (precision weighting), so z - mu_p and mu_q - mu_p are 0 or tiny. The old
    # forms computed inf * 0 = NaN; the stable ones must agree with float64.
    lv = np.array([[-89.26, -60.0, 0.5], [-100.0, -89.26, -1.0]])
    mu_p = np.array([[0.25, -1.5, 0.0], [2.0, 0.75, 0.3]])
    mu_q, lv_q = mu_p.copy(), lv + np.array([[0.0, -0.01, 0.2], [0.001, 0.0, -0.3]])
    mu_q[:, 2] += 0.4
    z = mu_p.copy()
    z[:, 2] += 0.7
    ref = _kl_and_log_prob_with_grads(mu_q, lv_q, mu_p, lv, z)
    got = _kl_and_log_prob_with_grads(*(a.astype(np.float32) for a in (mu_q, lv_q, mu_p, lv, z)))
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-5)
    for g32, g64 in zip(got[2], ref[2]):
        assert np.isfinite(g32).all()
        np.testing.assert_allclose(g32, g64, rtol=1e-5, atol=1e-5)


def test_collapsed_prior_variance_gives_finite_gradients_of_the_batch_mean_in_float32():
    # The gradient of the mean over a batch of 1000 (an upstream 1e-3 per row) at a prior
    # log-variance of -100 and mu_q - mu_p = 1e-3: d / e^logvar_p is 2.7e40, above float32's
    # largest number, but 1e-3 times it is 2.7e37. It must be finite and agree with float64, as
    # gaussian_log_prob's gradient with the same numbers is.
    mu_q, lv_q = np.array([[1e-3, 0.5], [-2e-3, 0.0]]), np.array([[-100.0, 0.1], [-99.0, -0.2]])
    mu_p, lv_p = np.array([[0.0, 0.25], [0.0, 0.0]]), np.array([[-100.0, 0.0], [-99.5, 0.3]])
    g = np.array([1e-3, 1e-3])

    def grads(dtype):
        args = [_t(a.astype(dtype), requires_grad=True) for a in (mu_q, lv_q, mu_p, lv_p)]
        F.kl_normal_normal(*args).backward(g.astype(dtype))
        return [a.grad for a in args]

    for g32, g64 in zip(grads(np.float32), grads(np.float64)):
        assert np.isfinite(g32).all()
        np.testing.assert_allclose(g32, g64, rtol=1e-5, atol=1e-5)


def test_sample_bernoulli_draws_pixels_below_their_means():
    probs = np.array([[0.0, 1.0, 0.25, 0.75]] * 20000, dtype=np.float32)
    images = D.sample_bernoulli(probs, Generator(3))
    assert images.dtype == np.float32 and set(np.unique(images)) <= {0.0, 1.0}
    np.testing.assert_array_equal(images[:, :2], probs[:, :2])  # p = 0 never fires, p = 1 always
    np.testing.assert_allclose(images.mean(axis=0)[2:], [0.25, 0.75], atol=0.01)
    # the same generator state gives the same images: u < p with u ~ U[0, 1) from the generator
    u = Generator(3).uniform(probs.shape, dtype=np.float32)
    np.testing.assert_array_equal(images, (u < probs).astype(np.float32))


@pytest.mark.parametrize("probs, error, match", [
    (np.array([0.5, np.nan], np.float32), ValueError, "probs contains NaN"),
    (np.array([0.5, 1.5]), ValueError, r"probs has values in \[0.5, 1.5\]"),
    (np.array([-0.5, 0.5]), ValueError, r"probs has values in \[-0.5, 0.5\]"),
    (np.array([0, 255], np.uint8), TypeError, "probs has dtype uint8: a Bernoulli draw"),
])
def test_sample_bernoulli_refuses_means_that_are_no_probabilities(probs, error, match):
    """A draw turned NaN into 0 and a mean outside [0, 1] into 0 or 1, silently."""
    with pytest.raises(error, match=match):
        D.sample_bernoulli(probs, Generator(3))


def test_sample_bernoulli_takes_a_list_of_means():
    np.testing.assert_array_equal(D.sample_bernoulli([0.0, 1.0], Generator(3)), [0.0, 1.0])


def _draw(kind, noise, dtype, shape=(4, 7)):
    """The draw of ``kind`` in ``dtype`` through its sampling helper: standard_normal's and
    standard_gumbel's of ``shape``, sample_bernoulli's images of (4, 7) means from 0 to 1."""
    if kind == "uniform":
        return D.sample_bernoulli(np.linspace(0, 1, 28).reshape(4, 7).astype(dtype), noise)
    helper = D.standard_normal if kind == "normal" else D.standard_gumbel
    return helper(noise, shape, _t(np.zeros(3, dtype)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["normal", "uniform", "gumbel"])
def test_the_sampling_helpers_draw_where_their_arrays_live(fake_gpu, monkeypatch, kind, dtype):
    """standard_normal, sample_bernoulli and standard_gumbel: the NumPy twin for NumPy arrays,
    the kernel (its host build) for CuPy ones, from a Generator's next draw, with the same
    numbers (uniforms, hence images, bit for bit; normals and Gumbel samples to the kernels'
    tolerances); on the GPU a Noise whose offset lives in device memory (a captured step's)
    draws offset + that value. A refused shape or dtype takes no offset from the generator.
    (Before, the normals and the uniforms were drawn on the host and copied over, and a
    captured step's Noise could not draw them.)"""
    K, calls = fake_gpu
    cpu = _draw(kind, Generator(8, offset=5), dtype)
    noise = Generator(8, offset=5)
    monkeypatch.setattr(D, "is_gpu_array", lambda array: True)
    gpu = _draw(kind, noise, dtype)
    assert [c[0] for c in calls] == [f"mv_{kind}_{'f32' if dtype == np.float32 else 'f64'}"] and noise.offset == 6
    assert gpu.dtype == cpu.dtype == dtype and gpu.shape == cpu.shape == (4, 7)
    if kind == "normal":
        np.testing.assert_allclose(gpu, cpu, *TOL[dtype])
    elif kind == "uniform":
        np.testing.assert_array_equal(gpu, cpu)
    else:
        assert_same_gumbel(gpu, cpu)
    captured = Noise(8, 2, offset_from=np.array([3], np.uint64))
    np.testing.assert_array_equal(_draw(kind, captured, dtype), gpu)
    if kind != "uniform":  # (the images' shape is their means')
        with pytest.raises(ValueError, match="must be at least 0, got -1"):
            _draw(kind, noise, dtype, shape=(4, -1))
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got float16"):
        _draw(kind, noise, np.float16)
    assert noise.offset == 6


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_models_samples_are_drawn_where_the_model_lives(fake_gpu, fake_cublas, monkeypatch, name):
    """On the GPU (the fake one: the kernels' host builds, with the dispatch table on) a model's
    sample() draws its z, codes and pixels with the kernels: a StepNoise, which refuses host
    draws, serves it, and the images are those the CPU draws from a Generator of the same seed.
    (Before, the VAE and the ladder VAE drew their z on the host and copied it over.)"""
    model = build(name, np.float64)
    cpu = [model.sample(5, Generator(7, stream=2), probabilities=p) for p in (True, False)]
    with dispatch_table(monkeypatch, True):
        monkeypatch.setattr(D, "is_gpu_array", lambda array: True)
        gpu = [model.sample(5, StepNoise(7, 2, np.zeros(1, np.uint64)), probabilities=p) for p in (True, False)]
    np.testing.assert_allclose(gpu[0], cpu[0], rtol=1e-10, atol=1e-12)  # (the kernels' normals, to an ulp)
    np.testing.assert_array_equal(gpu[1], cpu[1])


def test_one_hot_checks_the_labels():
    like = _t(np.zeros(1, np.float32))
    y = D.one_hot(np.array([2, 0]), 3, like)
    np.testing.assert_array_equal(y.data, [[0, 0, 1], [1, 0, 0]])
    assert y.dtype == np.float32
    with pytest.raises(ValueError, match=r"integers in \[0, 3\)"):
        D.one_hot(np.array([3]), 3, like)
    with pytest.raises(ValueError, match="1-D"):
        D.one_hot(np.array([[1]]), 3, like)
    np.testing.assert_array_equal(D.one_hot(np.array([2, 0], np.uint8), 3, like).data, y.data)  # MNIST's dtype
    with pytest.raises(TypeError, match="labels must be integers, got an array of dtype float64"):
        D.one_hot(np.array([0.9, 2.5]), 3, like)
