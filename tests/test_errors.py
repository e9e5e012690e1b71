"""Bad input gets a clear error naming the op and the shapes or dtypes, not a NumPy traceback."""
import re
import sys
import types
import warnings

import numpy as np
import pytest

import minivae as mv
from minivae import AnomalyError, Tensor
from minivae import functional as F
from minivae import data, distributions, evaluate, nn
from minivae.gpu import dispatch
from minivae.ops.vae import ReparameterizeNoise
from minivae.random import Generator, Noise
from test_kernels import fake_gpu, shim  # noqa: F401  (fixtures)


def ones(*shape):
    return Tensor(np.ones(shape), requires_grad=True)


# ----- shapes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b", [((2, 3), (4, 5)), ((2, 3, 4), (3, 2)), ((5, 3), (2, 4, 5))])
def test_matmul_inner_mismatch_names_op_and_shapes(a, b):
    with pytest.raises(ValueError, match=rf"matmul: shapes {a} and {b} do not match".replace("(", r"\(").replace(")", r"\)")):
        ones(*a) @ ones(*b)


def test_matmul_batch_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"Matmul: cannot broadcast shapes \(2, 3, 4\) and \(5, 4, 2\)"):
        F.matmul(ones(2, 3, 4), ones(5, 4, 2))


def test_matmul_of_vectors_is_refused_clearly():
    with pytest.raises(ValueError, match=r"matmul: needs arrays of at least 2 dimensions.*\(3,\)"):
        ones(3) @ ones(3)


def test_linear_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"linear: shapes \(2, 3\) and \(4, 5\) do not match"):
        F.linear(ones(2, 3), ones(4, 5))
    with pytest.raises(ValueError, match=r"linear: the bias must have shape \(5,\), got \(4,\)"):
        F.linear(ones(2, 4), ones(4, 5), ones(4))


def test_linear_names_the_shapes_of_x_as_given():
    """A 0-d x was reported as shape (1,), and a row x (in,) that did not match as (1, in)."""
    with pytest.raises(ValueError, match=r"^linear: x must have shape \(\.\.\., in\), with at least one axis, "
                                         r"got shape \(\)$"):
        F.linear(Tensor(np.float64(2.0)), ones(3, 4))
    with pytest.raises(ValueError, match=r"^linear_relu: shapes \(5,\) and \(3, 4\) do not match \(5 != 3\)$"):
        F.linear_relu(ones(5), ones(3, 4))
    with pytest.raises(ValueError, match=r"^linear: the weight must be 2-D \(in, out\), got shape \(3,\)$"):
        F.linear(ones(2, 3), ones(3))
    assert F.linear(ones(3), ones(3, 4)).shape == (4,)


@pytest.mark.parametrize("op", [F.add, F.sub, F.mul, F.div], ids=["add", "sub", "mul", "div"])
def test_broadcast_failure_names_op_and_shapes(op):
    with pytest.raises(ValueError, match=r"(Add|Sub|Mul|Div): cannot broadcast shapes \(3, 2\) and \(4,\)"):
        op(ones(3, 2), ones(4))


def test_broadcast_failure_through_operators_and_vae_ops():
    with pytest.raises(ValueError, match=r"Add: cannot broadcast shapes \(3,\) and \(4,\)"):
        ones(3) + np.ones(4)
    with pytest.raises(ValueError, match=r"KLNormalNormal: cannot broadcast shapes"):
        F.kl_normal_normal(ones(4, 3), ones(4, 3), ones(2), ones(2))
    with pytest.raises(ValueError, match=r"where: cannot broadcast the condition \(3,\) with \(4,\) and \(4,\)"):
        F.where(np.ones(3, bool), ones(4), ones(4))


@pytest.mark.parametrize("gpu", [False, True])
def test_broadcast_failure_of_ops_that_take_their_shape_first_names_op_and_shapes(fake_gpu, monkeypatch, gpu):
    """reparameterize and bernoulli_log_prob find their output's shape with np.broadcast_shapes,
    whose error has other words than a ufunc's: on the CPU and on the GPU rows (NumPy arrays
    standing for CuPy's) the error names the op and the shapes all the same."""
    if gpu:
        monkeypatch.setattr(dispatch, "is_gpu_array", lambda array: True)
    with pytest.raises(ValueError, match=r"^ReparameterizeNoise: cannot broadcast shapes \(4, 3\) and \(2,\) together$"):
        ReparameterizeNoise.apply(ones(4, 3), ones(2), noise=Noise(1))
    with pytest.raises(ValueError, match=r"^BernoulliLogProb: cannot broadcast shapes \(4, 3\) and \(2,\) together$"):
        F.bernoulli_log_prob(ones(4, 3), np.ones(2))
    assert not fake_gpu[1]  # no launch


def test_reparameterize_refuses_a_draw_shape_clearly():
    """shape= is checked as the draws check theirs, and must broadcast with mu and logvar: one
    message naming the sizes or the shapes, not NumPy's "arg 2" or "'float' object cannot be
    interpreted as an integer"."""
    mu = ones(4, 3)
    with pytest.raises(ValueError, match=r"^reparameterize: mu of shape \(4, 3\) and logvar of shape \(3,\) do not "
                                         r"broadcast with the draw's shape \(2, 1\)$"):
        F.reparameterize(mu, ones(3), Noise(1), shape=(2, 1))
    with pytest.raises(ValueError, match=r"^shape\[1\] must be at least 0, got -3$"):
        F.reparameterize(mu, mu, Noise(1), shape=(2, -3))
    with pytest.raises(TypeError, match=r"^shape\[0\] must be an integer, got 2.0$"):
        F.reparameterize(mu, mu, Noise(1), shape=(2.0, 4, 3))
    z = F.reparameterize(ones(3), 0.0, Noise(1), shape=(2, 3))  # a number for logvar
    assert z.shape == (2, 3)
    noise = Generator(1)
    with pytest.raises(ValueError, match="do not broadcast"):
        F.reparameterize(mu, mu, noise, shape=(2, 1))
    assert noise.offset == 0  # a refused draw uses up no offset, as the generator's own draws


def test_reparameterize_refuses_mu_and_logvar_without_using_a_generators_draw():
    """mu and logvar that do not broadcast (reparameterize), or differ in shape or have no axis
    (reparameterize_kl), are refused, naming their shapes, and a Generator keeps its next draw:
    the corrected call draws the noise that a call without the mistake draws."""
    noise = Generator(1)
    with pytest.raises(ValueError, match=r"^reparameterize: mu of shape \(4, 3\) and logvar of shape \(2,\) do not "
                                         r"broadcast$"):
        F.reparameterize(ones(4, 3), ones(2), noise)
    with pytest.raises(ValueError, match=r"^reparameterize: mu of shape \(4, 3\) and logvar of shape \(2,\) do not "
                                         r"broadcast$"):
        F.reparameterize(ones(4, 3), ones(2), Noise(1))  # the same words for an address
    with pytest.raises(ValueError, match=r"^reparameterize_kl: mu and logvar must have one shape, got \(4, 3\) "
                                         r"and \(3,\)$"):
        F.reparameterize_kl(ones(4, 3), ones(3), noise)
    with pytest.raises(ValueError, match="^reparameterize_kl: needs inputs with at least one axis"):
        F.reparameterize_kl(Tensor(np.float32(0.0)), 0.0, noise)
    assert noise.offset == 0
    z = F.reparameterize(ones(4, 3), ones(3), noise)
    assert noise.offset == 1 and np.array_equal(z.data, F.reparameterize(ones(4, 3), ones(3), Noise(1, 0)).data)


@pytest.mark.parametrize("reparameterize", [F.reparameterize, F.reparameterize_kl])
@pytest.mark.parametrize("logvar, refused", [
    (Tensor(np.zeros((4, 3), dtype=np.float32)), "cannot mix float64 and float32"),
    ("a", "must be real numbers"),
])
def test_a_call_the_op_refuses_gives_the_generator_its_draw_back(reparameterize, logvar, refused):
    """A refusal inside the op (a float32 logvar with a float64 mu, a logvar that is no number)
    came after the Generator had handed out its draw: each refused call used up an offset, so
    the corrected call drew other noise than a run without the mistake."""
    noise = Generator(1)
    with pytest.raises(TypeError, match=refused):
        reparameterize(ones(4, 3), logvar, noise)
    assert noise.offset == 0
    z = reparameterize(ones(4, 3), ones(4, 3), noise)
    z = z[0] if isinstance(z, tuple) else z
    assert noise.offset == 1
    np.testing.assert_array_equal(z.data, F.reparameterize(ones(4, 3), ones(4, 3), Noise(1, 0)).data)


def test_rsample_names_its_arguments():
    """rsample (the draw of the models) gave NumPy's "shape mismatch: ... arg 0" for mu and
    logvar that do not broadcast, drew nothing for k=0 and named a float or bool k shape[0]."""
    from minivae.models.common import rsample

    with pytest.raises(ValueError, match=r"^rsample: mu of shape \(4, 3\) and logvar of shape \(2,\) do not "
                                         r"broadcast$"):
        rsample(ones(4, 3), ones(2), Generator(1), k=2)
    for k, error, message in [(0, ValueError, "k must be at least 1, got 0"),
                              (2.0, TypeError, "k must be an integer, got 2.0"),
                              (True, TypeError, "k must be an integer, got True")]:
        noise = Generator(1)
        with pytest.raises(error, match=f"^{message}$"):
            rsample(ones(4, 3), ones(4, 3), noise, k=k)
        assert noise.offset == 0
    assert rsample(ones(4, 3), ones(3), Generator(1), k=2).shape == (2, 4, 3)


@pytest.mark.parametrize("draw", [
    lambda noise, like: distributions.standard_normal(noise, (2 ** 17, 2 ** 17 + 1), like),
    lambda noise, like: distributions.standard_gumbel(noise, (2 ** 17, 2 ** 17 + 1), like),
])
def test_a_gpu_draw_its_kernel_refuses_gives_the_generator_its_draw_back(monkeypatch, draw):
    """On the GPU the size of a draw (at most 2**34 elements) is checked by the kernel's wrapper,
    after the Generator had handed out its draw: the refused call used up an offset, so the
    corrected call drew other noise than on the CPU, where the draw is given back."""
    import minivae.gpu.kernels as K

    monkeypatch.setattr(distributions, "is_gpu_array", lambda array: True)
    monkeypatch.setattr(K, "require", lambda: None)  # refused before CuPy is needed
    noise = Generator(1)
    with pytest.raises(ValueError, match=r"^a draw holds at most 2\*\*34 elements, asked for elements "
                                         r"\[0, 17180000256\)$"):
        draw(noise, np.zeros(1, np.float32))
    assert noise.offset == 0


PER_ROW_OPS = {
    "kl_normal_std": lambda s: F.kl_normal_std(s, 0.0),
    "kl_normal_normal": lambda s: F.kl_normal_normal(s, 0.0, 0.0, 0.0),
    "bernoulli_log_prob": lambda s: F.bernoulli_log_prob(s, 1.0),
    "gaussian_log_prob": lambda s: F.gaussian_log_prob(s, 0.0, 0.0),
    "reparameterize_kl": lambda s: F.reparameterize_kl(s, s, Noise(1)),
}


@pytest.mark.parametrize("name", PER_ROW_OPS)
def test_per_row_vae_ops_refuse_0d_inputs(name):
    s = mv.tensor(np.float32(0.5), requires_grad=True)
    with pytest.raises(ValueError, match=rf"{name}: needs inputs with at least one axis"):
        PER_ROW_OPS[name](s)


def test_shape_op_errors_name_op_and_shapes():
    with pytest.raises(ValueError, match=r"reshape: cannot reshape an array of shape \(2, 3\) .* into \(4, 2\)"):
        ones(2, 3).reshape(4, 2)
    with pytest.raises(ValueError, match=r"broadcast_to: cannot broadcast shape \(3,\) to \(2, 4\)"):
        F.broadcast_to(ones(3), (2, 4))
    with pytest.raises(ValueError, match=r"concatenate: shapes \[\(2, 3\), \(2, 4\)\] do not match off axis 0"):
        F.concatenate([ones(2, 3), ones(2, 4)])
    with pytest.raises(ValueError, match=r"stack: all shapes must be equal"):
        F.stack([ones(2, 3), ones(3, 2)])
    with pytest.raises(ValueError, match=r"transpose: .* is not a permutation"):
        ones(2, 3).transpose(0, 0)


def test_reduction_axis_errors():
    with pytest.raises(ValueError, match="axis 2 is invalid"):
        ones(2, 3).sum(axis=2)
    with pytest.raises(ValueError, match="invalid \\(or repeated\\)"):
        ones(2, 3).mean(axis=(1, -1))
    with pytest.raises(ValueError, match="reduction must be"):
        F.binary_cross_entropy_with_logits(ones(2), ones(2), reduction="avg")


@pytest.mark.parametrize("axis", [1, None, (0, 1)])
def test_max_over_an_axis_of_size_0_names_it(axis):
    with pytest.raises(ValueError, match=r"max: an empty slice has no maximum \(axis 1 of shape "
                                         r"\(3, 0, 2\) has size 0\)"):
        F.max(ones(3, 0, 2), axis=axis)
    assert F.max(ones(3, 0, 2), axis=0).shape == (0, 2)  # no slice to take a maximum of: no error


@pytest.mark.parametrize("call", [lambda x: x.sum(True), lambda x: x.mean((0, True)),
                                  lambda x: x.max(np.True_), lambda x: F.softmax(x, axis=True),
                                  lambda x: x.transpose(True, False),
                                  lambda x: F.stack([x, x], axis=True)],
                         ids=["sum", "mean", "max", "softmax", "transpose", "stack"])
def test_a_bool_is_no_axis(call):
    """x.sum(True), meant as keepdims=True, would sum over axis 1."""
    with pytest.raises(TypeError, match=r"an axis must be an integer, got (np\.)?True"):
        call(ones(2, 3))


@pytest.mark.parametrize("op", [F.sum, F.mean, F.max, F.logsumexp], ids=lambda op: op.__name__)
@pytest.mark.parametrize("keepdims", ["no", 1, None])
def test_keepdims_must_be_a_bool(op, keepdims):
    """NumPy's sum fails on "no" naming no op; max read it by its truth and kept the axes."""
    with pytest.raises(TypeError, match=rf"^{op.__name__}: keepdims must be True or False, got "
                                        rf"{keepdims!r}$"):
        op(ones(2, 3), axis=1, keepdims=keepdims)
    assert op(ones(2, 3), axis=1, keepdims=np.True_).shape == (2, 1)


@pytest.mark.parametrize("op", [F.sum, F.mean, F.max, F.logsumexp, F.softmax, F.log_softmax],
                         ids=lambda op: op.__name__)
def test_numpy_integer_axes_are_accepted(op):
    x = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(op(Tensor(x), axis=np.int64(1)).data, op(Tensor(x), axis=1).data)
    if op not in (F.softmax, F.log_softmax):  # one axis only
        np.testing.assert_array_equal(op(Tensor(x), axis=(np.int32(0), np.int64(-1))).data,
                                      op(Tensor(x), axis=(0, 1)).data)
    with pytest.raises(TypeError, match=rf"{op.__name__}: an axis must be an integer, got 1.0"):
        op(Tensor(x), axis=1.0)


@pytest.mark.parametrize("axis", [2, -3])
def test_softmax_axis_out_of_range_names_axis_and_ndim(axis):
    for op in (F.log_softmax, F.softmax):
        with pytest.raises(ValueError, match=rf"{op.__name__}: axis {axis} is invalid for an array of 2 dimensions"):
            op(ones(3, 4), axis=axis)


def test_concatenate_and_stack_axis_errors_name_the_axis():
    x = ones(2, 3)
    with pytest.raises(ValueError, match=r"concatenate: axis 2 is invalid for an array of 2 dimensions"):
        F.concatenate([x, x], axis=2)
    with pytest.raises(ValueError, match=r"concatenate: axis -3 is invalid for an array of 2 dimensions"):
        F.concatenate([x, x], axis=-3)
    with pytest.raises(ValueError, match=r"concatenate: 0-d arrays have no axis"):
        F.concatenate([ones(), ones()])
    with pytest.raises(ValueError, match=r"concatenate: shapes \[\(2, 3\), \(3,\)\] do not match"):
        F.concatenate([x, ones(3)], axis=1)
    with pytest.raises(ValueError, match=r"stack: axis 5 is invalid for an array of 3 dimensions"):
        F.stack([x, x], axis=5)
    for op in (F.concatenate, F.stack):
        with pytest.raises(ValueError, match=rf"{op.__name__}: needs at least one array"):
            op([])


@pytest.mark.parametrize("op", [F.concatenate, F.stack])
@pytest.mark.parametrize("xs, given", [(ones(2, 3), "Tensor"), (np.ones((2, 3)), "ndarray")],
                         ids=["Tensor", "ndarray"])
def test_concatenate_and_stack_refuse_one_tensor_for_a_sequence(op, xs, given):
    # Before: it was read as its rows, so concatenate(x) of a (2, 3) tensor gave x flattened to
    # (6,), and stack(x) a copy of x, without an error.
    with pytest.raises(TypeError, match=rf"^{op.__name__}: xs must be a sequence of tensors, got a "
                                        rf"{given} of shape \(2, 3\); write {op.__name__}\(\[a, b\]\)$"):
        op(xs)
    with pytest.raises(TypeError, match=rf"^{op.__name__}: xs must be a sequence of tensors, got 5$"):
        op(5)
    joined = op(x for x in [ones(2), ones(2)])  # any iterable of tensors
    assert joined.shape == {"concatenate": (4,), "stack": (2, 2)}[op.__name__]


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_names_the_expected_shape_of_weight_and_bias(training):
    stats = dict(running_mean=np.zeros(3), running_var=np.ones(3))
    for weight, bias, bad in ((ones(2), ones(3), "weight"), (ones(3), ones(1), "bias")):
        with pytest.raises(ValueError, match=rf"batch_norm: {bad} must have shape \(3,\), one value per "
                                             rf"channel of the input \(4, 3\), got \(\d,\)"):
            F.batch_norm(ones(4, 3), weight, bias, training=training, **stats)
    if not training:
        with pytest.raises(ValueError, match=r"batch_norm: running_var must have shape \(3,\)"):
            F.batch_norm(ones(4, 3), running_mean=np.zeros(3), running_var=np.ones(1), training=False)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("setting, error, message", [
    (dict(eps=0.0), ValueError, r"^batch_norm: invalid eps 0.0: it must be > 0 and finite$"),
    (dict(eps=-1e-5), ValueError, r"^batch_norm: invalid eps -1e-05: it must be > 0 and finite$"),
    (dict(momentum=5.0), ValueError, r"^batch_norm: invalid momentum 5.0: it must be in \[0, 1\]$"),
    (dict(eps="a"), TypeError, r"^eps must be a real number, got 'a'$"),
], ids=["eps 0", "eps < 0", "momentum > 1", "eps a string"])
def test_batch_norm_refuses_the_settings_batchnorm1d_refuses(training, setting, error, message):
    # Before: eps <= 0 made a constant channel NaN, and momentum=5.0 a negative running variance
    # (-4.0), each with no error; only nn.BatchNorm1d checked them.
    x = Tensor(np.array([[1.0, 2.0], [1.0, 3.0]]))
    running_mean, running_var = np.zeros(2), np.ones(2)
    with pytest.raises(error, match=message):
        F.batch_norm(x, running_mean=running_mean, running_var=running_var, training=training, **setting)
    np.testing.assert_array_equal(running_var, [1.0, 1.0])


@pytest.mark.parametrize("training", ["no", 0.0, None, np.array(True)])
def test_batch_norm_refuses_a_training_switch_that_is_no_bool(training):
    # Before: read by its truth, so "no" trained (and moved the running statistics), 0.0 evaluated.
    running_mean = np.zeros(2)
    with pytest.raises(TypeError, match=rf"^batch_norm: training must be True or False, got {re.escape(repr(training))}$"):
        F.batch_norm(Tensor(np.array([[1.0, 2.0], [3.0, 5.0]])), running_mean=running_mean,
                     running_var=np.ones(2), training=training)
    np.testing.assert_array_equal(running_mean, [0.0, 0.0])


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_refuses_running_statistics_that_are_no_arrays(training):
    # Before: Tensors were taken, and in training mode left as they were without a word (the
    # in-place update made new Tensors instead); a list failed on "has no attribute 'shape'".
    x = Tensor(np.array([[1.0, 2.0], [3.0, 5.0]]))
    running_mean = Tensor(np.zeros(2))
    with pytest.raises(TypeError, match=r"^batch_norm: running_mean must be a NumPy or CuPy array "
                                        r"\(updated in place in training mode\), got Tensor$"):
        F.batch_norm(x, running_mean=running_mean, running_var=np.ones(2), training=training)
    with pytest.raises(TypeError, match=r"^batch_norm: running_var must be .* got list$"):
        F.batch_norm(x, running_mean=np.zeros(2), running_var=[1.0, 1.0], training=training)
    np.testing.assert_array_equal(running_mean.data, [0.0, 0.0])


@pytest.mark.parametrize("shape", [(-2,), (2, -3), (-1, -2)])
def test_reshape_refuses_a_negative_size_other_than_minus_one(shape):
    """NumPy 2 reads any negative size as the inferred one: (2, -3) gave (2, 3) without a word."""
    with pytest.raises(ValueError, match=rf"^reshape: sizes must be at least 0, or -1 for the one "
                                         rf"inferred, got {re.escape(str(shape))}$"):
        ones(2, 3).reshape(*shape)
    assert ones(2, 3).reshape(-1, 2).shape == (3, 2)


@pytest.mark.parametrize("axes", [(2, 1), (0, 3), (-3, 0)])
def test_transpose_axis_out_of_range_names_axis_and_ndim(axes):
    bad = next(a for a in axes if not -2 <= a < 2)
    with pytest.raises(ValueError, match=rf"transpose: axis {bad} is invalid for an array of 2 dimensions"):
        F.transpose(ones(3, 4), axes)


@pytest.mark.parametrize("call, message", [
    (lambda x: F.reshape(x, None), "reshape: shape must be an integer or a sequence of integers, got None"),
    (lambda x: F.reshape(x, 2.5), "reshape: shape must be an integer or a sequence of integers, got 2.5"),
    (lambda x: x.reshape(3, 4.0), r"reshape: shape must be an integer or a sequence of integers, got \(3, 4.0\)"),
    (lambda x: F.broadcast_to(x, "34"), "broadcast_to: shape must be an integer or a sequence of integers, got '34'"),
    (lambda x: F.transpose(x, 0), "transpose: axes must be None or a tuple of every axis, got 0"),
    (lambda x: F.reshape(x[0, 0], True),
     "reshape: shape must be an integer or a sequence of integers, got True"),
    (lambda x: x.reshape(12, True),
     r"reshape: shape must be an integer or a sequence of integers, got \(12, True\)"),
    (lambda x: F.broadcast_to(x, [True, 3, 4]),
     r"broadcast_to: shape must be an integer or a sequence of integers, got \[True, 3, 4\]"),
], ids=["None", "float", "float in a tuple", "string", "one axis", "bool", "bool in a tuple",
        "bool in a list"])
def test_shapes_and_axes_of_the_wrong_type_name_the_op(call, message):
    # Before: NumPy's "'NoneType' object is not iterable" or "'float' object cannot be
    # interpreted as an integer", naming no op; a string was read as the shape (3, 4), and a
    # bool, an int to Python, as a size of 1 or 0 (NumPy refuses a bool in a shape).
    with pytest.raises(TypeError, match=f"^{message}$"):
        call(ones(3, 4))
    assert F.reshape(ones(3, 4), np.int64(12)).shape == (12,)  # one integer is a 1-D shape


@pytest.mark.parametrize("index, got", [(1.0, "1.0"), (np.float32(1.0), r"np.float32\(1.0\)"),
                                        ((0, 1.5), "1.5"), ("a", "'a'"),
                                        ([0.5], "an array of dtype float64")],
                         ids=["float", "numpy float", "float in a tuple", "string", "float list"])
def test_getitem_refuses_an_index_that_is_not_integer_or_boolean(index, got):
    """NumPy's message ("arrays used as indices must be of integer (or boolean) type") named
    neither the op nor the value."""
    with pytest.raises(IndexError, match=rf"^getitem: an index must be an integer, a slice, None, "
                                         rf"Ellipsis, or an integer or boolean array, got {got}$"):
        ones(2, 3)[index]
    assert ones(2, 3)[np.int64(1), [True, False, True]].shape == (2,)


@pytest.mark.parametrize("index, shape", [([], (0, 3)), ((0, []), (0,)), ((slice(None), []), (2, 0))],
                         ids=["rows", "in a tuple", "columns"])
def test_getitem_with_an_empty_list_selects_nothing(index, shape):
    """As in NumPy and PyTorch. Before, the list became a float array, refused as an index."""
    x = ones(2, 3)
    y = x[index]
    assert y.shape == shape
    (y * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad, np.zeros((2, 3)))


# ----- dtypes -------------------------------------------------------------------------------
def test_dtype_mixing_names_the_op():
    x32, x64 = mv.tensor([1.0, 2.0], requires_grad=True), ones(2)
    with pytest.raises(TypeError, match=r"Mul: cannot mix float32 and float64"):
        x32 * x64
    with pytest.raises(TypeError, match=r"KLNormalStd: cannot mix float64 and float32"):
        F.kl_normal_std(x64, x32)
    with pytest.raises(TypeError, match=r"Sub: a float64 array cannot be combined with a float32 tensor"):
        np.ones(2) - x32


def test_only_float_tensors_can_require_grad():
    with pytest.raises(TypeError, match="only float tensors"):
        Tensor(np.arange(3), requires_grad=True)


@pytest.mark.parametrize("data", [np.arange(3), np.array([True, False])], ids=["int64", "bool"])
def test_setting_requires_grad_on_an_integer_tensor_is_refused_as_in_the_constructor(data):
    # Before: the attribute took True, and a gradient could then flow into integer data.
    t = Tensor(data)
    with pytest.raises(TypeError, match=f"^only float tensors can require gradients, got dtype {data.dtype}$"):
        t.requires_grad = True
    assert not t.requires_grad
    t.requires_grad = False  # nothing to refuse
    x = Tensor(np.zeros(3))
    x.requires_grad = True
    assert x.requires_grad


@pytest.mark.parametrize("value", ["False", 1, None], ids=["string", "int", "None"])
def test_requires_grad_must_be_true_or_false(value):
    # Before: it was read by its truth, so requires_grad="False" turned gradients on, and
    # Module.requires_grad_("False") unfroze every parameter.
    message = rf"^requires_grad must be True or False, got {value!r}$"
    with pytest.raises(TypeError, match=message):
        Tensor([1.0, 2.0], requires_grad=value)
    with pytest.raises(TypeError, match=message):
        mv.tensor([1.0, 2.0], requires_grad=value)
    with pytest.raises(TypeError, match=message):
        nn.Parameter([1.0, 2.0], requires_grad=value)
    x = Tensor([1.0, 2.0])
    with pytest.raises(TypeError, match=message):
        x.requires_grad = value
    layer = nn.Linear(2, 3).requires_grad_(False)
    with pytest.raises(TypeError, match=message):
        layer.requires_grad_(value)
    assert not any(p.requires_grad for p in layer.parameters())
    assert Tensor([1.0], requires_grad=np.True_).requires_grad  # a NumPy bool is one


@pytest.mark.parametrize("value", ["no", 0, None])
def test_retain_graph_must_be_true_or_false(value):
    # Before: it was read by its truth, so retain_graph="no" kept the graph's saved arrays.
    x = mv.tensor([1.0, 2.0], requires_grad=True)
    loss = (x * x).sum()
    with pytest.raises(TypeError, match=rf"^backward: retain_graph must be True or False, got {value!r}$"):
        loss.backward(retain_graph=value)
    loss.backward()  # the refused call left the graph as it was
    assert x.grad.tolist() == [2.0, 4.0]


def test_requires_grad_of_a_result_of_recorded_ops_cannot_be_turned_off():
    # Before: it was taken, and backward skipped y: x.grad was [6, 12], the gradient through z
    # alone, instead of [12, 24].
    x = mv.tensor([1.0, 2.0], requires_grad=True)
    y, z = x * 2.0, x * 3.0
    with pytest.raises(RuntimeError, match=r"^requires_grad cannot be turned off on the result of "
                                           r"recorded ops \(only on a leaf\); use detach\(\)"):
        y.requires_grad = False
    y.requires_grad = True  # what it is already
    (y * z).sum().backward()
    np.testing.assert_array_equal(x.grad, [12.0, 24.0])
    x.requires_grad = False  # a leaf may be frozen
    assert not x.requires_grad


NOT_REAL_NUMBERS = {  # NumPy makes None a NaN and drops an imaginary part without an error
    "Tensor(None)": (lambda: Tensor(None), "Tensor data"),
    "Tensor of strings": (lambda: Tensor(["1", "2"]), "Tensor data"),
    "complex Tensor": (lambda: Tensor(np.array([1j])), "Tensor data"),
    "tensor with a dtype": (lambda: mv.tensor([None, 1.0], dtype=np.float32), "Tensor data"),
    "plus None": (lambda: ones(2) + None, "Add: an operand"),
    "times a complex number": (lambda: ones(2) * 1j, "Mul: an operand"),
    "minus a string": (lambda: ones(2) - "1", "Sub: an operand"),
    "times a complex array": (lambda: ones(2) * np.array([1j, 2]), "Mul: an operand"),
    "a list of None as grad": (lambda: (ones(2) * 2).backward([None, None]), "backward"),
}


@pytest.mark.parametrize("name", NOT_REAL_NUMBERS)
def test_data_that_is_no_real_numbers_is_refused(name):
    make, what = NOT_REAL_NUMBERS[name]
    with pytest.raises(TypeError, match=rf"{what}.* must be real numbers \(booleans, integers or floats\)"):
        make()


MASKED = {  # no op skips a masked entry: each would be read as the number under the mask
    "Tensor": (lambda m: Tensor(m), "Tensor data"),
    "tensor with a dtype": (lambda m: mv.tensor(m, dtype=np.float64), "Tensor data"),
    "Parameter": (lambda m: nn.Parameter(m), "Tensor data"),
    "an operand": (lambda m: ones(3) * m, "Mul: an operand"),
    "a clip bound": (lambda m: F.clip(ones(3), lo=m.astype(np.float32)), "clip: lo"),
    "a condition": (lambda m: F.where(m > 1.5, ones(3), ones(3)), "where: cond"),
    "backward's grad": (lambda m: (ones(3) * 2.0).backward(m), r"backward\(\): grad"),
    "a hook's result": (lambda m: _hooked(lambda g: m), "a gradient hook's result"),
}


def _hooked(hook):
    """The backward of 2 x through ``hook`` on x's gradient."""
    x = ones(3)
    x.register_hook(hook)
    (x * 2.0).sum().backward()
# np.asarray drops a mask without a word: the entry points that read arrays with it refuse one too.
MASKED_INPUTS = {
    "check_labels": (lambda m: distributions.check_labels(m.astype(np.int64), 10), "labels"),
    "as_model_input": (lambda m: evaluate.as_model_input(types.SimpleNamespace(x_dim=3), m.reshape(1, 3) / 3), "x"),
    "binarize": (lambda m: data.binarize(m.reshape(1, 3) / 3, seed=0), "x"),
    "binarize_eval": (lambda m: data.binarize_eval(m.reshape(1, 3) / 3, "test"), "x"),
    "iterate_minibatches": (lambda m: data.iterate_minibatches(m.reshape(3, 1) / 3, 1, seed=0, epoch=0), "x"),
    "MinibatchLoader": (lambda m: data.MinibatchLoader(m.reshape(3, 1) / 3, 1, seed=0), "x"),
    "MinibatchLoader labels": (lambda m: data.MinibatchLoader(np.full((3, 1), 0.5), 1, seed=0,
                                                              y=m.astype(np.int64)), "y"),
    "balanced_labelled_subset": (lambda m: data.balanced_labelled_subset(m.astype(np.int64), 3, seed=0),
                                 "labels"),
}
MASKED.update(MASKED_INPUTS)


@pytest.mark.parametrize("name", MASKED)
def test_a_masked_array_is_refused(name):
    make, what = MASKED[name]
    masked = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    with pytest.raises(TypeError, match=rf"^{what} is a masked array, .*a\.filled\(value\)"):
        make(masked)


def test_a_matrix_is_taken_as_the_plain_array_it_views():
    """With an np.matrix kept as the data, ``*`` was a matrix product and a sum failed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # NumPy's advice against np.matrix
        m = np.matrix([[1.0, 2.0], [3.0, 4.0]])
    a = np.asarray(m)
    for x in (Tensor(m, requires_grad=True), mv.tensor(m, requires_grad=True), nn.Parameter(m)):
        assert type(x.data) is np.ndarray and np.shares_memory(x.data, a)
        y = x * x
        np.testing.assert_array_equal(y.data, a * a)
        y.sum().backward()
        np.testing.assert_array_equal(x.grad, 2 * a)
    np.testing.assert_array_equal((ones(2, 2) * m).data, a)
    np.testing.assert_array_equal(mv.tensor(m, dtype=np.float32).sum().data, 10.0)
    # clip's bounds are no operands: a matrix bound made clip's result a matrix, whose * failed
    x = mv.tensor(a, requires_grad=True)
    y = F.clip(x, lo=m)
    assert type(y.data) is np.ndarray
    (y * y).sum().backward()
    np.testing.assert_array_equal(x.grad, 2 * a)


@pytest.mark.parametrize("exponent, got", [(ones(2), "Tensor"), (np.ones(2), "ndarray"), (np.array(2.0), "ndarray"),
                                           ("2", "str"), (2j, "complex"), (np.complex64(2), "complex64")])
def test_pow_needs_a_number_exponent(exponent, got):
    with pytest.raises(TypeError, match=rf"^pow: the exponent must be a real Python or NumPy number, got {got}; "
                                        rf"for a tensor exponent write exp\(b \* log\(x\)\)$"):
        ones(2) ** exponent


def test_pow_takes_numpy_scalar_exponents_keeping_the_dtype():
    x = mv.tensor([1.5, 2.0], requires_grad=True)  # float32
    for exponent in (np.float64(2.5), np.int64(3), np.float32(-1.5)):
        y = x ** exponent
        assert y.dtype == np.float32
        np.testing.assert_allclose(y.data, x.data ** float(exponent), rtol=1e-6)
        x.grad = None
        y.sum().backward()
        assert x.grad.dtype == np.float32
        np.testing.assert_allclose(x.grad, float(exponent) * x.data ** (float(exponent) - 1), rtol=1e-6)


NUMPY_SCALAR_PARAMETERS = {
    "leaky_relu slope": lambda x: F.leaky_relu(x, np.float64(0.1)),
    "elu alpha": lambda x: F.elu(x, np.float64(1.5)),
    "leaky_relu 0-d slope": lambda x: F.leaky_relu(x, np.array(0.1)),
    "elu 0-d alpha": lambda x: F.elu(x, np.array(1.5)),
    "clip bounds": lambda x: F.clip(x, np.float64(-0.5), np.float64(1.0)),
    "clip lower bound": lambda x: F.clip(x, lo=np.float64(-0.5)),
}


@pytest.mark.parametrize("op", NUMPY_SCALAR_PARAMETERS.values(), ids=NUMPY_SCALAR_PARAMETERS.keys())
def test_numpy_scalar_parameters_keep_the_dtype(op):
    x = mv.tensor(np.array([[-1.0, 0.5], [2.0, -3.0]], np.float32), requires_grad=True)
    y = op(x)
    assert y.dtype == np.float32
    (y + x).sum().backward()  # float64 here would be refused: "cannot mix float64 and float32"
    assert x.grad.dtype == np.float32


@pytest.mark.parametrize("op, parameter, value, message", [
    (F.leaky_relu, "slope", mv.tensor(np.float32(0.2)), r"leaky_relu: slope must be a number, got Tensor"),
    (F.leaky_relu, "slope", np.full(2, 0.2, np.float32),
     r"leaky_relu: slope must be a number, got ndarray of shape \(2,\)"),
    (F.elu, "alpha", mv.tensor(np.float32(1.0), requires_grad=True), r"elu: alpha must be a number, got Tensor"),
    (F.elu, "alpha", np.ones((1, 1)), r"elu: alpha must be a number, got ndarray of shape \(1, 1\)"),
])
def test_leaky_relu_and_elu_refuse_a_parameter_that_is_not_a_number(op, parameter, value, message):
    x = mv.tensor(np.array([[-1.0, 0.5], [2.0, -3.0]], np.float32), requires_grad=True)
    with pytest.raises(TypeError, match=message):
        op(x, **{parameter: value})


@pytest.mark.parametrize("value", [True, False, np.True_, np.array(False)],
                         ids=["True", "False", "np.True_", "0-d"])
@pytest.mark.parametrize("op, name", [
    (lambda x, v: F.leaky_relu(x, slope=v), "leaky_relu: slope"),
    (lambda x, v: F.elu(x, alpha=v), "elu: alpha"),
    (lambda x, v: F.clip(x, lo=v), "clip: lo"),
    (lambda x, v: F.clip(x, -1.0, hi=v), "clip: hi"),
], ids=["leaky_relu", "elu", "clip lo", "clip hi"])
def test_number_parameters_of_the_ops_refuse_a_bool(op, name, value):
    """A bool is an int to Python: a slope True made leaky_relu the identity and a bound True
    clipped at 1, without a word. NumPy's (np.True_, a 0-d bool array) became Python bools on
    the way, so 1 or 0 as well."""
    x = mv.tensor(np.array([[-1.0, 0.5], [2.0, -3.0]], np.float32), requires_grad=True)
    with pytest.raises(TypeError, match=rf"^{name} must be a real number, got {bool(value)}$"):
        op(x, value)


@pytest.mark.parametrize("power", [lambda x: x ** True, lambda x: x ** False, lambda x: F.pow(x, True)],
                         ids=["** True", "** False", "pow"])
def test_pow_refuses_a_bool_exponent(power):
    """x ** True was x, and x ** False ones. (NumPy's bools, no real numbers to Python, were
    refused already.)"""
    with pytest.raises(TypeError, match=r"^pow: the exponent must be a real number, got (True|False)$"):
        power(mv.tensor(np.array([-1.0, 2.0], np.float32), requires_grad=True))


def test_number_parameters_of_the_ops_still_take_integers():
    x = mv.tensor(np.array([-2.0, 3.0], np.float32))
    np.testing.assert_array_equal(F.leaky_relu(x, 1).data, [-2.0, 3.0])
    np.testing.assert_array_equal(F.elu(x, np.int64(0)).data, [0.0, 3.0])
    np.testing.assert_array_equal(F.clip(x, 0, np.array(1)).data, [0.0, 1.0])
    np.testing.assert_array_equal((x ** 1).data, [-2.0, 3.0])
    np.testing.assert_array_equal((x ** 0).data, [1.0, 1.0])


def test_clip_still_takes_bounds_per_column():
    x = mv.tensor(np.array([[-1.0, 0.5], [2.0, -3.0]], np.float32), requires_grad=True)
    y = F.clip(x, lo=np.array([0.0, -1.0], np.float32))
    np.testing.assert_array_equal(y.data, [[0.0, 0.5], [2.0, -1.0]])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [[0.0, 1.0], [1.0, 0.0]])


def test_clip_takes_a_bound_that_broadcasts_x_to_a_larger_shape():
    x = mv.tensor(np.array([-1.0, 0.5, 2.0], np.float32), requires_grad=True)
    y = F.clip(x, lo=np.array([[0.0], [1.0]], np.float32))
    np.testing.assert_array_equal(y.data, [[0.0, 0.5, 2.0], [1.0, 1.0, 2.0]])
    y.sum().backward()  # summed back over the rows: x[1] is inside in one of them
    np.testing.assert_array_equal(x.grad, [0.0, 1.0, 2.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_takes_a_0d_array_bound_as_a_number(dtype):
    x = mv.tensor(np.array([-1.0, 0.5, 2.0], dtype), requires_grad=True)
    y = F.clip(x, np.array(0.0), np.array(1.0, np.float32))
    assert y.dtype == dtype
    np.testing.assert_array_equal(y.data, [0.0, 0.5, 1.0])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 1.0, 0.0])


@pytest.mark.parametrize("bound, message", [
    (np.zeros(2, np.float64), r"clip: lo has dtype float64 and the tensor float32; convert the bound"),
    (np.zeros(2, np.int64), r"clip: lo has dtype int64 and the tensor float32"),
    ([0.0, -1.0], r"clip: lo must be None, a number or an array on x's device "
                  r"\(numpy.ndarray\), got list"),
    (mv.tensor([0.0, -1.0]), r"clip: lo is a Tensor; bounds are constants"),
])
def test_clip_refuses_a_bound_that_would_change_the_dtype_or_wants_a_gradient(bound, message):
    x = mv.tensor(np.array([[-1.0, 0.5], [2.0, -3.0]], np.float32), requires_grad=True)
    with pytest.raises(TypeError, match=message):
        F.clip(x, lo=bound)


def test_clip_of_an_integer_tensor_takes_bounds_of_the_dtype_it_computes_in():
    """clip of integer pixels computes in the default dtype, as every op on integers: a float32
    bound array keeps the result float32, and an int64 one, which NumPy would promote with the
    float32 pixels to a float64 result, is refused."""
    pixels = mv.tensor(np.array([[0, 100, 255], [30, 200, 7]], np.int64))
    out = F.clip(pixels, np.array([10, 0, 0], np.float32), 250)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.data, [[10, 100, 250], [30, 200, 7]])
    with pytest.raises(TypeError, match=r"^clip: lo has dtype int64 and the tensor int64, computed in "
                                        r"float32; convert the bound with astype first"):
        F.clip(pixels, lo=np.array([10, 0, 0]))


# ----- backward misuse ----------------------------------------------------------------------
def test_backward_on_non_scalar_needs_grad():
    y = ones(2, 3) * 2.0
    with pytest.raises(RuntimeError, match=r"non-scalar tensor of shape \(2, 3\) needs grad="):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), tensor has \(2, 3\)"):
        y.backward(np.ones(3))


def test_backward_without_requires_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).sum().backward()


# ----- anomaly mode -------------------------------------------------------------------------
def test_anomaly_names_the_forward_that_made_nan():
    x = ones(3) * -1.0
    with np.errstate(all="ignore"), mv.detect_anomaly():
        with pytest.raises(AnomalyError, match=r"^Log forward produced NaN in output 0 \(shape "
                                               r"\(3,\), dtype float64\) from inputs without NaN$"):
            F.exp(F.log(x))  # Log makes the NaN; Exp must not be blamed


def test_anomaly_names_the_forward_that_made_inf():
    with np.errstate(all="ignore"), mv.detect_anomaly():
        with pytest.raises(AnomalyError, match=r"^Div forward produced Inf .* from inputs all finite$"):
            ones(2) / Tensor(np.zeros(2))


def test_anomaly_names_the_forward_that_made_nan_out_of_infinities():
    """inf - inf: NaN from inputs that hold Inf but no NaN starts there."""
    inf = Tensor(np.array([np.inf, 1.0]), requires_grad=True)
    with np.errstate(all="ignore"), mv.detect_anomaly():
        with pytest.raises(AnomalyError, match=r"^Sub forward produced NaN"):
            inf - inf


def test_anomaly_names_the_backward_that_made_inf():
    x = Tensor(np.array([0.0, 1.0]), requires_grad=True)
    with np.errstate(all="ignore"), mv.detect_anomaly():
        loss = (F.sqrt(x) * 3.0).sum()  # sqrt(0) = 0 is fine forward; its derivative is inf
        with pytest.raises(AnomalyError, match=r"^Sqrt backward produced Inf in gradient for input 0 "
                                               r"\(shape \(2,\), dtype float64\) from upstream "
                                               r"gradients, inputs and saved arrays all finite$"):
            loss.backward()


def test_anomaly_names_the_backward_that_made_nan_from_a_masked_input():
    """A learned temperature times -inf logits: the forward is what the mask means, but the
    temperature's gradient is 0 * -inf = NaN, made by Mul's backward from NaN-free values."""
    temperature = ones(2)
    logits = F.where(np.array([True, False]), ones(2), -np.inf)
    with np.errstate(all="ignore"), mv.detect_anomaly():
        loss = F.exp(temperature * logits).sum()
        with pytest.raises(AnomalyError, match=r"^Mul backward produced NaN in gradient for input 0"):
            loss.backward()


def test_anomaly_does_not_blame_an_op_for_a_masked_input():
    """A -inf mask is the caller's own: where and logsumexp give finite results and gradients,
    the same with anomaly mode as without."""
    x = Tensor(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), requires_grad=True)
    mask = np.array([[True, False, True], [False, True, True]])
    expected = F.logsumexp(F.where(mask, x, -np.inf), axis=1)
    expected.sum().backward()
    expected_grad, x.grad = x.grad, None
    with mv.detect_anomaly():
        out = F.logsumexp(F.where(mask, x, -np.inf), axis=1)
        out.sum().backward()
    np.testing.assert_array_equal(out.data, expected.data)
    np.testing.assert_array_equal(x.grad, expected_grad)
    assert np.isfinite(x.grad).all() and x.grad[0, 1] == 0.0


def test_anomaly_names_the_op_where_a_nan_of_the_callers_data_enters():
    """A NaN in a leaf's data (a NaN pixel) or in a constant was made by no op: it is named at the
    first op that takes it, an Inf there is not (a -inf mask is meant), and an op that receives
    the NaN from another op is not blamed for it."""
    pixels = Tensor(np.array([np.nan, 0.0]))
    with mv.detect_anomaly():
        with pytest.raises(AnomalyError, match=r"^Tanh forward input 0 \(shape \(2,\), dtype float64\) "
                                               r"holds NaN that no op made: a leaf's data or a constant$"):
            F.tanh(pixels)
        with pytest.raises(AnomalyError, match=r"^Mul forward input 1 .* holds NaN"):
            ones(2) * np.array([1.0, np.nan])
        F.tanh(Tensor(np.array([-np.inf, 0.0])))  # an Inf in a leaf: no anomaly
    with np.errstate(all="ignore"):
        made = ones(2) * -1.0
        made = F.log(made)  # NaN made outside anomaly mode, by an op
    with mv.detect_anomaly():
        assert np.isnan(F.tanh(made).data).all()  # not a leaf's: tanh is not blamed


def test_anomaly_does_not_blame_an_op_for_inf_made_beside_a_nan_that_arrived():
    """An op whose input holds a NaN made by an earlier op (outside anomaly mode) did not start
    the trouble: its Inf is not named as made "from inputs all finite", which they were not."""
    with np.errstate(all="ignore"):
        made = F.log(ones(2) * np.array([-1.0, 1.0]))  # [nan, 0], made by Log
    with np.errstate(all="ignore"), mv.detect_anomaly():
        out = F.exp(made + 1000.0)  # [nan, inf]: exp(1000) overflows beside the NaN
    assert np.isnan(out.data[0]) and np.isinf(out.data[1])


def test_without_anomaly_mode_nan_passes_silently():
    with np.errstate(all="ignore"):
        out = F.log(ones(2) * -1.0)
    assert np.isnan(out.data).all()
    assert issubclass(AnomalyError, FloatingPointError)


def test_numpy_scalars_act_like_python_numbers():
    x = mv.tensor(np.ones(3, np.float32), requires_grad=True)
    y = (x * np.sqrt(2.0)).sum()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32


def test_backward_refuses_a_gradient_of_another_dtype():
    x = mv.tensor(np.ones(3, np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="float64"):
        (x * 2).backward(mv.tensor(np.ones(3)))


# ----- devices --------------------------------------------------------------------------------
class _DeviceArray(np.ndarray):
    """Stands for a CuPy array: minivae.backend tells devices apart by the module of the type."""


_DeviceArray.__module__ = "cupy.stand_in"


@pytest.mark.parametrize("number", [2.0, np.float32(2.0), np.float64(2.0), np.int64(2)],
                         ids=["python", "float32", "float64", "int64"])
def test_numpy_scalars_act_like_python_numbers_on_the_gpu(monkeypatch, number):
    """A NumPy scalar is a number like Python's (it is filled where the tensor lives), not a
    host array that would have to be moved to the GPU first."""
    on_device = types.SimpleNamespace(
        ndarray=_DeviceArray, full=lambda *a, **kw: np.full(*a, **kw).view(_DeviceArray))
    monkeypatch.setitem(sys.modules, "cupy", on_device)
    x = Tensor(np.array([1.0, 2.0], np.float32).view(_DeviceArray), requires_grad=True)
    y = x * number
    assert y.device == "gpu" and y.dtype == np.float32
    np.testing.assert_array_equal(y.data, [2.0, 4.0])


def test_train_on_a_missing_gpu_is_one_error_line_not_a_traceback(tmp_path, capsys):
    """`minivae train --device gpu` where CuPy or a device is missing: exit 2, one line saying why."""
    import minivae.gpu
    from minivae.cli import main

    if minivae.gpu.is_available():
        pytest.skip("a GPU is usable here")
    assert main(["train", "--device", "gpu", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minivae: error: the GPU was asked for but") and "\n" not in err
    assert not (tmp_path / "run").exists()
