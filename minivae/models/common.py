"""Pieces the models share: MLPs, Gaussian heads, and the bounds built from log-weights.

Every model exposes ``log_weights(x, k, noise)``: the (k, B) array of importance log-weights
log p(x, h) - log q(h | x) for k latent samples h ~ q(h | x). The ELBO, the IWAE bound and the
importance-sampled log-likelihood of ``minivae.evaluate`` are all functions of it.
"""
import math

from .. import functional as F
from .. import nn


class MLP(nn.Module):
    """Dense layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with ``activation`` between them.

    ``final_activation`` also applies it after the last layer (for a trunk that feeds heads).
    """

    def __init__(self, sizes, activation="relu", final_activation=True, rng=None):
        super().__init__()
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            layers.append(nn.Linear(n_in, n_out, rng=rng))
            if final_activation or i < len(sizes) - 2:
                layers.append(nn.activation(activation))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        """Apply the layers in order."""
        return self.net(x)


class GaussianHead(nn.Module):
    """Two linear maps from features to the mean and log-variance of a diagonal Gaussian.

    The log-variance is unconstrained (variance = exp(logvar)): a softplus on it would force the
    variance above 1, a known bug of some implementations.
    """

    def __init__(self, n_in, n_out, rng=None):
        super().__init__()
        self.mu = nn.Linear(n_in, n_out, rng=rng)
        self.logvar = nn.Linear(n_in, n_out, rng=rng)

    def forward(self, h):
        """Return (mu, logvar)."""
        return self.mu(h), self.logvar(h)


def iwae_bound(log_w):
    """The k-sample importance-weighted bound log (1/k) sum_i w_i per example, from (k, B) log-weights.

    At k = 1 it is the single-sample ELBO itself (Burda et al. 2015).
    """
    return F.logsumexp(log_w, axis=0) - math.log(log_w.shape[0])
