"""The VAE hot path as single ops: reparameterization, analytic KLs and per-row log-likelihoods.

Per-row ops sum over the last axis: (B, D) inputs give (B,), and (S, B, D) inputs (S samples per
example) give (S, B). Inputs broadcast against each other like NumPy arrays.
Fusing each into one node keeps temporaries out of the graph and lets the GPU run one kernel.
"""
import math

import numpy as np

from ..backend import get_array_module
from ..function import Function
from ..random import Generator, Noise
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


def _gpu():
    """minivae.gpu (the CUDA kernels); imported only on the GPU path, so CuPy stays optional."""
    from .. import gpu

    return gpu


class ReparameterizeNoise(Function):
    """reparameterize(mu, logvar, noise) = mu + exp(logvar / 2) * eps, eps the standard normals of
    the counter-addressed draw ``noise`` (a minivae.random.Noise), of shape ``shape`` (default: the
    broadcast shape of mu and logvar; (S, B, D) from (B, D) parameters draws S samples).

    d/dmu = 1, d/dlogvar = exp(logvar / 2) * eps / 2. eps is not an input (no gradient).
    GPU: one kernel generates eps in registers from (seed, offset, stream, element index) and the
    backward kernel regenerates it from the same address, so eps is never stored. CPU: eps comes
    from the NumPy twin (the same Philox words, so the same eps to float rounding) and
    exp(logvar / 2) * eps is saved, as in Reparameterize.
    """

    @staticmethod
    def forward(ctx, mu, logvar, noise=None, shape=None):
        xp = get_array_module(mu, logvar)
        shape = np.broadcast_shapes(mu.shape, logvar.shape, () if shape is None else tuple(shape))
        ctx.noise = noise
        if xp is not np:
            lv = xp.ascontiguousarray(xp.broadcast_to(logvar, shape))
            ctx.save(lv)
            return _gpu().reparameterize_forward(xp.ascontiguousarray(xp.broadcast_to(mu, shape)), lv,
                                                 noise.seed, noise.offset, noise.stream)
        scaled = noise.normal(shape, dtype=mu.dtype)  # a fresh array of the full shape
        scaled *= np.exp(0.5 * logvar)
        ctx.save(scaled)
        return mu + scaled

    @staticmethod
    def backward(ctx, g):
        need_mu, need_logvar = ctx.needs_input_grad
        (saved,) = ctx.saved
        if not need_logvar:
            return g, None
        if get_array_module(g) is not np:
            n = ctx.noise
            _, dlogvar = _gpu().reparameterize_backward(g, saved, n.seed, n.offset, n.stream)
        else:
            dlogvar = g * (0.5 * saved)
        return (g if need_mu else None), dlogvar


class KLNormalStd(Function):
    """kl_normal_std(mu, logvar) = KL(N(mu, e^logvar) || N(0, I)) per row
    = 1/2 * sum_j (mu_j^2 + e^logvar_j - 1 - logvar_j).

    d/dmu = mu, d/dlogvar = (e^logvar - 1) / 2 (times the row's upstream gradient).
    Analytic, never a Monte Carlo estimate: it has no variance.
    """

    @staticmethod
    def forward(ctx, mu, logvar):
        xp = get_array_module(mu, logvar)
        ctx.gpu = xp is not np and mu.shape == logvar.shape and mu.ndim >= 1
        if ctx.gpu:  # one block-level reduction per row (kernels/kl.cu)
            ctx.save(mu, logvar)
            return _gpu().kl_normal_std_forward(mu, logvar)
        var = xp.exp(logvar)
        ctx.save(mu, var)
        terms = xp.add(mu * mu, var)  # mu^2 + var - 1 - logvar, left to right, the rest in place
        terms -= 1
        terms -= logvar
        return 0.5 * _row_sum(terms)

    @staticmethod
    def backward(ctx, g):
        need_mu, need_logvar = ctx.needs_input_grad
        if ctx.gpu:
            mu, logvar = ctx.saved
            dmu, dlogvar = _gpu().kl_normal_std_backward(g, mu, logvar)
            return (dmu if need_mu else None), (dlogvar if need_logvar else None)
        mu, var = ctx.saved
        g = _per_row(g)
        dlogvar = None
        if need_logvar:  # g * (0.5 * (var - 1)), one temporary fewer
            half = var - 1
            half *= 0.5
            dlogvar = g * half
        return (g * mu if need_mu else None), dlogvar


class KLNormalNormal(Function):
    """kl_normal_normal(mu_q, logvar_q, mu_p, logvar_p) = KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p))
    per row = 1/2 * sum_j (logvar_p - logvar_q + (e^logvar_q + (mu_q - mu_p)^2) / e^logvar_p - 1).

    With d = mu_q - mu_p and r = (e^logvar_q + d^2) / e^logvar_p:
    d/dmu_q = d / e^logvar_p, d/dmu_p = -d / e^logvar_p,
    d/dlogvar_q = (e^logvar_q / e^logvar_p - 1) / 2, d/dlogvar_p = (1 - r) / 2.
    Stable form: the variance ratio is e^(logvar_q - logvar_p) and d^2 / e^logvar_p is
    (d e^(-logvar_p / 2))^2, so a collapsed prior (logvar_p below -88, where e^-logvar_p overflows
    float32) that the posterior matches gives its true, small KL, not inf * 0 = NaN.
    """

    @staticmethod
    def forward(ctx, mu_q, logvar_q, mu_p, logvar_p):
        xp = get_array_module(mu_q, mu_p)
        inv_std_p = xp.exp(-0.5 * logvar_p)
        ratio = xp.exp(logvar_q - logvar_p)
        d_std = (mu_q - mu_p) * inv_std_p
        r = ratio + d_std * d_std
        ctx.save(d_std * inv_std_p, ratio, r)
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
    for confident wrong logits; sigmoid(l) = (1 + tanh(l / 2)) / 2.
    Cheap form: the passes run in place in two temporaries in forward and one in backward (the
    same operations in the same order as the plain expressions, so the same numbers), instead of
    one fresh image-sized array per operation (eight in forward, six in backward).
    """

    @staticmethod
    def forward(ctx, logits, x):
        ctx.save(logits, x)
        xp = get_array_module(logits, x)
        ctx.in_place = x.shape == logits.shape or np.broadcast_shapes(logits.shape, x.shape) == logits.shape
        if not ctx.in_place:  # x adds axes: plain form
            return _row_sum(x * logits - _softplus(xp, logits))
        sp = xp.abs(logits)  # softplus = max(l, 0) + log1p(exp(-|l|)), built in place
        xp.negative(sp, out=sp)
        xp.exp(sp, out=sp)
        xp.log1p(sp, out=sp)
        tmp = xp.maximum(logits, 0)
        tmp += sp
        xp.multiply(x, logits, out=sp)  # reuse: x l - softplus
        sp -= tmp
        return _row_sum(sp)

    @staticmethod
    def backward(ctx, g):
        logits, x = ctx.saved
        need_l, need_x = ctx.needs_input_grad
        g = _per_row(g)
        xp = get_array_module(g, logits)
        d = None
        if need_l:
            if not ctx.in_place:  # g has the output's shape, so it fits logits when x does
                d = g * (x - _sigmoid(xp, logits))
            else:  # g * (x - sigmoid(l)), sigmoid(l) = 0.5 * (tanh(0.5 l) + 1), in one array
                d = xp.multiply(logits, 0.5)
                xp.tanh(d, out=d)
                d += 1
                d *= 0.5
                xp.subtract(x, d, out=d)
                d *= g
        return d, (g * logits if need_x else None)


class GaussianLogProb(Function):
    """gaussian_log_prob(x, mu, logvar) = log N(x; mu, e^logvar) per row
    = -1/2 * sum_j [log(2 pi) + logvar_j + (x_j - mu_j)^2 e^-logvar_j].

    With s = (x - mu) e^-logvar: d/dx = -s, d/dmu = s, d/dlogvar = ((x - mu) s - 1) / 2.
    Stable form: (x - mu)^2 e^-logvar is ((x - mu) e^(-logvar / 2))^2, finite in float32 down to
    logvar = -176 (e^-logvar alone overflows below -88, and 0 * inf = NaN where x equals mu).
    """

    @staticmethod
    def forward(ctx, x, mu, logvar):
        xp = get_array_module(x, mu)
        inv_std = xp.exp(-0.5 * logvar)
        t = (x - mu) * inv_std
        ds = t * t
        ctx.save(t * inv_std, ds)
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


def reparameterize(mu, logvar, eps, shape=None):
    """z = mu + exp(logvar / 2) * eps (see Reparameterize).

    ``eps`` is either an array / Tensor of standard normals (an input like any other: it gets a
    gradient when it requires one), or counter-addressed noise: a ``minivae.random.Noise``, or a
    ``minivae.random.Generator`` (its next draw). Counter-addressed noise runs the fused GPU
    kernels on GPU tensors and the NumPy twin on CPU tensors, with the same eps for the same
    seed and offset; ``shape`` then sets the shape of the draw (e.g. (S,) + mu.shape for S samples).
    """
    if isinstance(eps, Generator):
        eps = eps.next_noise()
    if isinstance(eps, Noise):
        return ReparameterizeNoise.apply(mu, logvar, noise=eps, shape=shape)
    if shape is not None:
        raise TypeError("reparameterize: shape= applies to counter-addressed noise (Noise or Generator)")
    return Reparameterize.apply(mu, logvar, eps)


kl_normal_std = KLNormalStd.apply
kl_normal_normal = KLNormalNormal.apply
bernoulli_log_prob = BernoulliLogProb.apply
gaussian_log_prob = GaussianLogProb.apply


def binary_cross_entropy_with_logits(logits, x, reduction="mean"):
    """Binary cross-entropy of targets ``x`` under Bernoulli ``logits`` (see the class)."""
    return BinaryCrossEntropyWithLogits.apply(logits, x, reduction=reduction)
