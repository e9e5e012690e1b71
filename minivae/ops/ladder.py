"""The Ladder VAE's precision-weighted combination of two Gaussians as one op (Sonderby et al. 2016)."""
from ..backend import get_array_module
from ..function import Function
from .elementwise import _sigmoid


class PrecisionWeightedMerge(Function):
    """precision_weighted_merge(mu_hat, logvar_hat, mu_p, logvar_p) = (mu_q, logvar_q): the
    Ladder VAE's posterior at a layer, the bottom-up estimate N(mu_hat, var_hat) and the top-down
    prior N(mu_p, var_p) combined by precision weighting (the normalized product of the densities):

        var_q = 1 / (1/var_hat + 1/var_p),    mu_q = (mu_hat/var_hat + mu_p/var_p) * var_q.

    In the log-variance parametrization (a = logvar_hat, c = logvar_p) the weights are sigmoids
    and the log-variance a log-sum-exp:

        w_hat = var_q / var_hat = sigmoid(c - a),    w_p = var_q / var_p = sigmoid(a - c),
        mu_q = w_hat mu_hat + w_p mu_p,              logvar_q = -logaddexp(-a, -c).

    The inputs broadcast (bottom-up (B, D) against top-down (S, B, D) for S samples); both
    outputs have the broadcast shape of all four inputs.

    Derivatives, with d = mu_hat - mu_p and d/da w_hat = -w_hat w_p (logvar_q does not depend on
    the means): d/dmu_hat mu_q = w_hat, d/dmu_p mu_q = w_p, d/da mu_q = -w_hat w_p d,
    d/dc mu_q = w_hat w_p d, d/da logvar_q = w_hat, d/dc logvar_q = w_p. With the upstream
    gradients (g_mu, g_lv) of the two outputs (0 for an output no gradient reached):
    grad mu_hat = g_mu w_hat, grad mu_p = g_mu w_p, grad a = w_hat (g_lv - g_mu w_p d),
    grad c = w_p (g_lv + g_mu w_hat d).

    Stable form: no variance is formed; sigmoid and logaddexp of the log-variances never
    overflow, so log-variances of +-300 give exact results.
    """

    @staticmethod
    def forward(ctx, mu_hat, logvar_hat, mu_p, logvar_p):
        xp = get_array_module(mu_hat, mu_p)
        w_hat = _sigmoid(xp, logvar_p - logvar_hat)
        w_p = _sigmoid(xp, logvar_hat - logvar_p)
        d = mu_hat - mu_p
        mu_q = mu_p + w_hat * d
        logvar_q = -xp.logaddexp(-logvar_hat, -logvar_p)
        if logvar_q.shape != mu_q.shape:  # the means may broadcast further than the variances
            logvar_q = xp.broadcast_to(logvar_q, mu_q.shape).copy()
        ctx.save(w_hat, w_p, d)
        return mu_q, logvar_q

    @staticmethod
    def backward(ctx, g_mu, g_lv):
        w_hat, w_p, d = ctx.saved
        if g_mu is None:
            g_mu = get_array_module(g_lv).zeros_like(g_lv)
        if g_lv is None:
            g_lv = get_array_module(g_mu).zeros_like(g_mu)
        need = ctx.needs_input_grad
        cross = g_mu * d  # shared by both log-variance gradients
        return (g_mu * w_hat if need[0] else None,
                w_hat * (g_lv - w_p * cross) if need[1] else None,
                g_mu * w_p if need[2] else None,
                w_p * (g_lv + w_hat * cross) if need[3] else None)


precision_weighted_merge = PrecisionWeightedMerge.apply
