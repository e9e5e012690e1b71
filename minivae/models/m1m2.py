"""M1+M2 (Kingma, Rezende, Mohamed & Welling 2014, Sec. 2.3): M2 on the latent space of a VAE.

M1 is a VAE trained on all images without labels (``minivae train --model vae``); its encoder
q(z1 | x) turns each image into a 50-dimensional feature z1, where the classes are far easier to
separate than in pixel space. M2 (``minivae.models.m2``) is then trained semi-supervised on z1
instead of x, with a Gaussian p(z1 | y, z2) in place of the Bernoulli image likelihood:

    p(y) p(z2) p(z1 | y, z2),   q(y | z1) q(z2 | z1, y),   z1 ~ q(z1 | x) from the frozen M1.

As in the paper, M1 stays fixed while M2 trains (its parameters do not require gradients, so the
optimizer skips them), and M2 sees a fresh sample z1 ~ q(z1 | x) at every training step.
Everything else sees one fixed feature per image, the mean of q(z1 | x), as the authors' code
does for its validation and test images: classification, ``elbo`` and ``log_weights``. The
evaluation's numbers are therefore M2's at z1 = E_q[z1 | x]: ``elbo`` bounds log p(z1), and the
importance-sampled estimate from ``log_weights`` (``minivae.evaluate.log_likelihood``, reported
as ``test_nll``) is of -log p(z1) under M2, a density of M1's features, not of the image, so it
is not comparable with any model's log p(x); the number to compare is the test error (the paper
reports 3.33% +- 0.14 with 100 labels, its Table 1). A fixed feature also keeps the estimate
well defined: all k importance samples weigh the same z1, however the evaluation splits them
into chunks.

Samples go through both models: z2 ~ N(0, I) and y give z1 (the mean of p(z1 | y, z2)), which
M1's decoder turns into an image.

The model takes the trained VAE itself (``M1M2(m1=vae)``). Registered as ``m1m2``, where
``--set m1=RUN`` names the folder of a trained VAE run (required), whose model the run layer
(``minivae.runs``, its ``run_options``) loads and passes in:
``minivae train --model m1m2 --set m1=runs/vae --n-labelled 100 --hidden 500 --z-dim 50``.
That model is the one the run selected: of its epoch best on the validation split when it was
trained with ``--keep-best``, else of its last epoch.
``--hidden`` and ``--z-dim`` are M2's (z2); M1's sizes come from its run. The checkpoint keeps
M1's weights too, and the run records M1's settings when it starts (``TrainConfig.run_models``),
so a trained M1+M2 keeps the M1 it was trained with, and is rebuilt without the M1 folder, even
if that run is trained again or removed.
"""
from .. import functional as F
from ..autograd import no_grad
from ..checks import check_bool, check_integer
from ..distributions import sample_bernoulli
from .base import Model, check_batch, check_noise
from .common import rsample
from .m2 import M2
from .semisupervised import split_labelled
from .vae import VAE


def _m1_model(m1):
    """The frozen M1: a trained VAE, or (for tests and gradient checks) a fresh untrained VAE made
    from a dict of its settings."""
    if m1 is None:
        raise ValueError("m1m2 needs a trained VAE as M1: pass --set m1=RUN (a `minivae train` run folder)")
    model = VAE(**m1) if isinstance(m1, dict) else m1
    if type(model) is not VAE:
        raise ValueError(f"M1 must be a one-layer VAE (model vae, or iwae with one layer), got "
                         f"{type(model).__name__}")
    return model.requires_grad_(False)


class M1M2(Model):
    """M2 (Gaussian likelihood) trained on the features z1 ~ q(z1 | x) of a frozen VAE ``m1``.

    ``m1``: a trained VAE, or a dict of VAE settings (see ``_m1_model``). ``z_dim`` and ``hidden``
    are M2's; the other settings are M2's too (``alpha``, ``beta``, ...). ``x_dim``, if given, must
    be M1's input size.
    """

    semi_supervised = True
    classifies = True
    labelled_statistics = M2.labelled_statistics  # its loss is M2's
    run_options = ("m1",)
    estimated_log_likelihood = "log p(z1) of M1's features under M2, not log p(x)"

    def __init__(self, m1: VAE | dict | None = None, x_dim=None, z_dim=50, hidden=(500,),
                 activation="relu", num_classes=10, alpha: float | None = None, alpha_scale=0.1,
                 beta=1.0, mc_samples=1, iw_k=1, labelled_weight="batch", rng=None):
        super().__init__()
        self.m1 = _m1_model(m1)
        if x_dim is not None and check_integer(x_dim, "x_dim", minimum=1) != self.m1.x_dim:
            raise ValueError(f"x_dim={x_dim} does not match M1's input size {self.m1.x_dim}")
        self.x_dim, self.z_dim = self.m1.x_dim, z_dim
        self.m2 = M2(self.m1.z_dim, z_dim, hidden, activation, num_classes, alpha, alpha_scale, beta,
                     mc_samples, iw_k, likelihood="gaussian", labelled_weight=labelled_weight, rng=rng)
        self.num_classes = self.m2.num_classes

    def features(self, x, noise=None):
        """z1 ~ q(z1 | x) from M1 (its mean when ``noise`` is None), a constant (B, z1) Tensor."""
        with no_grad():
            mu, logvar = self.m1.encode(x)
            return mu if noise is None else rsample(mu, logvar, noise)

    def set_data_sizes(self, n_total, n_labelled):
        """Fix M2's alpha (and labelled weight) from the data sizes (see
        ``SemiSupervised.set_data_sizes``)."""
        self.m2.set_data_sizes(n_total, n_labelled)

    def loss(self, x, noise, beta=None, labelled=None):
        """M2's training loss and statistics (``SemiSupervised.loss``: 0-d arrays; ``beta`` a number
        or a 0-d array) on the features of the unlabelled batch x and of ``labelled`` (x_l, y_l)."""
        check_batch(x)  # the images: M2 checks the features made of them, not these
        check_noise(noise)  # before M1 draws the features with it
        if labelled is not None:
            x_l, labels = split_labelled(labelled)
            check_batch(x_l, "x_l")
            labelled = (self.features(x_l, noise), labels)
        return self.m2.loss(self.features(x, noise), noise, beta, labelled)

    def elbo(self, x, noise, samples=None):
        """M2's (reconstruction, KL) per example at z1 = the mean of q(z1 | x): terms of a bound
        on log p(z1) under M2, not on log p(x)."""
        check_batch(x)  # the images, as in ``loss``
        return self.m2.elbo(self.features(x), noise, samples)

    def log_weights(self, x, k, noise):
        """M2's (k, B) importance log-weights at z1 = the mean of q(z1 | x): their log-mean-exp
        estimates log p(z1) under M2, not log p(x). The same z1 for every call, so the k samples
        may be drawn in any number of calls."""
        check_batch(x)
        return self.m2.log_weights(self.features(x), k, noise)

    def class_probabilities(self, x):
        """q(y | z1) at the mean of q(z1 | x), as a (B, K) array."""
        check_batch(x)  # the images, as in ``loss``
        return self.m2.class_probabilities(self.features(x))

    def classify(self, x):
        """The predicted labels argmax_y q(y | z1) at the mean of q(z1 | x), an integer array (B,)."""
        check_batch(x)  # the images, as in ``loss``
        return self.m2.classify(self.features(x))

    def sample(self, n, noise, probabilities=True, labels=None):
        """n images: z1 = the mean of p(z1 | y, z2), z2 ~ N(0, I), labels 0..K-1, 0, ... (or
        ``labels``), decoded by M1 (Bernoulli means, or binary images)."""
        probabilities = check_bool(probabilities, "probabilities")  # before M2 draws
        z1 = self.m2.sample(n, noise, labels=labels)
        with no_grad():
            probs = F.sigmoid(self.m1.decode(z1)).data
        return probs if probabilities else sample_bernoulli(probs, noise)
