"""A VAE with a categorical latent and the Gumbel-softmax (concrete) relaxation (Jang, Gu &
Poole 2017; Maddison, Mnih & Teh 2017).

The latent is N independent categorical variables with K classes each (30 x 10, the MNIST setup
of the reference implementation of Jang et al.), encoder and decoder MLPs 512-256 and 256-512.
In training a one-hot sample is replaced by its relaxation

    y = softmax((logits + g) / tau),   g ~ Gumbel(0, 1) i.i.d. (from our Philox generator),

differentiable in the logits, and the objective is Jang et al.'s relaxed ELBO

    E_g[log p(x | y)] - KL(Cat(softmax(logits)) || Uniform(K)),

the KL of the discrete distributions in closed form: sum_n sum_k q_nk (log q_nk + log K).
The temperature is annealed per epoch by ``set_epoch`` (the trainer calls it), following the
paper's schedule tau = max(tau_min, tau0 exp(-r t)) in the global step t, updated every
``steps_per_epoch`` steps: t = epoch * steps_per_epoch (default 500: 50,000 images in batches
of 100), r = 3e-5, tau0 = 1, tau_min = 0.5 (the reference notebook's values).

Evaluation scores the discrete model (decoder fed one-hot codes, its p(x) = sum_y p(y) p(x|y)):
in eval mode ``elbo`` draws exact categorical samples by the Gumbel-max trick (argmax of
logits + g) with the same closed-form KL, and ``log_weights`` are
log p(x | y) + log p(y) - log q(y | x) for such samples, so the reported test NLL (k importance
samples) is an upper bound on -log p(x) of the discrete model, as for the other models.

Registered as ``gumbel``; options ``n_vars``, ``n_classes``, ``tau0``, ``tau_min``,
``anneal_rate``, ``steps_per_epoch``. ``--hidden`` sets the encoder (decoder mirrored);
``--z-dim`` is not used. Importance-weighted training (``iw_k`` > 1) is refused: it would need
reparameterized samples of the discrete model. The Gumbel noise is drawn on the model's device
(``distributions.standard_gumbel``): on the GPU by a kernel, so that the training step is
captured as a CUDA graph like the other models' (``minivae.graph_steps``).
"""
import math

from .. import functional as F
from .. import nn
from ..autograd import no_grad, tensor
from ..checks import check_bool, check_integer, check_ranges, check_sizes
from ..distributions import log_categorical, log_uniform_categorical, sample_bernoulli, standard_gumbel
from .base import SETTING_RANGES, check_batch, check_noise
from .common import MLP, LatentVariableModel, model_array_module


def _schedule(owner, tau0, tau_min, anneal_rate, steps_per_epoch):
    """The temperature schedule's settings as Python numbers, checked (ValueError or TypeError
    naming ``owner``'s setting): a temperature at or below 0 divides the logits by 0 or flips
    them, and a ``tau_min`` above ``tau0`` would never be annealed."""
    check_ranges(owner, SETTING_RANGES, tau0=tau0, tau_min=tau_min, anneal_rate=anneal_rate)
    if tau_min > tau0:
        raise ValueError(f"tau_min={tau_min} is above tau0={tau0}: the temperature would be tau_min "
                         "from the first epoch on, never annealed; give a tau_min of at most tau0")
    return dict(tau0=float(tau0), tau_min=float(tau_min), anneal_rate=float(anneal_rate),
                steps_per_epoch=check_integer(steps_per_epoch, "steps_per_epoch", minimum=1))


def temperature(epoch, tau0=1.0, tau_min=0.5, anneal_rate=3e-5, steps_per_epoch=500):
    """tau = max(tau_min, tau0 exp(-anneal_rate * epoch * steps_per_epoch)) (see the module
    docstring) for a 0-based ``epoch``; the settings are checked as the model checks them."""
    s = _schedule(temperature, tau0, tau_min, anneal_rate, steps_per_epoch)
    t = check_integer(epoch, "epoch", minimum=0) * s["steps_per_epoch"]
    return max(s["tau_min"], s["tau0"] * math.exp(-s["anneal_rate"] * t))


class GumbelSoftmaxVAE(LatentVariableModel):
    """A VAE with ``n_vars`` categorical latents of ``n_classes`` classes (see the module docstring).

    The temperatures ``tau0`` and ``tau_min`` are finite and above 0 (they divide the logits),
    with ``tau_min`` at most ``tau0``; ``anneal_rate`` is finite and at least 0 (0: a constant
    temperature), ``steps_per_epoch`` an integer of at least 1. ``z_dim`` is accepted for the
    trainer's common settings and ignored: the latent is ``n_vars`` x ``n_classes``.
    """

    unused_settings = {"z_dim": "its latent is --set n_vars categorical variables of --set n_classes classes"}

    def __init__(self, n_vars=30, n_classes=10, tau0=1.0, tau_min=0.5, anneal_rate=3e-5,
                 steps_per_epoch=500, x_dim=784, hidden=(512, 256), activation="relu", beta=1.0,
                 mc_samples=1, iw_k=1, z_dim=None, rng=None):
        super().__init__(beta, mc_samples, iw_k)
        rng = nn.init.get_rng(rng)  # one generator for all the layers (see models.base)
        if self.iw_k != 1:
            raise ValueError("gumbel: importance-weighted training needs reparameterized samples of "
                             "the discrete model; use iw_k=1 (k > 1 is for evaluation)")
        self.x_dim = check_integer(x_dim, "x_dim", minimum=1)
        self.n_vars = check_integer(n_vars, "n_vars", minimum=1)
        # One class is no latent at all: every code is the same, the KL always 0.
        self.n_classes = check_integer(n_classes, "n_classes", minimum=2)
        self.schedule = _schedule(type(self), tau0, tau_min, anneal_rate, steps_per_epoch)
        self.tau = self.schedule["tau0"]
        # No hidden layer is a model too: both MLPs end in their own output layer (the code, x).
        hidden = check_sizes(hidden, "hidden", allow_empty=True)
        code = self.n_vars * self.n_classes
        self.encoder = MLP((x_dim,) + hidden + (code,), activation, final_activation=False, rng=rng)
        self.decoder = MLP((code,) + hidden[::-1] + (x_dim,), activation, final_activation=False, rng=rng)

    def set_epoch(self, epoch):
        """Anneal the temperature for (0-based) ``epoch``."""
        self.tau = temperature(epoch, **self.schedule)

    def logits(self, x):
        """Unnormalized log-probabilities of q(y | x), shape (B, n_vars, n_classes)."""
        return self.encoder(x).reshape(x.shape[0], self.n_vars, self.n_classes)

    def decode(self, y):
        """Bernoulli logits of p(x | y) for codes y (..., n_vars, n_classes), one-hot or relaxed."""
        return self.decoder(y.reshape(*y.shape[:-2], self.n_vars * self.n_classes))

    def _one_hot(self, scores):
        """One-hot codes of the argmax over classes (a constant: no gradient)."""
        xp = model_array_module(self)[0]
        return tensor(xp.eye(self.n_classes, dtype=scores.dtype)[scores.argmax(axis=-1)])

    def sample_codes(self, logits, k, noise, hard):
        """k codes per example, (k, B, n_vars, n_classes): relaxed softmax((logits + g) / tau), or
        (``hard``) exact categorical samples one_hot(argmax(logits + g))."""
        g = standard_gumbel(noise, (k,) + logits.shape, logits)
        if hard:
            return self._one_hot(logits.data + g)
        return F.softmax((logits + g) / self.tau, axis=-1)

    def kl(self, logits):
        """KL(Cat(softmax(logits)) || Uniform) per example, (B,): sum_n sum_k q (log q + log K)."""
        q, log_q = F.softmax(logits, axis=-1), F.log_softmax(logits, axis=-1)
        return F.sum(q * (log_q + math.log(self.n_classes)), axis=(-2, -1))

    def elbo(self, x, noise, samples=None, hard=None):
        """Per-example (reconstruction, KL), each (B,); relaxed codes in training mode, exact
        categorical codes in eval mode (or as ``hard``, True or False, says)."""
        check_batch(x)
        check_noise(noise)
        hard = not self.training if hard is None else check_bool(hard, "hard")  # "False" is true
        logits = self.logits(x)
        y = self.sample_codes(logits, self.elbo_samples(samples), noise, hard)
        return F.bernoulli_log_prob(self.decode(y), x).mean(axis=0), self.kl(logits)

    def log_weights(self, x, k, noise):
        """(k, B) log p(x | y) + log p(y) - log q(y | x) for k exact categorical codes y ~ q(y | x);
        log p(y) = -n_vars log K per example (a (B,) vector)."""
        check_batch(x)
        check_noise(noise)
        logits = self.logits(x)
        y = self.sample_codes(logits, check_integer(k, "k", minimum=1), noise, hard=True)
        log_prior = log_uniform_categorical(x.shape[0], self.n_classes, x.dtype, x.device) * self.n_vars
        log_q = F.sum(log_categorical(y, logits), axis=-1)
        return F.bernoulli_log_prob(self.decode(y), x) + log_prior - log_q

    def loss(self, x, noise, beta=None):
        """The relaxed-ELBO loss (``LatentVariableModel.loss``) and the temperature in the stats
        ("tau", a 0-d array like the others, filled on the device)."""
        loss, stats = super().loss(x, noise, beta)
        xp, dtype = model_array_module(self)
        stats["tau"] = xp.full((), self.tau, dtype=dtype)
        return loss, stats

    def sample(self, n, noise, probabilities=True):
        """n images from the discrete model: codes uniform one-hot (Gumbel-max of zero logits)."""
        n = check_integer(n, "n", minimum=0)
        probabilities = check_bool(probabilities, "probabilities")
        check_noise(noise)
        param = next(iter(self.parameters()))
        with no_grad():
            y = self._one_hot(standard_gumbel(noise, (n, self.n_vars, self.n_classes), param))
            probs = F.sigmoid(self.decode(y)).data
        return probs if probabilities else sample_bernoulli(probs, noise)
