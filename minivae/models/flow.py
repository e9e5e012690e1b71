"""A VAE whose posterior is a Gaussian pushed through K planar flows (Rezende & Mohamed 2015).

q_0(z_0 | x) = N(mu(x), diag e^logvar(x)) as in the VAE, then z_K = f_K o ... o f_1 (z_0) with
planar transforms whose parameters the encoder predicts per example (amortized, as in the
paper; ``minivae.flows``). The density of z_K is log q_K(z_K) = log q_0(z_0) - sum_k log|det J_k|,
so the bound is

    E_q0[ log p(x | z_K) + log p(z_K) - log q_0(z_0) + sum_k log |det J_k| ],

with the log-determinants per example. The KL of q_K to the prior has no closed form; the
entropy of q_0 has, and is used in ``elbo``.

Registered as ``flow``; ``--set flows=K`` sets the number of transforms (default 8; the paper
reports K = 10 ... 80). The flow parameters belong to the encoder's output layer, created with
the model, so an optimizer made from ``model.parameters()`` always trains them.

``--set annealing=joint`` trains on the paper's annealed free energy (its eq. 20), where the
warm-up's weight beta multiplies log p(x, z_K) = log p(x | z_K) + log p(z_K) instead of the KL:

    E_q0[ beta (log p(x | z_K) + log p(z_K)) - log q_0(z_0) + sum_k log |det J_k| ],

the bound itself at beta = 1. Early in the warm-up it makes the entropy of q_K weigh 1 / beta
times the rest, where the default ("kl", as in every model) makes the KL weigh beta times the
reconstruction.
"""
import math

from .. import functional as F
from .. import nn
from ..checks import check_choice, check_integer
from ..flows import AmortizedPlanarFlows
from .base import check_batch, check_noise, kl_weight_of
from .common import elbo_statistics, rsample
from .vae import VAE

DEFAULT_FLOWS = 8
#: What the warm-up's weight beta multiplies in the training loss (see the module docstring).
ANNEALINGS = ("kl", "joint")


class FlowVAE(VAE):
    """The VAE of ``minivae.models.vae`` with ``flows`` amortized planar transforms on q(z | x)."""

    # encode, inherited from the VAE, gives q_0, not the posterior q_K
    encoded_gaussian = "q0(z0 | x), the Gaussian before the flows"

    def __init__(self, flows=DEFAULT_FLOWS, x_dim=784, z_dim=50, hidden=(512, 256), activation="relu",
                 beta=1.0, mc_samples=1, iw_k=1, annealing="kl", rng=None):
        rng = nn.init.get_rng(rng)  # one generator for all the layers (see models.base)
        flows = check_integer(flows, "flows", minimum=0)  # 0: the plain VAE
        annealing = check_choice(annealing, "annealing", ANNEALINGS)
        super().__init__(x_dim, z_dim, hidden, activation, beta, mc_samples, iw_k, rng=rng)
        if annealing == "joint" and self.iw_k > 1:
            raise ValueError(f"annealing 'joint' weighs the bound's terms by the warm-up's beta, which the "
                             f"IWAE bound (iw_k {self.iw_k}) does not take: give iw_k 1, or annealing 'kl'")
        self.annealing = annealing
        self.flows = AmortizedPlanarFlows(self.q_z.mu.in_features, z_dim, flows, rng=rng)

    def reconstruction_latent(self, x):
        """The mean of q_0(z_0 | x) pushed through the flows: the deterministic latent point that
        pictures decode ``x`` from (the mean of q_K itself has no closed form)."""
        h = self.encoder(x)
        mu, _ = self.q_z(h)
        return self.flows(h, mu.reshape(1, *mu.shape))[0][0]

    def _flow_sample(self, x, k, noise):
        """k draws z_0 ~ q_0(z | x) per example, pushed through the flows: (mu, logvar, z_0, z_K,
        sum of log-determinants (k, B))."""
        h = self.encoder(x)
        mu, logvar = self.q_z(h)
        z0 = rsample(mu, logvar, noise, k)
        zk, log_det = self.flows(h, z0)
        return mu, logvar, z0, zk, log_det

    def log_weights(self, x, k, noise):
        """(k, B) log p(x | z_K) + log p(z_K) - log q_K(z_K | x) for k independent draws."""
        check_batch(x)
        check_noise(noise)
        mu, logvar, z0, zk, log_det = self._flow_sample(x, check_integer(k, "k", minimum=1), noise)
        log_q = F.gaussian_log_prob(z0, mu, logvar) - log_det
        return F.bernoulli_log_prob(self.decode(zk), x) + F.gaussian_log_prob(zk, 0.0, 0.0) - log_q

    def elbo(self, x, noise, samples=None):
        """Per-example (reconstruction, KL), each (B,), averaged over ``samples`` draws.

        KL(q_K || p) = -H[q_0] - E[sum_k log|det J_k| + log p(z_K)], with the Gaussian entropy
        H[q_0] = 1/2 sum_j (1 + log 2 pi + logvar_j) in closed form and the rest sampled.
        Without flows q_K is q_0, whose KL has a closed form: then this is the VAE's ``elbo``
        (the same reconstruction from the same draws, and the analytic KL, never negative).
        """
        if self.flows.n_flows == 0:  # a sampled KL would only add variance to the same bound
            return super().elbo(x, noise, samples)
        rec, entropy, log_prior, log_det = self._bound_terms(x, noise, samples)
        return rec, _kl(entropy, log_prior, log_det)

    def _bound_terms(self, x, noise, samples=None):
        """The terms of the bound from ``samples`` draws (the model's ``mc_samples`` by default):
        per example, the reconstruction E[log p(x | z_K)] and the entropy H[q_0] in closed form,
        each (B,); per draw, log p(z_K) and sum_k log |det J_k|, each (samples, B)."""
        check_batch(x)
        check_noise(noise)
        mu, logvar, z0, zk, log_det = self._flow_sample(x, self.elbo_samples(samples), noise)
        rec = F.bernoulli_log_prob(self.decode(zk), x).mean(axis=0)
        entropy = 0.5 * F.sum(logvar, axis=-1) + 0.5 * self.z_dim * (1 + math.log(2 * math.pi))
        return rec, entropy, F.gaussian_log_prob(zk, 0.0, 0.0), log_det

    def loss(self, x, noise, beta=None):
        """The training loss and its statistics, as every model's (``LatentVariableModel.loss``);
        with ``annealing`` "joint", minus the annealed free energy of the module docstring, whose
        beta multiplies log p(x | z_K) + log p(z_K). The statistics are the unweighted bound's."""
        if self.annealing == "kl":
            return super().loss(x, noise, beta)
        beta = kl_weight_of(self, beta)
        rec, entropy, log_prior, log_det = self._bound_terms(x, noise)
        loss = (-(beta * (rec + log_prior.mean(axis=0))) - (entropy + log_det.mean(axis=0))).mean()
        return loss, elbo_statistics(loss, rec, _kl(entropy, log_prior, log_det))


def _kl(entropy, log_prior, log_det):
    """KL(q_K || p) per example from the bound's terms (``FlowVAE._bound_terms``):
    -H[q_0] - E[sum_k log |det J_k| + log p(z_K)]."""
    return -entropy - (log_det + log_prior).mean(axis=0)
