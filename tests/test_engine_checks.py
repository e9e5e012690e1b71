"""The engine's guards and hooks: gradient hooks, in-place changes of saved tensors, backward
functions that return the wrong number of gradients, and mixed dtypes at backward()."""
import re

import numpy as np
import pytest

import minivae as mv
from minivae import nn, optim
from minivae.autograd import backward
from minivae.function import Function, InPlaceModificationError


def x64(*values):
    return mv.tensor(np.array(values, dtype=np.float64), requires_grad=True)


# ----- hooks ------------------------------------------------------------------------------------
def test_hook_is_called_once_with_the_complete_gradient():
    x = x64(1.0, 2.0, 3.0)
    h = x * 2.0
    seen = []
    h.register_hook(lambda g: seen.append(g.copy()))
    (h * h + h * 3.0).sum().backward()  # h is used three times
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], 2 * h.data + 3.0)


def test_hook_replacement_flows_on_to_the_inputs():
    x = x64(1.0, 2.0)
    h = x * 3.0
    h.register_hook(lambda g: np.zeros_like(g) + 10.0)
    (h * h).sum().backward()
    np.testing.assert_array_equal(x.grad, [30.0, 30.0])


def test_leaf_hook_runs_before_accumulation_and_can_be_removed():
    x = x64(1.0, 2.0)
    handle = x.register_hook(lambda g: g * 0.5)
    (x * 4.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])
    handle.remove()
    (x * 4.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [6.0, 6.0])


def test_hook_of_the_wrong_shape_is_refused():
    x = x64(1.0, 2.0)
    h = x * 2.0
    h.register_hook(lambda g: np.zeros(3))
    with pytest.raises(RuntimeError, match="hook returned"):
        h.sum().backward()


@pytest.mark.parametrize("leaf", [True, False])
@pytest.mark.parametrize("returned", [mv.tensor([1.0, 1.0]), [1.0, 1.0], 1.0])
def test_hook_that_returns_no_array_is_refused(leaf, returned):
    """A Tensor would end up as the leaf's .grad, or in the inputs' backward."""
    x = x64(1.0, 2.0)
    h = x if leaf else x * 2.0
    h.register_hook(lambda g: returned)
    with pytest.raises(TypeError, match=f"hook returned a {type(returned).__name__}; it must "
                                        "return None or a numpy.ndarray"):
        (h * 3.0).sum().backward()
    assert x.grad is None


def test_hook_may_return_numpys_scalar_for_a_0d_gradient():
    x = mv.tensor(np.array(2.0), requires_grad=True)
    x.register_hook(lambda g: g * 0.5)  # a NumPy float64, not a 0-d array
    (x * 3.0).backward()
    assert type(x.grad) is np.ndarray and x.grad.shape == () and x.grad == 1.5


def test_hook_needs_a_tensor_that_requires_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        mv.tensor(np.ones(2)).register_hook(lambda g: None)


# ----- in-place changes of saved tensors --------------------------------------------------------
def test_raw_write_into_a_saved_array_fails_at_once():
    x = x64(1.0, 2.0, 3.0)
    y = (x * x).sum()
    with pytest.raises(ValueError, match="read-only"):
        x.data[:] = 10
    y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0, 6.0])  # the gradient at the old values
    x.data[:] = 10  # released by backward: writable again


def test_a_dropped_graph_releases_its_arrays():
    x = x64(1.0, 2.0)
    y = (x * x).sum()
    del y
    x.data[:] = 5.0  # no backward ran, but nothing can use the saved values any more
    np.testing.assert_array_equal(x.data, [5.0, 5.0])


def test_retained_graph_keeps_arrays_read_only_until_dropped():
    x = x64(1.0, 2.0)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    with pytest.raises(ValueError, match="read-only"):
        x.data[0] = 3.0
    del y
    x.data[0] = 3.0


OPTIMIZERS = {
    "sgd": lambda params: optim.SGD(params, lr=0.1),
    "adam": lambda params: optim.Adam(params, lr=0.1),
    "adam-amsgrad": lambda params: optim.Adam(params, lr=0.1, amsgrad=True),
    "adamw": lambda params: optim.AdamW(params, lr=0.1),
}


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_optimizer_step_before_backward_names_the_op_and_input(make):
    mv.nn.init.manual_seed(0)
    layer = nn.Linear(3, 2, dtype=np.float64)
    opt = make(layer.parameters())
    x = mv.tensor(np.ones((4, 3)))
    layer(x).sum().backward()  # gradients from an earlier step
    opt.step()  # a first step (Adam moves the parameters into its flat array here)
    loss = layer(x).sum()
    opt.step()  # changes the weights that the new graph saved
    with pytest.raises(InPlaceModificationError, match=r"Linear: input 1 .*shape \(3, 2\).*version"):
        loss.backward()


def test_version_check_guards_arrays_without_a_writeable_flag():
    # CuPy arrays cannot be made read-only: only the version numbers guard them. A view is never
    # locked either, so it exercises the same path on the CPU.
    base = np.arange(6.0).reshape(2, 3)
    x = mv.tensor(base[0], requires_grad=True)
    assert not x.data.flags.owndata
    y = (x * x).sum()
    x.data[:] = 10.0  # not locked: a view
    x.bump_version()
    with pytest.raises(InPlaceModificationError, match="Mul: input 0"):
        y.backward()


class ArrayWithoutLocking(np.ndarray):
    """Stands for a CuPy array on the CPU: not a plain numpy.ndarray, so the engine never locks it."""


def test_arrays_that_cannot_be_locked_rely_on_versions():
    x = mv.tensor(np.arange(1.0, 4.0).view(ArrayWithoutLocking), requires_grad=True)
    w = mv.tensor(np.ones(3).view(ArrayWithoutLocking), requires_grad=True)
    y = (x * w).sum()
    assert x.data.flags.writeable and w.data.flags.writeable  # nothing was locked
    opt = optim.SGD([w], lr=0.5)
    w.grad = np.ones(3).view(ArrayWithoutLocking)
    opt.step()  # an optimizer step before backward
    with pytest.raises(InPlaceModificationError, match="Mul: input 1"):
        y.backward()


VIEWS = {
    "transpose": lambda w: w.T,
    "transpose twice": lambda w: w.T.T,
    "row": lambda w: w[0],
    "reshape": lambda w: w.reshape(3, 2),
    "detach": lambda w: w.detach(),
}


@pytest.mark.parametrize("view", VIEWS.values(), ids=VIEWS.keys())
def test_a_step_on_a_tensor_is_seen_through_its_views(view):
    """A view of W (the tied-weights ``x @ W.T``, a row, a detached W) shares W's version: an
    optimizer step on W before backward is an error, not a gradient at the new values."""
    w = mv.tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    v = view(w)
    c = mv.tensor(np.ones(v.shape), requires_grad=True)
    y = (c * v).sum()  # Mul saves the view's array for c's gradient
    w.grad = np.ones((3, 2))
    optim.SGD([w], lr=0.5).step()
    with pytest.raises(InPlaceModificationError, match="Mul: input 1 .*version 0, now 1"):
        y.backward()


class SecondTransposed(Function):
    """An op of two inputs whose output is a view of the second."""

    @staticmethod
    def forward(ctx, a, b):
        return b.T

    @staticmethod
    def backward(ctx, g):
        return None, g.T


def test_a_view_belongs_to_the_input_it_overlaps():
    """Two parameters viewing one flat array (Adam's layout): the view of the second is the
    second's, so a change of the second alone is seen."""
    flat = np.arange(8.0)
    p1, p2 = (mv.tensor(flat[i:i + 4].reshape(2, 2), requires_grad=True) for i in (0, 4))
    c = mv.tensor(np.ones((2, 2)), requires_grad=True)
    y = (c * SecondTransposed.apply(p1, p2)).sum()
    p2.bump_version()
    with pytest.raises(InPlaceModificationError, match="Mul: input 1"):
        y.backward()


def test_a_detached_result_keeps_no_graph_alive():
    """Only leaves share their version with their views: a kept ``loss.detach()`` holds no
    reference to the graph, which is freed with its locks."""
    x = x64(1.0, 2.0)
    kept = (x * x).sum().detach()
    x.data[:] = 5.0  # not read-only: no node that saved x is alive
    assert kept.version == 0


def test_a_step_on_a_detached_result_is_seen_by_the_graph_that_saved_the_result():
    """Refining a detached latent in place (an optimizer on ``mu.detach()``) changes what the
    graph saved from mu: its backward refuses, as for a parameter."""
    x = x64(1.0, 2.0, 3.0)
    mu = x * 1.0
    kl = (mu * mu).sum()  # saves mu's array
    z = mu.detach()
    z.requires_grad = True
    z.grad = np.ones(3)
    optim.SGD([z], lr=1.0).step()  # writes into mu's memory
    with pytest.raises(InPlaceModificationError, match="Mul: input 0"):
        kl.backward()


@pytest.mark.parametrize("make", [
    lambda mu: nn.Parameter(mu),
    lambda mu: mv.Tensor(mu, requires_grad=True),
    lambda mu: mv.tensor(mu, requires_grad=True),
    lambda mu: mv.tensor(mu, requires_grad=True, dtype=np.float64),
], ids=["Parameter", "Tensor", "tensor", "tensor of its own dtype"])
@pytest.mark.parametrize("leaf", [True, False], ids=["from a leaf", "from a result"])
def test_a_step_on_a_tensor_made_from_a_saved_one_is_seen(make, leaf):
    """A tensor constructed from another tensor shares its array, and so its version, as
    ``detach()`` does: an optimizer step on ``nn.Parameter(mu)`` writes into what the graph of
    ``mu * mu`` saved, and its backward refuses rather than use the new values."""
    x = x64(1.0, 2.0, 3.0)
    mu = x if leaf else x * 1.0
    y = (mu * mu).sum()
    p = make(mu)
    assert np.shares_memory(p.data, mu.data)
    p.grad = np.ones(3)
    optim.SGD([p], lr=1.0).step()
    with pytest.raises(InPlaceModificationError, match="Mul: input 0"):
        y.backward()


def test_a_tensor_cast_from_another_keeps_a_version_of_its_own():
    """``mv.tensor(mu, dtype=...)`` of another dtype is a copy: a step on it changes nothing a
    graph saved, and the graph's backward runs."""
    x = x64(1.0, 2.0, 3.0)
    y = (x * x).sum()
    p = mv.tensor(x, requires_grad=True, dtype=np.float32)
    p.grad = np.ones(3, dtype=np.float32)
    optim.SGD([p], lr=1.0).step()
    y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0, 6.0])


class _Holds(nn.Module):
    """A module with the one parameter ``p``."""

    def __init__(self, p):
        super().__init__()
        self.p = p


def _adam_step(p):
    """A step of Adam with a zero gradient (which leaves the values): it moves its parameters
    into one flat buffer first."""
    p.grad = np.zeros(3)
    optim.Adam([p]).step()
    p.grad = None


@pytest.mark.parametrize("replace", [lambda p: _Holds(p).astype(np.float64), _adam_step],
                         ids=["Module.astype", "Adam's flat buffer"])
def test_a_parameter_given_an_array_of_its_own_keeps_a_version_of_its_own(replace):
    """``nn.Parameter(mu)`` shares mu's version while it shares mu's array. Once the library
    gives it an array of other memory, the version follows the array: a step on the parameter
    stopped the backward of a graph that saved mu, whose memory nothing wrote into, and a step
    on mu stopped that of a graph that saved the parameter."""
    mu = x64(1.0, 2.0, 3.0)
    p = nn.Parameter(mu)
    replace(p)
    assert not np.shares_memory(p.data, mu.data)
    y = (mu * mu).sum()
    p.grad = np.ones(3)
    optim.SGD([p], lr=1.0).step()  # writes p's memory only
    y.backward()
    np.testing.assert_array_equal(mu.grad, [2.0, 4.0, 6.0])
    y_p = (p * p).sum()
    p.grad = None
    optim.SGD([mu], lr=1.0).step()  # writes mu's memory only
    y_p.backward()
    np.testing.assert_array_equal(p.grad, 2 * p.data)


def test_a_parameter_moved_to_the_device_it_is_on_still_shares_the_version():
    """``Module.to`` of the device a parameter is on keeps its array, so its version stays the
    one it shares with the tensor it was made from."""
    mu = x64(1.0, 2.0, 3.0)
    y = (mu * mu).sum()
    p = nn.Parameter(mu)
    _Holds(p).to("cpu")
    p.grad = np.ones(3)
    optim.SGD([p], lr=1.0).step()
    with pytest.raises(InPlaceModificationError, match="Mul: input 0"):
        y.backward()


class KeepsItsOutput(Function):
    """exp(x), keeping its output with an extra axis and returning a reshape of it (a view of
    the saved array), as an op that keeps a reduction's output with its axis would."""

    @staticmethod
    def forward(ctx, x):
        out = np.exp(x).reshape(-1, 1)
        ctx.save(out)
        return out.reshape(-1)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved[0].reshape(-1)


@pytest.mark.parametrize("op, name", [
    (lambda x: x.exp(), "Exp"),
    (KeepsItsOutput.apply, "KeepsItsOutput"),
], ids=["exp", "a view of the saved output"])
def test_a_step_on_a_detached_output_that_its_op_saved_is_seen(op, name):
    """An op that keeps its output for its backward: changing that output through a detached
    copy is caught as a change of an input would be."""
    x = x64(0.0, 1.0)
    y = op(x)
    v = y.detach()
    v.requires_grad = True
    v.grad = np.ones(2)
    optim.SGD([v], lr=1.0).step()
    with pytest.raises(InPlaceModificationError, match=f"{name}: its output was changed in place"):
        y.backward(np.ones(2))


class SavesAView(Function):
    """x * c, keeping a reshaped view of c (not c's array itself) for the backward."""

    @staticmethod
    def forward(ctx, x, c):
        ctx.save(c.reshape(-1))
        return x * c

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved[0], None


def test_an_input_saved_as_a_view_is_guarded_too():
    x = x64(1.0, 2.0)
    c = mv.tensor(np.array([3.0, 4.0]))
    y = SavesAView.apply(x, c).sum()
    c.bump_version()
    with pytest.raises(InPlaceModificationError, match="SavesAView: input 1"):
        y.backward()


def test_a_view_made_while_its_memory_was_locked_can_be_stepped_after_the_backward():
    x = x64(1.0, 2.0, 3.0, 4.0)
    mu = x * 1.0
    loss = (mu * mu).sum()  # mu's array is locked until the backward
    z = mu[:2].detach()  # a view, read-only as its memory is now
    loss.backward()
    z.requires_grad = True
    z.grad = np.ones(2)
    optim.SGD([z], lr=1.0).step()  # no false "read-only" error
    np.testing.assert_array_equal(mu.data, [0.0, 1.0, 3.0, 4.0])


def test_load_state_dict_writes_what_a_step_could_write_and_refuses_the_rest():
    """The check before loading follows bump_version's unlock: a view made while its memory
    was locked is written once the graph is gone; a view of memory its owner made read-only
    is refused before anything is written."""
    x = x64(1.0, 2.0, 3.0, 4.0)
    loss = (x * x).sum()  # x's array is locked until the backward
    module = nn.Module()
    module.p = nn.Parameter(x.data[:2])  # a view, read-only as its memory is now
    loss.backward()
    module.load_state_dict({"p": np.zeros(2)})  # no false "read-only" error
    np.testing.assert_array_equal(x.data, [0.0, 0.0, 3.0, 4.0])
    frozen = np.arange(4.0)
    frozen.setflags(write=False)
    module.p, module.q = nn.Parameter(np.ones(2)), nn.Parameter(frozen[:2])
    with pytest.raises(nn.StateDictError, match=r"q: the module's array is read-only"):
        module.load_state_dict({"p": np.zeros(2), "q": np.zeros(2)})
    np.testing.assert_array_equal(module.p.data, [1.0, 1.0])


def test_views_of_arrays_made_over_a_buffer_work():
    """An array over a bytes buffer (np.frombuffer; a memory map is alike) ends its .base chain
    in an object that is no array."""
    w = mv.tensor(np.frombuffer(np.arange(4.0).tobytes()).copy().reshape(2, 2), requires_grad=True)
    x = mv.tensor(np.frombuffer(np.ones(4).tobytes()).reshape(2, 2))
    (x.T * w).sum().backward()
    np.testing.assert_array_equal(w.grad, np.ones((2, 2)))


def test_a_copy_of_a_tensor_may_outlive_its_changes():
    w = mv.tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    x = x64(1.0, 2.0)
    y = (x * w[[0, 2], 0]).sum()  # an integer-array index copies
    w.bump_version()
    y.backward()
    np.testing.assert_array_equal(x.grad, [0.0, 4.0])


@pytest.mark.parametrize("index", [np.array([0, 1]), [0, 1], np.array([True, True, False, False])],
                         ids=["integer array", "list", "mask"])
def test_an_index_changed_after_the_forward_does_not_move_the_gradient(index):
    x = x64(0.0, 1.0, 2.0, 3.0)
    y = x[index]
    index[0] = 3 if not isinstance(index, np.ndarray) or index.dtype != bool else False
    y.backward(np.array([1.0, 10.0]))
    np.testing.assert_array_equal(x.grad, [1.0, 10.0, 0.0, 0.0])


def test_unsaved_inputs_may_change():
    x = x64(1.0, 2.0)
    y = (x + 1.0).sum()  # add saves nothing
    x.bump_version()
    y.backward()
    np.testing.assert_array_equal(x.grad, [1.0, 1.0])


def test_load_state_dict_before_backward_is_caught():
    mv.nn.init.manual_seed(0)
    layer = nn.Linear(2, 2, dtype=np.float64)
    state = layer.state_dict()
    loss = layer(mv.tensor(np.ones((1, 2)))).sum()
    layer.load_state_dict(state)
    with pytest.raises(InPlaceModificationError, match="Linear"):
        loss.backward()


def test_load_state_dict_into_a_saved_buffer_changes_nothing():
    """A buffer (no version of its own) that a live graph saved stays read-only: loading into
    it is refused, and before any other entry is written."""
    model = nn.Sequential(nn.Linear(3, 3, rng=1), nn.BatchNorm1d(3), nn.Linear(3, 2, rng=2))
    other = nn.Sequential(nn.Linear(3, 3, rng=3), nn.BatchNorm1d(3), nn.Linear(3, 2, rng=4))
    before = {name: value.copy() for name, value in model.state_dict().items()}
    x = mv.tensor(np.ones(3, np.float32), requires_grad=True)
    loss = (x * model[1].running_mean).sum()  # Mul saves the buffer for x's gradient
    with pytest.raises(nn.StateDictError, match=r"1\.running_mean: .*read-only"):
        model.load_state_dict(other.state_dict())
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    loss.backward()  # releases the buffer
    model.load_state_dict(other.state_dict())


# ----- backward's contract ----------------------------------------------------------------------
class Doubling(Function):
    """y = 2x, whose backward each subclass gets wrong in its own way."""

    @staticmethod
    def forward(ctx, x):
        return x * 2


class TwoGradientsForOneInput(Doubling):
    @staticmethod
    def backward(ctx, g):
        return g * 2, g


def test_wrong_number_of_gradients_names_the_function():
    x = x64(1.0, 2.0)
    with pytest.raises(RuntimeError, match="TwoGradientsForOneInput.backward returned 2 gradient"):
        TwoGradientsForOneInput.apply(x).sum().backward()


def test_gradcheck_fails_on_a_wrong_number_of_gradients():
    with pytest.raises(RuntimeError, match="TwoGradientsForOneInput"):
        mv.gradcheck(TwoGradientsForOneInput.apply, x64(1.0, 2.0))


def test_backward_grad_of_another_dtype_is_refused():
    x = mv.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = x * 2.0
    with pytest.raises(TypeError, match="grad is float64, tensor is float32"):
        y.backward(grad=np.ones(3, dtype=np.float64))
    with pytest.raises(TypeError, match="grad is float64, tensor is float32"):
        backward([y], [mv.tensor(np.ones(3, dtype=np.float64))])


def test_a_leafs_grad_is_never_the_array_its_hook_returned():
    x = x64(1.0, 2.0)
    replacement = np.array([5.0, 6.0])
    x.register_hook(lambda g: replacement)
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [5.0, 6.0])
    replacement[:] = 0.0  # the hook's own array: changing it must not change x.grad
    np.testing.assert_array_equal(x.grad, [5.0, 6.0])


class GradientOfAnotherDtype(Doubling):
    @staticmethod
    def backward(ctx, g):
        return (g * 2).astype(np.float32)


def test_a_gradient_of_another_dtype_names_the_function():
    x = x64(1.0, 2.0)
    with pytest.raises(RuntimeError, match="^GradientOfAnotherDtype.backward returned float32 for a "
                                           "float64 input$"):
        GradientOfAnotherDtype.apply(x).sum().backward()


class GradientOfFewerAxes(Doubling):
    @staticmethod
    def backward(ctx, g):
        return (g * 2).reshape(-1)


@pytest.mark.parametrize("shape", [(1, 1, 2), (2, 1, 1)])
def test_a_gradient_of_fewer_axes_than_its_input_names_the_function(shape):
    # the engine's own message, not an IndexError or NumPy's duplicate-axis error from inside it
    x = mv.tensor(np.ones(shape), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"^GradientOfFewerAxes.backward returned a gradient of shape "
                                           rf"\(2,\), which does not reduce to the input shape "
                                           rf"{re.escape(str(shape))}$"):
        GradientOfFewerAxes.apply(x).sum().backward()
