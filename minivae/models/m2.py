"""M2, the generative semi-supervised model of Kingma, Rezende, Mohamed & Welling (2014).

Generative model (their Eq. 2): p(y) = Cat(y; 1/K), p(z) = N(z; 0, I), p(x | y, z) Bernoulli
with logits f(y, z). Inference model (their Eq. 4): q(z | x, y) = N(mu(x, y), diag e^logvar(x, y))
(in the paper the variance depends on x alone; here on x and y, as the mean does)
and the classifier q(y | x) = Cat(y; softmax(g(x))). With ``likelihood="gaussian"``, p(x | y, z) is a
diagonal Gaussian N(x; m(y, z), diag e^s(y, z)) instead: the M2 of M1+M2, whose "x" are the real-valued
latent features of a trained VAE (``minivae.models.m1m2``). The labelled bound, the unlabelled bound
summed over all labels and the classification term are those of ``semisupervised`` (their
Eqs. 6, 7 and 9); the KL of q(z | x, y) from p(z) is analytic:

    L(x, y) = E_q(z|x,y) log p(x | y, z) - beta KL(q(z | x, y) || N(0, I)) - log K.

Defaults: one hidden layer of 500 units per network and a 50-dimensional z (``hidden=(500,)``,
``z_dim=50``); ``hidden`` lists the encoder's and classifier's hidden sizes, the decoder mirrors
them. The paper reports 11.97% (+- 1.71) test error on MNIST with 100 labels (its Table 1).

Cost: the unlabelled bound runs the encoder above its first layer on K * B rows (K = 10 labels;
q(z | x, y) does not depend on the draw) and the decoder on K * S * B rows (S = ``mc_samples``),
so a step costs about K times a VAE step of the same size; the 784-wide first layer of the
encoder and the classifier run once per image. Registered as ``m2``: ``minivae train --model
m2 --n-labelled 100 --hidden 500 --z-dim 50`` (``--set alpha=...`` fixes alpha).
"""
from .. import functional as F
from .. import nn
from ..autograd import no_grad
from ..checks import check_bool, check_choice, check_integer, check_sizes
from ..distributions import sample_bernoulli, standard_normal
from .common import MLP, GaussianHead, JointMLP
from .base import check_noise
from .semisupervised import SemiSupervised


LIKELIHOODS = ("bernoulli", "gaussian")


class M2(SemiSupervised):
    """M2 with MLP classifier q(y|x), encoder q(z|x,y) and a Bernoulli (default) or Gaussian
    decoder p(x|y,z) (``likelihood``).

    ``alpha`` (None: 0.1 N / N_l), ``alpha_scale``, ``labelled_weight``, ``beta`` and ``mc_samples``
    are those of ``SemiSupervised``; ``iw_k`` is accepted for the trainer's common settings and must be 1.
    """

    def __init__(self, x_dim=784, z_dim=50, hidden=(500,), activation="relu", num_classes=10,
                 alpha: float | None = None, alpha_scale=0.1, beta=1.0, mc_samples=1, iw_k=1,
                 likelihood="bernoulli", labelled_weight="batch", rng=None):
        super().__init__(num_classes, alpha, alpha_scale, beta, mc_samples, labelled_weight)
        rng = nn.init.get_rng(rng)  # one generator for all the layers (see models.base)
        if iw_k != 1:
            raise ValueError("M2 trains on the ELBO-based bounds; iw_k must be 1")
        self.likelihood = check_choice(likelihood, "likelihood", LIKELIHOODS)
        self.x_dim = check_integer(x_dim, "x_dim", minimum=1)
        self.z_dim = check_integer(z_dim, "z_dim", minimum=1)
        hidden, k = check_sizes(hidden, "hidden"), self.num_classes
        self.classifier = nn.Sequential(MLP((x_dim,) + hidden, activation, rng=rng),
                                        nn.Linear(hidden[-1], k, rng=rng))
        self.encoder = JointMLP((x_dim, k), hidden, activation, rng=rng)
        self.q_z = GaussianHead(hidden[-1], z_dim, rng=rng)
        self.decoder = JointMLP((z_dim, k), hidden[::-1], activation, rng=rng)
        # The parameters of p(x | y, z): Bernoulli logits, or a Gaussian's (mean, log-variance).
        self.out = (nn.Linear(hidden[0], x_dim, rng=rng) if likelihood == "bernoulli"
                    else GaussianHead(hidden[0], x_dim, rng=rng))

    def encode(self, x, y):
        """(mu, logvar) of q(z | x, y); y one-hot, possibly a label grid (K, 1, 1, K)."""
        return self.q_z(self.encoder(x, y))

    def decode(self, z, y):
        """The parameters of p(x | y, z): Bernoulli logits, or (mean, logvar) of the Gaussian."""
        return self.out(self.decoder(z, y))

    def log_likelihood(self, x, z, y):
        """log p(x | y, z) per example (summed over the last axis of x)."""
        params = self.decode(z, y)
        if self.likelihood == "bernoulli":
            return F.bernoulli_log_prob(params, x)
        return F.gaussian_log_prob(x, *params)

    def _context(self, x, samples, noise, mean=False):
        return {"samples": samples}  # M2 draws nothing before y

    def _class_logits(self, x, context):
        return self.classifier(x).reshape(1, x.shape[0], self.num_classes)

    def _terms(self, x, y, context, noise, analytic=True):
        """log p(x | y, z) for z ~ q(z | x, y), and -KL (analytic) or log p(z) - log q(z | x, y)."""
        mu, logvar = self.encode(x, y)  # (L, 1, B, D): q(z | x, y) does not depend on the sample
        z = F.reparameterize(mu, logvar, noise, shape=(y.shape[0], context["samples"], x.shape[0], self.z_dim))
        rec = self.log_likelihood(x, z, y)
        if analytic:
            return rec, -F.kl_normal_std(mu, logvar)
        return rec, F.gaussian_log_prob(z, 0.0, 0.0) - F.gaussian_log_prob(z, mu, logvar)

    def sample(self, n, noise, probabilities=True, labels=None):
        """n draws from p(x | y, z), z ~ N(0, I), with labels 0, 1, ..., K-1, 0, ... (or ``labels``).

        Bernoulli: the means (``probabilities``) or binary images; Gaussian: the means m(y, z).
        """
        check_noise(noise)
        probabilities = check_bool(probabilities, "probabilities")
        param = next(iter(self.parameters()))
        y = self.sample_labels(n, labels, param)
        with no_grad():
            z = standard_normal(noise, (n, self.z_dim), param)
            out = self.decode(z, y)
        if self.likelihood == "gaussian":
            return out[0].data
        probs = F.sigmoid(out).data
        return probs if probabilities else sample_bernoulli(probs, noise)
