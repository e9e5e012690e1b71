"""The VAE of Kingma & Welling (2014): Gaussian encoder, reparameterized sample, Bernoulli decoder.

One class covers the variants that differ only in the objective: beta-VAE (``beta``), KL warm-up
(the trainer passes a smaller ``beta``), several Monte Carlo samples (``mc_samples``) and the
importance-weighted bound of Burda et al. 2015 (``iw_k`` > 1).

Shapes: x is (B, 784); with S samples, z is (S, B, D) and the decoder runs on all S*B rows at once
(the linear op accepts leading axes), so samples cost one batched pass, not a Python loop.
"""
from .. import functional as F
from .. import nn
from ..autograd import no_grad
from ..checks import check_bool, check_integer, check_sizes
from ..distributions import sample_bernoulli, standard_normal
from .base import check_batch, check_noise, check_one_training_bound
from .common import MLP, GaussianHead, LatentVariableModel, rsample


class VAE(LatentVariableModel):
    """A VAE with MLP encoder and decoder, z-dim ``z_dim`` (50 as in Kingma et al. 2014).

    ``hidden`` lists the encoder's hidden sizes; the decoder mirrors them. ``beta`` weights the KL
    (beta-VAE when > 1), ``mc_samples`` averages the ELBO over that many samples, and ``iw_k`` > 1
    trains on the k-sample IWAE bound instead (analytic KL does not apply there).
    """

    gaussian_encoder = True
    encoded_gaussian = "q(z | x)"

    def __init__(self, x_dim=784, z_dim=50, hidden=(512, 256), activation="relu", beta=1.0,
                 mc_samples=1, iw_k=1, rng=None):
        super().__init__(beta, mc_samples, iw_k)
        rng = nn.init.get_rng(rng)  # one generator for all the layers (see models.base)
        check_one_training_bound(self.mc_samples, self.iw_k)
        self.x_dim = check_integer(x_dim, "x_dim", minimum=1)
        self.z_dim = check_integer(z_dim, "z_dim", minimum=1)
        hidden = check_sizes(hidden, "hidden")
        self.encoder = MLP((x_dim,) + hidden, activation, rng=rng)
        self.q_z = GaussianHead(hidden[-1], z_dim, rng=rng)
        self.decoder = MLP((z_dim,) + hidden[::-1] + (x_dim,), activation, final_activation=False, rng=rng)

    def encode(self, x):
        """Return (mu, logvar) of q(z | x)."""
        return self.q_z(self.encoder(x))

    def decode(self, z):
        """Return the Bernoulli logits of p(x | z)."""
        return self.decoder(z)

    def reconstruction_latent(self, x):
        """The latent point that pictures decode ``x`` from: the mean of q(z | x) (deterministic,
        without sampling noise)."""
        return self.encode(x)[0]

    def elbo(self, x, noise, samples=None):
        """Per-example ELBO terms: (reconstruction E_q log p(x|z), KL(q(z|x) || p(z))), each (B,).

        The KL is analytic; the reconstruction averages ``samples`` (default ``mc_samples``) draws
        z of shape (samples, B, D). Both come from one ``F.reparameterize_kl`` node (on the GPU,
        the fused reparameterization + KL kernels).
        """
        check_batch(x)
        check_noise(noise)
        mu, logvar = self.encode(x)
        z, kl = F.reparameterize_kl(mu, logvar, noise, samples=self.elbo_samples(samples))
        return F.bernoulli_log_prob(self.decode(z), x).mean(axis=0), kl

    def log_weights(self, x, k, noise):
        """(k, B) importance log-weights log p(x|z) + log p(z) - log q(z|x) for k draws z ~ q(z|x)."""
        check_batch(x)
        check_noise(noise)
        mu, logvar = self.encode(x)
        z = rsample(mu, logvar, noise, check_integer(k, "k", minimum=1))
        return (F.bernoulli_log_prob(self.decode(z), x) + F.gaussian_log_prob(z, 0.0, 0.0)
                - F.gaussian_log_prob(z, mu, logvar))

    def sample(self, n, noise, probabilities=True):
        """Draw n images from the model: z ~ N(0, I), then the decoder's Bernoulli means (n, x_dim).

        With ``probabilities=False`` the pixels are also sampled (binary images).
        """
        n = check_integer(n, "n", minimum=0)
        probabilities = check_bool(probabilities, "probabilities")
        check_noise(noise)
        with no_grad():
            z = standard_normal(noise, (n, self.z_dim), next(iter(self.parameters())))
            probs = F.sigmoid(self.decode(z)).data
        return probs if probabilities else sample_bernoulli(probs, noise)
