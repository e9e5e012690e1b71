"""A whole small VAE loss: engine gradients against finite differences and against an independent
hand-written NumPy forward/backward of the same loss.

Encoder: x -> tanh(x W1 + b1) -> [mu | logvar] = h W2 + b2 (two linear layers).
Decoder: z = mu + exp(logvar / 2) eps (eps fixed) -> tanh(z W3 + b3) -> logits = h W4 + b4.
Loss: mean over the batch of -log p(x | z) (Bernoulli on logits) + KL(q(z | x) || N(0, I)).
"""
import numpy as np
import pytest

from minivae import Tensor
from minivae import functional as F
from minivae.gradcheck import check_float32, gradcheck

B, D, H, Z = 4, 6, 5, 2
NAMES = ["W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4"]
SHAPES = [(D, H), (H,), (H, 2 * Z), (2 * Z,), (Z, H), (H,), (H, D), (D,)]


@pytest.fixture
def problem():
    rng = np.random.default_rng(7)
    x = (rng.uniform(size=(B, D)) < 0.5).astype(np.float64)
    eps = rng.standard_normal((B, Z))
    params = [rng.normal(0, 0.6, s) for s in SHAPES]
    return x, eps, params


def vae_loss(x, eps, W1, b1, W2, b2, W3, b3, W4, b4):
    """The loss on the engine (x and eps are constant tensors)."""
    h = F.tanh(F.linear(x, W1, b1))
    stats = F.linear(h, W2, b2)
    mu, logvar = stats[:, :Z], stats[:, Z:]
    z = F.reparameterize(mu, logvar, eps)
    logits = F.linear(F.tanh(F.linear(z, W3, b3)), W4, b4)
    return (-F.bernoulli_log_prob(logits, x) + F.kl_normal_std(mu, logvar)).mean()


def numpy_loss_and_grads(x, eps, W1, b1, W2, b2, W3, b3, W4, b4):
    """The same loss and its gradient, derived by hand in plain NumPy (no engine code)."""
    # forward
    h1 = np.tanh(x @ W1 + b1)
    o = h1 @ W2 + b2
    mu, lv = o[:, :Z], o[:, Z:]
    std = np.exp(lv / 2)
    z = mu + std * eps
    h3 = np.tanh(z @ W3 + b3)
    logits = h3 @ W4 + b4
    softplus = np.logaddexp(0, logits)
    rec = (x * logits - softplus).sum(axis=1)
    kl = 0.5 * (mu**2 + np.exp(lv) - 1 - lv).sum(axis=1)
    loss = (kl - rec).mean()
    # backward
    d_logits = (1 / (1 + np.exp(-logits)) - x) / B
    dW4, db4 = h3.T @ d_logits, d_logits.sum(0)
    d_a3 = (d_logits @ W4.T) * (1 - h3**2)
    dW3, db3 = z.T @ d_a3, d_a3.sum(0)
    dz = d_a3 @ W3.T
    d_mu = dz + mu / B
    d_lv = dz * eps * std / 2 + (np.exp(lv) - 1) / (2 * B)
    d_o = np.concatenate([d_mu, d_lv], axis=1)
    dW2, db2 = h1.T @ d_o, d_o.sum(0)
    d_a1 = (d_o @ W2.T) * (1 - h1**2)
    dW1, db1 = x.T @ d_a1, d_a1.sum(0)
    return loss, [dW1, db1, dW2, db2, dW3, db3, dW4, db4]


def test_vae_loss_gradient_matches_finite_differences(problem):
    x, eps, params = problem
    inputs = [Tensor(x), Tensor(eps)] + [Tensor(p, requires_grad=True) for p in params]
    assert gradcheck(vae_loss, *inputs)


def test_vae_loss_gradient_matches_handwritten_numpy(problem):
    x, eps, params = problem
    tensors = [Tensor(p, requires_grad=True) for p in params]
    loss = vae_loss(Tensor(x), Tensor(eps), *tensors)
    loss.backward()
    ref_loss, ref_grads = numpy_loss_and_grads(x, eps, *params)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    for name, t, ref in zip(NAMES, tensors, ref_grads):
        np.testing.assert_allclose(t.grad, ref, rtol=1e-10, atol=1e-14, err_msg=name)


def test_vae_loss_float32_matches_float64(problem):
    x, eps, params = problem
    inputs = [Tensor(x), Tensor(eps)] + [Tensor(p, requires_grad=True) for p in params]
    assert check_float32(vae_loss, *inputs)


# ----- the fused reparameterization + KL op on the training path --------------------------------------
def _op_names(root):
    """The names of the ops in the graph of ``root`` (the Function or dispatch row of each node)."""
    names, seen, stack = [], set(), [root._node]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.append(node.fn.__name__)
        stack.extend(t._node for t in node.inputs)
    return names


@pytest.mark.parametrize("kwargs", [dict(), dict(mc_samples=3), dict(beta=4.0)])
def test_the_vae_training_loss_uses_reparameterize_kl(kwargs):
    """The training loss of the VAE (and of the two-layer VAE, the ADGM and the SDGM, for their
    layer with a N(0, I) prior) draws z and its KL from one ReparameterizeKL node (the op whose
    GPU form is the fused kernel pair), and no separate KL node."""
    from minivae.models import ADGM, SDGM, VAE
    from minivae.models.iwae import TwoLayerVAE
    from minivae.random import Generator

    x = Tensor((np.random.default_rng(0).uniform(size=(4, 12)) < 0.5).astype(np.float64))
    small = dict(x_dim=12, z_dim=3, hidden=(8,), **kwargs)
    for model in (VAE(**small), ADGM(**small), SDGM(**small),
                  TwoLayerVAE(x_dim=12, z_dims=(4, 3), blocks=((8,), (6,)), **kwargs)):
        loss, _ = model.astype(np.float64).loss(x, Generator(seed=3))
        names = _op_names(loss)
        assert names.count("ReparameterizeKL") == 1, (type(model).__name__, names)
        assert "KLNormalStd" not in names


@pytest.mark.parametrize("samples", [None, 1, 3, np.int64(2)])
def test_reparameterize_kl_equals_the_separate_ops_bit_for_bit(samples):
    """(z, kl) and both gradients equal reparameterize + kl_normal_std, to the last bit (float64),
    with S samples per row too; the KL stays one value per row."""
    from minivae.random import Noise

    rng = np.random.default_rng(1)
    mu0, lv0 = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    gz = rng.standard_normal((5, 4) if samples is None else (samples, 5, 4))
    gkl = rng.standard_normal(5)
    out = []
    for fused in (True, False):
        mu, lv = Tensor(mu0, requires_grad=True), Tensor(lv0, requires_grad=True)
        if fused:
            z, kl = F.reparameterize_kl(mu, lv, Noise(9, 2), samples=samples)
        else:
            shape = None if samples is None else (samples, 5, 4)
            z, kl = F.reparameterize(mu, lv, Noise(9, 2), shape=shape), F.kl_normal_std(mu, lv)
        ((z * Tensor(gz)).sum() + (kl * Tensor(gkl)).sum()).backward()
        out.append([z.data, kl.data, mu.grad, lv.grad])
    assert out[0][1].shape == (5,)
    for a, b in zip(*out):
        assert a.tobytes() == b.tobytes()


def test_reparameterize_kl_refuses_what_it_cannot_take():
    from minivae.random import Noise

    with pytest.raises(ValueError, match="one shape"):
        F.reparameterize_kl(Tensor(np.zeros((3, 2))), Tensor(np.zeros(2)), Noise(1))
    with pytest.raises(TypeError, match="Noise or Generator"):
        F.reparameterize_kl(Tensor(np.zeros((3, 2))), Tensor(np.zeros((3, 2))), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="reparameterize_kl: samples must be an integer, got 2.7"):
        F.reparameterize_kl(Tensor(np.zeros((3, 2))), Tensor(np.zeros((3, 2))), Noise(1), samples=2.7)


@pytest.mark.parametrize("samples, error", [(2.7, TypeError), (True, TypeError), (0, ValueError)])
def test_reparameterize_kl_refuses_samples_before_a_generator_draws(samples, error):
    """A refused call takes no draw from a Generator, as Generator.normal's, so the corrected
    call draws what it would have. (Before: the draw was taken first, and True drew one sample
    of shape (1, 3, 2).)"""
    from minivae.random import Generator

    mu = Tensor(np.zeros((3, 2)))
    generator = Generator(1)
    with pytest.raises(error, match="^reparameterize_kl: samples must be "):
        F.reparameterize_kl(mu, mu, generator, samples=samples)
    assert generator.offset == 0


@pytest.mark.parametrize("samples", [1, 3])
def test_the_vae_elbo_averages_the_reconstruction_over_its_samples(samples):
    """VAE(mc_samples=S).elbo: the reconstruction is the mean over the S draws z_s = mu +
    exp(logvar / 2) eps_s of sum_j [x_j l_j - softplus(l_j)], and the KL the analytic one, per
    example; the loss is the batch mean of beta KL - reconstruction. Against NumPy in float64
    from the same encoder, decoder and eps (the draw's normals)."""
    from minivae.models import VAE
    from minivae.random import Generator, Noise

    x = (np.random.default_rng(0).uniform(size=(4, 12)) < 0.5).astype(np.float64)
    model = VAE(x_dim=12, z_dim=3, hidden=(8,), beta=2.5, mc_samples=samples).astype(np.float64)
    rec, kl = model.elbo(Tensor(x), Generator(seed=3))
    loss, stats = model.loss(Tensor(x), Generator(seed=3))  # the first draw of each: Noise(seed=3)
    mu, logvar = (t.data for t in model.encode(Tensor(x)))
    eps = Noise(seed=3).normal((samples,) + mu.shape, dtype=np.float64)
    logits = model.decode(Tensor(mu + np.exp(logvar / 2) * eps)).data
    want_rec = (x * logits - np.logaddexp(0.0, logits)).sum(axis=-1).mean(axis=0)
    want_kl = 0.5 * (mu ** 2 + np.exp(logvar) - 1 - logvar).sum(axis=-1)
    np.testing.assert_allclose(rec.data, want_rec, rtol=1e-12)
    np.testing.assert_allclose(kl.data, want_kl, rtol=1e-12)
    np.testing.assert_allclose(loss.data, np.mean(2.5 * want_kl - want_rec), rtol=1e-12)
    np.testing.assert_allclose(stats["rec"], want_rec.mean(), rtol=1e-12)
