"""Log-densities for the models, as thin wrappers over the fused ops of ``minivae.functional``.

Every ``log_*`` function sums over the last axis (the per-row convention of the fused ops):
(B, D) inputs give one value per example, shape (B,), and (S, B, D) inputs (S Monte Carlo or
importance samples per example) give (S, B); inputs broadcast against each other. The math and
the gradients live in the ops (``GaussianLogProb``, ``BernoulliLogProb``, ``KLNormalStd``, ...);
nothing is recomputed here.
"""
import math

import numpy as np

from . import functional as F
from .autograd import Tensor
from .backend import get_default_dtype, to_device


def log_standard_normal(z):
    """log N(z; 0, I) per row = -1/2 sum_j (log 2 pi + z_j^2)."""
    return F.gaussian_log_prob(z, 0.0, 0.0)


def log_normal(z, mu, logvar):
    """log N(z; mu, diag(e^logvar)) per row (``F.gaussian_log_prob``)."""
    return F.gaussian_log_prob(z, mu, logvar)


def log_bernoulli_logits(x, logits):
    """log Bernoulli(x; sigmoid(logits)) per row = sum_j [x_j l_j - softplus(l_j)] (stable;
    ``F.bernoulli_log_prob``). ``x`` may be binary or a probability in [0, 1]."""
    return F.bernoulli_log_prob(logits, x)


def log_categorical(y_onehot, logits):
    """log Cat(y; softmax(logits)) per row = sum_k y_k log_softmax(logits)_k, classes on the last
    axis (log-softmax, never log(softmax), which underflows)."""
    return F.sum(y_onehot * F.log_softmax(logits, axis=-1), axis=-1)


def log_uniform_categorical(batch_size, num_classes, dtype=None, device="cpu"):
    """The uniform prior over ``num_classes`` classes: a constant vector of -log K, shape (B,)."""
    dtype = np.dtype(get_default_dtype() if dtype is None else dtype)
    value = np.full(int(batch_size), -math.log(num_classes), dtype=dtype)
    return Tensor(to_device(value, device))


def kl_normal_std(mu, logvar):
    """KL(N(mu, e^logvar) || N(0, I)) per row, in closed form (``F.kl_normal_std``)."""
    return F.kl_normal_std(mu, logvar)


def kl_normal_normal(mu_q, logvar_q, mu_p, logvar_p):
    """KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)) per row, in closed form."""
    return F.kl_normal_normal(mu_q, logvar_q, mu_p, logvar_p)


class Normal:
    """A diagonal Gaussian N(mu, diag(e^logvar)), parameterized by its log-variance."""

    def __init__(self, mu, logvar):
        self.mu, self.logvar = mu, logvar

    @property
    def std(self):
        """e^(logvar / 2)."""
        return F.exp(self.logvar * 0.5)

    def log_prob(self, x):
        """log N(x; mu, e^logvar) per row."""
        return log_normal(x, self.mu, self.logvar)

    def rsample(self, eps):
        """mu + e^(logvar/2) * eps: a sample differentiable in (mu, logvar), given eps ~ N(0, I)."""
        return F.reparameterize(self.mu, self.logvar, eps)

    def kl(self, other):
        """KL(self || other) per row; ``other`` is a Normal or a StandardNormal."""
        if isinstance(other, StandardNormal):
            return self.kl_std()
        return kl_normal_normal(self.mu, self.logvar, other.mu, other.logvar)

    def kl_std(self):
        """KL(self || N(0, I)) per row."""
        return kl_normal_std(self.mu, self.logvar)


class StandardNormal:
    """N(0, I): the VAE prior."""

    def log_prob(self, z):
        """log N(z; 0, I) per row."""
        return log_standard_normal(z)


class Bernoulli:
    """Independent Bernoulli variables with probabilities sigmoid(logits)."""

    def __init__(self, logits):
        self.logits = logits

    @property
    def probs(self):
        """sigmoid(logits): the mean."""
        return F.sigmoid(self.logits)

    def log_prob(self, x):
        """log p(x) per row."""
        return log_bernoulli_logits(x, self.logits)


class Categorical:
    """A categorical distribution over the last axis with probabilities softmax(logits)."""

    def __init__(self, logits):
        self.logits = logits

    @property
    def probs(self):
        """softmax(logits) over the last axis."""
        return F.softmax(self.logits, axis=-1)

    def log_prob(self, y_onehot):
        """log p(y) per row, for one-hot (or soft) labels ``y_onehot``."""
        return log_categorical(y_onehot, self.logits)
