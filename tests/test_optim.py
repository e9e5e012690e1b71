"""minivae.optim: updates against hand-written NumPy, exact resume, clipping, schedules, in-place work."""
import io
import json
import math
import tracemalloc

import numpy as np
import pytest

import minivae as mv
import minivae.functional as F
import minivae.nn as nn
import minivae.optim as optim
from minivae.gpu import dispatch
from test_kernels import fake_gpu, shim  # noqa: F401  (fixtures)


def _params(dtype=np.float32, seed=0, shapes=((3, 4), (4,))):
    rng = np.random.default_rng(seed)
    return [nn.Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


def _grads(params, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(p.shape).astype(p.dtype) for p in params] for _ in range(steps)]


def _run(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()


def _assert_matches_reference(make, reference, dtype, steps):
    """The parameters after ``steps`` updates of the optimizer ``make(params)`` on random
    gradients are, bit for bit, ``reference(start, grads)`` of each parameter, in its dtype."""
    params = _params(dtype)
    start = [p.data.copy() for p in params]
    grads = _grads(params, steps)
    _run(make(params), params, grads)
    for j, p in enumerate(params):
        ref = reference(start[j], [gs[j] for gs in grads])
        assert ref.dtype == dtype
        np.testing.assert_array_equal(p.data, ref)


# ----- SGD -------------------------------------------------------------------------------------------
def _sgd_reference(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD's update, written out in NumPy."""
    p, buf = p.copy(), None
    for g in grads:
        d = g + weight_decay * p if weight_decay else g
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        p = p + (-lr) * d
    return p


@pytest.mark.parametrize("kw", [
    dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True), dict(momentum=0.5, dampening=0.3),
    dict(momentum=0.9, weight_decay=0.01), dict(weight_decay=0.1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_matches_numpy_exactly(kw, dtype):
    _assert_matches_reference(lambda ps: optim.SGD(ps, lr=0.05, **kw),
                              lambda p, grads: _sgd_reference(p, grads, 0.05, **kw), dtype, 4)


# ----- Adam ------------------------------------------------------------------------------------------
def _adam_reference(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, amsgrad=False, decoupled=False):
    """Adam as implemented (bias corrections folded into the step size and eps), in NumPy."""
    p = p.copy()
    m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * wd)
        elif wd:
            g = p * wd + g
        m = m * b1 + g * (1 - b1)
        v = v * b2 + g * (1 - b2) * g
        if amsgrad:
            vmax = np.maximum(vmax, v)
        s = math.sqrt(1 - b2 ** t)
        p = p + (m / (np.sqrt(vmax if amsgrad else v) + eps * s)) * -(lr * s / (1 - b1 ** t))
    return p


def _adam_textbook(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Kingma & Ba's Algorithm 1 with PyTorch's eps placement, in float64."""
    p, m, v = p.astype(np.float64), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
    return p


@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=0.1), dict(amsgrad=True),
                                dict(weight_decay=0.1, decoupled_weight_decay=True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_matches_numpy_exactly(kw, dtype):
    _assert_matches_reference(
        lambda ps: optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6, **kw),
        lambda p, grads: _adam_reference(p, grads, 0.01, 0.8, 0.99, 1e-6, kw.get("weight_decay", 0.0),
                                         kw.get("amsgrad", False), kw.get("decoupled_weight_decay", False)),
        dtype, 5)


def test_adam_equals_the_textbook_formula_up_to_rounding():
    params = _params(np.float64)
    start = [p.data.copy() for p in params]
    grads = _grads(params, 20)
    _run(optim.Adam(params, lr=0.01), params, grads)
    for j, p in enumerate(params):
        np.testing.assert_allclose(p.data, _adam_textbook(start[j], [gs[j] for gs in grads], 0.01),
                                   rtol=1e-13, atol=1e-15)


def test_adam_bias_correction_first_step_moves_by_lr():
    # With bias correction, m_hat / sqrt(v_hat) = g / |g| at t = 1: every weight moves by lr,
    # whatever the gradient's size (without it the step would be (1 - b1) / sqrt(1 - b2) * lr).
    p = nn.Parameter(np.zeros(4))
    p.grad = np.array([1e-3, -2.0, 50.0, -1e-2])
    optim.Adam([p], lr=0.1, eps=1e-12).step()
    np.testing.assert_allclose(p.data, [-0.1, 0.1, -0.1, 0.1], rtol=1e-8)


def test_adamw_default_decay_and_class():
    p = nn.Parameter(np.ones(3))
    opt = optim.AdamW([p], lr=0.1)
    assert opt.weight_decay == 0.01 and opt.decoupled_weight_decay
    p.grad = np.zeros(3)
    opt.step()
    np.testing.assert_allclose(p.data, 1 - 0.1 * 0.01)  # a zero gradient leaves only the decay


def test_gradients_are_read_only_and_may_alias():
    params = _params(np.float32, shapes=((5,), (5,)))
    shared = np.random.default_rng(0).standard_normal(5).astype(np.float32)
    shared.flags.writeable = False  # any write into a gradient would raise
    for opt in (optim.Adam(params, weight_decay=0.1), optim.SGD(params, lr=0.1, momentum=0.9,
                                                                 weight_decay=0.1, nesterov=True)):
        for _ in range(3):
            for p in params:
                p.grad = shared  # one array shared by two tensors, as the engine does for a + b
            opt.step()
    assert params[0].grad is shared


def test_broadcast_gradient_view_is_accepted():
    # A backward may hand out a read-only broadcast view (stride 0); the update only reads it.
    for opt_class in (optim.Adam, optim.SGD):
        p = nn.Parameter(np.zeros((3, 4), dtype=np.float32))
        p.grad = np.broadcast_to(np.float32(1), (3, 4))
        opt_class([p], lr=0.1).step()
        np.testing.assert_allclose(p.data, -0.1, rtol=1e-6)
    q = nn.Parameter(np.zeros((3, 4), dtype=np.float32))
    F.sum(q * 2).backward()  # and whatever the engine gives
    optim.Adam([q], lr=0.1).step()
    np.testing.assert_allclose(q.data, -0.1, rtol=1e-6)


def test_step_allocates_no_temporaries_after_the_first():
    params = _params(np.float32, shapes=((300, 200), (200,)))
    opt = optim.Adam(params, lr=1e-3, weight_decay=1e-4)
    grads = _grads(params, 2)
    _run(opt, params, grads[:1])  # creates the state and the scratch buffers
    for p, g in zip(params, grads[1]):
        p.grad = g
    tracemalloc.start()
    opt.step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 0.05 * sum(p.data.nbytes for p in params), peak  # NumPy reports its buffers here


def test_skips_parameters_without_gradient():
    a, b = _params(np.float64, shapes=((2,), (2,)))
    before = b.data.copy()
    opt = optim.Adam([a, b])
    a.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(b.data, before)
    assert opt.state[1] == {} and opt.state[0]["step"] == 1


def test_constructor_errors():
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="twice"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="leaf"):
        optim.SGD([p * 2], lr=0.1)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(1.0, 0.999))
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)


@pytest.mark.parametrize("make, error, message", [
    (lambda o: optim.CosineLR(o, 10, warmup_steps=-1), ValueError, "warmup_steps must be at least 0, got -1"),
    (lambda o: optim.CosineLR(o, 0), ValueError, "total_steps must be at least 1, got 0"),
    (lambda o: optim.CosineLR(o, 10.5), TypeError, "total_steps must be an integer, got 10.5"),
    (lambda o: optim.CosineLR(o, 10, min_lr=math.nan), ValueError, "CosineLR: invalid min_lr nan"),
    (lambda o: optim.CosineLR(o, 10, min_lr=0.5), ValueError,
     r"CosineLR: min_lr 0.5 is above the optimizer's lr 0.1: the schedule would raise the rate"),
    (lambda o: optim.StepLR(o, 0), ValueError, "step_size must be at least 1, got 0"),
    (lambda o: optim.StepLR(o, 3, gamma=-0.5), ValueError, "StepLR: invalid gamma -0.5"),
    (lambda o: optim.StagedLR(o, 0), ValueError, "first_steps must be at least 1, got 0"),
    (lambda o: optim.StagedLR(o, 2, growth=1.5), TypeError, "growth must be an integer, got 1.5"),
    (lambda o: optim.StagedLR(o, 2, decay=math.nan), ValueError, "StagedLR: invalid decay nan"),
], ids=["negative warm-up", "no steps", "fractional steps", "NaN min_lr", "min_lr above lr", "step_size 0",
        "negative gamma", "first stage of 0 steps", "fractional growth", "NaN decay"])
def test_scheduler_arguments_are_checked(make, error, message):
    """(A negative warm-up shifted the schedule silently; step_size 0 was a ZeroDivisionError at
    the first step; a min_lr above the lr made the cosine "decay" a rise.)"""
    with pytest.raises(error, match=f"^{message}"):
        make(optim.SGD(_params(), lr=0.1))


@pytest.mark.parametrize("make, name", [
    (lambda p, nan: optim.SGD([p], lr=nan), "lr"),
    (lambda p, nan: optim.SGD([p], lr=0.1, momentum=nan), "momentum"),
    (lambda p, nan: optim.SGD([p], lr=0.1, dampening=nan), "dampening"),
    (lambda p, nan: optim.SGD([p], lr=0.1, weight_decay=nan), "weight_decay"),
    (lambda p, nan: optim.Adam([p], lr=nan), "lr"),
    (lambda p, nan: optim.Adam([p], eps=nan), "eps"),
    (lambda p, nan: optim.Adam([p], betas=(0.9, nan)), "beta2"),
    (lambda p, nan: optim.AdamW([p], weight_decay=nan), "weight_decay"),
    (lambda p, nan: optim.RMSprop([p], alpha=nan), "alpha"),
    (lambda p, nan: optim.RMSprop([p], momentum=nan), "momentum"),
], ids=["SGD-lr", "SGD-momentum", "SGD-dampening", "SGD-weight_decay", "Adam-lr", "Adam-eps",
        "Adam-beta2", "AdamW-weight_decay", "RMSprop-alpha", "RMSprop-momentum"])
def test_nan_hyperparameters_are_refused_at_construction_and_loading(make, name):
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match=f"invalid {name} nan"):
        make(p, math.nan)
    opt = make(p, 0.5)
    state = dict(opt.state_dict(), **{name: math.nan})
    with pytest.raises(ValueError, match=f"invalid {name} nan"):
        opt.load_state_dict(state)
    assert getattr(opt, name) == 0.5


@pytest.mark.parametrize("make, name", [
    (lambda p: optim.SGD([p], lr=math.inf), "lr"),
    (lambda p: optim.SGD([p], lr=0.1, momentum=math.inf), "momentum"),
    (lambda p: optim.Adam([p], weight_decay=math.inf), "weight_decay"),
    (lambda p: optim.Adam([p], eps=math.inf), "eps"),
    (lambda p: optim.CosineLR(optim.SGD([p], lr=0.1), 10, min_lr=math.inf), "min_lr"),
    (lambda p: optim.StepLR(optim.SGD([p], lr=0.1), 3, gamma=math.inf), "gamma"),
], ids=["lr", "momentum", "weight_decay", "eps", "min_lr", "gamma"])
def test_infinite_hyperparameters_are_refused(make, name):
    """(An infinite rate or decay made the parameters inf or NaN at the first step, an infinite
    eps froze them.)"""
    with pytest.raises(ValueError, match=f"invalid {name} inf: it must be >= 0 and finite"):
        make(nn.Parameter(np.zeros(2)))


@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD([p], lr="0.1"), "lr must be a real number, got '0.1'"),
    (lambda p: optim.SGD([p], lr=0.1, weight_decay=True), "weight_decay must be a real number, got True"),
    (lambda p: optim.Adam([p], eps=[1e-8]), r"eps must be a real number, got \[1e-08\]"),
    (lambda p: optim.StepLR(optim.SGD([p], lr=0.1), 3, gamma=None), "gamma must be a real number, got None"),
], ids=["string", "bool", "list", "None"])
def test_hyperparameters_that_are_no_numbers_are_refused(make, message):
    """(A string or None failed inside a comparison, with no name; True was taken as 1.)"""
    with pytest.raises(TypeError, match=f"^{message}$"):
        make(nn.Parameter(np.zeros(2)))


@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD([p], lr=0.1, momentum=0.9, nesterov="false"), "nesterov must be True or False, got 'false'"),
    (lambda p: optim.Adam([p], amsgrad="no"), "amsgrad must be True or False, got 'no'"),
    (lambda p: optim.Adam([p], decoupled_weight_decay=1), "decoupled_weight_decay must be True or False, got 1"),
], ids=["nesterov", "amsgrad", "decoupled"])
def test_switches_that_are_no_bools_are_refused(make, message):
    """(The string "false" or "no" is truthy: it turned the variant on.)"""
    with pytest.raises(TypeError, match=f"^{message}$"):
        make(nn.Parameter(np.zeros(2)))


def test_zero_grad():
    params = _params()
    opt = optim.SGD(params, lr=0.1)
    for p in params:
        p.grad = np.ones(p.shape, np.float32)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


# ----- subnormal flushing ----------------------------------------------------------------------------
def test_flush_removes_subnormal_moments_and_changes_nothing_else():
    # Gradients that stop: the moments decay geometrically into the subnormal range and stick.
    def run(flush_every):
        p = nn.Parameter(np.linspace(-1, 1, 64, dtype=np.float32))
        opt = optim.Adam([p], lr=1e-3, flush_every=flush_every)
        rng = np.random.default_rng(0)
        for t in range(1200):
            g = rng.standard_normal(64).astype(np.float32) * 1e-3
            g[32:] = 0 if t >= 5 else g[32:]  # half of the entries stop receiving gradient
            p.grad = g
            opt.step()
        return p.data, opt.state[0]

    p_plain, state_plain = run(0)
    p_flush, state_flush = run(10)
    tiny = np.finfo(np.float32).tiny
    m = state_plain["exp_avg"]
    assert np.any((m != 0) & (np.abs(m) < tiny)), "the scenario should create subnormals"
    for key in ("exp_avg", "exp_avg_sq"):
        a = state_flush[key]
        assert not np.any((a != 0) & (np.abs(a) < tiny))
    np.testing.assert_array_equal(p_flush, p_plain)  # no result changes, not even by rounding


@pytest.mark.parametrize("make", [lambda ps: optim.Adam(ps, lr=1e-3, flush_every=3),
                                  lambda ps: optim.SGD(ps, lr=1e-3, momentum=0.9, flush_every=3),
                                  lambda ps: optim.RMSprop(ps, lr=1e-3, momentum=0.9, flush_every=3)],
                         ids=["Adam", "SGD", "RMSprop"])
def test_the_flush_runs_at_every_flush_every_th_step_and_no_other(make):
    """A moment (Adam's exp_avg, SGD's momentum buffer, RMSprop's square_avg) made subnormal at
    steps 1 and 4 decays without reaching 0, so it is still there after steps 1, 2, 4 and 5 and is cleared by
    the flushes of steps 3 and 6 (a flush at every step but the third, or at none, would pass a
    check of the end state alone)."""
    p = nn.Parameter(np.zeros(2, np.float32))
    opt = make([p])
    # RMSprop's second moment (1 - alpha) g^2 of g = 1e-20 is 1e-42, its momentum buffer g / eps normal
    key, small = {optim.Adam: ("exp_avg", 1e-38), optim.SGD: ("momentum_buffer", 1e-38),
                  optim.RMSprop: ("square_avg", 1e-20)}[type(opt)]
    kept = []
    for t in range(1, 7):
        p.grad = np.array([small if t in (1, 4) else 0.0, 1.0], np.float32)  # 1e-38 is below tiny
        opt.step()
        kept.append(bool(opt.state[0][key][0] != 0))
        assert opt.state[0][key][1] != 0  # a normal entry is never flushed
    assert kept == [True, True, False, True, True, False]


def test_adam_flushes_as_its_step_argument_says():
    """``step(flush=...)`` overrides the count (a captured step fixes its flush when captured):
    True flushes at step 1, False keeps the subnormal moment at step 3."""
    p = nn.Parameter(np.zeros(1, np.float32))
    opt = optim.Adam([p], lr=1e-3, flush_every=3)
    kept = []
    for t, flush in ((1, True), (2, None), (3, False)):
        p.grad = np.array([1e-38 if t != 3 else 0.0], np.float32)
        opt.step(flush=flush)
        kept.append(bool(opt.state[0]["exp_avg"][0] != 0))
    assert kept == [False, True, True]


# ----- RMSprop ---------------------------------------------------------------------------------------
def _rmsprop_reference(p, grads, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0):
    """RMSprop as implemented, in NumPy, each operation rounded in the dtype of p."""
    p, v, buf = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        if weight_decay:
            g = p * weight_decay + g
        v = v * alpha + g * (1 - alpha) * g
        d = g / (np.sqrt(v) + eps)
        if momentum:
            buf = buf * momentum + d
            d = buf
        p = p + d * -lr
    return p


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9), dict(weight_decay=0.1),
                                dict(alpha=0.9, eps=1e-4, momentum=0.5, weight_decay=0.01)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rmsprop_matches_numpy_exactly(kw, dtype):
    _assert_matches_reference(lambda ps: optim.RMSprop(ps, lr=0.01, **kw),
                              lambda p, grads: _rmsprop_reference(p, grads, 0.01, **kw), dtype, 5)


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9, weight_decay=0.1, alpha=0.9, eps=1e-4)])
def test_rmsprop_equals_torch_up_to_rounding(kw):
    """The same updates as torch.optim.RMSprop in float64 (the library's reference)."""
    torch = pytest.importorskip("torch")
    params = _params(np.float64)
    start = [p.data.copy() for p in params]
    grads = _grads(params, 20)
    _run(optim.RMSprop(params, lr=0.01, **kw), params, grads)
    reference = [torch.tensor(a, requires_grad=True) for a in start]
    opt = torch.optim.RMSprop(reference, lr=0.01, **kw)
    for gs in grads:
        for r, g in zip(reference, gs):
            r.grad = torch.tensor(g)
        opt.step()
    for p, r in zip(params, reference):
        np.testing.assert_allclose(p.data, r.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_rmsprop_reads_its_scalars_from_step_scalars_when_given():
    """With ``step_scalars`` (eps_s, neg_step, decay) set, as graph mode sets them, the update
    takes eps and -lr from them, not from its own numbers: the same bits as the optimizer's own
    numbers at eps 1e-4 and lr 0.05, though its own are others."""
    def run(opt):
        _run(opt, params, grads)
        return [p.data.copy() for p in params]

    params = _params()
    start = [p.data.copy() for p in params]
    grads = _grads(params, 3)
    expected = run(optim.RMSprop(params, lr=0.05, eps=1e-4, momentum=0.9))
    for p, a in zip(params, start):
        p.data[...] = a
    opt = optim.RMSprop(params, lr=0.5, eps=1e-8, momentum=0.9)
    scalars = optim.RMSprop(params, lr=0.05, eps=1e-4).update_scalars(7, 0.05)
    assert scalars == dict(eps_s=1e-4, neg_step=-0.05, decay=None)  # no bias correction: any t
    opt.step_scalars = np.array([scalars["eps_s"], scalars["neg_step"], 1.0])
    for got, want in zip(run(opt), expected):
        np.testing.assert_array_equal(got, want)


def test_an_optimizer_without_step_scalars_says_it_cannot_be_captured():
    with pytest.raises(NotImplementedError, match="SGD cannot run in a step captured as a CUDA graph"):
        optim.SGD(_params(), lr=0.1).update_scalars(1, 0.1)


# ----- state_dict and exact resume -------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.net = nn.Sequential(nn.Linear(6, 8, rng=rng), nn.BatchNorm1d(8), nn.ELU(),
                                 nn.Linear(8, 3, rng=rng))

    def forward(self, x):
        return self.net(x)


def _batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((10, 6)).astype(np.float32),
             rng.standard_normal((10, 3)).astype(np.float32)) for _ in range(n)]


def _train(model, opt, sched, batches):
    for x, y in batches:
        d = model(mv.tensor(x)) - mv.tensor(y)
        loss = (d * d).mean()
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()


def _checkpoint(model, opt, sched):
    """Save as a real checkpoint would: arrays to .npz, numbers to JSON, no pickle anywhere."""
    arrays, numbers = {}, {}
    for prefix, sd in (("model", model.state_dict()), ("optim", opt.state_dict()),
                       ("sched", sched.state_dict())):
        for k, v in sd.items():
            (arrays if isinstance(v, np.ndarray) else numbers)[f"{prefix}/{k}"] = v
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    text = json.dumps(numbers)
    with np.load(buf, allow_pickle=False) as f:
        loaded = {k: f[k] for k in f.files}
    loaded.update(json.loads(text))
    return {prefix: {k.split("/", 1)[1]: v for k, v in loaded.items() if k.startswith(prefix + "/")}
            for prefix in ("model", "optim", "sched")}


@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.Adam(ps, lr=3e-3, weight_decay=1e-3, amsgrad=True, flush_every=3),
    lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, flush_every=3),
    lambda ps: optim.RMSprop(ps, lr=3e-3, momentum=0.9, weight_decay=1e-3, flush_every=3)],
    ids=["Adam", "SGD", "RMSprop"])
def test_exact_resume(make_opt):
    batches = _batches(12)
    model = _Net()
    opt = make_opt(model.parameters())
    sched = optim.CosineLR(opt, total_steps=12, min_lr=1e-4, warmup_steps=2)
    _train(model, opt, sched, batches)

    first = _Net()
    opt1 = make_opt(first.parameters())
    sched1 = optim.CosineLR(opt1, total_steps=12, min_lr=1e-4, warmup_steps=2)
    _train(first, opt1, sched1, batches[:7])  # 7: the flush period does not divide the split
    ckpt = _checkpoint(first, opt1, sched1)

    resumed = _Net()
    for p in resumed.parameters():  # make sure nothing carries over by accident
        p.data[...] = 0
    opt2 = make_opt(resumed.parameters())
    opt2.lr = 123.0  # overwritten by the checkpoint
    sched2 = optim.CosineLR(opt2, total_steps=12, min_lr=1e-4, warmup_steps=2)
    resumed.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optim"])
    sched2.load_state_dict(ckpt["sched"])
    _train(resumed, opt2, sched2, batches[7:])

    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert opt.lr == opt2.lr


def test_optimizer_state_dict_is_flat_and_plain():
    params = _params()
    opt = optim.Adam(params, amsgrad=True)
    _run(opt, params, _grads(params, 2))
    sd = opt.state_dict()
    assert sd["num_params"] == 2 and sd["amsgrad"] == 1 and sd["beta2"] == 0.999
    assert set(sd) >= {"state.0.step", "state.0.exp_avg", "state.1.max_exp_avg_sq"}
    for v in sd.values():
        assert isinstance(v, (np.ndarray, int, float)) and not isinstance(v, bool)
    json.dumps({k: v for k, v in sd.items() if not isinstance(v, np.ndarray)})
    sd["state.0.exp_avg"][...] = 99  # a copy, not the live state
    assert not np.any(opt.state[0]["exp_avg"] == 99)


def test_optimizer_load_errors():
    params = _params()
    adam = optim.Adam(params)
    _run(adam, params, _grads(params, 1))
    sd = adam.state_dict()
    with pytest.raises(ValueError, match="2 parameters, this optimizer has 1"):
        optim.Adam(params[:1]).load_state_dict(sd)
    bad = dict(sd)
    bad["state.0.exp_avg"] = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"state\.0\.exp_avg: \(4, 3\)"):
        optim.Adam(params).load_state_dict(bad)
    sgd = optim.SGD(params, lr=0.1, momentum=0.9)
    _run(sgd, params, _grads(params, 1))
    with pytest.raises(ValueError, match="unexpected key|missing key"):
        adam.load_state_dict(sgd.state_dict())
    fresh = optim.Adam(params)
    before = fresh.state_dict()
    with pytest.raises(ValueError):
        fresh.load_state_dict(bad)
    assert fresh.state_dict().keys() == before.keys()  # unchanged after a failed load


def test_optimizer_load_refuses_a_key_that_is_no_name_and_a_state_that_is_no_mapping():
    # Before: AttributeError "'int' object has no attribute 'split'", and dict()'s own
    # "cannot convert dictionary update sequence element #0 to a sequence" for a list.
    params = _params()
    sd = optim.Adam(params).state_dict()
    sd[0] = np.zeros(3)
    with pytest.raises(ValueError, match="unexpected key 0 for Adam"):
        optim.Adam(params).load_state_dict(sd)
    with pytest.raises(TypeError, match="^state_dict must be a mapping .* got list$"):
        optim.Adam(params).load_state_dict([np.zeros(3)])


@pytest.mark.parametrize("flush_every, error, message", [
    (2.5, TypeError, "flush_every must be an integer, got 2.5"),
    ("10", TypeError, "flush_every must be an integer, got '10'"),
    (-1, ValueError, "flush_every must be at least 0, got -1"),
])
def test_optimizers_refuse_a_flush_period_that_is_no_count(flush_every, error, message):
    # Before: int() made 2.5 a period of 2 and "10" one of 10, and -1 flushed at every step.
    for make in (optim.SGD, optim.Adam, optim.RMSprop):
        with pytest.raises(error, match=f"^{message}$"):
            make(_params(), lr=0.1, flush_every=flush_every)


@pytest.mark.parametrize("key, value, message", [
    ("flush_every", None, "flush_every must be a number, got None"),
    ("flush_every", -3, "flush_every must be an integer >= 0, got -3"),
    ("flush_every", True, "flush_every must be an integer >= 0, got True"),
    ("flush_every", np.array(True), r"flush_every must be an integer >= 0, got array\(True\)"),
    ("beta1", "0.8", "beta1 must be a number, got '0.8'"),
    ("num_params", [2], r"num_params must be a number, got \[2\]"),
    ("state.0.step", None, "state.0.step must be a number, got None; state.0: arrays without a "
                           "step count"),
    ("state.0.step", 2.5, "state.0.step must be an integer >= 0, got 2.5; state.0: arrays without a "
                          "step count"),
    ("state.0.step", -1, "state.0.step must be an integer >= 0, got -1; state.0: .*"),
    ("state.0.step", True, "state.0.step must be an integer >= 0, got True; state.0: .*"),
    ("state.0.step", math.nan, "state.0.step must be an integer >= 0, got nan; state.0: .*"),
    ("state.0.step", math.inf, "state.0.step must be an integer >= 0, got inf; state.0: .*"),
])
def test_optimizer_load_of_a_state_with_a_bad_number_changes_nothing(key, value, message):
    # Before: flush_every None raised int()'s TypeError after lr and the betas had been loaded,
    # and -3 was taken; "0.8" failed in a comparison ("'<=' not supported between ..."), [2] in
    # int() and a step of None in int(), each with NumPy's or Python's words; a step of 2.5 was
    # loaded as 2 and one of -1 as -1, NaN met int()'s ValueError and inf its OverflowError.
    params = _params()
    opt = optim.Adam(params, lr=0.1)
    _run(opt, params, _grads(params, 1))
    sd = opt.state_dict()
    sd["lr"], sd[key] = 0.5, value
    with pytest.raises(ValueError, match=rf"^cannot load Adam state: {message}$"):
        opt.load_state_dict(sd)
    assert opt.lr == 0.1 and opt.flush_every == 10 and opt.state[0]["step"] == 1
    loaded = opt.state_dict()
    loaded["lr"], loaded["flush_every"] = np.array(0.5), np.array(3)  # numbers as np.load gives them
    opt.load_state_dict(loaded)
    assert (opt.lr, opt.flush_every) == (0.5, 3)


@pytest.mark.parametrize("kw", [dict(), dict(amsgrad=True)])
def test_loading_a_state_from_before_the_first_step_starts_afresh(kw):
    """A state_dict taken before any step has no moments: loading it resets the optimizer, and
    the next steps are those of a fresh one (not the old moments with step counts from 1)."""
    params, fresh_params = _params(), _params()
    opt = optim.Adam(params, lr=0.1, **kw)
    empty = opt.state_dict()
    _run(opt, params, _grads(params, 3))
    opt.load_state_dict(empty)
    for p, q in zip(params, fresh_params):
        q.data[...] = p.data
    _run(opt, params, _grads(params, 2, seed=5))
    fresh = optim.Adam(fresh_params, lr=0.1, **kw)
    _run(fresh, fresh_params, _grads(fresh_params, 2, seed=5))
    for p, q in zip(params, fresh_params):
        np.testing.assert_array_equal(p.data, q.data)
    for a, b in zip(opt.state, fresh.state):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_module_to_keeps_optimizer_valid():
    model = _Net()
    opt = optim.Adam(model.parameters())
    _train(model, opt, optim.StepLR(opt, 100), _batches(2))
    model.to("cpu")
    _train(model, opt, optim.StepLR(opt, 100), _batches(2, seed=1))
    assert all(p.device == "cpu" for p in model.parameters())


# ----- clip_grad_norm_ -------------------------------------------------------------------------------
def test_clip_grad_norm_scales_copies_not_in_place():
    params = _params(np.float64, shapes=((3,), (2, 2)))
    shared = np.array([3.0, 4.0, 12.0])
    params[0].grad = shared
    params[1].grad = np.full((2, 2), 2.0)
    total = optim.clip_grad_norm_(params, max_norm=1.0)
    expected = math.sqrt(9 + 16 + 144 + 16)
    assert total == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(shared, [3.0, 4.0, 12.0])  # the original array is untouched
    assert params[0].grad is not shared
    new_norm = math.sqrt(sum((p.grad ** 2).sum() for p in params))
    assert new_norm == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(params[0].grad, shared / (expected + 1e-6))


def test_clip_grad_norm_below_threshold_and_inf_norm():
    p = nn.Parameter(np.zeros(3, dtype=np.float32))
    g = np.array([0.1, -0.2, 0.2], dtype=np.float32)
    p.grad = g
    assert optim.clip_grad_norm_([p], 1.0) == pytest.approx(0.3, rel=1e-6)
    # nothing to clip: a factor of exactly 1 keeps every bit (the original stays untouched)
    np.testing.assert_array_equal(p.grad, g)
    assert p.grad.dtype == np.float32 and p.grad is not g
    assert optim.clip_grad_norm_(p, 0.1, norm_type=math.inf) == pytest.approx(0.2)
    assert p.grad.dtype == np.float32 and np.abs(p.grad).max() == pytest.approx(0.1, rel=1e-4)
    assert optim.clip_grad_norm_([nn.Parameter(np.zeros(2))], 1.0) == 0.0



@pytest.mark.parametrize("max_norm, error", [(-1.0, ValueError), (math.nan, ValueError), ("1", TypeError)])
def test_clip_grad_norm_refuses_a_bound_that_is_no_norm(max_norm, error):
    """A negative bound scaled the gradients by a negative factor: every step went uphill."""
    p = nn.Parameter(np.zeros(2))
    p.grad = np.array([3.0, 4.0])
    with pytest.raises(error, match="max_norm"):
        optim.clip_grad_norm_([p], max_norm)
    np.testing.assert_array_equal(p.grad, [3.0, 4.0])


def test_clip_grad_norm_of_an_infinite_bound_measures_without_clipping():
    p = nn.Parameter(np.zeros(2))
    p.grad = np.array([3.0, 4.0])
    assert optim.clip_grad_norm_([p], math.inf) == pytest.approx(5.0)
    np.testing.assert_array_equal(p.grad, [3.0, 4.0])


def test_clip_grad_norm_inf_norm_is_the_largest_entry_over_all_parameters():
    """norm_type=inf: the total norm is max_i |g_i| over the entries of every parameter's
    gradient together (not a sum of per-parameter maxima), and every gradient is scaled by
    max_norm / (total + 1e-6)."""
    params = _params(np.float64, shapes=((3,), (2, 2)))
    params[0].grad = np.array([0.5, -2.0, 1.0])
    params[1].grad = np.array([[-3.0, 0.25], [1.0, 2.5]])
    grads = [p.grad.copy() for p in params]
    assert optim.clip_grad_norm_(params, 1.5, norm_type=math.inf) == 3.0
    for p, g in zip(params, grads):
        np.testing.assert_allclose(p.grad, g * (1.5 / (3.0 + 1e-6)), rtol=1e-15)


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_grad_norm_propagates_a_nan_from_any_gradient(norm_type):
    params = _params(np.float64, shapes=((2,), (2,)))
    params[0].grad = np.array([1.0, 2.0])
    params[1].grad = np.array([np.nan, 0.5])  # not the first: Python's max() would skip it
    assert math.isnan(optim.clip_grad_norm_(params, 1.0, norm_type=norm_type))
    assert all(np.isnan(p.grad).all() for p in params)


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_grad_norm_counts_nothing_for_a_zero_size_gradient(norm_type):
    """The inf norm failed with NumPy's "zero-size array to reduction operation maximum"."""
    params = _params(np.float64, shapes=((0, 3), (2,)))
    params[0].grad, params[1].grad = np.zeros((0, 3)), np.array([3.0, -4.0])
    want = 5.0 if norm_type == 2.0 else 4.0
    assert optim.clip_grad_norm_(params, 1.0, norm_type=norm_type) == pytest.approx(want, rel=1e-15)
    np.testing.assert_allclose(params[1].grad, np.array([3.0, -4.0]) / (want + 1e-6), rtol=1e-15)
    assert params[0].grad.shape == (0, 3)
    assert optim.clip_grad_norm_(params[:1], 1.0, norm_type=norm_type) == 0.0


def test_clip_grad_norm_keeps_the_gradient_of_a_0d_parameter_an_array():
    """NumPy's product of a 0-d array is a NumPy scalar: .grad became np.float64, which cannot
    be written into (``p.grad[...] = 0``), unlike every gradient backward gives."""
    p = nn.Parameter(np.array(3.0))
    p.grad = np.array(4.0)
    assert optim.clip_grad_norm_([p], 1.0) == 4.0
    assert type(p.grad) is np.ndarray and p.grad.shape == () and p.grad.flags.writeable
    np.testing.assert_allclose(p.grad, 4.0 / (4.0 + 1e-6), rtol=1e-15)


def test_clip_grad_norm_clips_a_norm_just_above_the_threshold():
    """Every total norm above max_norm is clipped, also one barely above it (a scale factor
    max_norm / (total + 1e-6) just below 1): the gradients end with norm max_norm."""
    p = nn.Parameter(np.zeros(2))
    p.grad = np.array([0.6, 0.8]) * 1.25  # norm 1.25 against max_norm 1
    assert optim.clip_grad_norm_([p], 1.0) == pytest.approx(1.25, rel=1e-15)
    np.testing.assert_allclose(p.grad, np.array([0.6, 0.8]) * 1.25 / (1.25 + 1e-6), rtol=1e-15)


def test_clip_grad_norm_returns_the_norm_as_an_array_and_keeps_each_gradient_s_dtype():
    """The norm stays an array (on the GPU, reading it would be a copy to the host, which a
    captured step refuses). A float32 gradient beside a float64 one stays float32: the factor,
    reduced over both in float64, is cast to each gradient's dtype."""
    params = _params(np.float32, shapes=((2,),)) + _params(np.float64, shapes=((2,),))
    params[0].grad = np.array([3.0, 0.0], dtype=np.float32)
    params[1].grad = np.array([0.0, 4.0])
    total = optim.clip_grad_norm_(params, 1.0)
    assert isinstance(total, (np.ndarray, np.generic)) and total.shape == () and float(total) == 5.0
    assert [p.grad.dtype for p in params] == [np.float32, np.float64]
    np.testing.assert_allclose(params[0].grad, [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(params[1].grad, [0.0, 0.8], rtol=1e-6)


def test_clip_grad_value_clips_each_entry_into_a_copy():
    params = _params(np.float32, shapes=((3,), (2,)))
    shared = np.array([0.5, -2.0, np.nan], dtype=np.float32)
    params[0].grad, params[1].grad = shared, np.array([-0.25, 1.0], dtype=np.float32)
    optim.clip_grad_value_(params, 0.75)
    np.testing.assert_array_equal(params[0].grad, np.array([0.5, -0.75, np.nan], dtype=np.float32))
    np.testing.assert_array_equal(params[1].grad, np.array([-0.25, 0.75], dtype=np.float32))
    assert params[0].grad.dtype == np.float32
    np.testing.assert_array_equal(shared, np.array([0.5, -2.0, np.nan], dtype=np.float32))  # untouched
    p = nn.Parameter(np.array(1.0))
    p.grad = np.array(-3.0)
    optim.clip_grad_value_(p, 1.0)  # one parameter, 0-d: its gradient stays a writable array
    assert type(p.grad) is np.ndarray and p.grad.shape == () and p.grad == -1.0


@pytest.mark.parametrize("clip_value, error", [(-1.0, ValueError), (math.nan, ValueError), ("1", TypeError)])
def test_clip_grad_value_refuses_a_bound_that_is_no_bound(clip_value, error):
    p = nn.Parameter(np.zeros(2))
    p.grad = np.array([3.0, -4.0])
    with pytest.raises(error, match="clip_value"):
        optim.clip_grad_value_([p], clip_value)
    np.testing.assert_array_equal(p.grad, [3.0, -4.0])


# ----- schedules -------------------------------------------------------------------------------------
def test_cosine_and_step_schedules():
    opt = optim.SGD(_params(), lr=1.0)
    sched = optim.CosineLR(opt, total_steps=10, min_lr=0.1, warmup_steps=2)
    lrs = [opt.lr]
    for _ in range(12):
        sched.step()
        lrs.append(opt.lr)
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[2] == pytest.approx(1.0)
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs[10] == pytest.approx(0.1) and lrs[12] == pytest.approx(0.1)
    opt2 = optim.SGD(_params(), lr=1.0)
    step = optim.StepLR(opt2, step_size=3, gamma=0.5)
    lrs = [opt2.lr]
    for _ in range(7):
        step.step()
        lrs.append(opt2.lr)
    # Every step, not only the last: the rate drops after steps 3 and 6, not one step early.
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    again = optim.StepLR(optim.SGD(_params(), lr=5.0), step_size=3, gamma=0.5)
    again.load_state_dict(step.state_dict())
    assert again.optimizer.lr == opt2.lr


def test_the_staged_schedule_is_the_iwae_paper_s():
    """Stages of 3^i epochs at 1e-3 * 10^(-i/7) (Burda et al. 2015): written out here stage by
    stage, for epochs of 2 steps. The eight stages are 3,280 epochs, the last at 1e-4."""
    opt = optim.SGD(_params(), lr=1e-3)
    sched = optim.StagedLR(opt, first_steps=2)
    want = [1e-3 * 10 ** (-stage / 7) for stage in range(5) for _ in range(2 * 3 ** stage)]
    got = [opt.lr]
    for _ in range(len(want) - 1):
        sched.step()
        got.append(opt.lr)
    np.testing.assert_allclose(got, want, rtol=1e-15)
    assert [sched.stage_at(t) for t in (0, 1, 2, 7, 8, 25, 26)] == [0, 0, 1, 1, 2, 2, 3]
    epochs = optim.StagedLR(optim.SGD(_params(), lr=1e-3), first_steps=1)
    assert epochs.stage_at(3279) == 7 and epochs.stage_at(3280) == 8
    assert epochs.lr_at(3279) == pytest.approx(1e-4, rel=1e-14)
    again = optim.StagedLR(optim.SGD(_params(), lr=5.0), first_steps=2)
    again.load_state_dict(sched.state_dict())
    assert again.optimizer.lr == opt.lr



@pytest.mark.parametrize("state, error, message", [
    ({"base_lr": 1.0}, ValueError, "cannot load StepLR state: missing key 'last_step'"),
    ({}, ValueError, "cannot load StepLR state: missing key 'base_lr' and 'last_step'"),
    ([1.0, 3], TypeError, r"state must be a mapping of names to values \(such as a scheduler's state_dict\(\)\), "
                          "got list"),
    ({"base_lr": math.nan, "last_step": 3}, ValueError, "StepLR: invalid base_lr nan: it must be >= 0 and finite"),
    ({"base_lr": "1.0", "last_step": 3}, TypeError, "base_lr must be a real number, got '1.0'"),
    ({"base_lr": 1.0, "last_step": -1}, ValueError, "last_step must be at least 0, got -1"),
    ({"base_lr": 1.0, "last_step": 2.5}, TypeError, "last_step must be an integer, got 2.5"),
], ids=["no last_step", "empty", "list", "nan rate", "text rate", "negative step", "fractional step"])
def test_a_scheduler_state_is_checked_before_it_is_loaded(state, error, message):
    """A missing entry was a bare KeyError, a list a TypeError about list indices, and a NaN
    rate or a step of -1 or 2.5 (read as 2) were taken: each is now named, and nothing changes."""
    opt = optim.SGD(_params(), lr=1.0)
    sched = optim.StepLR(opt, step_size=3, gamma=0.5)
    for _ in range(4):
        sched.step()
    with pytest.raises(error, match=message):
        sched.load_state_dict(state)
    assert (sched.base_lr, sched.last_step, opt.lr) == (1.0, 4, 0.5)



def test_a_cosine_state_whose_rate_lies_below_min_lr_is_refused_as_in_the_constructor():
    """The constructor refuses an lr below min_lr (the decay would be a rise); a loaded base_lr
    below it was taken, and the rate rose from 1e-5 towards 1e-4. Nothing changes now."""
    opt = optim.SGD(_params(), lr=1e-3)
    sched = optim.CosineLR(opt, total_steps=10, min_lr=1e-4)
    sched.step()
    before = (sched.base_lr, sched.last_step, opt.lr)
    with pytest.raises(ValueError, match=r"^CosineLR: min_lr 0.0001 is above the state's base_lr 1e-05: "
                                         r"the schedule would raise the rate; give a min_lr of at most the lr$"):
        sched.load_state_dict({"base_lr": 1e-5, "last_step": 0})
    assert (sched.base_lr, sched.last_step, opt.lr) == before
    sched.load_state_dict({"base_lr": 1e-4, "last_step": 0})  # a constant schedule at min_lr
    assert opt.lr == 1e-4

def test_every_gradient_shape_is_checked_before_any_update():
    params = _params(np.float32, shapes=((3, 4), (4,)))
    before = params[0].data.copy()
    params[0].grad = np.ones((3, 4), np.float32)
    params[1].grad = np.ones((5,), np.float32)
    with pytest.raises(ValueError, match="parameter 1: gradient of shape"):
        optim.Adam(params).step()
    np.testing.assert_array_equal(params[0].data, before)


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), optim.Adam, optim.RMSprop],
                         ids=["SGD", "Adam", "RMSprop"])
def test_a_gradient_of_another_dtype_is_refused_before_any_update(make):
    """Else SGD's momentum would become float64 for a float32 parameter, and its saved state
    could not be loaded back."""
    params = _params(np.float32, shapes=((3, 4), (4,)))
    before = params[0].data.copy()
    params[0].grad = np.ones((3, 4), np.float32)
    params[1].grad = np.ones(4)
    with pytest.raises(TypeError, match="parameter 1: a float64 gradient on the cpu for a float32 "
                                        "parameter on the cpu; convert it first"):
        make(params).step()
    np.testing.assert_array_equal(params[0].data, before)


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1), optim.Adam], ids=["SGD", "Adam"])
@pytest.mark.parametrize("grad, named", [([1.0] * 4, "list"), (lambda p: mv.tensor(np.ones(4, np.float32)), "Tensor")])
def test_a_gradient_that_is_no_array_is_refused_before_any_update(make, grad, named):
    """A gradient set by hand to a list failed with AttributeError: 'list' object has no
    attribute 'shape'."""
    params = _params(np.float32, shapes=((3, 4), (4,)))
    before = params[0].data.copy()
    params[0].grad = np.ones((3, 4), np.float32)
    params[1].grad = grad(params[1]) if callable(grad) else grad
    with pytest.raises(TypeError, match=rf"^parameter 1: its gradient must be a NumPy or CuPy array of shape "
                                        rf"\(4,\), got {named}$"):
        make(params).step()
    np.testing.assert_array_equal(params[0].data, before)


# ----- Adam's flat buffer --------------------------------------------------------------------------
def _one_by_one(start, grads, **kw):
    """The reference: one Adam per parameter (no shared buffer), None gradients skipped."""
    params = [nn.Parameter(a.copy()) for a in start]
    opts = [optim.Adam([p], lr=1e-2, **kw) for p in params]
    for step in grads:
        for p, g, opt in zip(params, step, opts):
            p.grad = g
            if g is not None:
                opt.step()
    return [p.data for p in params], [opt.state[0] for opt in opts]


@pytest.mark.parametrize("kw", [dict(), dict(amsgrad=True, weight_decay=0.1, flush_every=3)])
def test_adam_keeps_parameters_in_one_flat_array_and_updates_as_one_by_one(kw):
    """After a step every parameter is a view of one flat array; parameters whose gradient was
    missing at some steps (their step counts differ) and float64 parameters next to float32 ones
    get exactly the updates of one optimizer per parameter."""
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (4,), (2, 2), (5,))]
    start.append(rng.standard_normal(3))  # float64: a layout of its own
    grads = [[rng.standard_normal(a.shape).astype(a.dtype) for a in start] for _ in range(12)]
    for t in (2, 3, 7):
        grads[t][1] = None  # parameter 1 falls behind by three steps
    grads[5][0] = grads[5][3] = None
    want_params, want_states = _one_by_one(start, grads, **kw)
    params = [nn.Parameter(a.copy()) for a in start]
    opt = optim.Adam(params, lr=1e-2, **kw)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g
        opt.step()
        flat = params[0].data.base
        assert all(p.data.base is flat for p in params[:4]) and params[4].data.base is not flat
    for p, want, state, want_state in zip(params, want_params, opt.state, want_states):
        np.testing.assert_array_equal(p.data, want)
        assert state.keys() == want_state.keys()
        for key in want_state:
            np.testing.assert_array_equal(state[key], want_state[key], err_msg=key)


def test_adam_refuses_step_scalars_for_parameters_of_several_step_counts(fake_gpu, monkeypatch):
    """step_scalars (graph mode's, read by the GPU kernel) are the scalars of one step count: a
    parameter one count behind the others (no gradient at the first step) is refused before
    anything changes, not updated with another count's scalars."""
    monkeypatch.setattr(dispatch, "is_gpu_array", lambda array: True)
    params = _params(shapes=((4,), (4,)))
    opt = optim.Adam(params, lr=1e-2)
    params[0].grad = np.ones(4, np.float32)
    opt.step()
    for p in params:
        p.grad = np.full(4, 0.5, np.float32)
    before = [p.data.copy() for p in params]
    scalars = opt.update_scalars(2, opt.lr)
    opt.step_scalars = np.array([scalars["eps_s"], scalars["neg_step"], 1.0])
    with pytest.raises(ValueError, match=r"step_scalars .* step counts \[0, 1\]"):
        opt.step()
    assert [s.get("step") for s in opt.state] == [1, None]
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data, b)


def test_adam_follows_parameters_and_state_that_were_replaced():
    """Replacing ``p.data`` (as Module.to and astype do) or a state array between steps moves
    the flat layout onto the new arrays: the run continues exactly as if nothing was replaced."""
    start, grads = [a.data for a in _params()], _grads(_params(), 6)
    want, _ = _one_by_one(start, grads)
    params = [nn.Parameter(a.copy()) for a in start]
    opt = optim.Adam(params, lr=1e-2)
    _run(opt, params, grads[:2])
    params[0].data = params[0].data.copy()
    _run(opt, params, grads[2:4])
    opt.state[1]["exp_avg"] = opt.state[1]["exp_avg"].copy()
    _run(opt, params, grads[4:])
    for p, w in zip(params, want):
        np.testing.assert_array_equal(p.data, w)
    assert params[0].data.base is params[1].data.base is not None
