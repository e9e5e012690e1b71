"""The importance-weighted autoencoder (Burda, Grosse & Salakhutdinov 2015), one or two layers.

The IWAE keeps the VAE's model and trains on the k-sample bound

    L_k = E[log (1/k) sum_i p(x, h_i) / q(h_i | x)],   h_1..h_k ~ q(h | x) independently,

which is the ELBO at k = 1 and tightens as k grows. One stochastic layer is ``VAE(iw_k=k)``;
two layers are ``TwoLayerVAE``: x -> 200-200 -> z1 (100) -> 100-100 -> z2 (50) in the
inference network q(z1 | x) q(z2 | z1), and the mirror image p(z2) p(z1 | z2) p(x | z1) in the
generative one (the paper's architecture, used with tanh units there).

Registered as ``iwae`` (``--model iwae``), built by ``iwae()`` below from the trainer's common
settings plus two options (``--set KEY=VALUE``):

* ``k``: importance samples in training (default: ``--iw-k`` when that is above 1, else 5);
  ``k=1`` trains on the ELBO (with the analytic KL where one exists).
* ``layers``: 1 (default) or 2. With 2 layers ``--z-dim`` is the top layer z2 (default 50) and
  ``--hidden`` the x <-> z1 block; ``z1_dim`` (100) and ``hidden2`` ([100, 100]) set the rest.

The paper's two-layer MNIST model: ``--model iwae --set layers=2 --set k=50 --hidden 200 200
--activation tanh`` (its Table 1 reports test NLL 82.90 for k = 50, 85.33 for k = 1).
"""
from .. import functional as F
from .. import nn
from ..checks import check_integer, check_sequence, check_sizes
from .base import check_batch, check_noise, check_one_training_bound
from .common import GaussianLayer, LatentVariableModel, TopDownGenerator, rsample
from .vae import VAE

DEFAULT_K = 5
#: The two-layer model's own sizes, z1 and the z1 <-> z2 block (the paper's).
DEFAULT_Z1_DIM, DEFAULT_HIDDEN2 = 100, (100, 100)


class TwoLayerVAE(LatentVariableModel):
    """A VAE with stochastic layers z1 and z2 and bottom-up inference q(z1 | x) q(z2 | z1).

    ``z_dims`` = (d1, d2) and ``blocks`` = (hidden sizes x <-> z1, hidden sizes z1 <-> z2); the
    generative side is a ``TopDownGenerator`` with the mirrored blocks. Trains on the ELBO
    (``iw_k`` = 1, KL weighted by ``beta``) or on the k-sample IWAE bound.
    """

    gaussian_encoder = True
    encoded_gaussian = "q(z2 | z1 = E[z1 | x]), the top layer"

    def __init__(self, x_dim=784, z_dims=(100, 50), blocks=((200, 200), (100, 100)),
                 activation="tanh", beta=1.0, mc_samples=1, iw_k=1, rng=None):
        super().__init__(beta, mc_samples, iw_k)
        rng = nn.init.get_rng(rng)  # one generator for all the layers (see models.base)
        z_dims = check_sizes(z_dims, "z_dims")
        blocks = tuple(check_sizes(b, f"blocks[{i}]")
                       for i, b in enumerate(check_sequence(blocks, "blocks", "lists of hidden sizes")))
        if len(z_dims) != 2 or len(blocks) != 2:
            raise ValueError(f"TwoLayerVAE needs two latent sizes and two hidden blocks, got "
                             f"{z_dims} and {blocks}")
        check_one_training_bound(self.mc_samples, self.iw_k)
        self.x_dim, self.z_dims = check_integer(x_dim, "x_dim", minimum=1), z_dims
        (d1, d2), (h1, h2) = self.z_dims, blocks
        self.q_z1 = GaussianLayer(x_dim, h1, d1, activation, rng=rng)
        self.q_z2 = GaussianLayer(d1, h2, d2, activation, rng=rng)
        self.generator = TopDownGenerator(x_dim, self.z_dims, (h1, h2), activation, rng=rng)

    @property
    def z_dim(self):
        """The size of the top layer z2 (the one ``encode`` describes, for pictures)."""
        return self.z_dims[-1]

    def encode(self, x):
        """(mu, logvar) of q(z2 | z1) at z1 = the mean of q(z1 | x): a summary of the top layer
        for pictures (the marginal q(z2 | x) is not Gaussian)."""
        return self.q_z2(self.q_z1(x)[0])

    def decode(self, z_top):
        """Bernoulli logits from z2 through the mean of p(z1 | z2) (``TopDownGenerator.decode``)."""
        return self.generator.decode(z_top)

    def _posterior(self, x, k, noise):
        """k draws (z1, z2) ~ q(z1 | x) q(z2 | z1), each (k, B, d), the q parameters, and
        KL(q(z2 | z1) || N(0, I)) per draw, (k, B) (z2 and this KL come from one node)."""
        mu1, logvar1 = self.q_z1(x)
        z1 = rsample(mu1, logvar1, noise, k)
        mu2, logvar2 = self.q_z2(z1)
        z2, kl2 = F.reparameterize_kl(mu2, logvar2, noise)
        return (z1, z2), ((mu1, logvar1), (mu2, logvar2)), kl2

    def log_weights(self, x, k, noise):
        """(k, B) log p(x, z1, z2) - log q(z1, z2 | x) for k independent draws per example."""
        k = check_integer(k, "k", minimum=1)
        check_batch(x)
        check_noise(noise)
        (z1, z2), ((mu1, logvar1), (mu2, logvar2)), _ = self._posterior(x, k, noise)
        log_q = F.gaussian_log_prob(z1, mu1, logvar1) + F.gaussian_log_prob(z2, mu2, logvar2)
        return self.generator.log_prob(x, (z1, z2)) - log_q

    def elbo(self, x, noise, samples=None):
        """Per-example (reconstruction, KL), each (B,), averaged over ``samples`` draws.

        KL = E_q[log q(z1|x) - log p(z1|z2)] + E_q(z1|x)[KL(q(z2|z1) || N(0, I))]: the second term
        in closed form given z1; the first is sampled (p(z1 | z2) depends on z2, which depends on
        z1, so it has no closed form).
        """
        check_batch(x)
        check_noise(noise)
        (z1, z2), ((mu1, logvar1), _), kl2 = self._posterior(x, self.elbo_samples(samples), noise)
        rec = F.bernoulli_log_prob(self.generator.logits(z1), x)
        mu_p, logvar_p = self.generator.prior(0, z2)
        kl = F.gaussian_log_prob(z1, mu1, logvar1) - F.gaussian_log_prob(z1, mu_p, logvar_p) + kl2
        return rec.mean(axis=0), kl.mean(axis=0)

    def sample(self, n, noise, probabilities=True):
        """n images by ancestral sampling (see ``TopDownGenerator.sample``)."""
        return self.generator.sample(n, noise, probabilities)


def iwae(layers=1, k: int | None = None, z1_dim=DEFAULT_Z1_DIM, hidden2=DEFAULT_HIDDEN2, x_dim=784,
         z_dim=50, hidden=(512, 256), activation="relu", beta=1.0, mc_samples=1, iw_k=1, rng=None):
    """The importance-weighted autoencoder: ``VAE(iw_k=k)`` (one layer) or ``TwoLayerVAE`` (see the
    module docstring for the options). ``z1_dim`` and ``hidden2`` shape the two-layer model
    only: other than their defaults with ``layers=1`` they are refused (ValueError), not ignored.
    ``mc_samples`` above 1 needs ``k=1`` (the ELBO): the IWAE bound of k > 1 samples, the
    default, would leave it unused, and is refused with it."""
    iw_k = check_integer(iw_k, "iw_k", minimum=1)
    defaulted = k is None
    if k is None:
        k = iw_k if iw_k > 1 else DEFAULT_K
    k = check_integer(k, "k", minimum=1)
    if iw_k > 1 and iw_k != k:
        raise ValueError(f"iwae: the option k={k} contradicts iw_k={iw_k}; give only one")
    mc_samples = check_integer(mc_samples, "mc_samples", minimum=1)
    # With iw_k > 1 the constructors' own message names the two settings given.
    if mc_samples > 1 and k > 1 and iw_k == 1:
        raise ValueError(f"iwae: k={k}{' (its default)' if defaulted else ''} trains on the IWAE bound, "
                         f"which would leave mc_samples={mc_samples} unused; give k=1 to train on the "
                         f"ELBO averaged over mc_samples draws, or leave mc_samples at 1")
    layers = check_integer(layers, "layers", minimum=1)
    # Checked whatever the layers, so that a bad value is named as such, not as an unused one.
    z1_dim, hidden2 = check_integer(z1_dim, "z1_dim", minimum=1), check_sizes(hidden2, "hidden2")
    if layers == 1:
        unused = []
        if z1_dim != DEFAULT_Z1_DIM:
            unused.append(f"z1_dim={z1_dim}")
        if hidden2 != DEFAULT_HIDDEN2:
            unused.append(f"hidden2={hidden2}")
        if unused:
            raise ValueError(f"iwae: layers=1 would leave {' and '.join(unused)} unused (sizes of the "
                             f"two-layer model only); give layers=2, or leave {'them' if len(unused) > 1 else 'it'} out")
        return VAE(x_dim, z_dim, hidden, activation, beta, mc_samples, iw_k=k, rng=rng)
    if layers == 2:  # the blocks named as the factory's arguments, not as TwoLayerVAE's
        blocks = (check_sizes(hidden, "hidden"), hidden2)
        z_dims = (z1_dim, check_integer(z_dim, "z_dim", minimum=1))
        return TwoLayerVAE(x_dim, z_dims, blocks, activation,
                           beta, mc_samples, iw_k=k, rng=rng)
    raise ValueError(f"iwae: layers must be 1 or 2, got {layers!r}")


#: Options that shape the two-layer model only: given with layers=1 they would be left unused
#: without a word, so the command line refuses them there (``Model.conditional_settings``), even
#: at their defaults, naming the --set; the factory refuses values other than the defaults.
iwae.conditional_settings = {"z1_dim": ("layers", 2), "hidden2": ("layers", 2)}
