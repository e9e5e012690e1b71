"""The Ladder VAE (Sonderby, Raiko, Maaloe, Sonderby & Winther 2016).

Same generative model as a VAE with L stochastic layers (``TopDownGenerator``), new inference:

1. a deterministic bottom-up pass d_l = MLP_l(d_{l-1}) (d_0 = x) gives at every layer an estimate
   N(mu_hat_l, var_hat_l) from the data alone;
2. a top-down pass samples z_L ~ N(mu_hat_L, var_hat_L), then for l = L-1 ... 1 combines the
   generative model's own p(z_l | z_{l+1}) = N(mu_p, var_p) with the bottom-up estimate by
   precision weighting, q(z_l | .) = N(mu_q, var_q) with 1/var_q = 1/var_hat + 1/var_p and
   mu_q = (mu_hat/var_hat + mu_p/var_p) var_q (one op, ``F.precision_weighted_merge``), and
   samples z_l from it.

Every KL term is in closed form given the layer above: KL(q(z_L|x) || N(0, I)) and
KL(q(z_l|.) || p(z_l|z_{l+1})) for l < L. As in the paper, all deterministic layers use batch
normalization, the MLPs have two layers, and the KL is warmed up: pass ``--warmup EPOCHS`` to
the trainer (the paper ramps it from 0 to 1 over 200 epochs).

Three settings follow the authors' code (github.com/casperkaae/LVAE, run_models.py) where the
defaults keep minivae's first choices:

* ``up_input``: what the bottom-up MLP of layer l >= 2 reads. "features" (the default): the
  deterministic features d_{l-1} of the layer below; "mean": its mean estimate mu_hat_{l-1} (of
  size z_dims[l-2]), as the authors' ``only_mu_up`` does.
* ``variance``: how every Gaussian head (the bottom-up estimates and the generative
  p(z_l | z_{l+1})) gives its variance. "exp" (the default): the head's second map is the
  log-variance; "softplus": the variance is softplus(a) + 1e-5 of that map's output a, the
  authors' form and floor (``GaussianHead``). Their code adds the floor only inside the
  log-densities, after the merge, and samples with the variance without it; here the floor is
  part of each head's variance, so the samples, the merge and the densities use one variance.
* ``batch_norm_heads``: batch normalization, with its learned scale and shift, between each of
  those heads' linear maps and its output (before the softplus), as the authors' code has for
  every dense layer but the image output layer.

The authors' recipe turns all three on:
``--set up_input=mean --set variance=softplus --set batch_norm_heads=true``.

Registered as ``ladder``. The trainer's ``--hidden`` lists one width per stochastic layer (so its
length is L, 2 to 5 in the paper), ``--set z_dims=[...]`` the latent sizes (default the paper's
64, 32, 16, 8, 4, cut to L); ``--z-dim`` is not used. The paper's five-layer MNIST model:
``--model ladder --hidden 512 256 128 64 32 --activation leaky_relu --warmup 200``.
"""
import numpy as np

from .. import functional as F
from .. import nn
from ..checks import check_bool, check_choice, check_integer, check_sizes
from ..ops.ladder import precision_weighted_merge
from .base import check_batch, check_noise, check_one_training_bound
from .common import MLP, GaussianHead, LatentVariableModel, TopDownGenerator

PAPER_Z_DIMS = (64, 32, 16, 8, 4)
#: What the bottom-up MLPs above the first read: the features or the mean estimate of the layer below.
UP_INPUTS = ("features", "mean")


def check_ladder_sizes(model, hidden, z_dims):
    """The hidden widths and latent sizes of ``model``'s (a name, for messages) L layers, bottom to
    top, as tuples: ``z_dims`` None takes the paper's first L sizes (``PAPER_Z_DIMS``)."""
    hidden = check_sizes(hidden, "hidden")
    if z_dims is None:
        if len(hidden) > len(PAPER_Z_DIMS):
            raise ValueError(f"{model}: give z_dims for more than {len(PAPER_Z_DIMS)} layers")
        z_dims = PAPER_Z_DIMS[:len(hidden)]
    z_dims = check_sizes(z_dims, "z_dims")
    if len(z_dims) != len(hidden):
        raise ValueError(f"{model}: {len(hidden)} hidden widths need as many z_dims, got {z_dims}")
    return hidden, z_dims


def top_down(bottom_up, prior, noise, shape):
    """The Ladder VAE's top-down pass: draws from q and the q and p parameters of every layer.

    ``bottom_up`` lists the bottom-up estimates (mu_hat, logvar_hat) of the L layers, bottom to
    top; the top one is q(z_L | .) itself, and z_L is drawn from it with shape ``shape`` (e.g.
    (k, B, d_L) for k draws). Then for l = L-1 ... 1 (0-based l = L-2 ... 0) ``prior(l, z_above)``
    gives (mu_p, logvar_p) of p(z_l | z_{l+1}), the posterior is their precision-weighted
    combination q(z_l | .) = precision_weighted_merge(bottom_up[l], p_l), and z_l is drawn from it.
    The estimates broadcast against the samples: a (B, d) estimate merges with a (k, B, d)
    prior. Returns (zs, q, p), each bottom to top; the top layer's p is None (the model's prior
    for it, N(0, I), has no parameters). Shared by the Ladder VAE and the Ladder M2.
    """
    q, p = [bottom_up[-1]], [None]
    zs = [F.reparameterize(*q[0], noise, shape=shape)]
    for l in reversed(range(len(bottom_up) - 1)):
        p.insert(0, prior(l, zs[0]))
        q.insert(0, precision_weighted_merge(*bottom_up[l], *p[0]))
        zs.insert(0, F.reparameterize(*q[0], noise))
    return zs, q, p


def kl_terms(q, p):
    """The analytic KL of each layer, bottom to top, from ``top_down``'s q and p:
    KL(q(z_l | .) || p(z_l | z_{l+1})) below the top (one per draw of z_{l+1}), KL(q(z_L | .) || N(0, I))."""
    return ([F.kl_normal_normal(*q_l, *p_l) for q_l, p_l in zip(q[:-1], p[:-1])]
            + [F.kl_normal_std(*q[-1])])


def log_ratio(zs, q, p):
    """log p(z_1, ..., z_L) - log q(z_1, ..., z_L | .) per draw, from ``top_down``'s results:
    the top layer against N(0, I), each lower one against p(z_l | z_{l+1})."""
    out = F.gaussian_log_prob(zs[-1], 0.0, 0.0) - F.gaussian_log_prob(zs[-1], *q[-1])
    for z, q_l, p_l in zip(zs[:-1], q[:-1], p[:-1]):
        out = out + F.gaussian_log_prob(z, *p_l) - F.gaussian_log_prob(z, *q_l)
    return out


class LadderVAE(LatentVariableModel):
    """A Ladder VAE with ``len(hidden)`` stochastic layers (see the module docstring).

    ``hidden[l]`` is the width of the ``mlp_layers`` dense layers between layer l and l+1 (both
    ways), ``z_dims[l]`` the size of z_{l+1}. ``up_input``, ``variance`` and ``batch_norm_heads``
    are the authors' choices described in the module docstring. ``z_dim`` is accepted for the
    trainer's common settings and ignored.
    """

    gaussian_encoder = True
    encoded_gaussian = "q(z_L | x), the top layer"
    unused_settings = {"z_dim": "its latent sizes are --set z_dims"}

    def __init__(self, x_dim=784, z_dims: tuple[int, ...] | None = None, hidden=(512, 256, 128, 64, 32),
                 mlp_layers=2, activation="leaky_relu", batch_norm=True, up_input="features", variance="exp",
                 batch_norm_heads=False, beta=1.0, mc_samples=1, iw_k=1, z_dim=None, rng=None):
        super().__init__(beta, mc_samples, iw_k)
        rng = nn.init.get_rng(rng)  # one generator for all the layers (see models.base)
        hidden, z_dims = check_ladder_sizes("ladder", hidden, z_dims)
        check_one_training_bound(self.mc_samples, self.iw_k)
        self.x_dim, self.z_dims = check_integer(x_dim, "x_dim", minimum=1), z_dims
        mlp_layers = check_integer(mlp_layers, "mlp_layers", minimum=1)
        self.up_input = check_choice(up_input, "up_input", UP_INPUTS)
        batch_norm_heads = check_bool(batch_norm_heads, "batch_norm_heads")  # named as the setting
        blocks = [(h,) * mlp_layers for h in hidden]
        inputs = (x_dim,) + (hidden[:-1] if self.up_input == "features" else z_dims[:-1])
        self.up = nn.ModuleList([MLP((n_in,) + b, activation, batch_norm=batch_norm, rng=rng)
                             for n_in, b in zip(inputs, blocks)])
        self.up_heads = nn.ModuleList([GaussianHead(h, d, variance, batch_norm_heads, rng=rng)
                                       for h, d in zip(hidden, self.z_dims)])
        self.generator = TopDownGenerator(x_dim, self.z_dims, blocks, activation, batch_norm, variance,
                                          batch_norm_heads, rng=rng)

    @property
    def z_dim(self):
        """The size of the top layer z_L (the one ``encode`` describes, for pictures)."""
        return self.z_dims[-1]

    def encode(self, x):
        """(mu, logvar) of q(z_L | x), the top layer's posterior (the end of the bottom-up pass)."""
        return self.bottom_up(x)[-1]

    def decode(self, z_top):
        """Bernoulli logits from z_L through the generative means (``TopDownGenerator.decode``)."""
        return self.generator.decode(z_top)

    def bottom_up(self, x):
        """The deterministic bottom-up pass: each layer's estimate (mu_hat, logvar_hat) from the
        data alone, bottom to top (the top one is q(z_L | x)). Each MLP above the first reads the
        features d of the layer below, or with ``up_input`` "mean" its mean estimate mu_hat."""
        d, out = x, []
        for mlp, head in zip(self.up, self.up_heads):
            d = mlp(d)
            out.append(head(d))
            if self.up_input == "mean":
                d = out[-1][0]
        return out

    def _posterior(self, x, k, noise):
        """k draws from q: z (bottom to top, each (k, B, d_l)), the q and the p parameters per
        layer ((mu, logvar) pairs, bottom to top; the top layer's p is N(0, I), given as None)."""
        bottom_up = self.bottom_up(x)
        shape = (k,) + np.broadcast_shapes(*(t.shape for t in bottom_up[-1]))
        return top_down(bottom_up, self.generator.prior, noise, shape)

    def log_weights(self, x, k, noise):
        """(k, B) log p(x, z_1..z_L) - log q(z_1..z_L | x) for k independent draws per example."""
        check_batch(x)
        check_noise(noise)
        zs, q, p = self._posterior(x, check_integer(k, "k", minimum=1), noise)
        return F.bernoulli_log_prob(self.generator.logits(zs[0]), x) + log_ratio(zs, q, p)

    def kl_terms(self, q, p):
        """The analytic KL of each layer, bottom to top: (S, B) below the top, (B,) at the top."""
        return kl_terms(q, p)

    def elbo(self, x, noise, samples=None):
        """Per-example (reconstruction, KL), each (B,), averaged over ``samples`` draws; the KL is
        the sum of the layers' closed-form KLs (each given a sample of the layer above)."""
        check_batch(x)
        check_noise(noise)
        zs, q, p = self._posterior(x, self.elbo_samples(samples), noise)
        rec = F.bernoulli_log_prob(self.generator.logits(zs[0]), x).mean(axis=0)
        *lower, top = self.kl_terms(q, p)
        kl = top
        for term in lower:
            kl = kl + term.mean(axis=0)
        return rec, kl

    def sample(self, n, noise, probabilities=True):
        """n images by ancestral sampling (see ``TopDownGenerator.sample``)."""
        return self.generator.sample(n, noise, probabilities)
