"""The base class of every model: what the trainer, the evaluator and the command line rely on.

A model is an ``nn.Module`` with an attribute ``x_dim`` (the size of an image row) and these
methods (``x`` a (B, x_dim) batch, ``noise`` a Philox ``Generator``, never one fixed ``Noise``:
``check_noise``):

* ``loss(x, noise, beta=None)`` -> (scalar loss Tensor, dict of statistics): each statistic a
  0-d array of the model's float dtype on its device, computed without a read back to the host
  (the trainer converts them to floats, all at once); ``beta`` (the KL weight; None: the
  model's own) a Python number or such a 0-d array (see ``kl_weight_of``);
* ``elbo(x, noise, samples=None)`` -> per-example (reconstruction, KL) Tensors, shape (B,),
  averaged over ``samples`` draws (None: the model's ``mc_samples``; ``elbo_samples``);
* ``log_weights(x, k, noise)`` -> (k, B) importance log-weights of k samples drawn independently
  (none sharing noise with another: the evaluation draws k in several calls and merges them);
* ``sample(n, noise, probabilities=True)`` -> n images (Bernoulli means, or binary images);
* ``set_epoch(epoch)``: called by the trainer at the start of every epoch (default: nothing).

and the class attributes below say which optional capabilities it has; code asks these, never
``hasattr``. Sample counts (``mc_samples``, ``iw_k``, ``samples`` and ``k`` of at least 1, ``n``
of at least 0) are integers, refused otherwise rather than truncated (``check_integer``);
``probabilities`` is True or False, refused otherwise rather than read by its truth
(``check_bool``): labels passed in its place, ``sample(n, noise, labels)``, would be dropped.

A constructor's ``rng`` (None, an int seed or a NumPy Generator) is made into one Generator
(``nn.init.get_rng``) before it is threaded through the layers: an int passed on would seed a
fresh ``default_rng(seed)`` in every layer, so layers of one shape (a VAE's mu and logvar heads,
mirrored encoder and decoder layers) would start with identical weights.
"""
import numbers

import numpy as np

from .. import nn
from ..checks import NON_NEGATIVE, POSITIVE, check_float, check_integer, check_ranges
from ..random import Generator, Noise

#: The range of each real-valued setting of the models, by name (a name means the same in every
#: model that has it), which constructors check with ``check_ranges``. No weight may be infinite
#: (the loss would be inf or NaN) or negative: a negative ``beta`` would reward a posterior for
#: moving away from the prior, a negative ``alpha`` (or ``alpha_scale``, its factor) train the
#: classifier away from the given labels. A temperature divides logits: it must be above 0, and
#: a rate of annealing at least 0 (a negative one would heat up instead). The command line's
#: ``settings.MINIMUMS`` agrees.
SETTING_RANGES = {"beta": NON_NEGATIVE, "alpha": NON_NEGATIVE, "alpha_scale": NON_NEGATIVE,
                  "tau0": POSITIVE, "tau_min": POSITIVE, "anneal_rate": NON_NEGATIVE}


class Model(nn.Module):
    """A latent-variable model of images (see the module docstring for the methods)."""

    #: Learns from labels too: ``loss(x, noise, beta, labelled=(x_l, y_l))``, and
    #: ``set_data_sizes(n_total, n_labelled)`` is called before training.
    semi_supervised = False
    #: With ``semi_supervised``: the statistics of ``loss`` that are means over the labelled
    #: batch. The trainer weighs each statistic by the images it is a mean over, these by the
    #: labelled batch's and the others by ``x``'s ("loss" too, which adds the labelled terms to
    #: the unlabelled ones), so that an epoch's statistics are means over its images.
    labelled_statistics = ()
    #: Has a classifier: ``classify(x)`` -> an integer array of predicted labels (B,), each in
    #: [0, ``num_classes``).
    classifies = False
    #: ``encode(x)`` -> (mu, logvar) of one diagonal Gaussian (for the latent statistics).
    gaussian_encoder = False
    #: With ``gaussian_encoder``: that Gaussian in words, which ``analysis.latent_summary`` reports
    #: with its statistics. The posterior q(z | x) for a VAE; a part of the posterior for models
    #: with flows or several layers, whose KL from N(0, I) is then not the ELBO's KL term.
    encoded_gaussian = None
    #: Importance samples of the training bound: above 1 the model trains on the IWAE bound,
    #: which has no KL term, so a KL weight (beta, its warm-up) does not apply.
    iw_k = 1
    #: The trainer's common settings (``settings.COMMON``) that the constructor takes but does
    #: not use, each with what sets that part of the model instead: the command line refuses
    #: their options rather than leave them unused without a word.
    unused_settings = {}
    #: ``--set`` keys the model uses only when another has a given value, each as name ->
    #: (other name, value): the command line refuses one given without that value.
    conditional_settings = {}
    #: Constructor options whose value may name another run folder; the run layer replaces the
    #: folder by the model it holds (M1+M2's ``m1``).
    run_options = ()
    #: The log-likelihood that ``log_weights`` estimate, in words (and so the test NLL, its minus).
    estimated_log_likelihood = "log p(x)"

    def loss(self, x, noise, beta=None):
        """The training loss and its statistics, 0-d arrays (see the module docstring)."""
        raise NotImplementedError

    def elbo(self, x, noise, samples=None):
        """Per-example (reconstruction, KL) of the bound (see the module docstring)."""
        raise NotImplementedError

    def log_weights(self, x, k, noise):
        """(k, B) importance log-weights (see the module docstring)."""
        raise NotImplementedError

    def sample(self, n, noise, probabilities=True):
        """n images drawn from the model (see the module docstring)."""
        raise NotImplementedError

    def set_epoch(self, epoch):
        """Per-epoch schedules of the model (e.g. a temperature); none by default."""

    def elbo_samples(self, samples):
        """The draws an ``elbo`` call averages over: the model's ``mc_samples`` when ``samples``
        is None, else ``samples``, an integer of at least 1 (0 is refused, not the default)."""
        return self.mc_samples if samples is None else check_integer(samples, "samples", minimum=1)


def require(model, capability, use):
    """Refuse (TypeError) a model whose class does not declare ``capability``, one of ``Model``'s
    capability attributes, naming the model, the capability and ``use``, what needs it."""
    if not getattr(model, capability):
        name = type(model).__name__
        raise TypeError(f"{name} cannot be used for {use}: it does not declare {capability} "
                        f"({name}.{capability} is False)")


def kl_weight_of(model, beta):
    """The KL weight a loss uses: ``beta``, or the model's own ``model.beta`` when it is None.

    ``beta`` may be a Python number or a 0-d array of the model's float dtype on its device (the
    weight a captured GPU step reads from device memory); the ops refuse an array of another
    float dtype or device rather than cast it. An array with axes is refused here: it would
    broadcast into a per-example weight. So is anything else (a list would broadcast the same
    way, a string be read as a number, a bool as 0 or 1); a number, Python's or a NumPy scalar
    (such as an element of a NumPy schedule, which lives on the host), is taken as a float,
    and must be in the range a constructor's beta must be in (``SETTING_RANGES``: a ValueError
    otherwise). An array is not read back to the host to check its value.
    """
    if beta is None:
        return model.beta
    if hasattr(beta, "ndim") and not isinstance(beta, np.generic):  # the ops check an array's dtype
        if beta.ndim != 0:
            raise ValueError(f"beta must be a number or a 0-d array, got an array of shape {beta.shape}")
        return beta
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"beta must be a number or a 0-d array, got {type(beta).__name__} {beta!r:.40}")
    beta = float(beta)
    check_ranges(type(model), SETTING_RANGES, beta=beta)
    return beta


def check_one_training_bound(mc_samples, iw_k):
    """Refuse ``mc_samples`` > 1 with ``iw_k`` > 1 for a model that trains either on the ELBO
    averaged over ``mc_samples`` draws or on the IWAE bound of ``iw_k`` samples: given both, its
    loss would train on the IWAE bound and leave ``mc_samples`` unused without a word."""
    if mc_samples > 1 and iw_k > 1:
        raise ValueError("choose either mc_samples (ELBO) or iw_k (IWAE bound), not both")


def check_noise(noise):
    """Refuse anything but a ``minivae.random.Generator`` where a model takes its noise.

    A ``Noise`` is one fixed draw: every draw of one model call (a and z, the layers of a
    hierarchy, the chunks of ``log_weights``, the pixels ``sample`` draws after its z) would
    start from the same numbers, giving repeated or correlated samples where independent ones
    are meant. A fresh ``Generator(seed)`` gives the same numbers at every call instead.
    Anything else (NumPy's ``np.random.Generator``, a seed) would fail inside the first draw
    with an error about its methods or, for NumPy's, one naming a "Generator" as the wrong type.
    """
    if isinstance(noise, Noise):
        raise TypeError("noise must be a minivae.random.Generator, not a Noise (one fixed draw, which "
                        "every draw of the call would repeat); Generator(seed) gives the same numbers "
                        "at every call")
    if not isinstance(noise, Generator):
        kind = type(noise)
        raise TypeError(f"noise must be a minivae.random.Generator (Generator(seed)), got an object of "
                        f"type {kind.__module__}.{kind.__qualname__}")


def check_batch(x, name="x"):
    """Refuse what a model's loss, bounds (``loss``, ``elbo``, ``log_weights``) and classifier
    (``class_probabilities``, ``classify``) cannot take: anything but a batch of rows, shape
    (B, D) (one image without its batch axis would give a 0-d ELBO), an empty batch (B = 0: a loss's means are NaN, with warnings, not an error), or
    pixels that are no floats (``checks.check_float``: integers 0..255 would be scored as
    Bernoulli outcomes up to 255). Shape and dtype only: nothing is read from the device. A
    list or anything else without them is refused (TypeError) rather than failing on ``x.ndim``."""
    if not (hasattr(x, "ndim") and hasattr(x, "dtype")):
        raise TypeError(f"{name} must be an array or a Tensor, shape (B, D), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be a batch of rows, shape (B, D), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {x.shape}): a model needs at least one example")
    check_float(x, name, use="a model")
