"""Auxiliary deep generative models, ADGM and SDGM (Maaloe, Sonderby, Sonderby & Winther 2016).

An auxiliary variable a makes the variational distribution richer: q(z | x) = int q(a | x)
q(z | a, x) da is no longer a diagonal Gaussian. For the bound to stay a bound on log p(x), the
generative model gets a matching factor for a. The models, as in the paper's Sections 2.2-2.4
(and the authors' code), with every conditional a diagonal Gaussian except p(x | ...) (Bernoulli)
and p(y) = 1/K, q(y | ...) (categorical):

ADGM, unsupervised (Sec. 2.2; a is auxiliary, the marginal p(x, z) is the VAE's):
    p(x, a, z) = p(z) p(x | z) p(a | x, z),         q(a, z | x) = q(a | x) q(z | a, x),
    log p(x) >= E_q(a,z|x) [ log p(a | z, x) p(x | z) p(z) - log q(a | x) q(z | a, x) ].
ADGM, semi-supervised (Sec. 2.3):
    p(x, y, a, z) = p(y) p(z) p(x | y, z) p(a | x, y, z),
    q(a, y, z | x) = q(a | x) q(y | a, x) q(z | a, y, x).
SDGM, the skip deep generative model (Sec. 2.4; a becomes a second stochastic layer of the
generative model, with a skip connection z -> x):
    p(x, a, z) = p(z) p(a | z) p(x | a, z)                          (unsupervised),
    p(x, y, a, z) = p(y) p(z) p(a | z, y) p(x | a, z, y)             (semi-supervised),
with the same inference models as the ADGM.

The semi-supervised bounds L(x, y), U(x) and the loss with alpha * E[-log q(y | a, x)] are those
of ``semisupervised`` (the paper's J^alpha): a ~ q(a | x) is drawn once per sample and shared by
all K enumerated labels, z is drawn for each label. The KL of q(z | ...) from p(z) = N(0, I) is
analytic; the terms of a are single-sample estimates (p(a | ...) depends on the sampled z).
``classify`` uses q(y | a, x) at the mean of q(a | x) (the authors' code averages q(y | a, x)
over 100 draws of a instead).

Paper figures for MNIST with 100 labels: ADGM 0.96% (+- 0.02), SDGM 1.32% (+- 0.07) test error.
The defaults (a and z of 100 dimensions, two hidden layers of 500 units) are those of the
authors' MNIST script; they trained for 1000 epochs.

Registered as ``adgm`` and ``sdgm`` (unsupervised) and ``adgm-ssl`` and ``sdgm-ssl``
(semi-supervised); model settings through ``--set``, e.g. ``--set a_dim=100``.
"""
from .. import functional as F
from .. import nn
from ..autograd import no_grad
from ..checks import check_bool, check_integer, check_sizes
from ..distributions import sample_bernoulli, standard_normal
from .base import check_batch, check_noise, check_one_training_bound
from .common import MLP, GaussianHead, JointMLP, LatentVariableModel, rsample
from .semisupervised import SemiSupervised


class _AuxiliaryNetworks:
    """The networks of an ADGM (``skip = False``) or SDGM (``skip = True``), with or without y.

    Every conditional is a ``JointMLP`` over its parents (so enumerated labels broadcast) with a
    Gaussian head, or a Linear head for the logits of x and y. Shapes: a is (S, B, A); with
    labels y of shape (L, 1, B or 1, K), z and everything after it is (L, S, B, ...).
    """

    skip = False

    def _build(self, x_dim, a_dim, z_dim, hidden, activation, num_classes, rng):
        rng = nn.init.get_rng(rng)  # one generator for all the layers (see models.base)
        self.x_dim = check_integer(x_dim, "x_dim", minimum=1)
        self.a_dim = check_integer(a_dim, "a_dim", minimum=1)
        self.z_dim = check_integer(z_dim, "z_dim", minimum=1)
        hidden = check_sizes(hidden, "hidden")
        ys = (num_classes,) if num_classes else ()
        self.q_a_net = MLP((x_dim,) + hidden, activation, rng=rng)
        self.q_a = GaussianHead(hidden[-1], a_dim, rng=rng)
        if num_classes:
            self.classifier = JointMLP((x_dim, a_dim), hidden, activation, rng=rng)
            self.class_logits = nn.Linear(hidden[-1], num_classes, rng=rng)
        self.q_z_net = JointMLP((x_dim, a_dim) + ys, hidden, activation, rng=rng)
        self.q_z = GaussianHead(hidden[-1], z_dim, rng=rng)
        # The generative side: ADGM p(a | z, y, x), p(x | z, y); SDGM p(a | z, y), p(x | z, y, a).
        self.p_a_net = JointMLP((z_dim,) + ys + (() if self.skip else (x_dim,)), hidden[::-1],
                                activation, rng=rng)
        self.p_a = GaussianHead(hidden[0], a_dim, rng=rng)
        self.p_x_net = JointMLP((z_dim,) + ys + ((a_dim,) if self.skip else ()), hidden[::-1],
                                activation, rng=rng)
        self.logits = nn.Linear(hidden[0], x_dim, rng=rng)

    @staticmethod
    def _parents(*inputs):
        return [t for t in inputs if t is not None]

    def decode(self, z, y=None, a=None):
        """The Bernoulli logits of p(x | z[, y]) (ADGM) or p(x | z[, y], a) (SDGM)."""
        return self.logits(self.p_x_net(*self._parents(z, y, a if self.skip else None)))

    def _context(self, x, samples, noise, mean=False):
        """a ~ q(a | x), (S, B, A), and log q(a | x), (S, B); at the mean of q(a | x) if ``mean``."""
        mu, logvar = self.q_a(self.q_a_net(x))
        if mean:
            return {"samples": 1, "a": mu.reshape(1, *mu.shape)}
        a = rsample(mu, logvar, noise, samples)
        return {"samples": samples, "a": a, "log_qa": F.gaussian_log_prob(a, mu, logvar)}

    def _class_logits(self, x, context):
        return self.class_logits(self.classifier(x, context["a"]))

    def _terms(self, x, y, context, noise, analytic=True):
        """log p(x | ...) and log p(a | ...) - log q(a | x) + [-KL(q(z | a, y, x) || p(z)) or
        log p(z) - log q(z | a, y, x)], for z ~ q(z | a, y, x); y None for the unsupervised model."""
        a = context["a"]
        # (labels,) + a's sample and batch axes + (z_dim,): one z per label, sample and example,
        # and the KL of q(z | a, y, x) to p(z) = N(0, I) from the same node
        mu, logvar = self.q_z(self.q_z_net(*self._parents(x, a, y)))
        z, kl = F.reparameterize_kl(mu, logvar, noise)
        rec = F.bernoulli_log_prob(self.decode(z, y, a), x)
        mu_a, logvar_a = self.p_a(self.p_a_net(*self._parents(z, y, None if self.skip else x)))
        latent = F.gaussian_log_prob(a, mu_a, logvar_a) - context["log_qa"]
        if analytic:
            return rec, latent - kl
        return rec, latent + F.gaussian_log_prob(z, 0.0, 0.0) - F.gaussian_log_prob(z, mu, logvar)

    def _sample(self, n, noise, probabilities, y):
        n = check_integer(n, "n", minimum=0)
        probabilities = check_bool(probabilities, "probabilities")
        check_noise(noise)
        param = next(iter(self.parameters()))
        with no_grad():
            z = standard_normal(noise, (n, self.z_dim), param)
            a = None
            if self.skip:  # the SDGM generates a before x: a ~ p(a | z, y)
                mu_a, logvar_a = self.p_a(self.p_a_net(*self._parents(z, y)))
                a = rsample(mu_a, logvar_a, noise)
            probs = F.sigmoid(self.decode(z, y, a)).data
        return probs if probabilities else sample_bernoulli(probs, noise)


class ADGM(_AuxiliaryNetworks, LatentVariableModel):
    """The unsupervised ADGM: q(a|x), q(z|a,x), p(z), p(x|z), p(a|x,z) (see the module docstring).

    The loss is ``LatentVariableModel``'s, from ``elbo`` and ``log_weights``: ``beta`` weights
    the latent terms (warm-up), ``mc_samples`` averages the bound over draws, and ``iw_k`` > 1
    trains on the k-sample importance-weighted bound instead.
    """

    def __init__(self, x_dim=784, a_dim=100, z_dim=100, hidden=(500, 500), activation="relu",
                 beta=1.0, mc_samples=1, iw_k=1, rng=None):
        super().__init__(beta, mc_samples, iw_k)
        check_one_training_bound(self.mc_samples, self.iw_k)
        self._build(x_dim, a_dim, z_dim, hidden, activation, 0, rng)

    def _bound_terms(self, x, samples, noise, analytic=True):
        return self._terms(x, None, self._context(x, samples, noise), noise, analytic)

    def elbo(self, x, noise, samples=None):
        """Per-example (E log p(x | ...), E[log q(a, z | x) - log p(a, z | ...)]), each (B,)."""
        check_batch(x)
        check_noise(noise)
        rec, latent = self._bound_terms(x, self.elbo_samples(samples), noise)
        return rec.mean(axis=0), -latent.mean(axis=0)

    def log_weights(self, x, k, noise):
        """(k, B) log-weights log p(x, a, z) - log q(a, z | x) for k independent draws of (a, z)."""
        check_batch(x)
        check_noise(noise)
        rec, latent = self._bound_terms(x, check_integer(k, "k", minimum=1), noise, analytic=False)
        return rec + latent

    def sample(self, n, noise, probabilities=True):
        """n images from the generative model (z ~ N(0, I); for the SDGM also a ~ p(a | z))."""
        return self._sample(n, noise, probabilities, None)


class SDGM(ADGM):
    """The unsupervised SDGM: q(a|x), q(z|a,x), p(z), p(a|z), p(x|a,z) (see the module docstring)."""

    skip = True


class SemiSupervisedADGM(_AuxiliaryNetworks, SemiSupervised):
    """The semi-supervised ADGM: q(a|x), q(y|a,x), q(z|a,y,x), p(y), p(z), p(x|y,z), p(a|x,y,z).

    ``alpha`` (None: 0.1 N / N_l), ``alpha_scale``, ``labelled_weight``, ``beta`` and ``mc_samples``
    are those of ``SemiSupervised``; ``iw_k`` must be 1.
    """

    def __init__(self, x_dim=784, a_dim=100, z_dim=100, hidden=(500, 500), activation="relu",
                 num_classes=10, alpha: float | None = None, alpha_scale=0.1, beta=1.0, mc_samples=1,
                 iw_k=1, labelled_weight="batch", rng=None):
        super().__init__(num_classes, alpha, alpha_scale, beta, mc_samples, labelled_weight)
        if iw_k != 1:
            raise ValueError(f"{type(self).__name__} trains on the ELBO-based bounds; iw_k must be 1")
        self._build(x_dim, a_dim, z_dim, hidden, activation, self.num_classes, rng)

    def sample(self, n, noise, probabilities=True, labels=None):
        """n images with labels 0, 1, ..., K-1, 0, ... (or ``labels``)."""
        y = self.sample_labels(n, labels, next(iter(self.parameters())))
        return self._sample(n, noise, probabilities, y)


class SemiSupervisedSDGM(SemiSupervisedADGM):
    """The semi-supervised SDGM: q(a|x), q(y|a,x), q(z|a,y,x), p(y), p(z), p(a|z,y), p(x|a,z,y)."""

    skip = True
