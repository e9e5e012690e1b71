"""The VAE hot path as single ops: reparameterization, analytic KLs and per-row log-likelihoods.

Per-row ops sum over the last axis: (B, D) inputs give (B,), and (S, B, D) inputs (S samples per
example) give (S, B). Inputs broadcast against each other like NumPy arrays.
Fusing each into one node keeps temporaries out of the graph and lets the GPU run one kernel.
"""
import math

from ..autograd import Function
from ..backend import get_array_module
from .elementwise import _sigmoid, _softplus

_LOG_2PI = math.log(2 * math.pi)


def _row_sum(a):
    """Sum over the last axis: one value per example (per sample and example for 3-D inputs)."""
    return a.sum(axis=-1)


def _per_row(g):
    """Give a per-row gradient a trailing size-1 axis so it broadcasts over the row."""
    return g[..., None]


class Reparameterize(Function):
    """reparameterize(mu, logvar, eps) = mu + exp(logvar / 2) * eps, the reparameterization trick.

    d/dmu = 1, d/dlogvar = exp(logvar / 2) * eps / 2 = (z - mu) / 2, d/deps = exp(logvar / 2).
    eps ~ N(0, I) is an input, so a sample is a deterministic, differentiable function of
    (mu, logvar).
    """

    @staticmethod
    def forward(ctx, mu, logvar, eps):
        std = get_array_module(logvar).exp(0.5 * logvar)
        noise = std * eps
        ctx.save(noise, std)
        return mu + noise

    @staticmethod
    def backward(ctx, g):
        noise, std = ctx.saved
        need_mu, need_logvar, need_eps = ctx.needs_input_grad
        return (g if need_mu else None,
                g * (0.5 * noise) if need_logvar else None,
                g * std if need_eps else None)


class KLNormalStd(Function):
    """kl_normal_std(mu, logvar) = KL(N(mu, e^logvar) || N(0, I)) per row
    = 1/2 * sum_j (mu_j^2 + e^logvar_j - 1 - logvar_j).

    d/dmu = mu, d/dlogvar = (e^logvar - 1) / 2 (times the row's upstream gradient).
    Analytic, never a Monte Carlo estimate: it has no variance.
    """

    @staticmethod
    def forward(ctx, mu, logvar):
        var = get_array_module(logvar).exp(logvar)
        ctx.save(mu, var)
        return 0.5 * _row_sum(mu * mu + var - 1 - logvar)

    @staticmethod
    def backward(ctx, g):
        mu, var = ctx.saved
        need_mu, need_logvar = ctx.needs_input_grad
        g = _per_row(g)
        return (g * mu if need_mu else None), (g * (0.5 * (var - 1)) if need_logvar else None)


class KLNormalNormal(Function):
    """kl_normal_normal(mu_q, logvar_q, mu_p, logvar_p) = KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p))
    per row = 1/2 * sum_j (logvar_p - logvar_q + (e^logvar_q + (mu_q - mu_p)^2) / e^logvar_p - 1).

    With d = mu_q - mu_p and r = (e^logvar_q + d^2) / e^logvar_p:
    d/dmu_q = d / e^logvar_p, d/dmu_p = -d / e^logvar_p,
    d/dlogvar_q = (e^logvar_q / e^logvar_p - 1) / 2, d/dlogvar_p = (1 - r) / 2.
    Divisions are written as multiplications by e^-logvar_p, computed once.
    """

    @staticmethod
    def forward(ctx, mu_q, logvar_q, mu_p, logvar_p):
        xp = get_array_module(mu_q, mu_p)
        inv_var_p = xp.exp(-logvar_p)
        ratio = xp.exp(logvar_q) * inv_var_p
        d = mu_q - mu_p
        r = ratio + d * d * inv_var_p
        ctx.save(d * inv_var_p, ratio, r)
        return 0.5 * _row_sum(logvar_p - logvar_q + r - 1)

    @staticmethod
    def backward(ctx, g):
        d_scaled, ratio, r = ctx.saved
        g = _per_row(g)
        need = ctx.needs_input_grad
        return (g * d_scaled if need[0] else None,
                g * (0.5 * (ratio - 1)) if need[1] else None,
                -g * d_scaled if need[2] else None,
                g * (0.5 * (1 - r)) if need[3] else None)


class BernoulliLogProb(Function):
    """bernoulli_log_prob(logits, x) = sum_j [x_j log sigmoid(l_j) + (1 - x_j) log sigmoid(-l_j)] per row
    = sum_j [x_j l_j - softplus(l_j)].

    d/dlogits = x - sigmoid(l), d/dx = l.
    Stable form: softplus(l) = max(l, 0) + log1p(e^-|l|), never log(sigmoid(l)), which is -inf
    for confident wrong logits.
    """

    @staticmethod
    def forward(ctx, logits, x):
        ctx.save(logits, x)
        return _row_sum(x * logits - _softplus(get_array_module(logits), logits))

    @staticmethod
    def backward(ctx, g):
        logits, x = ctx.saved
        need_l, need_x = ctx.needs_input_grad
        g = _per_row(g)
        return (g * (x - _sigmoid(get_array_module(g), logits)) if need_l else None,
                g * logits if need_x else None)


class GaussianLogProb(Function):
    """gaussian_log_prob(x, mu, logvar) = log N(x; mu, e^logvar) per row
    = -1/2 * sum_j [log(2 pi) + logvar_j + (x_j - mu_j)^2 e^-logvar_j].

    With s = (x - mu) e^-logvar: d/dx = -s, d/dmu = s, d/dlogvar = ((x - mu) s - 1) / 2.
    """

    @staticmethod
    def forward(ctx, x, mu, logvar):
        xp = get_array_module(x, mu)
        d = x - mu
        s = d * xp.exp(-logvar)
        ds = d * s
        ctx.save(s, ds)
        return -0.5 * _row_sum(_LOG_2PI + logvar + ds)

    @staticmethod
    def backward(ctx, g):
        s, ds = ctx.saved
        g = _per_row(g)
        need = ctx.needs_input_grad
        return (-g * s if need[0] else None,
                g * s if need[1] else None,
                g * (0.5 * (ds - 1)) if need[2] else None)


class BinaryCrossEntropyWithLogits(Function):
    """binary_cross_entropy_with_logits(l, x) = softplus(l) - x l, elementwise, then reduced
    ("mean", "sum" or "none").

    d/dl = sigmoid(l) - x, d/dx = -l (scaled by 1/n for "mean").
    Stable form: softplus through max(l, 0) + log1p(e^-|l|).
    """

    @staticmethod
    def forward(ctx, logits, x, reduction="mean"):
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"binary_cross_entropy_with_logits: reduction must be 'mean', 'sum' "
                             f"or 'none', got {reduction!r}")
        loss = _softplus(get_array_module(logits), logits) - x * logits
        ctx.save(logits, x)
        ctx.reduction = reduction
        if reduction == "none":
            return loss
        return loss.mean() if reduction == "mean" else loss.sum()

    @staticmethod
    def backward(ctx, g):
        logits, x = ctx.saved
        if ctx.reduction == "mean":
            g = g / logits.size
        need_l, need_x = ctx.needs_input_grad
        return (g * (_sigmoid(get_array_module(logits), logits) - x) if need_l else None,
                -g * logits if need_x else None)


reparameterize = Reparameterize.apply
kl_normal_std = KLNormalStd.apply
kl_normal_normal = KLNormalNormal.apply
bernoulli_log_prob = BernoulliLogProb.apply
gaussian_log_prob = GaussianLogProb.apply


def binary_cross_entropy_with_logits(logits, x, reduction="mean"):
    """Binary cross-entropy of targets ``x`` under Bernoulli ``logits`` (see the class)."""
    return BinaryCrossEntropyWithLogits.apply(logits, x, reduction=reduction)
