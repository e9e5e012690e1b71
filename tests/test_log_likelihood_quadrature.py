"""The importance-sampled log-likelihood against log p(x) computed exactly, by quadrature.

``evaluate.log_likelihood`` averages importance weights w = p(x, h) / q(h | x) over k draws
h ~ q(h | x). Whatever q is, E_q[w] = p(x), so log mean(w) converges to log p(x) as k grows,
but only if log q is the density of the draws actually made and log p(x, h) is the density of
the model's generative process. The other tests compare ``log_weights`` with formulas written
from the same understanding as the code; they cannot see a draw that does not follow the
density its log q assigns it (a wrong scale in the sampling, a missing Jacobian term, a
posterior drawn from one Gaussian and scored under another). This test can: for models whose
latents are tiny (1 or 2 continuous dimensions in all, and a few labels or categories),
log p(x) is an integral or a sum small enough to compute directly:

* continuous latents by Gauss-Hermite quadrature in float64: an expectation under
  N(mu, diag e^logvar) is a weighted sum over the nodes mu + e^(logvar/2) t_i, nested for a
  hierarchy (over p(z2), then over p(z1 | z2) at every node of z2, so the inner nodes follow
  the conditional), and checked to have converged against twice the nodes;
* labels and categorical codes by an exact sum over all of them.

Only the model's generative networks are used (decoder logits for a given latent, the
(mu, logvar) of p(z1 | z2) or p(a | z) for a given parent; for M1+M2 also M1's encoder, for its
features); the densities (Bernoulli, Gaussian, the uniform priors of labels and codes) are
written here in NumPy. What is integrated is what each model's ``estimated_log_likelihood``
names: log p(x), and for M1+M2 log p(z1) of M1's mean features under its M2. Every model is
covered; none needed skipping:

* vae (z of 1 and of 2 dimensions), one-layer iwae: int p(x | z) p(z) dz;
* two-layer iwae and ladder (the same generative model; only q differs):
  int int p(x | z1) p(z1 | z2) p(z2) dz1 dz2, nested;
* flow: the VAE's integral, in 2-D (the planar flows change q, not the model);
* adgm: int p(x | z) p(z) dz (its p(a | x, z) integrates to 1 over the auxiliary a);
* sdgm: int int p(x | a, z) p(a | z) p(z) da dz, nested (a is a layer of its generative model);
* gumbel: the discrete model that its evaluation scores, sum_c p(c) p(x | c) over all 9 codes
  (2 variables of 3 classes);
* m2 and adgm-ssl: sum_y p(y) int p(x | y, z) p(z) dz over 3 labels;
* sdgm-ssl: sum_y p(y) int int p(x | a, z, y) p(a | z, y) p(z) da dz;
* ladder-m2: sum_y p(y) int int p(x | z1, y) p(z1 | z2, y) p(z2) dz1 dz2;
* m1m2: log p(z1) = sum_y p(y) int N(z1; m(y, z2), diag e^s(y, z2)) p(z2) dz2 at z1 = M1's mean.

The estimate with k samples must lie within 4 standard errors plus 1e-3 of the exact value, the
standard error from the weights themselves by the delta method, SE = std(w) / (sqrt(k) mean(w)).
The estimator is biased low by about SE^2 / 2: each check asserts that this is a small part of
the tolerance, and that no single weight dominates (a heavy-tailed weight distribution would
make the SE itself unreliable).

The models are small (10 pixels, hidden layers of 8) and adjusted in three ways that make the
check sharper without changing any code path: tanh units, so the integrands are smooth and
Gauss-Hermite converges fast; the output layers of the image likelihoods scaled up, so p(x | .)
depends strongly on the latents (at its initial scale the posterior is almost the prior); and
the log-variances of q shifted up, so q is wider than the posterior and the weights have a
small, finite variance.
"""
import zlib

import numpy as np
import pytest

import minivae as mv
from minivae.evaluate import log_likelihood
from minivae.nn import evaluating
from minivae.models import build_model
from minivae.random import Generator

X_DIM, HIDDEN, N_IMAGES = 10, (8,), 3
#: Gauss-Hermite nodes per dimension; the integrals are recomputed with twice as many and
#: must agree to QUADRATURE_TOL.
NODES, QUADRATURE_TOL = 64, 1e-5
#: Importance samples of the estimate.
K_SAMPLES = 100_000
#: The tolerance is Z_TOL standard errors plus ABS_TOL.
Z_TOL, ABS_TOL = 4.0, 1e-3
#: The largest share of the total weight one sample may have: above it the SE is not trusted.
MAX_WEIGHT_SHARE = 0.01
#: The factor on the weights of the image likelihoods' output layers.
SHARPEN = 4.0
#: What is added to the log-variance bias of q's Gaussian heads.
WIDEN = 2.0


# ----- densities, in NumPy float64 --------------------------------------------------------------
def log_bernoulli(logits, x):
    """log p(x | logits) of binary x, summed over pixels: x l - log(1 + e^l)."""
    return (x * logits - np.logaddexp(0.0, logits)).sum(axis=-1)


def log_normal(z, mu, logvar):
    """log N(z; mu, diag e^logvar), summed over the last axis."""
    return -0.5 * (np.log(2 * np.pi) + logvar + (z - mu) ** 2 * np.exp(-logvar)).sum(axis=-1)


def logsumexp(a, axis=0):
    """log sum exp(a) along ``axis`` without overflow."""
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def gauss_hermite(n, d):
    """Nodes (n^d, d) and log-weights (n^d,) of the tensor-product Gauss-Hermite rule for an
    expectation under N(0, I_d): E f(t) ~ sum_i exp(logw_i) f(t_i)."""
    t, w = np.polynomial.hermite_e.hermegauss(n)
    logw = np.log(w / np.sqrt(2 * np.pi))
    nodes = np.stack(np.meshgrid(*[t] * d, indexing="ij"), axis=-1).reshape(-1, d)
    logws = sum(np.meshgrid(*[logw] * d, indexing="ij")).reshape(-1)
    return nodes, logws


def log_expect_normal(log_f, mu, logvar, n):
    """log E_{z ~ N(mu, diag e^logvar)} exp(log_f(z)) by Gauss-Hermite with n nodes per dimension.

    ``mu`` and ``logvar`` are (..., d); ``log_f`` receives z of shape (n^d, ..., d) (the nodes
    lead, scaled and shifted to the Gaussian) and returns (n^d, ...); the node axis is summed out.
    """
    nodes, logw = gauss_hermite(n, np.shape(mu)[-1])
    nodes = nodes.reshape((len(nodes),) + (1,) * (np.ndim(mu) - 1) + nodes.shape[-1:])
    values = log_f(mu + np.exp(0.5 * np.asarray(logvar)) * nodes)
    return logsumexp(logw.reshape((-1,) + (1,) * (values.ndim - 1)) + values, axis=0)


def net(fn, *arrays):
    """Call a model's network on float64 arrays; return float64 arrays (one, or a tuple)."""
    out = fn(*[mv.tensor(np.asarray(a, dtype=np.float64)) for a in arrays])
    return tuple(o.data for o in out) if isinstance(out, tuple) else out.data


def images_log_lik(logits, x):
    """log p(x_b | logits) for every image x_b of the batch: a trailing axis of B is added."""
    return log_bernoulli(logits[..., None, :], x)


def log_marginal(log_lik, d):
    """log E_{z ~ N(0, I_d)} p(x | z) = log int p(x | z) p(z) dz, for ``log_lik(z)`` -> (..., B)."""
    return lambda n: log_expect_normal(log_lik, np.zeros(d), np.zeros(d), n)


def log_marginal_nested(conditional, log_lik):
    """log int int p(x | u, z) p(u | z) N(z; 0, 1) du dz (u and z 1-D): Gauss-Hermite over z, and
    at every node of z over u ~ p(u | z) = N(``conditional(z)``), so the inner nodes follow the
    conditional wherever it sits. ``log_lik(u, z)`` -> (..., B)."""
    def at(n):
        def given_z(z):  # z: (n, 1), the outer nodes
            mu, logvar = conditional(z)
            return log_expect_normal(lambda u: log_lik(u, z), mu, logvar, n)
        return log_expect_normal(given_z, np.zeros(1), np.zeros(1), n)
    return at


def sum_over_labels(per_label, num_classes):
    """log sum_y p(y) p(x | y) with p(y) = 1/K, from ``per_label(y)`` -> a function of the node
    count giving log p(x | y); y is one-hot, shape (1, K), broadcasting against the nodes."""
    def at(n):
        labels = np.eye(num_classes)[:, None, :]
        return logsumexp(np.stack([per_label(y)(n) for y in labels]), axis=0) - np.log(num_classes)
    return at


# ----- each model's exact log-likelihood ---------------------------------------------------------
# Each takes (model, x) and returns a function of the node count n giving log p(x) (for M1+M2
# log p(z1)), shape (B,). Latents carry a trailing batch axis only from the likelihood on: the
# prior side of a generative model does not depend on x.
def decoder_only(model, x):
    """int p(x | z) p(z) dz with ``model.decode(z)`` -> logits: the VAE, the IWAE, the flows
    (which change q, not the model) and the ADGM (its p(a | x, z) integrates to 1 over a)."""
    return log_marginal(lambda z: images_log_lik(net(model.decode, z), x), model.z_dim)


def top_down_two_layer(model, x):
    """int int p(x | z1) p(z1 | z2) p(z2) dz1 dz2 of a ``TopDownGenerator`` (two-layer IWAE,
    Ladder VAE)."""
    g = model.generator
    return log_marginal_nested(lambda z2: net(lambda z: g.prior(0, z), z2),
                               lambda z1, z2: images_log_lik(net(g.logits, z1), x))


def sdgm(model, x):
    """int int p(x | a, z) p(a | z) p(z) da dz: in the SDGM a is a stochastic layer of the
    generative model (the skip connection z -> x)."""
    def p_a(z):
        return net(lambda z_: model.p_a(model.p_a_net(z_)), z)

    def log_lik(a, z):
        return images_log_lik(net(lambda z_, a_: model.decode(z_, a=a_), z, a), x)
    return log_marginal_nested(p_a, log_lik)


def m2(model, x):
    """sum_y p(y) int p(x | y, z) p(z) dz: M2, and the semi-supervised ADGM, whose
    p(a | x, y, z) integrates to 1 over a."""
    return sum_over_labels(lambda y: log_marginal(
        lambda z: images_log_lik(net(model.decode, z, y), x), model.z_dim), model.num_classes)


def sdgm_ssl(model, x):
    """sum_y p(y) int int p(x | a, z, y) p(a | z, y) p(z) da dz."""
    return sum_over_labels(lambda y: log_marginal_nested(
        lambda z: net(lambda z_, y_: model.p_a(model.p_a_net(z_, y_)), z, y),
        lambda a, z: images_log_lik(net(model.decode, z, y, a), x)), model.num_classes)


def ladder_m2(model, x):
    """sum_y p(y) int int p(x | z1, y) p(z1 | z2, y) p(z2) dz1 dz2."""
    return sum_over_labels(lambda y: log_marginal_nested(
        lambda z2: net(lambda z_, y_: model.prior(0, z_, y_), z2, y),
        lambda z1, z2: images_log_lik(net(model.logits, z1, y), x)), model.num_classes)


def m1m2(model, x):
    """log p(z1) under M2 at M1's mean features z1 = E[z1 | x] (what M1+M2 estimates):
    sum_y p(y) int N(z1; m(y, z2), diag e^s(y, z2)) p(z2) dz2."""
    features = net(lambda x_: model.m1.encode(x_)[0], x)  # (B, d1)

    def log_lik(z2, y):
        mean, logvar = net(model.m2.decode, z2, y)
        return log_normal(features, mean[..., None, :], logvar[..., None, :])
    return sum_over_labels(lambda y: log_marginal(lambda z2: log_lik(z2, y), model.z_dim),
                           model.num_classes)


def gumbel(model, x):
    """The discrete model that the Gumbel-softmax VAE's evaluation scores: sum_c p(c) p(x | c)
    over all n_classes^n_vars one-hot codes c, p(c) uniform. Exact: the node count is ignored."""
    v, c = model.n_vars, model.n_classes
    codes = np.stack(np.meshgrid(*[np.arange(c)] * v, indexing="ij"), axis=-1).reshape(-1, v)
    log_lik = images_log_lik(net(model.decode, np.eye(c)[codes]), x)  # codes (c^v, v, c)
    return lambda n: logsumexp(log_lik, axis=0) - v * np.log(c)


TANH = dict(x_dim=X_DIM, hidden=HIDDEN, activation="tanh")
LADDER = dict(x_dim=X_DIM, hidden=(8, 6), z_dims=(1, 1), activation="tanh")
#: case -> (registered model, its settings, its exact log-likelihood).
CASES = {
    "vae-1d": ("vae", dict(TANH, z_dim=1), decoder_only),
    "vae-2d": ("vae", dict(TANH, z_dim=2), decoder_only),
    # the one-layer IWAE is VAE(iw_k=k): the same weights, on another network size
    "iwae-1-layer": ("iwae", dict(TANH, z_dim=1, hidden=(6,), k=5), decoder_only),
    "iwae-2-layers": ("iwae", dict(TANH, layers=2, z1_dim=1, z_dim=1, hidden2=(6,), k=5), top_down_two_layer),
    "ladder": ("ladder", LADDER, top_down_two_layer),
    "flow": ("flow", dict(TANH, z_dim=2, flows=3), decoder_only),
    "adgm": ("adgm", dict(TANH, z_dim=1, a_dim=2), decoder_only),
    "sdgm": ("sdgm", dict(TANH, z_dim=1, a_dim=1), sdgm),
    "gumbel": ("gumbel", dict(TANH, n_vars=2, n_classes=3), gumbel),
    "m2": ("m2", dict(TANH, z_dim=1, num_classes=3), m2),
    "adgm-ssl": ("adgm-ssl", dict(TANH, z_dim=1, a_dim=2, num_classes=3), m2),
    "sdgm-ssl": ("sdgm-ssl", dict(TANH, z_dim=1, a_dim=1, num_classes=3), sdgm_ssl),
    "ladder-m2": ("ladder-m2", dict(LADDER, num_classes=3), ladder_m2),
    "m1m2": ("m1m2", dict(hidden=HIDDEN, activation="tanh", z_dim=1, num_classes=3,
                          m1=dict(x_dim=X_DIM, z_dim=2, hidden=HIDDEN, activation="tanh")), m1m2),
}


def build(case):
    """The small float64 model of ``case``, sharpened and widened (see the module docstring)."""
    name, settings, _ = CASES[case]
    mv.nn.init.manual_seed(0)  # M1+M2 builds its M1 with the global initializer
    model = build_model(name, **settings, rng=np.random.default_rng(0)).astype(np.float64)
    # Sharpen p(x | .): at its initial scale the decoder barely depends on the latents, and a
    # latent fed to the wrong place would go unseen. The output layers of the image
    # likelihoods are the only layers X_DIM wide.
    for module in model.modules():
        if isinstance(module, mv.nn.Linear) and module.out_features == X_DIM:
            module.weight.data *= SHARPEN
    # Widen q: the weights have finite variance only where q's tails are heavier than the
    # posterior's (a Gaussian q needs more than half its variance). It matters most for the
    # ladders, whose precision-weighted q(z1 | .) is always narrower than p(z1 | z2), and for
    # the flows, which shift q's tails. The inference heads are q_* (up_heads in a ladder).
    for param_name, param in model.named_parameters():
        parts = param_name.split(".")
        if parts[-2:] == ["logvar", "bias"] and any(p.startswith("q_") or p == "up_heads" for p in parts):
            param.data += WIDEN
    return model


def images():
    """N_IMAGES fixed binary images."""
    return (np.random.default_rng(1).random((N_IMAGES, X_DIM)) < 0.5).astype(np.float64)


def estimate(model, x, k, seed):
    """``log_likelihood`` with k samples in one chunk, and the (k, B) log-weights it averaged."""
    recorded, log_weights = [], model.log_weights

    def recording(xb, kc, noise):
        out = log_weights(xb, kc, noise)
        recorded.append(out.data.copy())
        return out

    model.log_weights = recording  # an instance attribute, shadowing the method for this call
    try:
        est = log_likelihood(model, x, k=k, noise=Generator(seed), batch_size=len(x), chunk_rows=k * len(x))
    finally:
        del model.log_weights
    return est, np.concatenate(recorded, axis=0)


@pytest.mark.parametrize("case", list(CASES))
def test_importance_sampled_log_likelihood_converges_to_the_exact_one(case):
    """``log_likelihood`` with K_SAMPLES samples agrees with log p(x) by quadrature (or exact
    sums) within 4 standard errors + 1e-3 on three images; the quadrature has converged, the
    weights are not dominated by one sample, and the estimator's bias is a small part of the
    tolerance."""
    model, exact = build(case), CASES[case][2]
    x = images()
    with evaluating(model):  # eval mode, as log_likelihood runs the model (batch norm)
        exact_at = exact(model, x)
        coarse, fine = exact_at(NODES), exact_at(2 * NODES)
    np.testing.assert_allclose(coarse, fine, rtol=0, atol=QUADRATURE_TOL, err_msg="quadrature not converged")

    est, log_w = estimate(model, x, K_SAMPLES, seed=zlib.crc32(case.encode()))
    assert log_w.shape == (K_SAMPLES, N_IMAGES)
    w = np.exp(log_w - est)  # the weights over their mean: the recorded weights are the ones averaged
    np.testing.assert_allclose(w.mean(axis=0), 1.0, rtol=1e-9)
    assert (w.max(axis=0) / w.sum(axis=0) < MAX_WEIGHT_SHARE).all(), "one sample dominates"
    se = w.std(axis=0, ddof=1) / np.sqrt(K_SAMPLES)  # of log mean(w), by the delta method
    tolerance = Z_TOL * se + ABS_TOL
    assert (se ** 2 / 2 < 0.1 * tolerance).all(), f"the bias {se ** 2 / 2} is not small: SE {se}"
    assert (np.abs(est - fine) < tolerance).all(), (
        f"{case}: estimate {est} vs exact {fine}: |difference| {np.abs(est - fine)} "
        f"above the tolerance {tolerance} (SE {se})")
