"""Latent statistics of a trained model: KL per latent dimension and active units.

Posterior collapse shows in these numbers: a latent dimension whose posterior mean no longer
varies with x carries no information (its KL from the prior is ~0). The trainer logs
``latent_summary`` per epoch (``encoded_gaussian``, ``active_units``, ``kl_per_dim`` in
``metrics.jsonl``), and ``minivae.viz`` draws the same statistics. They describe the one
Gaussian that ``model.encode`` returns: the posterior of a VAE, but only a part of the
posterior of a model with flows or several layers (``Model.encoded_gaussian`` names it).
Everything here is plain NumPy once the Gaussian's parameters are computed.
"""
import numpy as np

from .autograd import tensor
from .backend import to_device
from .checks import NON_NEGATIVE, check_integer, check_points, check_ranges
from .evaluate import as_model_input, host_array
from .models.base import require
from .nn import evaluating

# Activity threshold of Burda et al. 2015 (IWAE paper, section 5.2): a latent unit u is active
# when Cov_x(E_{q(u|x)}[u]) > 1e-2.
ACTIVE_UNIT_THRESHOLD = 1e-2


def kl_per_dimension(mu, logvar):
    """Mean over examples of KL(q(z_d | x) || N(0, 1)) for each latent dimension d, shape (D,).

    Per example and dimension KL = 0.5 * (mu^2 + exp(logvar) - 1 - logvar) (closed form for a
    diagonal Gaussian against the standard normal); the sum over d of the result is the mean
    KL(q(z | x) || N(0, I)), the ELBO's KL term when q is a VAE's posterior. A dimension with
    KL near 0 carries no information about x (posterior collapse). ``mu`` and ``logvar`` are
    (N, D) arrays (NumPy or CuPy, a Tensor, or anything ``np.asarray`` takes: ``host_array``).
    exp(logvar) - 1 is expm1(logvar), as in ``kl_normal_std``: a collapsed dimension's KL, where
    exp(logvar) - 1 - logvar cancels, is then a few ulp(logvar) from its value, never negative.
    """
    mu = np.asarray(host_array(mu, "mu"), dtype=np.float64)
    logvar = np.asarray(host_array(logvar, "logvar"), dtype=np.float64)
    if mu.shape != logvar.shape or mu.ndim != 2 or len(mu) == 0:
        raise ValueError(f"mu and logvar must both be (N, D) with N >= 1, got {mu.shape} and {logvar.shape}")
    return (0.5 * (mu ** 2 + (np.expm1(logvar) - logvar))).mean(axis=0)


def latent_activity(mu):
    """Per-dimension activity Cov_x(E_q[z_d | x]) of Burda et al. 2015, shape (D,).

    ``mu`` is the (N, D) matrix of posterior means over a data set (NumPy or CuPy, a Tensor, or
    anything ``np.asarray`` takes: ``host_array``); the activity of dimension d is the variance
    of column d over the examples (normalized by N, the population variance).
    """
    mu = np.asarray(host_array(mu, "mu"), dtype=np.float64)
    check_points(mu, "mu")  # over no examples: NaN, and no unit active
    return mu.var(axis=0)


def active_units(mu, threshold=ACTIVE_UNIT_THRESHOLD):
    """The number of active latent units: dimensions whose activity ``latent_activity(mu)`` exceeds
    ``threshold`` (1e-2 as in Burda et al. 2015). ``mu`` is the (N, D) matrix of posterior means;
    ``threshold`` a real number >= 0 and finite (``check_ranges``)."""
    # A NaN threshold is exceeded by no activity: 0 active units, as if the posterior had collapsed.
    check_ranges(active_units, {"threshold": NON_NEGATIVE}, threshold=threshold)
    return int((latent_activity(mu) > threshold).sum())


def encode_dataset(model, x, batch_size=500):
    """(mu, logvar) of ``model.encode`` for every row of ``x``, as float64 NumPy (N, D): the
    Gaussian that ``model.encoded_gaussian`` names (``model.gaussian_encoder``). Runs in eval mode
    without recording a graph (``minivae.nn.evaluating``). ``batch_size`` is an integer of
    at least 1.
    """
    require(model, "gaussian_encoder", "latent statistics (encode(x) -> (mu, logvar))")
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    x = as_model_input(model, x)
    device = next(iter(model.parameters())).device
    mus, logvars = [], []
    with evaluating(model):
        for start in range(0, len(x), batch_size):
            mu, logvar = model.encode(tensor(to_device(x[start:start + batch_size], device)))
            mus.append(mu.numpy().astype(np.float64))
            logvars.append(logvar.numpy().astype(np.float64))
    return np.concatenate(mus), np.concatenate(logvars)


def latent_summary(model, x, batch_size=500, threshold=ACTIVE_UNIT_THRESHOLD):
    """Posterior-collapse summary of ``model`` on the data ``x`` (an (N, x_dim) NumPy array):
    ``{"encoded_gaussian": str, "active_units": int, "kl_per_dim": [float, ...]}``.

    q is the Gaussian that ``model.encode`` returns, named by ``encoded_gaussian`` (the model's
    ``encoded_gaussian``). ``kl_per_dim[d]`` is the mean over x of KL(q(z_d | .) || N(0, 1));
    ``active_units`` counts the dimensions d with Cov_x(E_q[z_d]) > ``threshold`` (Burda et
    al. 2015). For a VAE q is the posterior q(z | x) and ``kl_per_dim`` sums to the ELBO's KL
    term; for a model with flows it is the Gaussian before the flows, for one with several
    layers the top layer's, and the sum is that Gaussian's KL from N(0, I), not the ELBO's KL
    term. The model is run in eval mode without a graph; a few thousand examples give a
    stable count. ``threshold`` is checked as ``active_units`` checks it, before the encoding.
    """
    check_ranges(latent_summary, {"threshold": NON_NEGATIVE}, threshold=threshold)
    mu, logvar = encode_dataset(model, x, batch_size=batch_size)
    return {"encoded_gaussian": model.encoded_gaussian,
            "active_units": active_units(mu, threshold),
            "kl_per_dim": [float(v) for v in kl_per_dimension(mu, logvar)]}
