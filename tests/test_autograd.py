"""The engine: accumulation, topological order, graph freeing, no_grad, dtypes, conversions, memory."""
import gc
import re
import sys
import weakref

import numpy as np
import pytest

import minivae as mv
from minivae import Function, Tensor, backend, nn
from minivae import functional as F
from minivae.backend import DeviceError, get_default_dtype


# ----- gradient accumulation and order ---------------------------------------------------------
def test_tensor_used_twice_accumulates(t64):
    x = t64(3, 4)
    (x * x).backward(np.ones((3, 4)))
    np.testing.assert_allclose(x.grad, 2 * x.data)
    x.grad = None
    g = np.random.default_rng(0).standard_normal((3, 4))
    (x + x).backward(g)
    np.testing.assert_allclose(x.grad, 2 * g)


def test_diamond_graph(t64):
    x = t64(3)
    a = x * 2.0                 # two users of x
    b = x.exp()
    c = a * b                   # a used twice: in c and in d
    d = (c + a).sum()
    d.backward()
    e = np.exp(x.data)
    np.testing.assert_allclose(x.grad, 2 * e + 2 * x.data * e + 2)


class CountingIdentity(Function):
    """The identity, counting its backward calls: a node must run once, after all its users."""
    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.copy()

    @staticmethod
    def backward(ctx, g):
        CountingIdentity.calls += 1
        return g


def test_shared_node_runs_backward_once_with_the_full_gradient(t64):
    x = t64(4)
    CountingIdentity.calls = 0
    h = CountingIdentity.apply(x)
    # h reaches the root along paths of different lengths: a wrong order would run h's backward
    # before every contribution has arrived.
    long = h
    for _ in range(5):
        long = long * 1.0
    out = (h * 3.0 + long + h.exp()).sum()
    out.backward()
    assert CountingIdentity.calls == 1
    np.testing.assert_allclose(x.grad, 3 + 1 + np.exp(x.data))


def test_deep_chain_has_no_recursion_limit():
    x = mv.tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, np.ones(2))


def test_deep_chain_can_be_dropped_without_backward(monkeypatch):
    """The whole chain is released without a recursion error. An error raised while an object is
    freed (in a ``__del__``) never reaches the test: Python prints "Exception ignored" through
    ``sys.unraisablehook``, which records it here instead."""
    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", lambda args: ignored.append(f"{args.exc_type.__name__}: "
                                                                          f"{args.exc_value}"))
    x = mv.tensor(np.ones(2), requires_grad=True)
    y = first = x * 1.0
    for _ in range(10_000):
        y = y * 1.0
    first = weakref.ref(first)
    del y
    gc.collect()
    assert first() is None
    assert ignored == [], f"{len(ignored)} errors while the chain was freed, the first: {ignored[0]}"


def test_grad_accumulates_across_backward_calls_until_reset(t64):
    x = t64(3)
    (x * 2.0).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, np.full(3, 5.0))
    x.grad = None
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, np.full(3, 3.0))


def test_only_leaves_get_grad(t64):
    x = t64(3)
    h = x * 2.0
    h.sum().backward()
    assert h.grad is None and x.grad is not None
    assert x.is_leaf and not h.is_leaf


def test_leaf_grads_are_owned_writable_arrays(t64):
    """.grad never aliases the upstream array, another leaf's gradient or a read-only view."""
    a, b = t64(3), t64(3)
    g = np.arange(3.0)
    (a + b).backward(g)
    assert not np.shares_memory(a.grad, b.grad) and not np.shares_memory(a.grad, g)
    a.grad *= 2  # an optimizer or a clipping step may scale gradients in place
    np.testing.assert_array_equal(b.grad, g)
    c = t64(2, 3)
    c.sum().backward()  # the sum's backward is a broadcast (read-only) view
    assert c.grad.flags.writeable and c.grad.flags.owndata


# ----- the graph's life: retain_graph, no_grad, detach -------------------------------------------
def test_retain_graph_allows_a_second_backward(t64):
    x = t64(3)
    loss = (x.exp() * x).sum()
    loss.backward(retain_graph=True)
    first = x.grad.copy()
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * first)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()


def test_second_backward_without_retain_graph_is_a_clear_error(t64):
    x = t64(3)
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="already freed.*retain_graph=True"):
        loss.backward()


def test_no_grad_records_nothing(t64):
    x = t64(3)
    with mv.no_grad():
        y = x * 2.0 + 1.0
        assert not mv.is_grad_enabled()
    assert mv.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf and y._node is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_as_decorator_and_enable_grad_inside(t64):
    x = t64(3)

    @mv.no_grad()
    def evaluate(t):
        with mv.enable_grad():
            inner = t * 2.0
        return inner, t * 3.0

    for _ in range(2):  # the decorator enters its context afresh on every call
        inner, outer = evaluate(x)
        assert inner.requires_grad and not outer.requires_grad
        assert mv.is_grad_enabled()


@pytest.mark.parametrize("enabled", [False, True])
def test_set_grad_enabled_restores_the_mode_however_the_block_ends(t64, enabled):
    x = t64(3)
    with mv.no_grad():
        with pytest.raises(ValueError):
            with mv.set_grad_enabled(enabled):
                assert (x * 2.0).requires_grad == enabled
                raise ValueError
        assert not mv.is_grad_enabled()
    assert mv.is_grad_enabled()


def test_set_grad_enabled_called_alone_sets_the_mode_until_set_again(t64):
    """As torch.set_grad_enabled: a call, not only a with block, switches the mode."""
    x = t64(3)
    try:
        mv.set_grad_enabled(False)
        assert not mv.is_grad_enabled() and not (x * 2.0).requires_grad
        with mv.enable_grad():
            assert (x * 2.0).requires_grad
        assert not mv.is_grad_enabled()
        mv.set_grad_enabled(True)
        assert mv.is_grad_enabled() and (x * 2.0).requires_grad
    finally:
        mv.set_grad_enabled(True)


def test_set_grad_enabled_as_decorator_switches_only_inside_calls(t64):
    x = t64(3)

    @mv.set_grad_enabled(False)
    def evaluate(t):
        return t * 2.0

    assert mv.is_grad_enabled()  # decorating changed nothing
    assert not evaluate(x).requires_grad
    assert mv.is_grad_enabled() and (x * 2.0).requires_grad


def test_no_grad_called_alone_changes_nothing():
    """Only set_grad_enabled acts when called; no_grad() and enable_grad() act in a with block."""
    mv.no_grad()
    assert mv.is_grad_enabled()


@pytest.mark.parametrize("mode", ["no", 0, 1, None, np.float64(1.0)])
def test_set_grad_enabled_refuses_a_mode_that_is_not_a_bool(mode):
    with pytest.raises(TypeError, match=r"^set_grad_enabled\(mode\) must be True or False, got "):
        mv.set_grad_enabled(mode)
    assert mv.is_grad_enabled()


def test_detach_shares_data_and_cuts_the_graph(t64):
    x = t64(3)
    d = x.detach()
    assert np.shares_memory(d.data, x.data) and not d.requires_grad and d.is_leaf
    (d * x).sum().backward()
    np.testing.assert_allclose(x.grad, x.data)  # only the x path, not 2x


# ----- conversions and operators ----------------------------------------------------------------
def test_a_tensor_made_from_a_tensor_takes_its_array():
    """As tensor() and nn.Parameter do; NumPy would make an object array of 0-d tensors."""
    x = mv.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    t = Tensor(x)
    assert t.data is x.data and t.is_leaf and not t.requires_grad
    assert Tensor(x, requires_grad=True).requires_grad
    np.testing.assert_array_equal((t * 2).data, [[2.0, 4.0], [6.0, 8.0]])


def test_item_and_numpy():
    t = mv.tensor([[2.5]])
    assert t.item() == 2.5 and isinstance(t.item(), float)
    with pytest.raises(ValueError, match="one element"):
        mv.tensor([1.0, 2.0]).item()
    x = mv.tensor([1.0, 2.0], requires_grad=True)
    a = x.numpy()
    assert isinstance(a, np.ndarray) and not isinstance(a, Tensor)
    np.testing.assert_array_equal(a, [1.0, 2.0])


def test_truth_value_is_numpys():
    assert not mv.tensor([0.0]) and not mv.tensor(0.0) and mv.tensor([[2.0]])
    for shape in ((2,), (0,), (2, 3)):
        with pytest.raises(ValueError, match=rf"truth value of a tensor of shape {re.escape(str(shape))} is ambiguous"):
            bool(Tensor(np.ones(shape)))


def test_iteration_goes_along_the_first_axis_and_refuses_0d():
    x = mv.tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    rows = list(x)
    assert len(rows) == 3 and all(r.shape == (2,) for r in rows)
    (rows[0] * 2.0 + rows[2]).sum().backward()
    np.testing.assert_array_equal(x.grad, [[2.0, 2.0], [0.0, 0.0], [1.0, 1.0]])
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        list(mv.tensor(1.0))


def test_len_is_the_first_axis_and_refuses_0d_by_name():
    assert len(mv.tensor(np.zeros((3, 2)))) == 3
    with pytest.raises(TypeError, match=r"^len\(\) of a 0-d tensor$"):
        len(mv.tensor(1.0))


@pytest.mark.parametrize("call", [lambda t: t.transpose(None), lambda t: t.transpose(), lambda t: t.T])
def test_the_transpose_method_reverses_the_axes_given_none_as_numpy(call):
    x = np.arange(24.0).reshape(2, 3, 4)
    assert np.array_equal(call(mv.tensor(x)).data, x.transpose(None))


def test_comparisons_return_boolean_arrays():
    t = mv.tensor([-1.0, 0.0, 2.0])
    for result, expected in [(t < 0, [True, False, False]), (t <= 0, [True, True, False]),
                             (t > 0, [False, False, True]), (t >= mv.tensor([0.0, 0.0, 3.0]), [False, True, False])]:
        assert isinstance(result, np.ndarray) and result.dtype == bool
        np.testing.assert_array_equal(result, expected)
    assert {t: 1}[t] == 1  # __eq__ stays identity, so tensors can be dict keys


def test_numpy_array_on_the_left_gives_a_tensor(t64):
    x = t64(3)
    a = np.array([1.0, 2.0, 4.0])
    for result, grad in [(a + x, np.ones(3)), (a - x, -np.ones(3)), (a * x, a), (a / x, -a / x.data**2)]:
        assert isinstance(result, Tensor) and result.requires_grad
        x.grad = None
        result.sum().backward()
        np.testing.assert_allclose(x.grad, grad)
    m = t64(3, 2)
    out = np.ones((2, 3)) @ m
    assert isinstance(out, Tensor) and out.shape == (2, 2)
    x32 = mv.tensor([1.0, 2.0, 3.0], requires_grad=True)
    out = np.ones(3, np.float32) * x32
    assert isinstance(out, Tensor) and out.dtype == np.float32 and out.requires_grad


def test_tensor_methods_match_functional(t64):
    x = t64(2, 3)
    np.testing.assert_array_equal(x.T.data, x.data.T)
    np.testing.assert_array_equal(x.transpose().data, x.data.T)
    np.testing.assert_array_equal(x.reshape(3, 2).data, x.data.reshape(3, 2))
    np.testing.assert_array_equal(x.reshape((6,)).data, x.data.reshape(6))
    np.testing.assert_allclose(x.mean(axis=1).data, x.data.mean(axis=1))
    np.testing.assert_allclose(x.max(axis=0, keepdims=True).data, x.data.max(axis=0, keepdims=True))
    np.testing.assert_allclose((x ** 2).data, x.data ** 2)
    assert (x.shape, x.ndim, x.size, x.device, len(x)) == ((2, 3), 2, 6, "cpu", 2)


def test_tensor_methods_take_a_list_of_axes_or_sizes_as_numpy_does(t64):
    x = t64(2, 3, 4)
    np.testing.assert_array_equal(x.transpose([1, 0, 2]).data, x.data.transpose(1, 0, 2))
    np.testing.assert_array_equal(x.transpose(2, 0, 1).data, x.data.transpose(2, 0, 1))
    np.testing.assert_array_equal(x.reshape([4, 6]).data, x.data.reshape(4, 6))


def test_a_tensor_inside_an_index_tuple_is_used_by_value(t64):
    x = t64(3, 2)
    rows = mv.tensor([0, 2, 0])
    y = x[rows, 1]
    np.testing.assert_array_equal(y.data, x.data[[0, 2, 0], 1])
    y.backward(np.array([1.0, 10.0, 100.0]))
    np.testing.assert_array_equal(x.grad, [[0.0, 101.0], [0.0, 0.0], [0.0, 10.0]])

@pytest.mark.parametrize("size", [6, np.int64(6), np.array(6)], ids=["int", "np.int64", "0-d array"])
def test_reshape_and_broadcast_to_take_an_integer_as_a_1d_shape(size):
    x = mv.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert F.reshape(x, size).shape == x.reshape(size).shape == (6,)
    one = mv.tensor([2.0], requires_grad=True)
    F.broadcast_to(one, size).sum().backward()
    np.testing.assert_array_equal(one.grad, [6.0])


# ----- dtypes -------------------------------------------------------------------------------
def test_default_dtype_is_float32():
    assert get_default_dtype() == np.float32
    assert mv.tensor(1.0).dtype == np.float32
    assert mv.tensor([1.0, 2.0]).dtype == np.float32
    assert mv.tensor([1, 2], requires_grad=True).dtype == np.float32
    assert mv.tensor([1, 2]).dtype.kind == "i"  # integer data stays integer
    assert mv.tensor(np.zeros(2)).dtype == np.float64  # arrays keep their dtype
    assert mv.tensor([1.0], dtype=np.float64).dtype == np.float64


def test_a_result_of_recorded_ops_is_not_cast_out_of_its_graph():
    """Else the gradient would stop at the copy: x.grad None after the backward, no error."""
    x = mv.tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x * 2.0
    with pytest.raises(RuntimeError, match=r"astype: this tensor is the result of recorded ops.*"
                                           r"detach\(\) it first"):
        h.astype(np.float32)
    with pytest.raises(RuntimeError, match=r"to: this tensor is the result of recorded ops"):
        h.to("gpu")
    assert h.detach().astype(np.float32).dtype == np.float32  # cut on purpose
    leaf = x.astype(np.float32)  # a leaf's copy is a new leaf that keeps requires_grad
    assert leaf.is_leaf and leaf.requires_grad and leaf.dtype == np.float32
    with mv.no_grad():
        assert (x * 2.0).astype(np.float32).dtype == np.float32  # nothing recorded to cut


@pytest.mark.parametrize("name", ["CPU", "Cpu", None, ""])
def test_to_the_device_a_tensor_is_on_by_another_spelling_is_no_copy(name, monkeypatch):
    # Before: "CPU" is not "cpu", so a result of recorded ops was refused as if it were moving
    # (and a leaf was copied into a new one).
    monkeypatch.delenv("MINIVAE_DEVICE", raising=False)
    x = mv.tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x * 2.0
    assert h.to(name) is h and x.to(name) is x


def test_to_auto_where_it_picks_the_cpu_is_no_copy(monkeypatch):
    # Before: "auto" is not "cpu", so a result of recorded ops was refused as if it were moving,
    # and a leaf became a new leaf over the same array (its gradient no longer the leaf's).
    def no_gpu():
        raise DeviceError("no GPU here")
    monkeypatch.setattr(backend, "cupy_module", no_gpu)
    x = mv.tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x * 2.0
    assert h.to("auto") is h and x.to("AUTO") is x


@pytest.mark.parametrize("device, error, message", [
    (0, TypeError, "device must be a name, 'cpu', 'gpu' or 'auto', got 0"),
    (1, TypeError, "device must be a name, 'cpu', 'gpu' or 'auto', got 1"),
    ("tpu", ValueError, "unknown device 'tpu'; use 'cpu', 'gpu' or 'auto'"),
])
def test_a_device_that_is_no_name_is_refused(device, error, message):
    # Before: 0 read as "not given" (the CPU), 1 failed with "'int' object has no attribute 'lower'".
    from minivae.backend import resolve_device
    with pytest.raises(error, match=f"^{message}$"):
        resolve_device(device)
    with pytest.raises(error, match=f"^{message}$"):
        mv.tensor(np.zeros(2)).to(device)


def test_the_tensor_and_parameter_constructors_make_the_dtypes_tensor_makes():
    for data in (1.0, [1.0, 2.0], [1, 2], np.float64(1.0), np.zeros(2), True):
        assert Tensor(data).dtype == mv.tensor(data).dtype, data
        assert nn.Parameter(data).dtype == mv.tensor(data, requires_grad=True).dtype, data
    assert Tensor([1, 2], requires_grad=True).dtype == np.float32
    assert nn.Parameter(np.float64(1.5)).dtype == np.float64  # a NumPy scalar keeps its dtype


def test_set_default_dtype():
    try:
        mv.backend.set_default_dtype(np.float64)
        assert mv.tensor(1.0).dtype == np.float64
        with pytest.raises(TypeError):
            mv.backend.set_default_dtype(np.float16)
    finally:
        mv.backend.set_default_dtype(np.float32)


def test_device_names_read_in_any_case_and_default_to_the_cpu(monkeypatch):
    monkeypatch.delenv("MINIVAE_DEVICE", raising=False)
    assert [backend.device_name(d) for d in ("CUDA", "Gpu", "AUTO", None)] == ["gpu", "gpu", "auto", "cpu"]
    monkeypatch.setenv("MINIVAE_DEVICE", "cuda")
    assert backend.device_name(None) == "gpu"


class _FakeCupyArray:
    """What the backend takes for a CuPy array: a type defined in a module of cupy."""


_FakeCupyArray.__module__ = "cupy._core.core"


def _fake_cupy(device_count):
    runtime = type(sys)("runtime")
    runtime.getDeviceCount = lambda: device_count
    cupy = type(sys)("cupy")
    cupy.cuda = type(sys)("cuda")
    cupy.cuda.runtime = runtime
    return cupy


def test_a_cupy_array_among_the_arguments_picks_cupy(monkeypatch):
    cupy = _fake_cupy(1)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    assert backend.get_array_module(np.zeros(2), _FakeCupyArray()) is cupy
    assert backend.get_array_module(np.zeros(2), 1.0) is np


def test_cupy_without_a_device_is_one_device_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(0))
    with pytest.raises(DeviceError, match="^the GPU was asked for but CUDA reports no device$"):
        backend.resolve_device("gpu")
    assert backend.resolve_device("auto") == "cpu"


def test_is_array_takes_arrays_alone():
    assert backend.is_array(np.zeros(())) and backend.is_array(_FakeCupyArray())
    assert not backend.is_array(np.float32(1.0)) and not backend.is_array(mv.tensor(1.0))


def test_to_device_on_the_cpu_gives_a_numpy_array():
    assert isinstance(backend.to_device([1, 2], "cpu"), np.ndarray)


@pytest.mark.parametrize("shape, rows", [((2, 3, 4), (6, 4)), ((2, 3, 0), (6, 0)), ((0, 5), (0, 5)),
                                         ((4,), (1, 4))])
def test_as_rows_flattens_the_leading_axes(shape, rows):
    assert backend.as_rows(np.zeros(shape)).shape == rows


FLOAT32_EXPRESSIONS = {
    "x*2": lambda x, y: x * 2,
    "2*x": lambda x, y: 2 * x,
    "x/3": lambda x, y: x / 3,
    "3/x": lambda x, y: 3 / x,
    "x**2.5": lambda x, y: x ** 2.5,
    "x+1.5": lambda x, y: x + 1.5,
    "1-x": lambda x, y: 1 - x,
    "x*y": lambda x, y: x * y,
    "x@y.T": lambda x, y: x @ y.T,
    "clip": lambda x, y: F.clip(x, 0.2, 0.8),
    "leaky_relu": lambda x, y: F.leaky_relu(x, 0.2),
    "elu": lambda x, y: F.elu(x, 0.5),
    "where with scalar": lambda x, y: F.where(x.data > 0.5, x, 0.0),
    "mean": lambda x, y: x.mean(axis=0),
    "softmax": lambda x, y: F.softmax(x),
    "log_softmax": lambda x, y: F.log_softmax(x),
    "logsumexp": lambda x, y: F.logsumexp(x, axis=1),
    "kl_normal_std": lambda x, y: F.kl_normal_std(x, y),
    "kl_normal_normal": lambda x, y: F.kl_normal_normal(x, y, 0.0, 0.0),
    "reparameterize": lambda x, y: F.reparameterize(x, y, np.ones(3, np.float32)),
    "bernoulli_log_prob": lambda x, y: F.bernoulli_log_prob(x, 1.0),
    "gaussian_log_prob": lambda x, y: F.gaussian_log_prob(x, 0.5, y),
    "bce mean": lambda x, y: F.binary_cross_entropy_with_logits(x, 0.5),
    "linear": lambda x, y: F.linear(x, y.T, np.zeros(2, np.float32)),
    "times an integer tensor": lambda x, y: x * mv.tensor([1, 2, 3]),
}


@pytest.mark.parametrize("name", list(FLOAT32_EXPRESSIONS))
def test_float32_stays_float32_forward_and_backward(name):
    x = mv.tensor([[0.1, 0.6, 0.9], [0.3, 0.7, 0.2]], requires_grad=True)
    y = mv.tensor([[0.5, -0.4, 0.2], [0.1, 0.3, -0.2]], requires_grad=True)
    out = FLOAT32_EXPRESSIONS[name](x, y)
    assert out.dtype == np.float32
    out.backward(np.ones(out.shape, np.float32))
    for t in (x, y):
        assert t.grad is None or t.grad.dtype == np.float32


def test_integer_tensor_with_python_float_is_not_truncated():
    np.testing.assert_array_equal((mv.tensor([1, 2]) * 0.5).data, [0.5, 1.0])


UINT8_PIXELS = np.array([0, 3, 200], np.uint8)
FLOAT_OPS_ON_INTEGERS = {  # op, and its value from float64 NumPy
    "sigmoid": (F.sigmoid, 1 / (1 + np.exp(-UINT8_PIXELS.astype(float)))),
    "softplus": (F.softplus, np.log1p(np.exp(UINT8_PIXELS.astype(float)))),
    "log_softmax": (F.log_softmax, UINT8_PIXELS - np.log(np.exp(UINT8_PIXELS.astype(float)).sum())),
    "divide by 255.0": (lambda u: u / 255.0, UINT8_PIXELS / 255.0),
    "minus its mean": (lambda u: u - u.mean(), UINT8_PIXELS - UINT8_PIXELS.mean()),
}


@pytest.mark.parametrize("name", FLOAT_OPS_ON_INTEGERS)
def test_ops_on_integer_tensors_compute_in_the_default_float_dtype(name):
    """NumPy's integer rules would wrap uint8 around (sigmoid's -|x|, x - max) or give float64."""
    op, expected = FLOAT_OPS_ON_INTEGERS[name]
    out = op(mv.tensor(UINT8_PIXELS))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.data, expected, rtol=1e-6, atol=1e-6)


INTEGER_MOVES = {  # an op that only moves elements, and what NumPy makes of it
    "index": (lambda t: t[0], lambda a: a[0]),
    "integer-array index": (lambda t: t[[1, 0, 1]], lambda a: a[[1, 0, 1]]),
    "reshape": (lambda t: t.reshape(3, 2), lambda a: a.reshape(3, 2)),
    "transpose": (lambda t: t.T, lambda a: a.T),
    "broadcast_to": (lambda t: F.broadcast_to(t, (2, 2, 3)), lambda a: np.broadcast_to(a, (2, 2, 3))),
    "concatenate": (lambda t: F.concatenate([t, t[:1]]), lambda a: np.concatenate([a, a[:1]])),
    "stack": (lambda t: F.stack([t, t]), lambda a: np.stack([a, a])),
}


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, bool])
@pytest.mark.parametrize("name", INTEGER_MOVES)
def test_ops_that_only_move_elements_keep_integer_and_boolean_dtypes(name, dtype):
    # Before: labels[0] of an int64 tensor was float32, as every op's inputs were cast to floats.
    op, numpy_op = INTEGER_MOVES[name]
    a = (np.arange(6).reshape(2, 3) % 3).astype(dtype)
    out = op(mv.tensor(a))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.data, numpy_op(a))


def test_joining_integers_with_floats_computes_in_floats():
    ints, floats = mv.tensor([1, 2]), mv.tensor([0.5], requires_grad=True)
    joined = F.concatenate([ints, floats])
    assert joined.dtype == np.float32
    joined.sum().backward()
    np.testing.assert_array_equal(floats.grad, [1.0])
    assert F.concatenate([mv.tensor(np.arange(2, dtype=np.int32)), mv.tensor([3])]).dtype == np.int64


def test_an_integer_tensor_takes_the_dtype_of_a_float_array_it_meets():
    assert (mv.tensor([1, 2]) * np.ones(2)).dtype == np.float64
    assert (mv.tensor([1, 2]) + mv.tensor([True, False])).dtype == np.float32


def test_mixing_float32_and_float64_tensors_raises_naming_the_op():
    x32 = mv.tensor([1.0, 2.0])
    x64 = mv.tensor(np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"Add: cannot mix float32 and float64"):
        x32 + x64
    with pytest.raises(TypeError, match=r"Matmul: cannot mix float64 and float32"):
        x64.reshape(1, 2) @ x32.reshape(2, 1)
    with pytest.raises(TypeError, match=r"Mul: a float64 array cannot be combined with a float32 tensor"):
        x32 * np.ones(2)


# ----- memory -----------------------------------------------------------------------------
def _mlp_loss(x, W1, W2):
    h = F.tanh(F.linear(x, W1))
    h_ref = weakref.ref(h)
    saved = [weakref.ref(a) for a in h._node.ctx.saved]  # what Tanh kept for its backward
    loss = F.linear(h, W2).exp().mean()
    return loss, h_ref, saved


def test_intermediates_are_released_after_backward(t64):
    x, W1, W2 = t64(8, 5, requires_grad=False), t64(5, 4), t64(4, 3)
    loss, h_ref, saved = _mlp_loss(x, W1, W2)
    gc.collect()
    assert h_ref() is not None and all(r() is not None for r in saved)  # the graph holds them
    loss.backward()
    gc.collect()
    # The loss is still alive, but its graph no longer holds the intermediate or its arrays.
    assert h_ref() is None
    assert all(r() is None for r in saved)
    assert np.isfinite(loss.item()) and W1.grad is not None


def test_retain_graph_keeps_intermediates_until_the_loss_goes(t64):
    x, W1, W2 = t64(8, 5, requires_grad=False), t64(5, 4), t64(4, 3)
    loss, h_ref, saved = _mlp_loss(x, W1, W2)
    loss.backward(retain_graph=True)
    gc.collect()
    assert h_ref() is not None
    del loss
    gc.collect()
    assert h_ref() is None and all(r() is None for r in saved)


def test_no_grad_keeps_no_intermediates(t64):
    x, W1, W2 = t64(8, 5), t64(5, 4), t64(4, 3)
    with mv.no_grad():
        h = F.tanh(F.linear(x, W1))
        h_ref, data_ref = weakref.ref(h), weakref.ref(h.data)
        out = F.linear(h, W2)
        del h
    gc.collect()
    assert h_ref() is None and data_ref() is None and out._node is None


# ----- functions with several outputs ----------------------------------------------------------
class _SplitHalves(Function):
    """(x[:n], x[n:]) of a vector of length 2n; backward records what it receives, and puts each
    upstream gradient back in its half (zeros for an output no gradient reached)."""
    calls = []

    @staticmethod
    def forward(ctx, x):
        ctx.n = len(x) // 2
        return x[:ctx.n].copy(), x[ctx.n:].copy()

    @staticmethod
    def backward(ctx, g_first, g_second):
        _SplitHalves.calls.append((g_first, g_second))
        out = np.zeros(2 * ctx.n)
        if g_first is not None:
            out[:ctx.n] = g_first
        if g_second is not None:
            out[ctx.n:] = g_second
        return out


def test_a_two_output_function_returns_two_tensors_of_one_node(t64):
    x = t64(4)
    first, second = _SplitHalves.apply(x)
    assert isinstance(first, Tensor) and isinstance(second, Tensor)
    assert first._node is second._node and first._node.fn is _SplitHalves
    assert first._node.inputs == [x] and [ref() for ref in first._node.outputs] == [first, second]
    np.testing.assert_array_equal(np.concatenate([first.data, second.data]), x.data)
    with mv.no_grad():
        a, b = _SplitHalves.apply(x)
    assert a._node is None and b._node is None and not a.requires_grad


def test_a_two_output_node_runs_once_after_both_gradients_are_complete(t64):
    x = t64(4)
    first, second = _SplitHalves.apply(x)
    # second reaches the loss through a longer path than first, and first through two uses.
    loss = (first * 2.0).sum() + (first * 3.0).sum() + ((second * 4.0).exp().log()).sum()
    _SplitHalves.calls.clear()
    loss.backward()
    assert len(_SplitHalves.calls) == 1
    g_first, g_second = _SplitHalves.calls[0]
    np.testing.assert_allclose(g_first, [5.0, 5.0])
    np.testing.assert_allclose(g_second, [4.0, 4.0], rtol=1e-12)
    np.testing.assert_allclose(x.grad, [5.0, 5.0, 4.0, 4.0], rtol=1e-12)


def test_an_output_no_gradient_reaches_gets_none(t64):
    x = t64(4)
    first, second = _SplitHalves.apply(x)
    _SplitHalves.calls.clear()
    (second * 3.0).sum().backward()
    assert _SplitHalves.calls[0][0] is None
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 3.0, 3.0])
    x.grad = None
    second = _SplitHalves.apply(x)[1]  # the first output is dropped at once
    gc.collect()
    _SplitHalves.calls.clear()
    second.sum().backward()
    assert _SplitHalves.calls[0][0] is None


def test_backward_from_several_tensors_at_once(t64):
    x = t64(4)
    first, second = _SplitHalves.apply(x)
    mv.autograd.backward([first, second], [np.array([1.0, 2.0]), np.array([3.0, 4.0])])
    np.testing.assert_array_equal(x.grad, [1.0, 2.0, 3.0, 4.0])


def test_backward_needs_one_gradient_per_tensor(t64):
    """zip would drop the second tensor's gradient without a word."""
    x = t64(3)
    first, second = (x * 2.0).sum(), (x * 3.0).sum()
    with pytest.raises(ValueError, match=r"2 tensor\(s\) but 1 gradient\(s\)"):
        mv.autograd.backward([first, second], [None])
    with pytest.raises(TypeError, match="tensors must be a sequence .* got a Tensor"):
        mv.autograd.backward(first, None)
    with pytest.raises(TypeError, match=r"tensors\[1\] is a float, not a Tensor"):
        mv.autograd.backward([first, 2.0], [None, None])
    assert x.grad is None


def test_outputs_and_node_form_no_reference_cycle(t64):
    x = t64(4)
    first, second = _SplitHalves.apply(x)
    refs = [weakref.ref(first), weakref.ref(second)]
    gc.disable()
    try:
        del first, second
        assert [r() for r in refs] == [None, None]  # freed by reference counting alone
    finally:
        gc.enable()


class _AddAxis(Function):
    """(B, D) -> (1, B, D) whose backward hands back a given array (the test's ``upstream``)."""

    @staticmethod
    def forward(ctx, x, upstream=None):
        ctx.upstream = upstream
        return x[None]

    @staticmethod
    def backward(ctx, g):
        return ctx.upstream


def test_an_added_axis_of_length_one_is_dropped_without_a_sum():
    """A gradient of shape (1, B, D) for a (B, D) input reaches it as a reshape of the very array
    (a sum over one sample would be a pass over the array for the same numbers); over S > 1
    samples it is summed."""
    upstream = np.arange(6.0).reshape(1, 2, 3)
    x = mv.tensor(np.zeros((2, 3)), requires_grad=True)
    seen = []
    x.register_hook(lambda g: seen.append(g))
    _AddAxis.apply(x, upstream=upstream).backward(np.ones((1, 2, 3)))
    assert np.shares_memory(seen[0], upstream)
    np.testing.assert_array_equal(x.grad, upstream[0])
    assert not np.shares_memory(x.grad, upstream)  # a leaf's .grad is its own array

    upstream3 = np.arange(18.0).reshape(3, 2, 3)
    x3 = mv.tensor(np.zeros((2, 3)), requires_grad=True)
    y = _AddAxis.apply(x3, upstream=upstream3)
    y.backward(np.ones(y.shape))
    np.testing.assert_array_equal(x3.grad, upstream3.sum(axis=0))


# ----- what backward gives where ----------------------------------------------------------------
def test_a_tensor_given_twice_to_backward_gets_the_sum_of_both_gradients(t64):
    x = t64(3)
    y = x * 2.0
    g1, g2 = np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])
    mv.autograd.backward([y, y], [g1, g2])
    np.testing.assert_array_equal(x.grad, 2.0 * (g1 + g2))


def test_a_tensor_that_does_not_require_grad_gets_none_though_add_returns_it_one(t64):
    # Add hands g to both of its inputs; a constant, or a value made under no_grad, must not keep it.
    x = t64(3)
    constant = mv.tensor(np.array([1.0, 2.0, 3.0]))
    with mv.no_grad():
        made_without_graph = x * 2.0
    (x + constant + made_without_graph).sum().backward()
    np.testing.assert_array_equal(x.grad, np.ones(3))
    assert constant.grad is None and made_without_graph.grad is None


def test_arrays_saved_by_an_op_are_writable_after_backward_while_its_output_lives(t64):
    x = t64(3)
    h = x * x  # Mul saves x (its array is read-only until the node is released)
    h.sum().backward()
    assert not h.is_leaf  # h, and so Mul's node, is still alive: backward released the node
    x.data[:] = 10.0
    np.testing.assert_array_equal(x.data, np.full(3, 10.0))


def test_an_integer_tensor_before_a_float_tensor_takes_the_float_tensors_dtype():
    ints = mv.tensor([1, 2])
    x = mv.tensor(np.array([0.5, 0.25]), requires_grad=True)  # float64, after the integers
    y = ints * x
    assert y.dtype == np.float64  # not the default float32, a silent cast of x
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 2.0])


def test_joining_integers_with_a_list_of_floats_computes_in_the_default_dtype():
    joined = F.stack([mv.tensor([1, 2]), [0.5, 1.5]])
    assert joined.dtype == get_default_dtype()
    np.testing.assert_array_equal(joined.data, [[1.0, 2.0], [0.5, 1.5]])
