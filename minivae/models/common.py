"""Pieces the models share: MLPs, Gaussian heads, and the bounds built from log-weights.

Every model exposes ``log_weights(x, k, noise)``: the (k, B) array of importance log-weights
log p(x, h) - log q(h | x) for k latent samples h ~ q(h | x). The ELBO, the IWAE bound and the
importance-sampled log-likelihood of ``minivae.evaluate`` are all functions of it.
Models with an ``elbo(x, noise)`` -> (reconstruction, KL) per example train on it through
``LatentVariableModel.loss`` (the KL weighted by beta for beta-VAE and warm-up).
"""
import math

import numpy as np

from .. import functional as F
from .. import nn
from ..checks import check_bool, check_choice, check_integer, check_ranges
from ..distributions import sample_bernoulli, standard_normal
from ..backend import get_array_module
from .base import SETTING_RANGES, Model, check_batch, check_noise, kl_weight_of


class MLP(nn.Module):
    """Dense layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with ``activation`` between them.

    ``final_activation`` also applies it after the last layer (for a trunk that feeds heads).
    ``batch_norm`` puts a BatchNorm1d between each hidden linear layer and its activation (as in
    the Ladder VAE); inputs with leading sample axes, (S, B, D), are normalized as S*B rows.
    A linear layer followed directly by a ReLU is one ``nn.LinearReLU`` (one fused op).
    """

    def __init__(self, sizes, activation="relu", final_activation=True, batch_norm=False, rng=None):
        super().__init__()
        self.batch_norm = check_bool(batch_norm, "batch_norm")
        final_activation = check_bool(final_activation, "final_activation")
        # Resolving the name here also refuses a bad one where no layer is activated (one Linear).
        fuse = type(nn.activation(activation)) is nn.ReLU and not batch_norm
        # The layers are named by their positions in the unfused list (Linear, [BatchNorm1d,]
        # activation, Linear, ...), so a LinearReLU keeps the parameter names of its Linear:
        # net.0.weight, net.2.weight, ... whether fused or not.
        layers, position = {}, 0
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            activated = final_activation or i < len(sizes) - 2
            if activated and fuse:
                layers[str(position)] = nn.LinearReLU(n_in, n_out, rng=rng)
                position += 2  # the Linear and the ReLU it stands for
                continue
            layers[str(position)] = nn.Linear(n_in, n_out, rng=rng)
            position += 1
            if activated:
                if batch_norm:
                    layers[str(position)] = nn.BatchNorm1d(n_out)
                    position += 1
                layers[str(position)] = nn.activation(activation)
                position += 1
        self.net = nn.Sequential(layers)

    def forward(self, x):
        """Apply the layers in order."""
        return by_rows(self.net, x) if self.batch_norm else self.net(x)


def by_rows(layer, x):
    """``layer`` applied to ``x`` with its leading axes taken as rows: an (S, B, D) input is
    passed as S*B rows of D, so that a batch normalization in ``layer`` takes its statistics over
    all samples of the batch (BatchNorm1d would read a 3-d input as (N, C, L))."""
    if x.ndim == 2:
        return layer(x)
    out = layer(x.reshape(-1, x.shape[-1]))
    return out.reshape(*x.shape[:-1], out.shape[-1])


#: How a ``GaussianHead`` makes the variance from the output a of its second linear map.
VARIANCES = ("exp", "softplus")
#: The smallest variance of a softplus head, the floor of the Ladder VAE authors' code (Sonderby
#: et al. 2016), which keeps the log-variance finite where softplus(a) underflows.
VARIANCE_FLOOR = 1e-5


class GaussianHead(nn.Module):
    """Two linear maps from features to the mean and log-variance of a diagonal Gaussian.

    ``variance`` says what the second map's output a is. "exp" (the default): the log-variance
    itself, unconstrained (variance = exp(a)); a softplus on a log-variance would force the
    variance above 1, a known bug of some implementations. "softplus": a gives the variance,
    softplus(a) + ``VARIANCE_FLOOR``, as in the Ladder VAE authors' code; the head returns its
    logarithm, as minivae's ops take log-variances, and the bias of a starts at 1 as theirs does.
    ``batch_norm`` puts a BatchNorm1d (with its learned scale and shift) after each linear map,
    before the softplus, as their code does for every dense layer but the image output; inputs
    with leading sample axes are normalized as rows (``by_rows``).
    """

    def __init__(self, n_in, n_out, variance="exp", batch_norm=False, rng=None):
        super().__init__()
        self.variance = check_choice(variance, "variance", VARIANCES)
        self.batch_norm = check_bool(batch_norm, "batch_norm")
        mu, var = nn.Linear(n_in, n_out, rng=rng), nn.Linear(n_in, n_out, rng=rng)
        if self.variance == "softplus":
            nn.init.ones_(var.bias)  # a variance of softplus(1) = 1.31 (a batch norm after it cancels this)
        if self.batch_norm:
            # A Sequential names them mu.0 (the Linear) and mu.1 (its normalization), as in an MLP.
            mu, var = nn.Sequential(mu, nn.BatchNorm1d(n_out)), nn.Sequential(var, nn.BatchNorm1d(n_out))
        self.mu, self.logvar = mu, var

    def forward(self, h):
        """Return (mu, logvar)."""
        if self.batch_norm:
            mu, a = by_rows(self.mu, h), by_rows(self.logvar, h)
        else:
            mu, a = self.mu(h), self.logvar(h)
        if self.variance == "softplus":
            return mu, F.log(F.softplus(a) + VARIANCE_FLOOR)
        return mu, a


def iwae_bound(log_w):
    """The k-sample importance-weighted bound log (1/k) sum_i w_i per example, from (k, B) log-weights.

    At k = 1 it is the single-sample ELBO itself (Burda et al. 2015).
    """
    return F.logsumexp(log_w, axis=0) - math.log(log_w.shape[0])


def rsample(mu, logvar, noise, k=None):
    """A reparameterized draw z = mu + e^(logvar/2) eps with eps ~ N(0, I) from ``noise``.

    With ``k`` (an integer >= 1) the draw has shape (k, *mu.shape): k independent samples per
    row (a fresh eps for each, never one sample repeated); without, the broadcast shape of
    ``mu`` and ``logvar``.
    """
    try:
        shape = np.broadcast_shapes(mu.shape, logvar.shape)
    except ValueError:  # NumPy's words name them "arg 0" and "arg 1"
        raise ValueError(f"rsample: mu of shape {mu.shape} and logvar of shape {logvar.shape} "
                         "do not broadcast") from None
    if k is not None:  # a float k fails inside the draw's shape check, and True would draw one sample
        shape = (check_integer(k, "k", minimum=1),) + shape
    # Counter-addressed noise: the GPU kernel draws eps in registers, the CPU its NumPy twin.
    return F.reparameterize(mu, logvar, noise, shape=shape)


def model_array_module(model):
    """(xp, dtype) of a model's parameters: where and in what precision to make its noise."""
    param = next(iter(model.parameters())).data
    return get_array_module(param), param.dtype


class GaussianLayer(nn.Module):
    """A conditional diagonal Gaussian: (mu, logvar) = GaussianHead(MLP(h)), the MLP with sizes
    ``n_in -> hidden...`` (``batch_norm`` as in ``MLP``), the head with ``variance`` and
    ``batch_norm_heads`` (its ``variance`` and ``batch_norm``); h may carry leading sample axes."""

    def __init__(self, n_in, hidden, n_out, activation="relu", batch_norm=False, variance="exp",
                 batch_norm_heads=False, rng=None):
        super().__init__()
        hidden = tuple(hidden)
        self.trunk = MLP((n_in,) + hidden, activation, batch_norm=batch_norm, rng=rng)
        self.head = GaussianHead(hidden[-1], n_out, variance, batch_norm_heads, rng=rng)

    def forward(self, h):
        """Return (mu, logvar)."""
        return self.head(self.trunk(h))


class JointMLP(nn.Module):
    """An MLP on several inputs: h = act(sum_i x_i W_i + b), then the layers ``hidden[1:]``.

    The first layer equals one Linear on the concatenation [x_1, ..., x_n] (the W_i are the
    blocks of its weight), but the inputs may have different leading axes that broadcast, so a
    grid of K labels meets a batch of images without copying the images K times. Each block is
    initialized with its own fan-in (the default of ``nn.Linear``), so a 10-wide one-hot input
    is not drowned by a 784-wide image at initialization. The output is ``hidden[-1]`` wide,
    with the activation applied (a trunk that feeds heads).

    ``batch_norm`` puts a BatchNorm1d before each activation, as ``MLP`` does; its statistics
    are taken over all rows of the broadcast result, e.g. the K * B rows of K enumerated labels
    times B images (see ``ladder_m2`` for why that, not one set per label).
    """

    def __init__(self, in_sizes, hidden, activation="relu", batch_norm=False, rng=None):
        super().__init__()
        hidden = tuple(hidden)
        self.in_sizes = tuple(int(n) for n in in_sizes)
        # One bias for the sum: the first block carries it.
        self.inputs = nn.ModuleList([nn.Linear(n, hidden[0], bias=(i == 0), rng=rng)
                                     for i, n in enumerate(self.in_sizes)])
        self.norm = nn.BatchNorm1d(hidden[0]) if check_bool(batch_norm, "batch_norm") else None
        self.act = nn.activation(activation)
        self.rest = (MLP(hidden, activation, batch_norm=batch_norm, rng=rng) if len(hidden) > 1
                     else nn.Identity())

    def forward(self, *xs):
        """act(sum_i x_i W_i + b) through the remaining layers; the x_i broadcast on leading axes."""
        if len(xs) != len(self.inputs):
            raise ValueError(f"JointMLP takes {len(self.inputs)} inputs, got {len(xs)}")
        h = self.inputs[0](xs[0])
        for layer, x in zip(self.inputs[1:], xs[1:]):
            h = h + layer(x)
        if self.norm is not None:  # leading axes (labels, samples, batch) are normalized as rows
            h = by_rows(self.norm, h)
        return self.rest(self.act(h))


class TopDownGenerator(nn.Module):
    """The generative model of a VAE with L stochastic layers z_1 (bottom) ... z_L (top):

        p(x, z_1, ..., z_L) = p(x | z_1) p(z_1 | z_2) ... p(z_{L-1} | z_L) p(z_L),

    p(z_L) = N(0, I), each p(z_l | z_{l+1}) a diagonal Gaussian from a ``GaussianLayer``, p(x | z_1)
    Bernoulli. ``blocks[l]`` are the hidden sizes of the inference network between layer l and l+1
    (``blocks[0]``: between x and z_1); the generative network between the same two layers mirrors
    them (Burda et al. 2015: q(z_1|x) 200-200, q(z_2|z_1) 100-100, p(z_1|z_2) 100-100,
    p(x|z_1) 200-200). Shared by the two-layer IWAE and the Ladder VAE, whose generative models
    are the same (Sonderby et al. 2016 change only the inference model). ``variance`` and
    ``batch_norm_heads`` shape the heads of the p(z_l | z_{l+1}) (see ``GaussianHead``).
    Layers are 0-based in code: ``z_dims[0]`` is z_1.
    """

    def __init__(self, x_dim, z_dims, blocks, activation="relu", batch_norm=False, variance="exp",
                 batch_norm_heads=False, rng=None):
        super().__init__()
        self.z_dims = tuple(int(d) for d in z_dims)
        blocks = [tuple(b) for b in blocks]
        if len(blocks) != len(self.z_dims):
            raise ValueError(f"need one hidden block per stochastic layer, got {len(blocks)} blocks "
                             f"for {len(self.z_dims)} layers")
        self.priors = nn.ModuleList([
            GaussianLayer(self.z_dims[l + 1], blocks[l + 1][::-1], self.z_dims[l], activation, batch_norm,
                          variance, batch_norm_heads, rng=rng) for l in range(len(self.z_dims) - 1)])
        self.likelihood = MLP((self.z_dims[0],) + blocks[0][::-1] + (x_dim,), activation,
                              final_activation=False, batch_norm=batch_norm, rng=rng)

    def prior(self, l, z_above):
        """(mu, logvar) of p(z_l | z_{l+1}) for 0-based l < L - 1, given z_{l+1} = ``z_above``."""
        return self.priors[l](z_above)

    def logits(self, z_bottom):
        """The Bernoulli logits of p(x | z_1)."""
        return self.likelihood(z_bottom)

    def decode(self, z_top):
        """Bernoulli logits of p(x | .) from a top-layer z_L through the conditional means below
        (z_l = mean of p(z_l | z_{l+1})): the deterministic decoder used for pictures."""
        z = z_top
        for l in reversed(range(len(self.z_dims) - 1)):
            z = self.prior(l, z)[0]
        return self.logits(z)

    def log_prob(self, x, zs):
        """log p(x, z_1, ..., z_L) per sample and example: ``zs`` bottom to top, each (S, B, d_l)."""
        out = F.bernoulli_log_prob(self.logits(zs[0]), x) + F.gaussian_log_prob(zs[-1], 0.0, 0.0)
        for l in range(len(zs) - 1):
            mu, logvar = self.prior(l, zs[l + 1])
            out = out + F.gaussian_log_prob(zs[l], mu, logvar)
        return out

    def sample(self, n, noise, probabilities=True):
        """n images by ancestral sampling from z_L ~ N(0, I) down: Bernoulli means (or binary pixels).

        Runs in eval mode (batch normalization with its running statistics, left unchanged).
        """
        n = check_integer(n, "n", minimum=0)
        probabilities = check_bool(probabilities, "probabilities")
        check_noise(noise)
        param = next(iter(self.parameters()))
        with nn.evaluating(self):
            z = standard_normal(noise, (n, self.z_dims[-1]), param)
            for l in reversed(range(len(self.z_dims) - 1)):
                z = rsample(*self.prior(l, z), noise)
            probs = F.sigmoid(self.logits(z)).data
        return probs if probabilities else sample_bernoulli(probs, noise)


class LatentVariableModel(Model):
    """Base of the models: the training loss from ``elbo`` or from ``log_weights``.

    Subclasses pass ``beta`` (KL weight), ``mc_samples`` (samples of the ELBO) and ``iw_k`` to
    the constructor and define ``elbo(x, noise, samples=None)`` -> per-example (reconstruction,
    KL) and ``log_weights(x, k, noise)`` -> (k, B).
    """

    def __init__(self, beta=1.0, mc_samples=1, iw_k=1):
        super().__init__()
        check_ranges(type(self), SETTING_RANGES, beta=beta)
        self.beta = float(beta)
        self.mc_samples = check_integer(mc_samples, "mc_samples", minimum=1)
        self.iw_k = check_integer(iw_k, "iw_k", minimum=1)

    def loss(self, x, noise, beta=None):
        """The training loss (a scalar Tensor) and a dict of per-batch statistics.

        The statistics are means over the batch: "loss", and "elbo", "rec" (reconstruction) and
        "kl" (the KL, unweighted), or with iw_k > 1 "loss" and "bound" (the IWAE bound). Each is
        a 0-d array of the model's float dtype on its device, made without reading anything back
        to the host, so a captured GPU step can compute them too; ``float(stats["loss"])`` (or the
        trainer's one read per step) brings them to Python.

        ``beta`` overrides the model's KL weight (the trainer uses it for warm-up): a Python
        number, or a 0-d array of the model's float dtype on its device (a weight that can change
        on the device between replays of a captured step); both give the same bits for one value.
        With iw_k > 1 the loss is minus the IWAE bound and beta does not apply.
        """
        check_batch(x)
        beta = kl_weight_of(self, beta)
        if self.iw_k > 1:
            bound = iwae_bound(self.log_weights(x, self.iw_k, noise)).mean()
            loss = -bound
            return loss, {"loss": loss.data, "bound": bound.data}
        rec, kl = self.elbo(x, noise)
        # One mean of the per-example loss (a graph node fewer than two means and their
        # difference); the statistics are read off the arrays, outside the graph.
        loss = (beta * kl - rec).mean()
        return loss, elbo_statistics(loss, rec, kl)


def elbo_statistics(loss, rec, kl):
    """The statistics of a loss from the per-example bound: "loss", "elbo", "rec" and "kl"
    (unweighted), batch means read off the arrays, outside the graph (see ``loss``)."""
    r, k = _statistic(rec.data.mean()), _statistic(kl.data.mean())
    return {"loss": loss.data, "elbo": _statistic(r - k), "rec": r, "kl": k}


def _statistic(value):
    """``value`` as a 0-d array on its device. NumPy turns reductions and arithmetic on 0-d
    arrays into scalars; ``asanyarray`` makes an array of them again, keeping an ndarray
    subclass (the tests' host-read guard) as it is."""
    return get_array_module(value).asanyarray(value)
