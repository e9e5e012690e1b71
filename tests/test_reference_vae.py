"""The hand-written NumPy VAE of benchmarks/reference_numpy_vae.py computes what minivae computes.

The benchmark compares the speed of the two, so they must do the same work: the same loss and
the same gradients (float64, same weights, same eps) and the same Adam update.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import minivae as mv
import minivae.optim as optim
from minivae.models import VAE
from minivae.random import Generator

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_numpy_vae.py"
_spec = importlib.util.spec_from_file_location("reference_numpy_vae", _PATH)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def _model_and_batch(dtype, hidden=(512, 256), z_dim=50, batch=7, beta=1.0, seed=3):
    mv.nn.init.manual_seed(seed)
    model = VAE(z_dim=z_dim, hidden=hidden, beta=beta).astype(dtype)
    rng = np.random.default_rng(seed)
    x = (rng.uniform(size=(batch, 784)) < 0.3).astype(dtype)
    return model, x


def _minivae_loss_and_grads(model, x, seed):
    model.zero_grad()
    loss, stats = model.loss(mv.tensor(x), Generator(seed))
    loss.backward()
    return loss.item(), stats, [p.grad for p in model.parameters()]


@pytest.mark.parametrize("hidden,z_dim,beta", [((512, 256), 50, 1.0), ((32, 16, 8), 3, 2.5)])
def test_gradients_equal_minivae_in_float64(hidden, z_dim, beta):
    model, x = _model_and_batch(np.float64, hidden, z_dim, beta=beta)
    loss, stats, grads = _minivae_loss_and_grads(model, x, seed=11)
    eps = Generator(11).normal((1, x.shape[0], z_dim), dtype=np.float64)  # the draw model.loss made
    params = [p.data.copy() for p in model.parameters()]
    assert [p.shape for p in params] == ref.param_shapes(z_dim=z_dim, hidden=hidden)
    r_loss, r_stats, r_grads = ref.ReferenceVAE(params, beta=beta).loss_and_grads(x, eps)
    assert r_loss == pytest.approx(loss, rel=1e-12)
    assert r_stats["rec"] == pytest.approx(stats["rec"], rel=1e-12)
    assert r_stats["kl"] == pytest.approx(stats["kl"], rel=1e-12)
    names = [n for n, _ in model.named_parameters()]
    assert len(r_grads) == len(grads)
    for name, g, r in zip(names, grads, r_grads):
        assert r.shape == g.shape and r.dtype == np.float64, name
        np.testing.assert_allclose(r, g, rtol=1e-10, atol=1e-14, err_msg=name)


def test_float32_step_stays_float32_and_close_to_minivae():
    model, x = _model_and_batch(np.float32)
    loss, _, grads = _minivae_loss_and_grads(model, x, seed=5)
    eps = Generator(5).normal((1, x.shape[0], 50), dtype=np.float32)
    r_loss, _, r_grads = ref.ReferenceVAE([p.data for p in model.parameters()]).loss_and_grads(x, eps)
    assert r_loss == pytest.approx(loss, rel=1e-5)
    for g, r in zip(grads, r_grads):
        assert r.dtype == np.float32
        np.testing.assert_allclose(r, g, rtol=2e-3, atol=2e-5 * float(np.abs(g).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_equals_minivae_adam_bit_for_bit(dtype):
    rng = np.random.default_rng(0)
    shapes = [(5, 4), (4,), (3, 2)]
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    tensors = [mv.nn.Parameter(a.copy()) for a in start]
    arrays = [a.copy() for a in start]
    opt = optim.Adam(tensors, lr=0.01, betas=(0.8, 0.99), eps=1e-6, flush_every=3)
    r_opt = ref.ReferenceAdam(arrays, lr=0.01, betas=(0.8, 0.99), eps=1e-6, flush_every=3)
    for step in range(7):
        grads = [rng.standard_normal(s).astype(dtype) * (step < 2) for s in shapes]  # then zeros
        grads[0][0] = 1e-30 if step == 0 else 0  # a moment that decays into the subnormals
        for t, g in zip(tensors, grads):
            t.grad = g
        opt.step()
        r_opt.step(grads)
        for t, a in zip(tensors, arrays):
            np.testing.assert_array_equal(t.data, a)
    for i, (m, v) in enumerate(zip(r_opt.m, r_opt.v)):
        np.testing.assert_array_equal(opt.state[i]["exp_avg"], m)
        np.testing.assert_array_equal(opt.state[i]["exp_avg_sq"], v)


@pytest.mark.parametrize("dtype, tiny_grad", [(np.float32, 1e-38), (np.float64, 1e-308)])
def test_adam_flushes_subnormal_moments_on_the_steps_minivae_does(dtype, tiny_grad):
    """Gradients so small that the first moment is subnormal from the first step (the test above
    never reaches the subnormal range): both flush them on the same steps, to +0 both."""
    shapes = [(3, 2)]
    tensors = [mv.nn.Parameter(np.ones(shapes[0], dtype))]
    arrays = [np.ones(shapes[0], dtype)]
    opt = optim.Adam(tensors, lr=0.01, betas=(0.8, 0.99), eps=1e-6, flush_every=3)
    r_opt = ref.ReferenceAdam(arrays, lr=0.01, betas=(0.8, 0.99), eps=1e-6, flush_every=3)
    grad = np.full(shapes[0], tiny_grad, dtype)
    grad[0] = -tiny_grad  # a negative moment flushed must become +0, not -0
    flushed = []
    for step in range(1, 8):
        tensors[0].grad = grad.copy()
        opt.step()
        r_opt.step([grad])
        m, m_ref = opt.state[0]["exp_avg"], r_opt.m[0]
        np.testing.assert_array_equal(m_ref, m)
        assert np.array_equal(np.signbit(m_ref), np.signbit(m)), step
        flushed.append(not m_ref.any())
    assert flushed == [False, False, True, False, False, True, False]


def test_init_params_is_pytorch_s_linear_initialization():
    """U(-1/sqrt(in), 1/sqrt(in)) for a layer's weight (in, out) and for its bias."""
    params = ref.init_params(seed=0, x_dim=16, z_dim=2, hidden=(4,))
    bounds = [1 / np.sqrt(16)] * 2 + [1 / np.sqrt(4)] * 4 + [1 / np.sqrt(2)] * 2 + [1 / np.sqrt(4)] * 2
    assert [p.shape for p in params] == ref.param_shapes(x_dim=16, z_dim=2, hidden=(4,))
    for p, bound in zip(params, bounds):
        assert np.abs(p).max() <= bound and np.abs(p).max() > bound / 4


def test_adam_keeps_a_moment_of_exactly_the_smallest_normal_number():
    """Only entries below the smallest normal number are flushed (as minivae's Adam does)."""
    tiny = np.finfo(np.float32).tiny
    grad = np.full((2,), 2 * tiny, np.float32)  # (1 - 0.5) * 2 tiny = tiny, exactly
    tensor = mv.nn.Parameter(np.ones(2, np.float32))
    opt = optim.Adam([tensor], lr=0.01, betas=(0.5, 0.99), eps=1e-6, flush_every=1)
    r_opt = ref.ReferenceAdam([np.ones(2, np.float32)], lr=0.01, betas=(0.5, 0.99), eps=1e-6, flush_every=1)
    tensor.grad = grad.copy()
    opt.step()
    r_opt.step([grad])
    np.testing.assert_array_equal(r_opt.m[0], opt.state[0]["exp_avg"])
    assert (r_opt.m[0] == tiny).all()
