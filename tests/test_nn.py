"""minivae.nn: module registration, state dicts, devices, Linear and init, BatchNorm1d, activations."""
import io
import math
import re

import numpy as np
import pytest

import minivae as mv
import minivae.functional as F
import minivae.nn as nn
from minivae.function import InPlaceModificationError
from minivae.gradcheck import check_float32, gradcheck
from minivae.optim import SGD
from minivae.ops.norm import BatchNorm, batch_norm


class Block(nn.Module):
    """A small two-level model: parameters, a buffer-carrying child and a ModuleList."""

    def __init__(self, rng=0):
        super().__init__()
        rng = np.random.default_rng(rng)
        self.fc = nn.Linear(4, 3, rng=rng)
        self.bn = nn.BatchNorm1d(3)
        self.heads = nn.ModuleList([nn.Linear(3, 2, rng=rng), nn.Linear(3, 1, bias=False, rng=rng)])
        self.scale = nn.Parameter(np.ones(1, dtype=np.float32))

    def forward(self, x):
        h = F.relu(self.bn(self.fc(x)))
        return F.concatenate([head(h) for head in self.heads], axis=1) * self.scale


def _x(n=6, d=4, seed=1, dtype=np.float32):
    return mv.tensor(np.random.default_rng(seed).standard_normal((n, d)).astype(dtype))


# ----- registration and traversal ---------------------------------------------------------------
def test_named_parameters_are_dotted_and_ordered():
    names = [n for n, _ in Block().named_parameters()]
    assert names == ["scale", "fc.weight", "fc.bias", "bn.weight", "bn.bias",
                     "heads.0.weight", "heads.0.bias", "heads.1.weight"]


def test_children_modules_and_buffers():
    m = Block()
    assert [n for n, _ in m.named_children()] == ["fc", "bn", "heads"]
    assert [n for n, _ in m.named_modules()] == ["", "fc", "bn", "heads", "heads.0", "heads.1"]
    assert [n for n, _ in m.named_buffers()] == ["bn.running_mean", "bn.running_var",
                                                 "bn.num_batches_tracked"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in m.parameters())
    assert m.num_parameters() == 4 * 3 + 3 + 3 + 3 + 3 * 2 + 2 + 3 + 1


def test_shared_parameter_listed_once_and_reassignment():
    m = nn.Module()
    lin = nn.Linear(2, 2, rng=0)
    m.a, m.b = lin, lin
    assert len(list(m.parameters())) == 2
    m.a = nn.Linear(2, 3, rng=0)  # replacing a submodule re-registers it
    assert len(list(m.parameters())) == 4
    with pytest.raises(TypeError):
        m.a.weight = mv.tensor(np.zeros((2, 3), dtype=np.float32))  # not a Parameter
    m.a.bias = None  # an optional parameter may be removed
    assert "a.bias" not in m.state_dict()


def test_a_parameter_shared_by_two_modules_is_listed_once():
    # Tied weights: one Parameter under two names. An optimizer given it twice would step it twice.
    m = nn.Module()
    m.a, m.b = nn.Linear(2, 2, rng=0), nn.Linear(2, 2, rng=1)
    m.b.weight = m.a.weight
    assert [n for n, _ in m.named_parameters()] == ["a.weight", "a.bias", "b.bias"]
    assert len(list(m.parameters())) == 3 and m.num_parameters() == 4 + 2 + 2


def test_a_parameter_assigned_over_an_attribute_or_buffer_replaces_it():
    m = nn.Module()
    m.w = 1.0
    m.w = nn.Parameter(np.ones(2))
    assert isinstance(m.w, nn.Parameter)
    m.register_buffer("s", np.zeros(1))
    m.s = nn.Parameter(np.full(1, 2.0))
    assert isinstance(m.s, nn.Parameter) and list(m.named_buffers()) == []
    np.testing.assert_array_equal(m.state_dict()["s"], [2.0])


def test_reassignment_keeps_the_position():
    seq = nn.Sequential({"fc": nn.Linear(2, 3, rng=0), "act": nn.ReLU()})
    head = nn.Linear(2, 3, rng=1)
    head.bias.data[...] = -10.0
    seq.fc = head  # replacing the head keeps it first: it runs before the ReLU
    assert list(seq._modules) == ["fc", "act"]
    x = _x(1, 2)
    np.testing.assert_array_equal(seq(x).data, np.maximum(head(x).data, 0))
    m = nn.Module()
    m.w1 = nn.Parameter(np.zeros(1))
    m.w2 = nn.Parameter(np.zeros(2))
    m.w1 = nn.Parameter(np.ones(3))
    m.register_parameter("w2", nn.Parameter(np.ones(4)))
    assert [(n, p.shape) for n, p in m.named_parameters()] == [("w1", (3,)), ("w2", (4,))]
    m.register_buffer("b1", np.zeros(1))
    m.register_buffer("b2", np.zeros(1))
    m.b1 = np.ones(2)
    m.register_buffer("b2", np.ones(3))
    assert [(n, b.shape) for n, b in m.named_buffers()] == [("b1", (2,)), ("b2", (3,))]


@pytest.mark.parametrize("name", ["weight.x", ""])
def test_names_with_a_dot_or_empty_are_refused(name):
    # "fc.weight" beside a submodule "fc" (or an empty name) would share a state_dict key.
    m = nn.Module()
    with pytest.raises(KeyError, match="parameter name"):
        m.register_parameter(name, nn.Parameter(np.zeros(1)))
    with pytest.raises(KeyError, match="parameter name"):
        setattr(m, name, nn.Parameter(np.zeros(1)))
    with pytest.raises(KeyError, match="buffer name"):
        m.register_buffer(name, np.zeros(1))
    with pytest.raises(KeyError, match="submodule name"):
        setattr(m, name, nn.ReLU())
    with pytest.raises(KeyError, match="submodule name"):
        nn.Sequential({name: nn.ReLU()})
    assert not m._parameters and not m._buffers and not m._modules


_REGISTRATIONS = {
    "register_parameter": lambda m, name: m.register_parameter(name, nn.Parameter(np.zeros(1))),
    "register_buffer": lambda m, name: m.register_buffer(name, np.zeros(1)),
    "assign a Parameter": lambda m, name: setattr(m, name, nn.Parameter(np.zeros(1))),
    "assign a submodule": lambda m, name: setattr(m, name, nn.ReLU()),
    "Sequential dict": lambda m, name: nn.Sequential({name: nn.ReLU()}),
}


@pytest.mark.parametrize("register", _REGISTRATIONS.values(), ids=_REGISTRATIONS.keys())
@pytest.mark.parametrize("name", ["training", "_parameters", "forward", "state_dict", "__class__"])
def test_names_of_module_attributes_are_refused(register, name):
    # Normal lookup finds these before the registries: m.forward would stay the method while
    # state_dict saved the parameter, and a buffer "training" would replace the flag.
    m = nn.Module()
    with pytest.raises(KeyError, match=f'name "{name}" is taken by the attribute'):
        register(m, name)
    assert m.training is True and callable(m.forward)
    assert not m._parameters and not m._buffers and not m._modules
    assert m.eval() is m and not m.training


@pytest.mark.parametrize("register, existing", [
    ("register_parameter", "plain"), ("register_parameter", "buffer"), ("register_parameter", "submodule"),
    ("register_buffer", "plain"), ("register_buffer", "parameter"), ("register_buffer", "submodule")])
def test_registering_a_name_taken_by_another_attribute_is_refused(register, existing):
    # As in PyTorch: a registration by name would replace the attribute by accident (the same
    # registry may take a name again: test_reassignment_keeps_the_position).
    m = nn.Module()
    m.plain = 3
    m.parameter = nn.Parameter(np.zeros(2))
    m.register_buffer("buffer", np.zeros(2))
    m.submodule = nn.ReLU()
    with pytest.raises(KeyError, match=f'attribute "{existing}" already exists'):
        _REGISTRATIONS[register](m, existing)
    assert m.plain == 3 and isinstance(m.submodule, nn.ReLU)
    assert {k: v.shape for k, v in m.state_dict().items()} == {"parameter": (2,), "buffer": (2,)}
    m.plain = nn.Parameter(np.ones(1))  # an assignment may replace a plain attribute, as in PyTorch
    assert [n for n, _ in m.named_parameters()] == ["parameter", "plain"]


@pytest.mark.parametrize("value", [np.float64(1.0), mv.tensor(np.zeros(3)), [0.0, 1.0]],
                         ids=["numpy-scalar", "tensor", "list"])
def test_a_buffer_that_is_no_array_is_refused(value):
    """A NumPy scalar cannot be written in place by load_state_dict, and a Tensor came back from
    to() as a bare array: a buffer holds a NumPy or CuPy array."""
    m = nn.Module()
    kind = type(value).__name__
    with pytest.raises(TypeError, match=rf"^register_buffer\('b'\): expected a NumPy or CuPy array, got {kind}$"):
        m.register_buffer("b", value)
    m.register_buffer("b", np.zeros(3))
    with pytest.raises(TypeError, match=rf"^cannot assign a {kind} to buffer 'b': buffers hold NumPy or CuPy arrays$"):
        m.b = value
    assert type(m.b) is np.ndarray


def test_missing_super_init_is_explained():
    class Broken(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="super"):
        Broken()


def test_apply_visits_the_layers_in_order_each_after_its_children():
    """PyTorch's order: children first, siblings as listed, a shared module once."""
    m = Block()
    m.again = m.fc  # shared: visited once, where it first appears
    visited = []
    assert m.apply(visited.append) is m
    names = {id(mod): name for name, mod in m.named_modules()}
    assert [names[id(mod)] for mod in visited] == ["fc", "bn", "heads.0", "heads.1", "heads", ""]


def test_train_eval_propagate():
    m = Block()
    assert m.training and m.bn.training and m.heads[1].training
    assert m.eval() is m
    assert not any(mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())



@pytest.mark.parametrize("training", [True, False])
def test_evaluating_runs_in_eval_mode_without_a_graph_and_restores_the_mode(training):
    m = Block().train(training)
    with nn.evaluating(m):
        assert not any(mod.training for mod in m.modules())
        assert not m(_x()).requires_grad
    assert all(mod.training == training for mod in m.modules())
    with pytest.raises(KeyError), nn.evaluating(m):  # restored however the block ends
        raise KeyError("x")
    assert all(mod.training == training for mod in m.modules()) and m(_x()).requires_grad

@pytest.mark.parametrize("mode", ["False", "eval", 0, None])
def test_train_refuses_a_mode_that_is_not_a_bool(mode):
    m = Block().eval()
    with pytest.raises(TypeError, match=r"^training mode must be True or False, got "):
        m.train(mode)
    assert not any(mod.training for mod in m.modules())
    assert m.train(np.bool_(True)).training  # a NumPy bool is a bool


def test_zero_grad_sets_none():
    m = Block()
    m(_x()).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_sequential_and_module_list():
    seq = nn.Sequential(nn.Linear(4, 5, rng=0), nn.Tanh(), nn.Linear(5, 2, rng=1))
    x = _x()
    expected = F.linear(F.tanh(F.linear(x, seq[0].weight, seq[0].bias)), seq[2].weight, seq[2].bias)
    np.testing.assert_array_equal(seq(x).data, expected.data)
    assert len(seq) == 3 and isinstance(seq[-1], nn.Linear) and len(seq[1:]) == 2
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    named = nn.Sequential({"fc": nn.Linear(4, 2, rng=0), "act": nn.ReLU()})
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"]
    with pytest.raises(IndexError):
        seq[3]
    for index in ("0", 1.0, slice(0, 1)):  # a slice reads a part but cannot be assigned
        with pytest.raises(TypeError, match="indices must be integers"):
            seq[index] = nn.ReLU()
    with pytest.raises(TypeError, match="indices must be integers, not str"):
        seq["0"]
    with pytest.raises(TypeError):
        nn.ModuleList([nn.ReLU(), "not a module"])


@pytest.mark.parametrize("container", [nn.Sequential, lambda *ms: nn.ModuleList(ms)],
                         ids=["Sequential", "ModuleList"])
def test_a_slice_keeps_the_stage_names(container):
    a = container(nn.Linear(2, 2, rng=0), nn.Linear(2, 2, rng=1), nn.Linear(2, 2, rng=2))
    tail = a[1:]
    assert [n for n, _ in tail.named_children()] == ["1", "2"]
    b = container(nn.Linear(2, 2, rng=3), nn.Linear(2, 2, rng=4), nn.Linear(2, 2, rng=5))
    assert b.load_state_dict(tail.state_dict(), strict=False).missing_keys == ["0.weight", "0.bias"]
    np.testing.assert_array_equal(b[1].weight.data, a[1].weight.data)  # into the same layer
    assert tail[0] is a[1]  # positions still count from 0
    named = nn.Sequential({"fc": nn.Linear(2, 2, rng=0), "act": nn.ReLU()})
    assert list(named[0:1].state_dict()) == ["fc.weight", "fc.bias"]


def test_append_never_replaces_a_stage():
    tail = nn.Sequential(nn.Tanh(), nn.ReLU(), nn.Sigmoid())[1:]  # stages "1" and "2"
    tail.append(nn.Tanh())
    assert [(n, type(m).__name__) for n, m in tail.named_children()] == [
        ("1", "ReLU"), ("2", "Sigmoid"), ("3", "Tanh")]
    named = nn.Sequential({"fc": nn.Linear(1, 1, rng=0), "2": nn.Tanh()}).append(nn.ReLU())
    assert [type(m).__name__ for m in named] == ["Linear", "Tanh", "ReLU"]


_LIST_CHANGES = {  # the change, and the out_features of the stages after it (before: 1, 2, 3)
    "insert(1)": (lambda ml: ml.insert(1, nn.Linear(1, 4, rng=4)), [1, 4, 2, 3]),
    "insert(-1)": (lambda ml: ml.insert(-1, nn.Linear(1, 4, rng=4)), [1, 2, 4, 3]),
    "insert past the end": (lambda ml: ml.insert(10, nn.Linear(1, 4, rng=4)), [1, 2, 3, 4]),
    "insert before the start": (lambda ml: ml.insert(-10, nn.Linear(1, 4, rng=4)), [4, 1, 2, 3]),
    "del [0]": (lambda ml: ml.__delitem__(0), [2, 3]),
    "del [-2]": (lambda ml: ml.__delitem__(-2), [1, 3]),
    "del [:2]": (lambda ml: ml.__delitem__(slice(None, 2)), [3]),
    "pop(0)": (lambda ml: ml.pop(0), [2, 3]),
    "pop()": (lambda ml: ml.pop(), [1, 2]),
}


@pytest.mark.parametrize("container", [lambda *ms: nn.ModuleList(ms), nn.Sequential],
                         ids=["ModuleList", "Sequential"])
@pytest.mark.parametrize("change, sizes", _LIST_CHANGES.values(), ids=_LIST_CHANGES.keys())
def test_insert_and_removal_rename_the_stages_after_their_positions(container, change, sizes):
    layers = [nn.Linear(1, n, rng=n) for n in (1, 2, 3)]
    ml = container(*layers)
    removed = change(ml)
    assert [n for n, _ in ml.named_children()] == [str(i) for i in range(len(sizes))]
    assert [m.out_features for m in ml] == sizes
    assert [(n, p.shape) for n, p in ml.named_parameters()] == [
        (f"{i}.{name}", shape) for i, n in enumerate(sizes) for name, shape in
        [("weight", (1, n)), ("bias", (n,))]]
    assert list(ml.state_dict()) == [n for n, _ in ml.named_parameters()]
    assert list(ml.parameters()) == [p for m in ml for p in (m.weight, m.bias)]
    if removed is not None:  # pop returns the stage it removed
        assert removed in layers and removed not in list(ml)


def test_insert_and_removal_keep_the_names_of_a_named_sequential():
    # Renumbering "fc" would change the checkpoint keys; names of digits follow the positions.
    seq = nn.Sequential({"fc": nn.Linear(1, 2, rng=0), "act": nn.Tanh()}).append(nn.ReLU())
    seq.insert(1, nn.Linear(2, 2, rng=1))
    assert [(n, type(m).__name__) for n, m in seq.named_children()] == [
        ("fc", "Linear"), ("1", "Linear"), ("act", "Tanh"), ("3", "ReLU")]
    x = _x(3, 1)
    np.testing.assert_array_equal(seq(x).data, F.relu(F.tanh(seq[1](seq[0](x)))).data)
    del seq[0]
    assert [n for n, _ in seq.named_children()] == ["0", "act", "2"]
    assert isinstance(seq.pop(-1), nn.ReLU) and [n for n, _ in seq.named_children()] == ["0", "act"]
    tail = nn.ModuleList([nn.Tanh(), nn.ReLU(), nn.Sigmoid()])[1:]  # stages "1" and "2"
    tail.insert(0, nn.ELU())
    assert [(n, type(m).__name__) for n, m in tail.named_children()] == [
        ("0", "ELU"), ("1", "ReLU"), ("2", "Sigmoid")]


def test_an_optimizer_keeps_the_parameters_it_was_built_with():
    # It holds Parameters, not positions: it updates the stages it was built with, wherever
    # they are now, and not the inserted one (the ModuleList docstring says so).
    ml = nn.ModuleList([nn.Linear(2, 2, rng=0), nn.Linear(2, 2, rng=1)])
    opt = SGD(ml.parameters(), lr=0.1)
    ml.insert(0, nn.Linear(2, 2, rng=2))
    weights = [m.weight.data.copy() for m in ml]
    x = _x(3, 2)
    for m in ml:
        x = m(x)
    x.sum().backward()
    opt.step()
    assert opt.params == list(ml[1:].parameters())
    np.testing.assert_array_equal(ml[0].weight.data, weights[0])
    for m, w in zip(ml[1:], weights[1:]):
        np.testing.assert_allclose(m.weight.data, w - 0.1 * m.weight.grad)


def test_insert_and_pop_check_their_arguments():
    ml = nn.ModuleList([nn.ReLU()])
    for bad in (lambda: ml.insert("0", nn.Tanh()), lambda: ml.pop("0"), lambda: ml.pop(slice(0, 1))):
        with pytest.raises(TypeError, match="indices must be integers"):
            bad()
    with pytest.raises(TypeError, match="holds Modules"):
        ml.insert(0, "not a module")
    with pytest.raises(IndexError, match="out of range"):
        ml.pop(1)
    assert [type(m).__name__ for m in ml] == ["ReLU"]
    ml.pop()
    with pytest.raises(IndexError, match="out of range"):
        ml.pop()


# ----- state_dict ----------------------------------------------------------------------------------
def test_state_dict_round_trip_through_npz():
    m = Block(rng=0)
    m(_x())  # one training step of BatchNorm so its running statistics are not the defaults
    state = m.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert state["bn.num_batches_tracked"] == 1 and state["bn.num_batches_tracked"].dtype == np.int64
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        loaded = {k: f[k] for k in f.files}
    other = Block(rng=5)
    params_before = list(other.parameters())
    other.load_state_dict(loaded)
    assert list(other.parameters()) == params_before  # same Parameter objects, loaded in place
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    m.eval(), other.eval()
    np.testing.assert_array_equal(m(_x(seed=3)).data, other(_x(seed=3)).data)


def test_state_dict_values_are_copies():
    m = nn.Linear(2, 2, rng=0)
    state = m.state_dict()
    state["weight"][...] = 7
    assert not np.any(m.weight.data == 7)


def test_load_state_dict_reports_missing_and_unexpected_keys():
    m = Block()
    state = m.state_dict()
    del state["fc.bias"]
    state["fc.extra"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(nn.StateDictError, match=r"(?s)missing key.*fc\.bias.*unexpected key.*fc\.extra"):
        m.load_state_dict(state)
    result = m.load_state_dict(state, strict=False)
    assert result.missing_keys == ["fc.bias"] and result.unexpected_keys == ["fc.extra"]


def test_repr_puts_settings_of_a_module_with_children_on_their_own_line():
    class Scaled(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale, self.fc = scale, nn.Linear(2, 3)

        def extra_repr(self):
            return f"scale={self.scale}"

    assert repr(nn.Linear(2, 3)) == "Linear(in_features=2, out_features=3, bias=True)"
    assert repr(nn.Sequential()) == "Sequential()"
    # PyTorch's layout; before, "Scaled(scale=2" ran into the first child's line.
    assert repr(nn.Sequential(Scaled(2))) == (
        "Sequential(\n"
        "  (0): Scaled(\n"
        "    scale=2\n"
        "    (fc): Linear(in_features=2, out_features=3, bias=True)\n"
        "  )\n"
        ")")


def test_load_state_dict_refuses_a_key_that_is_not_a_name():
    m = Block()
    before = m.state_dict()
    state = dict(m.state_dict(), **{"fc.weight": np.zeros((4, 3), dtype=np.float32)})
    state[0] = np.zeros(3, dtype=np.float32)
    for strict in (True, False):
        with pytest.raises(TypeError, match=re.escape("names (strings), got 0 (int)")):
            m.load_state_dict(state, strict=strict)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(TypeError, match="state_dict must be a mapping .*, got list$"):
        m.load_state_dict(list(state.values()))


def test_load_state_dict_rejects_shape_and_dtype_without_changing_anything():
    m = Block()
    before = m.state_dict()
    state = m.state_dict()
    state["fc.weight"] = np.zeros((3, 4), dtype=np.float32)  # transposed
    state["fc.bias"] = np.zeros(3, dtype=np.float64)        # wrong dtype
    state["bn.running_mean"] = np.full(3, 9, dtype=np.float32)  # valid, but must not be applied
    with pytest.raises(nn.StateDictError) as err:
        m.load_state_dict(state)
    msg = str(err.value)
    assert "fc.weight: shape (3, 4) in state_dict, (4, 3) in the module" in msg
    assert "fc.bias: dtype float64" in msg
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    # Shape errors are raised even when not strict (fc.bias's dtype alone would raise too).
    with pytest.raises(nn.StateDictError, match=re.escape("fc.weight: shape (3, 4) in state_dict")):
        m.load_state_dict(state, strict=False)


def test_none_takes_the_place_of_a_submodule_or_buffer_and_del_removes_a_submodule():
    m = nn.Module()
    m.fc, m.act = nn.Linear(2, 3, rng=0), nn.ReLU()
    m.fc = None
    assert m.fc is None and list(m._modules) == ["fc", "act"]
    assert [n for n, _ in m.named_children()] == ["act"] and [n for n, _ in m.named_modules()] == ["", "act"]
    del m.act
    assert list(m._modules) == ["fc"] and not hasattr(m, "act")
    bn = nn.BatchNorm1d(3)
    bn.running_mean = None
    assert bn.running_mean is None and "running_mean" not in bn.state_dict()


def test_register_parameter_refuses_a_plain_tensor_and_keeps_the_position():
    m = nn.Module()
    with pytest.raises(TypeError, match=r"^register_parameter\('w'\): expected a Parameter or None, got Tensor$"):
        m.register_parameter("w", mv.tensor(np.zeros(2), requires_grad=True))
    m.register_parameter("w1", nn.Parameter(np.zeros(1)))
    m.register_parameter("w2", nn.Parameter(np.zeros(2)))
    m.register_parameter("w1", nn.Parameter(np.zeros(3)))
    assert [(n, p.shape) for n, p in m.named_parameters()] == [("w1", (3,)), ("w2", (2,))]


def test_recurse_false_lists_the_module_s_own_parameters_and_buffers():
    outer = nn.Module()
    outer.w = nn.Parameter(np.zeros(1))
    outer.bn = nn.BatchNorm1d(2)
    assert [n for n, _ in outer.named_parameters(prefix="model", recurse=False)] == ["model.w"]
    assert list(outer.parameters(recurse=False)) == [outer.w]
    assert list(outer.named_buffers(recurse=False)) == [] and list(outer.buffers(recurse=False)) == []
    assert [n for n, _ in outer.bn.named_buffers(recurse=False)] == ["running_mean", "running_var",
                                                                     "num_batches_tracked"]


def test_buffers_skip_the_absent_ones():
    assert list(nn.BatchNorm1d(3, track_running_stats=False).named_buffers()) == []


def test_requires_grad_checks_its_flag_without_parameters_too():
    with pytest.raises(TypeError, match="^requires_grad must be True or False, got 'no'$"):
        nn.Module().requires_grad_("no")


def test_astype_leaves_a_parameter_of_integers():
    m = nn.Module()
    m.idx = nn.Parameter(np.array([1, 2]), requires_grad=False)
    m.w = nn.Parameter(np.zeros(2))
    m.astype(np.float32)
    assert (m.idx.dtype, m.w.dtype) == (np.int64, np.float32)


def test_repr_of_a_module_with_settings_on_several_lines():
    class Settings(nn.Module):
        def extra_repr(self):
            return "a=1\nb=2"
    assert repr(Settings()) == "Settings(\n  a=1\n  b=2\n)"


def test_append_to_a_slice_skips_every_name_taken():
    part = nn.ModuleList([nn.ReLU() for _ in range(5)])[2:]  # "2", "3", "4": 3 and 4 are taken
    part.append(nn.Tanh())
    assert list(part._modules) == ["2", "3", "4", "5"] and isinstance(part[3], nn.Tanh)


def test_an_index_out_of_range_and_a_stage_that_is_no_module_are_named():
    stages = nn.ModuleList([nn.ReLU(), nn.Tanh()])
    with pytest.raises(IndexError, match="^index 2 is out of range for ModuleList of length 2$"):
        del stages[2]
    with pytest.raises(TypeError, match="^ModuleList holds Modules, got int$"):
        stages[0] = 3
    assert len(stages) == 2


def test_load_state_dict_takes_nested_lists():
    layer = nn.Linear(2, 3, bias=False, dtype=np.float64)
    layer.load_state_dict({"weight": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]})
    np.testing.assert_array_equal(layer.weight.data, [[1, 2, 3], [4, 5, 6]])


# ----- devices and dtypes ---------------------------------------------------------------------------
def test_to_cpu_keeps_parameter_objects():
    m = Block()
    params = list(m.parameters())
    assert m.to("cpu") is m
    assert list(m.parameters()) == params
    with pytest.raises(ValueError):
        m.to("tpu")


@pytest.mark.gpu
def test_to_gpu_and_back():
    m = Block()
    x = _x()
    ref = m(x).data
    params = list(m.parameters())
    m.to("gpu")
    assert all(p.device == "gpu" for p in m.parameters()) and list(m.parameters()) == params
    assert m.bn.running_mean.__class__.__module__.startswith("cupy")
    out = m(x.to("gpu")).numpy()
    m.to("cpu")
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_to_moves_the_gradients_and_a_gpu_module_loads_a_state_dict():
    m, state = Block(), Block(rng=1).state_dict()
    for p in m.parameters():
        p.grad = np.ones_like(p.data)
    m.to("gpu")
    assert all(p.grad.__class__.__module__.startswith("cupy") for p in m.parameters())
    m.load_state_dict(state)
    loaded = m.state_dict()
    assert all(np.array_equal(loaded[name], value) for name, value in state.items())


def test_astype_converts_parameters_and_float_buffers():
    m = Block().astype(np.float64)
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert m.bn.running_var.dtype == np.float64 and m.bn.num_batches_tracked.dtype == np.int64
    assert m(_x(dtype=np.float64)).dtype == np.float64


def test_astype_drops_the_gradients_of_the_old_dtype():
    m = Block()
    m(_x()).sum().backward()
    m.astype(np.float64)
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("dtype", [np.int64, bool, "U3"])
def test_astype_refuses_a_dtype_that_is_not_float(dtype):
    m = Block()
    before = {name: value.copy() for name, value in m.state_dict().items()}
    with pytest.raises(TypeError, match=r"^astype takes a float dtype such as float32 or float64, got "):
        m.astype(dtype)
    after = m.state_dict()
    assert all(after[name].dtype == value.dtype and np.array_equal(after[name], value)
               for name, value in before.items())


# ----- Linear and init ------------------------------------------------------------------------------
def test_linear_forward_and_layout():
    lin = nn.Linear(4, 3, rng=0)
    assert lin.weight.shape == (4, 3) and lin.bias.shape == (3,)
    assert lin.weight.dtype == np.float32
    x = _x()
    np.testing.assert_allclose(lin(x).data, x.data @ lin.weight.data + lin.bias.data, rtol=1e-6)
    nobias = nn.Linear(4, 3, bias=False, rng=0)
    assert nobias.bias is None and [n for n, _ in nobias.named_parameters()] == ["weight"]


def test_linear_default_init_bounds_pytorch_style():
    lin = nn.Linear(300, 200, rng=0)
    bound = 1 / math.sqrt(300)
    for p in (lin.weight.data, lin.bias.data):
        assert np.abs(p).max() <= bound * (1 + 1e-6)
        assert np.abs(p).max() > 0.95 * bound  # the whole interval is used
    # U(-b, b) has standard deviation b / sqrt(3)
    assert abs(lin.weight.data.std() - bound / math.sqrt(3)) < 0.02 * bound


def test_linear_init_is_deterministic_under_a_seed():
    a, b, c = nn.Linear(5, 4, rng=7), nn.Linear(5, 4, rng=7), nn.Linear(5, 4, rng=8)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    np.testing.assert_array_equal(a.bias.data, b.bias.data)
    assert not np.array_equal(a.weight.data, c.weight.data)
    nn.init.manual_seed(3)
    d = nn.Linear(5, 4)
    nn.init.manual_seed(3)
    e = nn.Linear(5, 4)
    np.testing.assert_array_equal(d.weight.data, e.weight.data)
    # The draws happen in float64, so a float64 layer holds the float32 one's values unrounded.
    f = nn.Linear(5, 4, rng=7, dtype=np.float64)
    assert f.weight.dtype == np.float64
    np.testing.assert_array_equal(f.weight.data.astype(np.float32), a.weight.data)


def test_linear_draws_its_weight_then_its_bias_from_u_of_one_over_sqrt_in():
    layer, rng = nn.Linear(4, 3, dtype=np.float64, rng=7), np.random.default_rng(7)
    np.testing.assert_allclose(layer.weight.data, rng.uniform(-0.5, 0.5, size=(4, 3)), rtol=1e-12)
    np.testing.assert_allclose(layer.bias.data, rng.uniform(-0.5, 0.5, size=3), rtol=1e-12)


def test_layers_take_the_default_dtype():
    try:
        mv.backend.set_default_dtype(np.float64)
        assert nn.Linear(2, 3).weight.dtype == np.float64
        assert nn.BatchNorm1d(3).running_mean.dtype == np.float64
    finally:
        mv.backend.set_default_dtype(np.float32)


def test_layer_reprs_show_their_settings():
    assert repr(nn.Linear(2, 3, bias=False)) == "Linear(in_features=2, out_features=3, bias=False)"
    assert repr(nn.BatchNorm1d(3, momentum=1, affine=False)) == (
        "BatchNorm1d(3, eps=1e-05, momentum=1.0, affine=False, track_running_stats=True)")


def test_one_generator_threaded_through_layers():
    rng = np.random.default_rng(0)
    first, second = nn.Linear(3, 3, rng=rng), nn.Linear(3, 3, rng=rng)
    assert not np.array_equal(first.weight.data, second.weight.data)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(nn.Linear(3, 3, rng=rng).weight.data, first.weight.data)


def test_init_functions_in_place():
    w = nn.Parameter(np.empty((400, 300), dtype=np.float32))
    array = w.data
    nn.init.xavier_uniform_(w, rng=0)
    assert w.data is array  # in place
    # The whole interval is used (a smaller bound, sqrt(3 / 700), stays below the upper one too).
    assert math.sqrt(6 / 700) * 0.99 < np.abs(w.data).max() <= math.sqrt(6 / 700) * (1 + 1e-6)
    nn.init.xavier_normal_(w, gain=2.0, rng=0)
    assert abs(w.data.std() - 2 * math.sqrt(2 / 700)) < 0.02 * 2 * math.sqrt(2 / 700)
    nn.init.kaiming_normal_(w, nonlinearity="relu", rng=0)
    assert abs(w.data.std() - math.sqrt(2 / 400)) < 0.02 * math.sqrt(2 / 400)  # fan_in = shape[0]
    nn.init.kaiming_uniform_(w, mode="fan_out", nonlinearity="relu", rng=0)
    # fan_out = shape[1] = 300; the bound with fan_in = 400 is smaller, inside this one.
    assert math.sqrt(6 / 300) * 0.99 < np.abs(w.data).max() <= math.sqrt(6 / 300) * (1 + 1e-6)
    nn.init.constant_(w, 0.25)
    assert np.all(w.data == 0.25)
    nn.init.zeros_(w)
    assert not w.data.any() and w.data is array
    nn.init.ones_(w)
    assert np.all(w.data == 1.0) and w.data is array
    assert nn.init.calculate_fan_in_and_fan_out((784, 512)) == (784, 512)
    # Trailing axes are a receptive field, multiplied into both fans.
    assert nn.init.calculate_fan_in_and_fan_out((3, 4, 5, 2)) == (30, 40)
    assert nn.init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    # PyTorch's table, entry by entry: a wrong gain only scales the initial weights.
    gains = {"linear": 1.0, "identity": 1.0, "sigmoid": 1.0, "tanh": 5 / 3,
             "relu": math.sqrt(2.0), "leaky_relu": math.sqrt(2 / (1 + 0.01 ** 2)), "selu": 3 / 4}
    for name, gain in gains.items():
        assert nn.init.calculate_gain(name) == pytest.approx(gain, rel=1e-15), name
    # PyTorch has no gain for elu: a made-up 1 would pass for a recommendation.
    with pytest.raises(ValueError, match="no recommended gain for nonlinearity 'elu': choose one of linear"):
        nn.init.calculate_gain("elu")
    with pytest.raises(ValueError):
        nn.init.xavier_uniform_(nn.Parameter(np.zeros(3, dtype=np.float32)))
    with pytest.raises(TypeError):
        nn.init.uniform_(w, rng="seed")


def test_kaiming_takes_the_slope_a_of_a_leaky_relu_by_default():
    # gain sqrt(2 / (1 + a^2)) = 1 for a = 1: std 1 / sqrt(fan_in) (a relu's gain would be sqrt(2))
    w = nn.Parameter(np.empty((4, 3)))
    nn.init.kaiming_normal_(w, a=1.0, rng=5)
    np.testing.assert_allclose(w.data, np.random.default_rng(5).normal(0.0, 0.5, size=(4, 3)), rtol=1e-12)
    with pytest.raises(ValueError, match="^mode must be 'fan_in' or 'fan_out', got 'fan_avg'$"):
        nn.init.kaiming_uniform_(w, mode="fan_avg")


def test_an_initializer_on_a_saved_parameter_is_seen_by_the_graph():
    w = nn.Parameter(np.ones(3))
    y = (w * mv.tensor(np.array([1.0, 2.0, 3.0]))).sum()  # Mul saves w
    nn.init.zeros_(w)  # in place, though the graph locked w's array
    np.testing.assert_array_equal(w.data, np.zeros(3))
    with pytest.raises(InPlaceModificationError, match="^Mul: input 0"):
        y.backward()


def test_calculate_gain_refuses_a_slope_that_is_no_real_number():
    """True is an int: read as a slope of 1 it gave leaky_relu the gain 1, not sqrt(2 / 1.0001)."""
    for slope in (True, "0.2"):
        with pytest.raises(TypeError, match=re.escape(f"negative slope) must be a real number, got {slope!r}")):
            nn.init.calculate_gain("leaky_relu", slope)
    with pytest.raises(ValueError, match="negative slope\\) must be finite, got nan"):
        nn.init.calculate_gain("leaky_relu", math.nan)
    assert nn.init.calculate_gain("leaky_relu", 1) == 1.0  # an int slope is a number

@pytest.mark.parametrize("fill, error, message", [
    (lambda w: nn.init.normal_(w, std=-1.0), ValueError, "normal_: invalid std -1.0: it must be >= 0 and finite"),
    (lambda w: nn.init.normal_(w, std=math.nan), ValueError, "normal_: invalid std nan: it must be >= 0 and finite"),
    (lambda w: nn.init.normal_(w, mean=math.inf), ValueError, "normal_: invalid mean inf: it must be finite"),
    (lambda w: nn.init.uniform_(w, 0.0, math.nan), ValueError, "uniform_: invalid b nan: it must be finite"),
    (lambda w: nn.init.uniform_(w, 1.0, 0.0), ValueError, r"uniform_: a 1.0 is above b 0.0: U\(a, b\) needs a <= b"),
    (lambda w: nn.init.xavier_uniform_(w, gain=math.nan), ValueError,
     "xavier_uniform_: invalid gain nan: it must be >= 0 and finite"),
    (lambda w: nn.init.xavier_normal_(w, gain=-1.0), ValueError,
     "xavier_normal_: invalid gain -1.0: it must be >= 0 and finite"),
    (lambda w: nn.init.xavier_normal_(w, gain="2"), TypeError, "gain must be a real number, got '2'"),
    (lambda w: nn.init.constant_(w, "a"), TypeError, "value must be a real number, got 'a'"),
    (lambda w: nn.init.constant_(w, True), TypeError, "value must be a real number, got True"),
    (lambda w: nn.init.uniform_(w, rng=True), TypeError,
     "rng must be None, an int seed or a numpy.random.Generator, got bool"),
    (lambda w: nn.init.manual_seed("a"), TypeError, "seed must be an integer, got 'a'"),
], ids=["negative std", "NaN std", "infinite mean", "NaN bound", "bounds reversed", "NaN gain",
        "negative gain", "string gain", "string value", "bool value", "bool rng", "string seed"])
def test_initializers_refuse_settings_that_give_no_distribution(fill, error, message):
    # Before: a NaN std or gain filled the weights with NaN without a word; the others failed
    # with NumPy's "scale < 0", "high - low < 0" or an OverflowError, naming no setting; a bool
    # value filled 0 or 1 and a bool rng seeded 1; a string value or seed got NumPy's errors.
    w = nn.Parameter(np.zeros((2, 3)))
    with pytest.raises(error, match=f"^{message}$"):
        fill(w)
    np.testing.assert_array_equal(w.data, np.zeros((2, 3)))  # nothing written


def test_an_evaluation_graph_leaves_the_running_statistics_writable():
    """A graph built in evaluation mode without no_grad (a validation loss kept for logging)
    must not lock BatchNorm's buffers: training, reset_running_stats and load_state_dict write
    into them while that graph lives."""
    x = mv.tensor(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
    model = nn.Sequential(nn.Linear(3, 3, rng=1), nn.BatchNorm1d(3), nn.Linear(3, 2, rng=2))
    other = nn.Sequential(nn.Linear(3, 3, rng=3), nn.BatchNorm1d(3), nn.Linear(3, 2, rng=4))
    other.train()
    other(x)  # running statistics that differ from model's
    model.eval()
    val_loss = model(x).sum()
    model.train()
    model(x)  # updates the running statistics in place
    model[1].reset_running_stats()
    val_loss.backward()  # the evaluation graph saved copies: the old statistics
    model.load_state_dict(other.state_dict())
    for name, value in other.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], value, err_msg=name)


def test_layer_without_inputs_and_empty_tensors_in_init():
    layer = nn.Linear(0, 3)  # a zero fan_in: nothing to draw, nothing to divide by
    assert layer.weight.shape == (0, 3)
    y = layer(mv.tensor(np.ones((2, 0), dtype=np.float32)))
    np.testing.assert_array_equal(y.data, np.zeros((2, 3)))  # the bias, drawn from U(0, 0)
    for fill in (nn.init.kaiming_uniform_, nn.init.kaiming_normal_):
        w = nn.Parameter(np.empty((3, 0), dtype=np.float32))
        assert fill(w, mode="fan_out") is w
    # Shape (0, 0) (or a receptive field of size 0) has fan_in + fan_out = 0 for Xavier.
    for fill in (nn.init.xavier_uniform_, nn.init.xavier_normal_):
        for shape in ((0, 0), (2, 3, 0), (0, 3)):
            w = nn.Parameter(np.empty(shape, dtype=np.float32))
            assert fill(w) is w and w.shape == shape
        with pytest.raises(ValueError, match="at least 2 dimensions"):
            fill(nn.Parameter(np.empty(0, dtype=np.float32)))  # no fans at all, empty or not


def test_parameter_dtype_policy():
    assert nn.Parameter([1.0, 2.0]).dtype == np.float32
    assert nn.Parameter(np.zeros(2)).dtype == np.float64
    p = nn.Parameter(np.zeros(2))
    assert p.requires_grad and p.is_leaf and "Parameter" in repr(p)


# ----- BatchNorm1d ----------------------------------------------------------------------------------
def _bn_reference(x, gamma, beta, eps, axes):
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean) / np.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5)])
def test_batchnorm_train_matches_numpy_and_updates_running_stats(shape):
    rng = np.random.default_rng(0)
    bn = nn.BatchNorm1d(3, dtype=np.float64)
    bn.weight.data[:] = rng.uniform(0.5, 2, 3)
    bn.bias.data[:] = rng.standard_normal(3)
    axes = (0,) if len(shape) == 2 else (0, 2)
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(3):
        x = rng.standard_normal(shape) * 2 + 1
        out = bn(mv.tensor(x))
        assert out._node.fn is BatchNorm  # training mode is one fused node
        np.testing.assert_allclose(out.data, _bn_reference(x, bn.weight.data, bn.bias.data, 1e-5, axes),
                                   rtol=1e-12, atol=1e-12)
        m = x.size // 3
        rm = 0.9 * rm + 0.1 * x.mean(axis=axes)
        rv = 0.9 * rv + 0.1 * x.var(axis=axes) * m / (m - 1)  # unbiased, as PyTorch
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-12)
    assert int(bn.num_batches_tracked) == 3


def test_batchnorm_eval_uses_running_stats():
    rng = np.random.default_rng(1)
    bn = nn.BatchNorm1d(3, dtype=np.float64)
    bn.running_mean[:] = rng.standard_normal(3)
    bn.running_var[:] = rng.uniform(0.5, 2, 3)
    bn.weight.data[:] = rng.uniform(0.5, 2, 3)
    bn.bias.data[:] = rng.standard_normal(3)
    bn.eval()
    x = rng.standard_normal((5, 3))
    expected = (x - bn.running_mean) / np.sqrt(bn.running_var + 1e-5) * bn.weight.data + bn.bias.data
    before = bn.state_dict()
    np.testing.assert_allclose(bn(mv.tensor(x)).data, expected, rtol=1e-12)
    for k, v in bn.state_dict().items():  # evaluation never changes the statistics
        np.testing.assert_array_equal(v, before[k])
    x1 = rng.standard_normal((1, 3))  # one example is fine in evaluation mode
    assert bn(mv.tensor(x1)).shape == (1, 3)


def test_batchnorm_momentum_none_is_cumulative_average():
    rng = np.random.default_rng(2)
    bn = nn.BatchNorm1d(2, momentum=None, dtype=np.float64)
    xs = [rng.standard_normal((6, 2)) for _ in range(4)]
    for x in xs:
        bn(mv.tensor(x))
    np.testing.assert_allclose(bn.running_mean, np.mean([x.mean(0) for x in xs], axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean([x.var(0, ddof=1) for x in xs], axis=0), rtol=1e-12)


def test_reset_running_stats_starts_the_statistics_anew():
    bn = nn.BatchNorm1d(2)
    bn(_x(6, 2))
    assert bn.num_batches_tracked == 1 and not np.all(bn.running_var == 1.0)
    bn.reset_running_stats()
    np.testing.assert_array_equal(bn.running_mean, [0.0, 0.0])
    np.testing.assert_array_equal(bn.running_var, [1.0, 1.0])
    assert bn.num_batches_tracked == 0


def test_batchnorm_without_tracking_or_affine():
    bn = nn.BatchNorm1d(3, affine=False, track_running_stats=False, dtype=np.float64).eval()
    assert list(bn.state_dict()) == [] and list(bn.parameters()) == []
    x = np.random.default_rng(3).standard_normal((7, 3))
    np.testing.assert_allclose(bn(mv.tensor(x)).data,
                               _bn_reference(x, np.ones(3), np.zeros(3), 1e-5, (0,)), rtol=1e-12)


def test_batchnorm_errors():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn(_x(1, 3))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        bn(_x(4, 5))


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_keeps_float32_with_numpy_float64_eps_and_momentum(training):
    x = mv.tensor(np.random.default_rng(6).standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    gamma, beta = mv.tensor([1.0, 1.0, 1.0], requires_grad=True), mv.tensor([0.0, 0.0, 0.0], requires_grad=True)
    running_mean, running_var = np.zeros(3, np.float32), np.ones(3, np.float32)
    y = batch_norm(x, gamma, beta, running_mean, running_var, training=training,
                   momentum=np.float64(0.1), eps=np.float64(1e-5))
    assert y.dtype == np.float32
    y.backward(np.ones(y.shape, np.float32))
    assert x.grad.dtype == gamma.grad.dtype == np.float32


def test_batchnorm_gradcheck_float64():
    rng = np.random.default_rng(4)

    def t(*shape, lo=None):
        data = rng.uniform(lo, 1.5, shape) if lo else rng.standard_normal(shape)
        return mv.tensor(data, requires_grad=True)

    x, gamma, beta = t(5, 3), t(3, lo=0.5), t(3)
    assert gradcheck(lambda x, g, b: batch_norm(x, g, b), x, gamma, beta)
    x3, g2, b2 = t(3, 2, 4), t(2, lo=0.5), t(2)
    assert gradcheck(lambda x, g, b: batch_norm(x, g, b), x3, g2, b2)
    assert gradcheck(lambda x: batch_norm(x), x)  # affine=False
    big = t(40, 8)  # the random-direction branch of gradcheck
    assert gradcheck(lambda x: batch_norm(x), big)
    rm, rv = rng.standard_normal(2), rng.uniform(0.5, 2, 2)
    assert gradcheck(lambda x, g, b: batch_norm(x, g, b, rm, rv, training=False), x3, g2, b2)
    # and through the module, in both modes
    bn = nn.BatchNorm1d(3, dtype=np.float64)
    assert gradcheck(lambda x: bn(x), x)
    bn.eval()
    assert gradcheck(lambda x: bn(x), x)


def test_batchnorm_float32_backward_matches_float64():
    rng = np.random.default_rng(5)
    x = mv.tensor(rng.standard_normal((16, 4)) * 3 + 2, requires_grad=True)
    g = mv.tensor(rng.uniform(0.5, 1.5, 4), requires_grad=True)
    b = mv.tensor(rng.standard_normal(4), requires_grad=True)
    assert check_float32(lambda x, g, b: batch_norm(x, g, b), x, g, b)


# ----- activations ----------------------------------------------------------------------------------
@pytest.mark.parametrize("module, fn", [
    (nn.ReLU(), F.relu), (nn.Tanh(), F.tanh), (nn.Sigmoid(), F.sigmoid), (nn.Softplus(), F.softplus),
    (nn.LeakyReLU(0.2), lambda x: F.leaky_relu(x, slope=0.2)), (nn.ELU(0.5), lambda x: F.elu(x, alpha=0.5)),
    (nn.Identity(), lambda x: x)])
def test_activation_modules(module, fn):
    x = _x()
    np.testing.assert_array_equal(module(x).data, fn(x).data)
    assert list(module.parameters()) == []


def test_activation_by_name():
    assert isinstance(nn.activation("ReLU"), nn.ReLU)
    with pytest.raises(ValueError, match="unknown activation"):
        nn.activation("swishy")


@pytest.mark.parametrize("name", [None, 3, nn.ReLU])
def test_an_activation_that_is_no_name_is_refused_naming_the_choices(name):
    # Before: AttributeError: 'NoneType' object has no attribute 'lower'.
    with pytest.raises(TypeError, match=f"^activation must be a name, one of relu, .*; got {name!r}$"):
        nn.activation(name)


@pytest.mark.parametrize("make, error, message", [
    (lambda: nn.Linear(4.5, 3), TypeError, "in_features must be an integer, got 4.5"),
    (lambda: nn.Linear(4, "3"), TypeError, "out_features must be an integer, got '3'"),
    (lambda: nn.Linear(4, -1), ValueError, "out_features must be at least 0, got -1"),
    (lambda: nn.Linear(4, 3, bias="false"), TypeError, "bias must be True or False, got 'false'"),
    (lambda: nn.BatchNorm1d(2.5), TypeError, "num_features must be an integer, got 2.5"),
    (lambda: nn.BatchNorm1d(0), ValueError, "num_features must be at least 1, got 0"),
    (lambda: nn.BatchNorm1d(4, eps=0), ValueError, "BatchNorm1d: invalid eps 0: it must be > 0 and finite"),
    (lambda: nn.BatchNorm1d(4, momentum=1.5), ValueError, r"BatchNorm1d: invalid momentum 1.5: it must be in \[0, 1\]"),
    (lambda: nn.BatchNorm1d(4, momentum="0.1"), TypeError, "momentum must be a real number, got '0.1'"),
    (lambda: nn.BatchNorm1d(4, affine=0), TypeError, "affine must be True or False, got 0"),
    (lambda: nn.BatchNorm1d(4, track_running_stats="no"), TypeError,
     "track_running_stats must be True or False, got 'no'"),
    (lambda: nn.LeakyReLU(math.nan), ValueError, "LeakyReLU: invalid negative_slope nan: it must be finite"),
    (lambda: nn.LeakyReLU(True), TypeError, "negative_slope must be a real number, got True"),
    (lambda: nn.ELU(math.inf), ValueError, "ELU: invalid alpha inf: it must be finite"),
], ids=["fractional in", "string out", "negative out", "string bias", "fractional features",
        "no features", "eps 0", "momentum above 1", "string momentum", "int affine", "string tracking",
        "NaN slope", "bool slope", "infinite alpha"])
def test_layer_constructors_check_their_arguments(make, error, message):
    # Before: 4.5 features became 4, "3" became 3, bias="false" added a bias, eps=0 divided a
    # constant channel by 0, momentum 1.5 extrapolated the running statistics, a NaN slope
    # made every negative input NaN: all without a word.
    with pytest.raises(error, match=f"^{message}$"):
        make()


def test_linear_relu_matches_linear_then_relu_bit_for_bit():
    fused = nn.LinearReLU(5, 4, dtype=np.float64, rng=3)
    plain = nn.Sequential(nn.Linear(5, 4, dtype=np.float64, rng=3), nn.ReLU())
    x = mv.tensor(np.random.default_rng(0).standard_normal((6, 5)), requires_grad=True)
    a = fused(x)
    a.sum().backward()
    grads = [x.grad, fused.weight.grad, fused.bias.grad]
    x.grad = None
    b = plain(x)
    b.sum().backward()
    assert a.data.tobytes() == b.data.tobytes()
    for g, h in zip(grads, [x.grad, plain[0].weight.grad, plain[0].bias.grad]):
        assert g.tobytes() == h.tobytes()
    assert a._node.fn.__name__ == "LinearRelu" and b._node.fn.__name__ == "Relu"


def test_mlp_builds_linear_relu_layers_under_the_unfused_names():
    from minivae.models.common import MLP

    relu = MLP((6, 5, 4, 3), "relu", final_activation=False, rng=0)
    assert [type(m).__name__ for m in relu.net] == ["LinearReLU", "LinearReLU", "Linear"]
    tanh = MLP((6, 5, 4, 3), "tanh", final_activation=False, rng=0)
    assert [type(m).__name__ for m in tanh.net] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    assert list(relu.state_dict()) == list(tanh.state_dict()) == [
        "net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias"]
    normed = MLP((6, 5, 3), "relu", batch_norm=True, rng=0)  # a BatchNorm1d sits between: no fusion
    assert [type(m).__name__ for m in normed.net] == ["Linear", "BatchNorm1d", "ReLU", "Linear",
                                                      "BatchNorm1d", "ReLU"]


def test_initializers_refuse_integer_tensors():
    """(uniform_ on an int64 tensor filled it with truncated values.)"""
    for fill in (lambda t: nn.init.uniform_(t, 0.0, 5.0), lambda t: nn.init.normal_(t),
                 nn.init.xavier_uniform_):
        with pytest.raises(TypeError, match="initializers fill float tensors, got one of dtype int64"):
            fill(mv.tensor(np.zeros((2, 2), np.int64)))


def test_a_sequential_refuses_two_keys_that_name_one_stage():
    """Sequential names its stages by str(key): {1: a, "1": b} would keep b alone, silently."""
    with pytest.raises(KeyError, match='"1" is given twice'):
        nn.Sequential({1: nn.ReLU(), "1": nn.Tanh()})
