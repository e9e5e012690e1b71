"""The VAE hot path as single ops: reparameterization, analytic KLs and per-row log-likelihoods.

Per-row ops sum over the last axis: (B, D) inputs give (B,), and (S, B, D) inputs (S samples per
example) give (S, B). Inputs broadcast against each other like NumPy arrays.
Fusing each into one node keeps temporaries out of the graph and lets the GPU run one kernel.
"""
import math

import numpy as np

from ..backend import get_array_module
from ..checks import check_integer
from ..function import Function
from ..random import Generator, Noise, check_shape, use_noise
from .elementwise import _softplus

_LOG_2PI = math.log(2 * math.pi)


def _check_rows(op, *arrays):
    """Refuse 0-d inputs to the per-row op ``op``: they must broadcast to at least one axis, the
    row that is summed. NumPy sums a 0-d array over axis -1 as if it had one, but neither the
    per-row gradient (given a trailing axis to spread over the row) nor the in-place passes fit."""
    if all(np.ndim(a) == 0 for a in arrays):
        raise ValueError(f"{op}: needs inputs with at least one axis (it sums each row over the "
                         f"last), got 0-d inputs")


def _row_sum(a):
    """Sum over the last axis: one value per example (per sample and example for 3-D inputs)."""
    return a.sum(axis=-1)


def _per_row(g):
    """Give a per-row gradient a trailing size-1 axis so it broadcasts over the row."""
    return g[..., None]


def _full(grad, shape):
    """``grad`` (None, or an input's gradient computed at that input's own shape) broadcast to the
    op's broadcast ``shape``, as a view. An input repeated along an axis gets the sum of the
    gradients of its copies; the engine takes that sum over the axes where the gradient is larger
    than the input, so a gradient left at the input's shape would count one copy only."""
    if grad is None or grad.shape == shape:
        return grad
    return get_array_module(grad).broadcast_to(grad, shape)


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


def _scaled_noise(xp, noise, shape, logvar):
    """exp(logvar / 2) * eps with eps the normals of the draw ``noise`` of ``shape`` (logvar's
    dtype), built in place in the fresh array of the draw."""
    scaled = xp.asarray(noise.normal(shape, dtype=logvar.dtype))
    scaled *= xp.exp(0.5 * logvar)
    return scaled


class ReparameterizeNoise(Function):
    """reparameterize(mu, logvar, noise) = mu + exp(logvar / 2) * eps, eps the standard normals of
    the counter-addressed draw ``noise`` (a minivae.random.Noise), of the broadcast shape of mu,
    logvar and ``shape`` (default: of mu and logvar; (S, B, D) from (B, D) parameters draws S
    samples).

    d/dmu = 1, d/dlogvar = exp(logvar / 2) * eps / 2. eps is not an input (no gradient).
    Here eps comes from the NumPy twin of the GPU generator and exp(logvar / 2) * eps is saved,
    as in Reparameterize. On CuPy arrays the kernels of the dispatch table (minivae.gpu.dispatch)
    run instead: they generate eps in registers from (seed, offset, stream, element index) and
    regenerate it in backward, so it is never stored.
    """

    @staticmethod
    def forward(ctx, mu, logvar, noise=None, shape=None):
        xp = get_array_module(mu, logvar)
        shape = np.broadcast_shapes(mu.shape, logvar.shape, () if shape is None else tuple(shape))
        scaled = _scaled_noise(xp, noise, shape, logvar)
        ctx.save(scaled)
        return mu + scaled

    @staticmethod
    def backward(ctx, g):
        need_mu, need_logvar = ctx.needs_input_grad
        (scaled,) = ctx.saved
        return (g if need_mu else None), (g * (0.5 * scaled) if need_logvar else None)


def _half_expm1(xp, x):
    """(e^x - 1) / 2 as m (m / 2 + 1), m = expm1(x / 2) (e^x - 1 = (e^(x/2) - 1)(e^(x/2) + 1)):
    finite wherever the result is, and within a few ulp of it near x = 0, as expm1 is. 0.5 *
    expm1(x) overflows first: it is inf in float32 from x = 88.72, where the result is 1.7e38, up
    to 89.42, where the result overflows too (in float64 from 709.78 to 710.48)."""
    m = xp.expm1(0.5 * x)
    return m * (0.5 * m + 1)


def _kl_terms(xp, mu, logvar):
    """(the KL to N(0, I) per row, (e^logvar - 1) / 2): sum_j (mu_j^2 / 2 + ((e^logvar_j - 1) / 2
    - logvar_j / 2)), the halves formed before the sums (``_half_expm1``), so that a term is
    finite wherever its value is; the operations of the kernels (kernels/vae_math.cuh)."""
    half_em1 = _half_expm1(xp, logvar)
    return _row_sum(xp.add(0.5 * mu * mu, half_em1 - 0.5 * logvar)), half_em1


def _kl_grads(g, mu, half_em1, need_mu, need_logvar):
    """(d/dmu, d/dlogvar) of the KL to N(0, I) for the per-row upstream gradient g, from mu and
    half_em1 = (e^logvar - 1) / 2, each of the broadcast shape of mu and half_em1."""
    shape = np.broadcast_shapes(mu.shape, half_em1.shape)
    g = _per_row(g)
    return (_full(g * mu if need_mu else None, shape),
            _full(g * half_em1 if need_logvar else None, shape))


class KLNormalStd(Function):
    """kl_normal_std(mu, logvar) = KL(N(mu, e^logvar) || N(0, I)) per row
    = 1/2 * sum_j (mu_j^2 + e^logvar_j - 1 - logvar_j).

    d/dmu = mu, d/dlogvar = (e^logvar - 1) / 2 (times the row's upstream gradient).
    Analytic, never a Monte Carlo estimate: it has no variance. On CuPy arrays of one shape the
    dispatch table's kernels (one reduction per row, the same formula) run instead.
    Stable form: e^logvar - 1 is expm1(logvar), so near logvar = 0 (a collapsed unit, whose
    posterior is the prior) e^logvar - 1 - logvar is off by a few ulp(logvar), not ulp(1), and
    never negative (computed as exp(logvar) - 1 - logvar it was -1e-8 in float32 at mu = 0,
    logvar = 3e-6, where the KL is 2.25e-12). The halves are formed first: (e^logvar - 1) / 2 is
    m (m / 2 + 1) with m = expm1(logvar / 2), and mu^2 / 2 is (mu / 2) mu, so the KL and
    d/dlogvar are finite wherever they are below the largest number (0.5 * expm1(logvar) made
    both inf in float32 for logvar in [88.72, 89.42]).
    """

    @staticmethod
    def forward(ctx, mu, logvar):
        _check_rows("kl_normal_std", mu, logvar)
        kl, half_em1 = _kl_terms(get_array_module(mu, logvar), mu, logvar)
        ctx.save(mu, half_em1)
        return kl

    @staticmethod
    def backward(ctx, g):
        mu, half_em1 = ctx.saved
        return _kl_grads(g, mu, half_em1, *ctx.needs_input_grad)


def _check_kl_rows(mu, logvar):
    """Refuse reparameterize_kl's mu and logvar unless they have one shape with at least one axis
    (its KL sums each row). Run by the op's forward: ``reparameterize_kl`` gives a Generator its
    draw back when the op refuses (``random.use_noise``), so a refused call uses up no
    offset."""
    if np.shape(mu) != np.shape(logvar):
        raise ValueError(f"reparameterize_kl: mu and logvar must have one shape, got {np.shape(mu)} "
                         f"and {np.shape(logvar)}")
    _check_rows("reparameterize_kl", mu, logvar)


class ReparameterizeKL(Function):
    """reparameterize_kl(mu, logvar, noise, samples=None) = (z, kl): a reparameterized sample of
    q = N(mu, e^logvar) and its KL to the prior N(0, I), in one op with two outputs:

        z  = mu + exp(logvar / 2) * eps,                       eps the normals of the draw ``noise``
        kl = 1/2 * sum_j (mu_j^2 + e^logvar_j - 1 - logvar_j)  per row (the last axis)

    With ``samples`` = S, z has shape (S,) + mu.shape (S independent samples per row); kl has
    shape mu.shape[:-1] either way: it does not depend on eps, so it is computed once per row.
    With upstream gradients gz (of z) and gkl (of kl, one per row):

        d/dmu     = sum_s gz + gkl * mu
        d/dlogvar = sum_s gz * exp(logvar / 2) * eps / 2 + gkl * (e^logvar - 1) / 2

    (the sum over samples as the engine sums a broadcast gradient), the same numbers as
    ``reparameterize`` and ``kl_normal_std`` applied separately. On CuPy arrays of one shape, the
    dispatch table runs the fused kernels: one pass reads mu and logvar and writes z and kl; eps
    is generated in registers and regenerated in backward. With S samples they run on S
    broadcast copies of the rows, and the KL of the first copy is the op's.
    """

    @staticmethod
    def forward(ctx, mu, logvar, noise=None, samples=None):
        _check_kl_rows(mu, logvar)
        if samples is not None and samples < 1:
            raise ValueError(f"reparameterize_kl: samples must be at least 1, got {samples}")
        xp = get_array_module(mu, logvar)
        shape = mu.shape if samples is None else (int(samples),) + mu.shape
        scaled = _scaled_noise(xp, noise, shape, logvar)
        kl, half_em1 = _kl_terms(xp, mu, logvar)
        ctx.save(scaled, mu, half_em1)
        return mu + scaled, kl

    @staticmethod
    def backward(ctx, gz, gkl):
        scaled, mu, half_em1 = ctx.saved
        need_mu, need_logvar = ctx.needs_input_grad
        dmu = dlogvar = None
        if gz is not None:
            dmu = _sum_samples(gz, mu.shape) if need_mu else None
            dlogvar = _sum_samples(gz * (0.5 * scaled), mu.shape) if need_logvar else None
        if gkl is not None:
            kl_mu, kl_logvar = _kl_grads(gkl, mu, half_em1, need_mu, need_logvar)
            dmu = kl_mu if dmu is None else kl_mu + dmu
            dlogvar = kl_logvar if dlogvar is None else kl_logvar + dlogvar
        return dmu, dlogvar


def _sum_samples(g, shape):
    """A gradient of S samples, (S,) + shape, summed to ``shape`` (as the engine sums it)."""
    return g if g.shape == shape else g.sum(axis=(0,), keepdims=True).reshape(shape)


class KLNormalNormal(Function):
    """kl_normal_normal(mu_q, logvar_q, mu_p, logvar_p) = KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p))
    per row = 1/2 * sum_j (logvar_p - logvar_q + (e^logvar_q + (mu_q - mu_p)^2) / e^logvar_p - 1).

    With d = mu_q - mu_p and r = (e^logvar_q + d^2) / e^logvar_p:
    d/dmu_q = d / e^logvar_p, d/dmu_p = -d / e^logvar_p,
    d/dlogvar_q = (e^logvar_q / e^logvar_p - 1) / 2, d/dlogvar_p = (1 - r) / 2.
    Stable form: the variance ratio minus 1 is expm1(logvar_q - logvar_p), so where the two
    variances are close, ratio - 1 - (logvar_q - logvar_p) is off by a few ulp of the difference,
    not ulp(1), as in kl_normal_std (computed as e^(logvar_q - logvar_p) - 1 it was 0 in float32
    at a difference of 1e-4, where the KL is 2.5e-9). d^2 / e^logvar_p is
    (d e^(-logvar_p / 2))^2, so a collapsed prior (logvar_p below -88, where e^-logvar_p overflows
    float32) that the posterior matches gives its true, small KL, not inf * 0 = NaN. As in
    gaussian_log_prob, g d / e^logvar_p is computed as (g d e^(-logvar_p / 2)) e^(-logvar_p / 2),
    so the gradient is finite wherever the product is (d / e^logvar_p alone is 2.7e40 at
    logvar_p = -100 and d = 1e-3, above float32's largest number; times g = 1e-3 it is 2.7e37).
    As in kl_normal_std, the halves are formed first ((ratio - 1) / 2 by m (m / 2 + 1) with
    m = expm1((logvar_q - logvar_p) / 2), d^2 / (2 e^logvar_p) as (d_std / 2) d_std with
    d_std = d e^(-logvar_p / 2)), so the KL and d/dlogvar are finite wherever they are below the
    largest number (halved after the sums, they were inf in float32 at logvar_q - logvar_p = 89,
    where the KL is 2.2e38).
    """

    @staticmethod
    def forward(ctx, mu_q, logvar_q, mu_p, logvar_p):
        _check_rows("kl_normal_normal", mu_q, logvar_q, mu_p, logvar_p)
        xp = get_array_module(mu_q, mu_p)
        inv_std_p = xp.exp(-0.5 * logvar_p)
        diff = logvar_q - logvar_p
        half_ratio_m1 = _half_expm1(xp, diff)  # (e^logvar_q / e^logvar_p - 1) / 2
        d_std = (mu_q - mu_p) * inv_std_p
        half_r_m1 = half_ratio_m1 + 0.5 * d_std * d_std  # (r - 1) / 2
        ctx.save(d_std, inv_std_p, half_ratio_m1, half_r_m1)
        return _row_sum(half_r_m1 - 0.5 * diff)

    @staticmethod
    def backward(ctx, g):
        d_std, inv_std_p, half_ratio_m1, half_r_m1 = ctx.saved
        g = _per_row(g)
        need = ctx.needs_input_grad
        gd = (g * d_std) * inv_std_p if need[0] or need[2] else None  # g d / e^logvar_p
        # r depends on all four inputs: it has the op's broadcast shape
        return (_full(gd if need[0] else None, half_r_m1.shape),
                _full(g * half_ratio_m1 if need[1] else None, half_r_m1.shape),
                _full(-gd if need[2] else None, half_r_m1.shape),
                -(g * half_r_m1) if need[3] else None)


def _x_minus_sigmoid(xp, x, logits):
    """x - sigmoid(l) written around s = sigmoid(-|l|) = e / (1 + e), e = e^-|l|: (x - 1) + s where
    l >= 0 (1 - sigmoid(l) is sigmoid(-l)) and x - s where l < 0, so no sigmoid near 1 is
    subtracted (x - sigmoid(l) was 0 in float32 at x = 1, l = 20, where it is 2.06e-9)."""
    e = xp.exp(-xp.abs(logits))
    s = e / (1 + e)
    return xp.where(logits >= 0, (x - 1) + s, x - s)


class BernoulliLogProb(Function):
    """bernoulli_log_prob(logits, x) = sum_j [x_j log sigmoid(l_j) + (1 - x_j) log sigmoid(-l_j)] per row
    = sum_j [x_j l_j - softplus(l_j)].

    d/dlogits = x - sigmoid(l), d/dx = l.
    Stable form: softplus(l) = max(l, 0) + log1p(e^-|l|), never log(sigmoid(l)), which is -inf
    for confident wrong logits; with s = sigmoid(-|l|) = e / (1 + e), e = e^-|l|,
    x - sigmoid(l) = (x - 1) + s where l >= 0 and x - s where l < 0: neither x - sigmoid(l)
    (0 in float32 at x = 1, l = 20, where it is 2.06e-9) nor sigmoid as (1 + tanh(l / 2)) / 2
    (0 in float32 at l = -20, where sigmoid is 2.1e-9).
    Cheap form: the passes run in place in two temporaries in forward and two in backward, with
    the backward's mask of l >= 0 (booleans, a quarter of a float32 array) beside them (the
    same operations in the same order as the plain expressions, so the same numbers), instead of
    one fresh image-sized array per operation (eight in forward, ten in backward). On CuPy arrays
    the dispatch table's kernels run instead: one pass per direction, the images read in place
    where they repeat under several samples' logits.
    """

    @staticmethod
    def forward(ctx, logits, x):
        _check_rows("bernoulli_log_prob", logits, x)
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
                d = g * _x_minus_sigmoid(xp, x, logits)
            else:  # two arrays and a mask, as _x_minus_sigmoid: (x - [l >= 0]) + (+-s)
                nonneg = logits >= 0
                d = xp.abs(logits)
                xp.negative(d, out=d)
                xp.exp(d, out=d)  # e
                signed = xp.negative(d)
                xp.copyto(signed, d, where=nonneg)  # e where l >= 0, -e where l < 0
                d += 1
                xp.divide(signed, d, out=signed)  # s where l >= 0, -s where l < 0
                xp.subtract(x, nonneg, out=d)  # x - 1 where l >= 0, x where l < 0
                d += signed
                d *= g
        shape = np.broadcast_shapes(logits.shape, x.shape)
        return d, _full(g * logits if need_x else None, shape)


class GaussianLogProb(Function):
    """gaussian_log_prob(x, mu, logvar) = log N(x; mu, e^logvar) per row
    = -1/2 * sum_j [log(2 pi) + logvar_j + (x_j - mu_j)^2 e^-logvar_j].

    With s = (x - mu) e^-logvar: d/dx = -s, d/dmu = s, d/dlogvar = ((x - mu) s - 1) / 2.
    Stable form: with t = (x - mu) e^(-logvar / 2), (x - mu)^2 e^-logvar is t^2, finite in float32
    down to logvar = -176 (e^-logvar alone overflows below -88, and 0 * inf = NaN where x equals
    mu); (x - mu) s is t^2 too, and g s is computed as (g t) e^(-logvar / 2), so a collapsed
    variance gives a finite gradient wherever the product is finite (s alone is 2.7e40 at
    logvar = -100 and x - mu = 1e-3, above float32's largest number, while g s for the mean over
    a batch of 1000 is 2.7e37). For the same reason the terms are halved before they are summed,
    t^2 / 2 as (t / 2) t, and g (t^2 - 1) / 2 is computed as ((g t) / 2) t - g / 2: the
    log-density and d/dlogvar are finite wherever their values are (in float32, t^2 alone
    overflows from t = 1.8e19, the log-density from 2.6e19, and d/dlogvar for g = 1e-3 from
    8.2e20), and d/dlogvar is 0 where g is 0 (a sample that logsumexp gives no weight).
    On CuPy arrays the dispatch table's kernels run instead: one pass per direction, t
    recomputed in backward rather than kept, mu and logvar read in place where they repeat (a
    sample's parameters under several samples, a standard normal's 0 and 0).
    """

    @staticmethod
    def forward(ctx, x, mu, logvar):
        _check_rows("gaussian_log_prob", x, mu, logvar)
        xp = get_array_module(x, mu)
        inv_std = xp.exp(-0.5 * logvar)
        t = (x - mu) * inv_std
        ctx.save(t, inv_std)
        return -_row_sum(0.5 * (_LOG_2PI + logvar) + 0.5 * t * t)

    @staticmethod
    def backward(ctx, g):
        t, inv_std = ctx.saved
        g = _per_row(g)
        need = ctx.needs_input_grad
        gt = g * t
        gs = gt * inv_std if need[0] or need[1] else None
        return (-gs if need[0] else None,
                gs if need[1] else None,
                (0.5 * gt) * t - 0.5 * g if need[2] else None)


class BinaryCrossEntropyWithLogits(Function):
    """binary_cross_entropy_with_logits(l, x) = softplus(l) - x l, elementwise, then reduced
    ("mean", "sum" or "none").

    d/dl = sigmoid(l) - x, d/dx = -l (scaled by 1/n for "mean", n the number of elements of the
    loss: of the broadcast shape of l and x).
    Stable form: softplus through max(l, 0) + log1p(e^-|l|); sigmoid(l) - x as -(x - sigmoid(l))
    in bernoulli_log_prob's form around sigmoid(-|l|), which does not cancel where sigmoid(l)
    is near 1.
    """

    @staticmethod
    def forward(ctx, logits, x, reduction="mean"):
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"binary_cross_entropy_with_logits: reduction must be 'mean', 'sum' "
                             f"or 'none', got {reduction!r}")
        loss = _softplus(get_array_module(logits), logits) - x * logits
        ctx.save(logits, x)
        ctx.reduction, ctx.shape = reduction, loss.shape
        if reduction == "none":
            return loss
        return loss.mean() if reduction == "mean" else loss.sum()

    @staticmethod
    def backward(ctx, g):
        logits, x = ctx.saved
        if ctx.reduction == "mean":  # the mean over the loss's elements, which x may outnumber
            g = g / math.prod(ctx.shape)
        need_l, need_x = ctx.needs_input_grad
        return (-g * _x_minus_sigmoid(get_array_module(logits), x, logits) if need_l else None,
                _full(-g * logits if need_x else None, ctx.shape))


def _draw_shape(mu, logvar, shape):
    """``shape=`` of reparameterize as a tuple of sizes (``check_shape``), or None (the draw takes
    the broadcast shape of mu and logvar), refused, with the shapes named, where mu, logvar and
    it do not broadcast (NumPy's words would name them "arg 0" to "arg 2")."""
    if shape is not None:
        shape = check_shape(shape)
    try:
        np.broadcast_shapes(np.shape(mu), np.shape(logvar), () if shape is None else shape)
    except ValueError:
        draw = "" if shape is None else f" with the draw's shape {shape}"
        raise ValueError(f"reparameterize: mu of shape {np.shape(mu)} and logvar of shape {np.shape(logvar)} "
                         f"do not broadcast{draw}") from None
    return shape


def reparameterize(mu, logvar, eps, shape=None):
    """z = mu + exp(logvar / 2) * eps (see Reparameterize).

    ``eps`` is either an array / Tensor of standard normals (an input like any other: it gets a
    gradient when it requires one), or counter-addressed noise: a ``minivae.random.Noise``, or a
    ``minivae.random.Generator`` (its next draw). Counter-addressed noise runs the fused GPU
    kernels on GPU tensors and the NumPy twin on CPU tensors, with the same eps for the same
    seed and offset; ``shape`` then sets the shape of the draw, broadcast with mu's and logvar's
    (e.g. (S,) + mu.shape for S samples).
    """
    if isinstance(eps, (Generator, Noise)):
        # Shapes that do not broadcast would fail in the op too (giving a Generator its draw
        # back), but in NumPy's words, which name them "arg 0" to "arg 2".
        shape = _draw_shape(mu, logvar, shape)

        def draw(noise):
            return ReparameterizeNoise.apply(mu, logvar, noise=noise, shape=shape)
        # A Generator takes its draw back when the op refuses mu or logvar (dtypes, devices,
        # non-numbers).
        return use_noise(eps, draw)
    if shape is not None:
        raise TypeError("reparameterize: shape= applies to counter-addressed noise (Noise or Generator)")
    return Reparameterize.apply(mu, logvar, eps)


def reparameterize_kl(mu, logvar, noise, samples=None):
    """(z, kl): z = mu + exp(logvar / 2) * eps and kl = KL(N(mu, e^logvar) || N(0, I)) per row, in
    one op (see ReparameterizeKL). ``noise`` is a ``minivae.random.Noise`` or a ``Generator``
    (its next draw); ``samples`` = S >= 1 draws z of shape (S,) + mu.shape, the KL staying per
    row."""
    if samples is not None:  # by name, and as an integer: the op's int() would draw 2 for 2.7
        samples = check_integer(samples, "reparameterize_kl: samples", minimum=1)

    def draw(noise):
        return ReparameterizeKL.apply(mu, logvar, noise=noise, samples=samples)
    if not isinstance(noise, (Generator, Noise)):
        raise TypeError(f"reparameterize_kl: noise must be a minivae.random.Noise or Generator, "
                        f"got {type(noise).__name__}")
    # A Generator takes its draw back when the op refuses mu or logvar (shapes, dtypes, devices).
    return use_noise(noise, draw)


kl_normal_std = KLNormalStd.apply
kl_normal_normal = KLNormalNormal.apply
bernoulli_log_prob = BernoulliLogProb.apply
gaussian_log_prob = GaussianLogProb.apply


def binary_cross_entropy_with_logits(logits, x, reduction="mean"):
    """Binary cross-entropy of targets ``x`` under Bernoulli ``logits`` (see the class)."""
    return BinaryCrossEntropyWithLogits.apply(logits, x, reduction=reduction)
